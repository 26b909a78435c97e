// The proto3 JSON shapes the HTTP API answers with (protos/stepline/v1, camelCase names).
// Every field may be absent: proto3 JSON leaves out default values.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export const RUN_STATUSES = [
  "RUN_STATUS_PENDING",
  "RUN_STATUS_RUNNING",
  "RUN_STATUS_WAITING",
  "RUN_STATUS_SUSPENDED",
  "RUN_STATUS_PAUSED",
  "RUN_STATUS_SUCCESS",
  "RUN_STATUS_FAILED",
  "RUN_STATUS_CANCELED",
] as const;
export type RunStatus = (typeof RUN_STATUSES)[number] | "RUN_STATUS_UNSPECIFIED";

export type StepStatus =
  | "STEP_STATUS_UNSPECIFIED"
  | "STEP_STATUS_RUNNING"
  | "STEP_STATUS_SUCCESS"
  | "STEP_STATUS_FAILED"
  | "STEP_STATUS_SUSPENDED"
  | "STEP_STATUS_WAITING"
  | "STEP_STATUS_SKIPPED"
  | "STEP_STATUS_CANCELED";

export interface RunError {
  message?: string;
  name?: string;
  details?: Json;
}

export interface StepResult {
  status?: StepStatus;
  payload?: Json;
  output?: Json;
  error?: RunError;
  suspendPayload?: Json;
  resumePayload?: Json;
  startedAt?: string;
  endedAt?: string;
  suspendedAt?: string;
  resumedAt?: string;
  attempts?: number;
  suspendLabels?: string[];
  metadata?: { [key: string]: Json };
}

export interface SuspendedStep {
  path?: string[];
  payload?: Json;
  labels?: string[];
}

export interface RunResult {
  runId?: string;
  workflowId?: string;
  resourceId?: string;
  status?: RunStatus;
  input?: Json;
  result?: Json;
  error?: RunError;
  steps?: { [stepId: string]: StepResult };
  suspended?: SuspendedStep[];
  state?: { [key: string]: Json };
  stepExecutionPath?: string[];
  traceId?: string;
  createdAt?: string;
  updatedAt?: string;
  // int64: a decimal string in proto3 JSON.
  lastSequence?: string | number;
}

export interface RunSummary {
  runId?: string;
  workflowId?: string;
  resourceId?: string;
  status?: RunStatus;
  createdAt?: string;
  updatedAt?: string;
}

export interface ListRunsResponse {
  runs?: RunSummary[];
  nextPageToken?: string;
}

export type JsonSchema = { [key: string]: Json };

export interface StepInfo {
  id?: string;
  description?: string;
  inputSchema?: JsonSchema;
  outputSchema?: JsonSchema;
  resumeSchema?: JsonSchema;
  suspendSchema?: JsonSchema;
  stateSchema?: JsonSchema;
  retries?: number;
}

export interface WorkflowInfo {
  id?: string;
  description?: string;
  inputSchema?: JsonSchema;
  outputSchema?: JsonSchema;
  stateSchema?: JsonSchema;
  steps?: StepInfo[];
  graph?: Json[];
}

export interface RunEvent {
  runId?: string;
  sequence?: string | number;
  timestamp?: string;
  workflowStart?: { workflowId?: string; reason?: string };
  stepStart?: { stepId?: string; payload?: Json; startedAt?: string; resumePayload?: Json };
  stepOutput?: { stepId?: string; output?: Json };
  stepProgress?: {
    stepId?: string;
    completedCount?: number;
    totalCount?: number;
    currentIndex?: number;
    iterationStatus?: StepStatus;
  };
  stepResult?: {
    stepId?: string;
    status?: StepStatus;
    output?: Json;
    error?: RunError;
    startedAt?: string;
    endedAt?: string;
    attempts?: number;
  };
  stepSuspended?: { stepId?: string; suspendPayload?: Json; labels?: string[]; suspendedAt?: string };
  stepWaiting?: { stepId?: string; wakeAt?: string };
  workflowCanceled?: Record<string, never>;
  workflowPaused?: Record<string, never>;
  workflowFinish?: { status?: RunStatus; result?: Json; error?: RunError; suspended?: SuspendedStep[] };
}

export const EVENT_TYPES = [
  "workflowStart",
  "stepStart",
  "stepOutput",
  "stepProgress",
  "stepResult",
  "stepSuspended",
  "stepWaiting",
  "workflowCanceled",
  "workflowPaused",
  "workflowFinish",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

// What GET /console/api/session answers (server/stepline/server/console/routes.py).
export interface Session {
  authRequired: boolean;
  scopes: string[];
  traceUrlTemplate: string | null;
}

// What GET /console/api/runs/{run_id}/details answers.
export interface RunDetails {
  requestContext: { [key: string]: Json };
  traceMetadata: { [key: string]: Json };
  leased: boolean;
  cancelRequested: boolean;
}

export function isObject(value: unknown): value is { [key: string]: Json } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
