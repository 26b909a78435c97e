// Calls to the HTTP/JSON API (and the console's own two read-only routes). The bearer token
// lives in sessionStorage and travels only in the Authorization header: never a cookie.

import type { Json, RunDetails, Session } from "./types";
import { isObject } from "./types";

const TOKEN_KEY = "stepline.token";

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(): Record<string, string> {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A google.rpc.Status answer, with its BadRequest violations and ErrorInfo reason. */
export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    message: string,
    readonly reason: string,
    readonly violations: FieldViolation[],
  ) {
    super(message);
  }

  get unauthenticated(): boolean {
    return this.httpStatus === 401;
  }

  static from(httpStatus: number, body: unknown, fallback: string): ApiError {
    const status = isObject(body) && isObject(body["error"]) ? body["error"] : body;
    if (!isObject(status)) return new ApiError(httpStatus, fallback, "", []);
    const message = typeof status["message"] === "string" ? status["message"] : fallback;
    let reason = "";
    const violations: FieldViolation[] = [];
    const details = Array.isArray(status["details"]) ? status["details"] : [];
    for (const detail of details) {
      if (!isObject(detail)) continue;
      const type = String(detail["@type"] ?? "");
      if (type.endsWith("google.rpc.ErrorInfo") && typeof detail["reason"] === "string") {
        reason = detail["reason"];
      }
      if (type.endsWith("google.rpc.BadRequest")) {
        const list = detail["fieldViolations"] ?? detail["field_violations"];
        for (const item of Array.isArray(list) ? list : []) {
          if (!isObject(item)) continue;
          violations.push({
            field: String(item["field"] ?? ""),
            description: String(item["description"] ?? ""),
          });
        }
      }
    }
    return new ApiError(httpStatus, message, reason, violations);
  }
}

// Listeners told when the server refuses the token (401), so the page can ask for one.
const unauthenticatedListeners: Array<(err: ApiError) => void> = [];

export function onUnauthenticated(listener: (err: ApiError) => void): void {
  unauthenticatedListeners.push(listener);
}

export async function request<T>(
  method: "GET" | "POST" | "DELETE",
  path: string,
  options: { query?: URLSearchParams; body?: Json; signal?: AbortSignal } = {},
): Promise<T> {
  const url = options.query && [...options.query].length ? `${path}?${options.query}` : path;
  const headers: Record<string, string> = { Accept: "application/json", ...authHeaders() };
  const init: RequestInit = { method, headers, cache: "no-store", credentials: "omit" };
  if (options.signal) init.signal = options.signal;
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "the server can't be reached", "UNREACHABLE", []);
  }
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const err = ApiError.from(response.status, body, `${response.status} ${response.statusText}`);
    if (err.unauthenticated) for (const listener of unauthenticatedListeners) listener(err);
    throw err;
  }
  return body as T;
}

export const get = <T>(path: string, query?: URLSearchParams, signal?: AbortSignal): Promise<T> =>
  request<T>("GET", path, { ...(query ? { query } : {}), ...(signal ? { signal } : {}) });

export const post = <T>(path: string, body: Json): Promise<T> => request<T>("POST", path, { body });

export const runPath = (runId: string): string => `/v1/runs/${encodeURIComponent(runId)}`;
export const workflowPath = (workflowId: string): string =>
  `/v1/workflows/${encodeURIComponent(workflowId)}`;

export async function fetchSession(): Promise<Session> {
  return get<Session>("/console/api/session");
}

export async function fetchRunDetails(runId: string): Promise<RunDetails | null> {
  try {
    return await get<RunDetails>(`/console/api/runs/${encodeURIComponent(runId)}/details`);
  } catch {
    return null;
  }
}
