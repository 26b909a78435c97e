/**
 * The client's one error type, decoded from `google.rpc.Status` details in exactly one place.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of the errors a Stepline server sends. */
export const DOMAIN = "stepline.dev";

/** The canonical gRPC status names, indexed by code. */
const CODE_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** One bad request field; `field` is a JSON path such as `input_data.name`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** Why the run's state refused the call, e.g. type "RUN_NOT_SUSPENDED", subject "run/<id>". */
export interface PreconditionViolation {
  type: string;
  subject: string;
  description: string;
}

/**
 * A failed call. `code` is the gRPC code (connect's `Code`, numbered as in gRPC) and
 * `codeName` its canonical name ("INVALID_ARGUMENT"); `reason` is the server's ErrorInfo
 * reason (e.g. "RUN_NOT_FOUND"; "" when none was sent) and `metadata` its ErrorInfo metadata.
 * `fieldViolations` come from BadRequest, `preconditionViolations` from PreconditionFailure.
 * The ConnectError is kept as `cause`.
 */
export class SteplineError extends Error {
  override readonly name = "SteplineError";
  readonly code: Code;
  readonly codeName: string;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  readonly preconditionViolations: readonly PreconditionViolation[];
  override readonly cause: ConnectError;

  constructor(error: ConnectError) {
    const info = error.findDetails(ErrorInfoSchema).find((i) => i.domain === DOMAIN);
    const codeName = CODE_NAMES[error.code] ?? `CODE_${error.code}`;
    super(`${info?.reason || codeName}: ${error.rawMessage}`, { cause: error });
    this.code = error.code;
    this.codeName = codeName;
    this.reason = info?.reason ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = error
      .findDetails(BadRequestSchema)
      .flatMap((d) => d.fieldViolations)
      .map((v) => ({ field: v.field, description: v.description }));
    this.preconditionViolations = error
      .findDetails(PreconditionFailureSchema)
      .flatMap((d) => d.violations)
      .map((v) => ({ type: v.type, subject: v.subject, description: v.description }));
    this.cause = error;
  }
}

/** The SteplineError for anything a call threw; errors that are not RPC failures pass through. */
export function translate(error: unknown): unknown {
  if (error instanceof SteplineError) {
    return error;
  }
  if (error instanceof ConnectError) {
    return new SteplineError(error);
  }
  return error;
}

/** Run `call`, turning its RPC failure into a SteplineError. */
export async function translated<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw translate(error);
  }
}
