/**
 * Runs conformance/scenario.json against a live server with @stepline/client.
 *
 *   node conformance/typescript/dist/driver.js --target 127.0.0.1:50051 [--scenario PATH]
 *
 * Prints "ok <id>" / "FAIL <id>: why" per step and "typescript: N passed, N failed"; exits 1
 * when a step failed. For `restart_server` it prints "@@restart" ("@@restart crash" with
 * `crash`) and waits for a line on stdin (conformance/run.py restarts the server, then answers
 * "ok").
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import {
  Client,
  RunStatus,
  SteplineError,
  eventType,
  json,
  stepId,
  type JsonObject,
  type JsonValue,
  type RunEvent,
  type RunResult,
} from "@stepline/client";

type Step = Record<string, JsonValue> & { id: string; do: string };
type Expect = Record<string, JsonValue>;

class Mismatch extends Error {}

const RESTART_REQUEST = "@@restart";

function equal(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, i) => equal(item, b[i]));
  }
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object") {
    const keys = Object.keys(a);
    return (
      !Array.isArray(a) &&
      !Array.isArray(b) &&
      keys.length === Object.keys(b).length &&
      keys.every((k) => equal((a as JsonObject)[k], (b as JsonObject)[k]))
    );
  }
  return a === b;
}

function check(what: string, got: unknown, want: unknown): void {
  if (!equal(got, want)) {
    throw new Mismatch(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

function checkError(error: SteplineError, want: Expect): void {
  check("code", error.codeName, want["code"]);
  if ("reason" in want) check("reason", error.reason, want["reason"]);
  if ("field_violations" in want) {
    check("field violations", error.fieldViolations.map((v) => v.field), want["field_violations"]);
  }
}

function checkResult(result: RunResult, want: Expect): void {
  if ("status" in want) check("status", RunStatus[result.status], want["status"]);
  if ("result" in want) check("result", json(result.result), want["result"]);
  if ("suspended" in want) {
    const got = result.suspended.map((s) => ({ path: s.path, labels: s.labels }));
    check("suspended", got, want["suspended"]);
  }
}

function checkEvents(events: RunEvent[], want: Expect[]): void {
  check("event count", events.length, want.length);
  events.forEach((event, i) => {
    const expected = want[i] ?? {};
    const label = `event ${event.sequence}`;
    check(`${label} sequence`, Number(event.sequence), expected["sequence"]);
    check(`${label} type`, eventType(event), expected["type"]);
    if ("step" in expected) check(`${label} step`, stepId(event), expected["step"]);
    const finish = event.payload.case === "workflowFinish" ? event.payload.value : undefined;
    if ("status" in expected) {
      check(`${label} status`, finish && RunStatus[finish.status], expected["status"]);
    }
    if ("result" in expected) check(`${label} result`, json(finish?.result), expected["result"]);
  });
}

async function collect(events: AsyncIterable<RunEvent>): Promise<RunEvent[]> {
  const all: RunEvent[] = [];
  for await (const event of events) all.push(event);
  return all;
}

class Driver {
  private readonly runs = new Map<string, string>();
  private readonly watches = new Map<string, AsyncGenerator<RunEvent, void, undefined>>();

  constructor(
    private readonly client: Client,
    private readonly restart: (crash: boolean) => Promise<void>,
  ) {}

  async execute(step: Step): Promise<void> {
    const want = (step["expect"] ?? {}) as Expect;
    try {
      await this.dispatch(step, want);
    } catch (error) {
      if (!(error instanceof SteplineError)) throw error;
      if (!("error" in want)) throw new Mismatch(`unexpected error ${error.message}`);
      checkError(error, want["error"] as Expect);
      return;
    }
    if ("error" in want) {
      throw new Mismatch(`expected ${(want["error"] as Expect)["code"]}, the call succeeded`);
    }
  }

  private runId(step: Step): string {
    if (typeof step["run_id"] === "string") return step["run_id"];
    const id = this.runs.get(String(step["run"]));
    if (id === undefined) throw new Mismatch(`no run saved as ${step["run"]} (an earlier step failed)`);
    return id;
  }

  private save(step: Step, runId: string): void {
    if (typeof step["save"] === "string") this.runs.set(step["save"], runId);
  }

  private async dispatch(step: Step, want: Expect): Promise<void> {
    const workflow = String(step["workflow"] ?? "");
    const input = step["input"];
    const label = String(step["label"] ?? "");
    switch (step.do) {
      case "start": {
        const result = await this.client.start(workflow, input);
        this.save(step, result.runId);
        return checkResult(result, want);
      }
      case "start_async": {
        const started = await this.client.startAsync(workflow, input);
        this.save(step, started.runId);
        if ("created" in want) check("created", started.created, want["created"]);
        return;
      }
      case "get_result": {
        const wait = Number(step["wait_seconds"] ?? 0);
        return checkResult(await this.client.getResult(this.runId(step), { waitMs: wait * 1000 }), want);
      }
      case "resume":
        return checkResult(await this.client.resume(this.runId(step), step["data"], { label }), want);
      case "resume_async": {
        const resumed = await this.client.resumeAsync(this.runId(step), step["data"], { label });
        if ("after_sequence" in want) {
          check("after_sequence", Number(resumed.afterSequence), want["after_sequence"]);
        }
        return;
      }
      case "cancel": {
        const canceled = await this.client.cancel(this.runId(step));
        check("status", RunStatus[canceled.status], want["status"]);
        if ("cancel_requested" in want) {
          check("cancel_requested", canceled.cancelRequested, want["cancel_requested"]);
        }
        return;
      }
      case "stream": {
        const events = await collect(this.client.stream(workflow, input));
        if (events[0] !== undefined) this.save(step, events[0].runId);
        return checkEvents(events, (want["events"] ?? []) as Expect[]);
      }
      case "watch": {
        const afterSequence = Number(step["after_sequence"] ?? 0);
        const events = await collect(this.client.watch(this.runId(step), { afterSequence }));
        return checkEvents(events, (want["events"] ?? []) as Expect[]);
      }
      case "watch_open": {
        const watch = this.client.watch(this.runId(step), {
          afterSequence: Number(step["after_sequence"] ?? 0),
          keepOpenOnSuspend: step["keep_open_on_suspend"] === true,
        });
        this.watches.set(String(step["name"]), watch);
        return this.nextEvents(watch, want);
      }
      case "watch_next": {
        const watch = this.watches.get(String(step["name"]));
        if (watch === undefined) throw new Mismatch(`no open watch ${step["name"]} (an earlier step failed)`);
        return this.nextEvents(watch, want);
      }
      case "restart_server":
        return this.restart(step["crash"] === true);
      default:
        throw new Mismatch(`unknown step kind ${step.do}`);
    }
  }

  /** Read as many events as expected; with `end`, the watch must then be over. */
  private async nextEvents(watch: AsyncGenerator<RunEvent, void, undefined>, want: Expect): Promise<void> {
    const expected = (want["events"] ?? []) as Expect[];
    const events: RunEvent[] = [];
    for (let i = 0; i < expected.length; i++) {
      const next = await watch.next();
      if (next.done) break;
      events.push(next.value);
    }
    checkEvents(events, expected);
    if (want["end"] === true) {
      const extra = await watch.next();
      if (!extra.done) throw new Mismatch(`watch went on after the expected events: ${extra.value.sequence}`);
    }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Mismatch(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      scenario: { type: "string", default: new URL("../../scenario.json", import.meta.url).pathname },
    },
  });
  if (values.target === undefined) throw new Error("--target host:port is required");
  const scenario = JSON.parse(readFileSync(values.scenario, "utf8")) as { steps: Step[] };
  const stdin = createInterface({ input: process.stdin });
  const answers = stdin[Symbol.asyncIterator]();
  const restart = async (crash: boolean): Promise<void> => {
    console.log(crash ? `${RESTART_REQUEST} crash` : RESTART_REQUEST);
    const answer = await answers.next();
    if (answer.done || answer.value.trim() !== "ok") {
      throw new Mismatch(`the runner did not restart the server: ${JSON.stringify(answer.value)}`);
    }
  };
  const client = Client.connect(values.target);
  const driver = new Driver(client, restart);
  let passed = 0;
  let failed = 0;
  for (const step of scenario.steps) {
    try {
      await withTimeout(driver.execute(step), 60_000);
      passed += 1;
      console.log(`ok   ${step.id}`);
    } catch (error) {
      failed += 1;
      console.log(`FAIL ${step.id}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  client.close();
  stdin.close();
  console.log(`typescript: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
