/**
 * TypeScript client for Stepline durable workflows.
 *
 *   import { Client, RunStatus, json } from "@stepline/client";
 *   const client = Client.connect("127.0.0.1:50051");
 *   const result = await client.start("greet", { name: "Ada" });
 *   console.log(RunStatus[result.status], json(result.result)); // SUCCESS { message: 'HELLO, ADA!' }
 *
 * The generated messages are re-exported; every schema and service descriptor is also
 * importable from "@stepline/client/gen/stepline/v1/<file>_pb".
 */
export {
  Client,
  eventType,
  json,
  stepId,
  type CallControl,
  type ConnectOptions,
  type GetResultOptions,
  type ResumeOptions,
  type StartOptions,
  type WatchOptions,
} from "./client.js";
export {
  DOMAIN,
  SteplineError,
  type FieldViolation,
  type PreconditionViolation,
} from "./errors.js";
export { Code } from "@connectrpc/connect";
export type { JsonObject, JsonValue } from "@bufbuild/protobuf";
export * from "./gen/stepline/v1/event_pb.js";
export * from "./gen/stepline/v1/run_pb.js";
export * from "./gen/stepline/v1/workflow_pb.js";
export * from "./gen/stepline/v1/workflow_service_pb.js";
