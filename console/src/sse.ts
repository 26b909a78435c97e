// Follows a run's events over Server-Sent Events (GET /v1/runs/{id}:watch). EventSource
// can't send an Authorization header, so this reads the stream with fetch. Each event's `id:`
// is its sequence: after a dropped connection (a replica restarted) it reconnects with
// Last-Event-ID and the cursor, so nothing is missed or shown twice.

import { ApiError, authHeaders, runPath } from "./api";
import type { RunEvent } from "./types";
import { isObject } from "./types";

export interface WatchHandlers {
  event(event: RunEvent): void;
  // A refusal the watch can't recover from (unknown run, bad token).
  failed(err: ApiError): void;
  // The stream ended because the run finished (or paused); nothing more will come.
  ended(): void;
  // Connected (true) or retrying (false).
  connection(live: boolean): void;
  // Asked when the server closed the stream without a final event: true when the run is
  // settled for good (nothing more will come), false to reconnect.
  settled(): Promise<boolean>;
}

const FINAL = new Set(["RUN_STATUS_SUCCESS", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELED", "RUN_STATUS_PAUSED"]);

const GRPC_TO_HTTP: Record<number, number> = { 3: 400, 5: 404, 7: 403, 11: 400, 16: 401 };

function unwrap(data: unknown): RunEvent | null {
  if (!isObject(data)) return null;
  // A WatchResponse ({event}), grpc-gateway's stream wrapper ({result: {event}}), or the event.
  const inner = isObject(data["result"]) ? data["result"] : data;
  const event = isObject(inner["event"]) ? inner["event"] : inner;
  return event as RunEvent;
}

export class RunWatch {
  private readonly abort = new AbortController();
  private cursor: number;
  private stopped = false;

  constructor(
    private readonly runId: string,
    after: number,
    private readonly handlers: WatchHandlers,
  ) {
    this.cursor = after;
    void this.loop();
  }

  close(): void {
    this.stopped = true;
    this.abort.abort();
  }

  get closed(): boolean {
    return this.stopped;
  }

  private async loop(): Promise<void> {
    let delay = 500;
    while (!this.stopped) {
      let finished = false;
      try {
        finished = await this.once();
        delay = 500;
        if (!finished && !this.stopped) finished = await this.handlers.settled();
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ApiError && [400, 401, 403, 404].includes(err.httpStatus)) {
          this.stopped = true;
          this.handlers.failed(err);
          return;
        }
      }
      if (this.stopped) return;
      if (finished) {
        this.stopped = true;
        this.handlers.ended();
        return;
      }
      this.handlers.connection(false);
      await new Promise((resolve) => window.setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }

  /** One connection; true when it ended because the run finished. */
  private async once(): Promise<boolean> {
    const query = new URLSearchParams({
      after_sequence: String(this.cursor),
      keep_open_on_suspend: "true",
    });
    const headers: Record<string, string> = { Accept: "text/event-stream", ...authHeaders() };
    if (this.cursor > 0) headers["Last-Event-ID"] = String(this.cursor);
    const response = await fetch(`${runPath(this.runId)}:watch?${query}`, {
      headers,
      cache: "no-store",
      credentials: "omit",
      signal: this.abort.signal,
    });
    if (!response.ok || !response.body) {
      let body: unknown = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      throw ApiError.from(response.status, body, `${response.status} ${response.statusText}`);
    }
    this.handlers.connection(true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let finished = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const outcome = this.dispatch(block);
        if (outcome === "finished") finished = true;
      }
    }
    return finished;
  }

  private dispatch(block: string): "finished" | "error" | "event" | "none" {
    let id = "";
    let type = "message";
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return "none";
    let parsed: unknown;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      return "none";
    }
    if (type === "status" || type === "error") {
      // The stream's last event: a google.rpc.Status, code 0 when the watch ended normally
      // (with keep_open_on_suspend: the run finished or paused).
      if (isObject(parsed) && (parsed["code"] ?? 0) === 0) return "finished";
      // The status's gRPC code decides: a draining replica ends open watches with
      // UNAVAILABLE (reconnect), an unknown run or a bad token ends the watch for good.
      const code = isObject(parsed) && typeof parsed["code"] === "number" ? parsed["code"] : 14;
      throw ApiError.from(GRPC_TO_HTTP[code] ?? 503, parsed, "the watch failed");
    }
    const event = unwrap(parsed);
    if (!event) return "none";
    const sequence = Number(event.sequence ?? id);
    if (Number.isFinite(sequence)) {
      if (sequence <= this.cursor) return "none";
      this.cursor = sequence;
    }
    this.handlers.event(event);
    const status = event.workflowFinish?.status;
    return status && FINAL.has(status) ? "finished" : "event";
  }
}
