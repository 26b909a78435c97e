// One run: header facts, actions (write scope only), the suspended steps' resume forms, the
// graph coloured live, the selected step, the timeline, the payloads and the event log.
// Live: the run's events arrive over SSE; each one repaints what it changes at once and
// schedules a re-read of the run (GetExecutionResult), which is the source of truth.

import { ApiError, fetchRunDetails, get, post, runPath, workflowPath } from "../api";
import { type AppContext, type Page, canWrite } from "../app";
import { badge, copyButton, duration, h, idWithCopy, jsonText, parseTime, replace, shortStatus, timeEl } from "../dom";
import { EventLog } from "../eventlog";
import { type GraphView, type NodeState, drawGraph, paint, topLevelIds } from "../graph";
import { PanelMemory } from "../panels";
import { SchemaForm } from "../schemaform";
import { RunWatch } from "../sse";
import { timeline } from "../timeline";
import type { Json, RunDetails, RunEvent, RunResult, StepInfo, StepStatus, SuspendedStep, WorkflowInfo } from "../types";

const REFRESH_DEBOUNCE_MS = 250;
const SETTLED = new Set(["success", "failed", "canceled", "suspended", "paused"]);
const FINISHED = new Set(["success", "failed", "canceled"]);

function stepStatus(status: StepStatus | undefined): string {
  return shortStatus(status);
}

function traceLink(template: string | null, traceId: string): HTMLElement {
  if (template && traceId) {
    const href = template.replaceAll("{trace_id}", encodeURIComponent(traceId));
    try {
      const url = new URL(href, location.href);
      if (url.protocol === "https:" || url.protocol === "http:") {
        return h("span", { class: "id" }, h("a", { href: url.toString(), target: "_blank", rel: "noopener noreferrer", class: "mono" }, traceId), copyButton(traceId, "trace id"));
      }
    } catch {
      /* not a URL: show the id alone */
    }
  }
  return traceId ? idWithCopy(traceId) : h("span", { class: "muted" }, "none");
}

function fact(label: string, ...value: (Node | string)[]): HTMLElement {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, ...value));
}

function findStep(workflow: WorkflowInfo | null, path: string[]): StepInfo | undefined {
  const steps = workflow?.steps ?? [];
  const full = path.join(".");
  const last = path[path.length - 1] ?? "";
  return steps.find((s) => s.id === full) ?? steps.find((s) => s.id === last);
}

export function runPage(ctx: AppContext, runId: string): Page {
  ctx.title(`Run ${runId}`);
  const writer = canWrite(ctx);
  const panels = new PanelMemory();
  const log = new EventLog(runId);

  let run: RunResult | null = null;
  let workflow: WorkflowInfo | null = null;
  let details: RunDetails | null = null;
  let watch: RunWatch | null = null;
  let graph: GraphView | null = null;
  let selected: string | null = null;
  let disposed = false;
  let refreshTimer = 0;
  let inFlight = 0;
  let connection: "connecting" | "live" | "retrying" | "ended" | "failed" = "connecting";
  const expanded = new Set<string>();
  // Step statuses learnt from events newer than the last read of the run.
  const overlay = new Map<string, { status: string; sequence: number }>();
  const progress = new Map<string, string>();
  const attempts = new Map<string, number>();
  let suspendedSignature = "";

  // -- layout ----------------------------------------------------------------------------------
  const head = h("div", { class: "run-head" });
  const actions = h("div", { class: "actions", "aria-label": "actions" });
  const notice = h("div", { class: "notice", role: "status", "aria-live": "polite" });
  const suspendedSlot = h("div", { class: "suspended-slot" });
  const graphSlot = h("div", { class: "graph-slot" });
  const stepSlot = h("div", { class: "step-slot" });
  const timelineSlot = h("div", { class: "timeline-slot" });
  const payloadSlot = h("div", { class: "payloads" });
  const element = h(
    "section",
    { class: "page run-page" },
    h("nav", { class: "crumbs", "aria-label": "breadcrumb" }, h("a", { href: "/runs" }, "Runs"), " / ", h("span", { class: "mono" }, runId)),
    head,
    actions,
    notice,
    h(
      "div",
      { class: "split" },
      h("section", { class: "card graph-card", "aria-label": "graph" }, h("h2", null, "Graph"), h("p", { class: "hint muted" }, "Select a step for its details; shift-click (or ▸) a nested workflow to expand it."), graphSlot),
      h("div", { class: "side" }, suspendedSlot, h("section", { class: "card step-card", "aria-label": "selected step" }, stepSlot)),
    ),
    h("section", { class: "card" }, h("h2", null, "Timeline"), timelineSlot),
    h("section", { class: "card" }, h("h2", null, "Payloads"), payloadSlot),
    h("section", { class: "card" }, h("h2", null, "Events"), log.element),
  );
  replace(stepSlot, h("p", { class: "muted" }, "Select a step in the graph."));

  const say = (text: string, kind: "ok" | "error" = "ok"): void => {
    notice.className = `notice ${kind}`;
    notice.textContent = text;
  };

  // -- state -------------------------------------------------------------------------------------
  const lastSequence = (): number => Number(run?.lastSequence ?? 0) || 0;

  function states(): Map<string, NodeState> {
    const map = new Map<string, NodeState>();
    for (const [id, step] of Object.entries(run?.steps ?? {})) {
      const n = step.attempts ?? 0;
      map.set(id, { status: stepStatus(step.status), ...(n > 1 ? { detail: `×${n}` } : {}) });
    }
    for (const [id, live] of overlay) {
      const n = attempts.get(id) ?? 0;
      map.set(id, { status: live.status, ...(n > 1 ? { detail: `×${n}` } : {}) });
    }
    return map;
  }

  function repaint(): void {
    if (graph) paint(graph, states(), progress, selected);
  }

  // -- rendering -------------------------------------------------------------------------------
  function renderHead(): void {
    if (!run) return;
    const status = shortStatus(run.status);
    const created = parseTime(run.createdAt);
    const updated = parseTime(run.updatedAt);
    const elapsed = created === null ? null : (FINISHED.has(status) ? (updated ?? created) : Date.now()) - created;
    const live = h("span", { class: `conn conn-${connection}` }, { connecting: "connecting…", live: "● live", retrying: "reconnecting…", ended: "finished", failed: "not following" }[connection]);
    replace(
      head,
      h("div", { class: "title-row" }, h("h1", null, "Run ", h("span", { class: "mono" }, runId)), copyButton(runId, "run id"), h("span", { id: "run-status" }, badge(run.status)), live),
      h(
        "dl",
        { class: "facts" },
        fact("Workflow", h("a", { href: `/workflows/${encodeURIComponent(run.workflowId ?? "")}` }, run.workflowId ?? "")),
        fact("Resource", run.resourceId ? idWithCopy(run.resourceId) : h("span", { class: "muted" }, "none")),
        fact("Created", timeEl(run.createdAt)),
        fact("Updated", timeEl(run.updatedAt)),
        fact(FINISHED.has(status) ? "Took" : "Age", elapsed === null ? "" : duration(elapsed)),
        fact("Trace", traceLink(ctx.session.traceUrlTemplate, run.traceId ?? "")),
        fact(
          "Lease",
          details === null
            ? h("span", { class: "muted" }, "unknown")
            : h("span", null, details.leased ? "held by a live replica" : "not held", details.cancelRequested ? " · cancel requested" : ""),
        ),
        fact("Events", String(lastSequence())),
      ),
    );
  }

  function renderActions(): void {
    if (!run) return;
    if (!writer) {
      replace(actions, h("p", { class: "muted readonly-note" }, "Read-only token: actions are hidden."));
      return;
    }
    const status = shortStatus(run.status);
    const buttons: HTMLElement[] = [];
    if (!FINISHED.has(status)) {
      const cancel = h("button", { type: "button", class: "danger", id: "action-cancel" }, "Cancel run");
      cancel.addEventListener("click", () => {
        const confirm = h("button", { type: "button", class: "danger", id: "action-cancel-confirm" }, "Yes, cancel it");
        const keep = h("button", { type: "button" }, "Keep it");
        keep.addEventListener("click", () => renderActions());
        confirm.addEventListener("click", () => {
          confirm.disabled = true;
          void act("Cancel requested.", () => post(`${runPath(runId)}:cancel`, {}));
        });
        replace(actions, h("span", { class: "confirm" }, "Cancel this run?"), confirm, keep);
        confirm.focus();
      });
      buttons.push(cancel);
    }
    if (["pending", "running", "waiting"].includes(status) && details && !details.leased) {
      const restart = h("button", { type: "button", id: "action-restart", title: "Re-drive a run no live replica holds" }, "Restart");
      restart.addEventListener("click", () => void act("Restarted.", () => post(`${runPath(runId)}:restart`, {}), true));
      buttons.push(restart);
    }
    if (status === "paused" && workflow?.graph) {
      const next = nextEntry();
      if (next) {
        const one = h("button", { type: "button", class: "primary", id: "action-step" }, `Run next step (${next})`);
        one.addEventListener("click", () => void act("Ran one more step.", () => post(`${runPath(runId)}:timeTravel`, { step: [next], perStep: true }), true));
        const rest = h("button", { type: "button", id: "action-continue" }, "Run to the end");
        rest.addEventListener("click", () => void act("Continued.", () => post(`${runPath(runId)}:timeTravel`, { step: [next] }), true));
        buttons.push(one, rest);
      }
    }
    replace(actions, buttons.length ? buttons : h("p", { class: "muted" }, SETTLED.has(status) ? "Select a step in the graph to time travel from it." : ""));
  }

  function nextEntry(): string | null {
    const steps = run?.steps ?? {};
    for (const ids of topLevelIds(workflow?.graph ?? [])) {
      if (!ids.every((id) => steps[id]?.status === "STEP_STATUS_SUCCESS" || steps[id]?.status === "STEP_STATUS_SKIPPED")) return ids[0] ?? null;
    }
    return null;
  }

  function renderSuspended(): void {
    const suspended = shortStatus(run?.status) === "suspended" ? (run?.suspended ?? []) : [];
    const signature = JSON.stringify(suspended) + String(writer);
    if (signature === suspendedSignature) return;
    suspendedSignature = signature;
    if (!suspended.length) {
      replace(suspendedSlot);
      return;
    }
    replace(suspendedSlot, ...suspended.map((leaf, index) => suspendedCard(leaf, index)));
  }

  function suspendedCard(leaf: SuspendedStep, index: number): HTMLElement {
    const path = leaf.path ?? [];
    const id = path.join(".");
    const info = findStep(workflow, path);
    const card = h(
      "section",
      { class: "card suspended-card", "data-step": id, "aria-label": `suspended step ${id}` },
      h("h2", null, "Suspended: ", h("span", { class: "mono" }, id), leaf.labels?.length ? h("span", { class: "muted" }, ` (label ${leaf.labels.join(", ")})`) : null),
      panels.panel(`suspend-${id}`, "Suspend payload", leaf.payload, { startOpen: true }),
    );
    if (!writer) return card;
    const form = new SchemaForm({
      schema: info?.resumeSchema,
      initial: undefined,
      field: "resume_data",
      submitLabel: "Resume",
      idPrefix: `resume-${index}`,
      submit: async (value: Json) => {
        try {
          inFlight++;
          await post(`${runPath(runId)}:resumeAsync`, { step: path, resumeData: value });
          say(`Resumed ${id}.`);
          follow();
          scheduleRefresh();
        } catch (err) {
          if (err instanceof ApiError) form.showViolations(err.message, err.violations);
          else form.fail(String(err));
        } finally {
          inFlight--;
        }
      },
    });
    card.appendChild(h("h3", null, "Resume with"));
    card.appendChild(form.element);
    return card;
  }

  function renderStep(): void {
    if (!selected) return;
    const id = selected;
    const step = run?.steps?.[id];
    const info = findStep(workflow, id.split("."));
    const live = overlay.get(id)?.status;
    const started = parseTime(step?.startedAt);
    const ended = parseTime(step?.endedAt);
    const parts: (HTMLElement | null)[] = [
      h("h2", null, "Step ", h("span", { class: "mono" }, id), " ", badge(live ?? step?.status ?? "not run")),
      info?.description ? h("p", { class: "muted" }, info.description) : null,
      h(
        "dl",
        { class: "facts" },
        fact("Started", timeEl(step?.startedAt)),
        fact("Ended", timeEl(step?.endedAt)),
        fact("Ran", started !== null && ended !== null ? duration(ended - started) : "—"),
        fact("Attempts", String(step?.attempts ?? 0)),
        progress.has(id) ? fact("Items", progress.get(id) ?? "") : h("span"),
      ),
      panels.panel(`step-payload-${id}`, "Input (payload)", step?.payload),
      panels.panel(`step-output-${id}`, "Output", step?.output),
      panels.panel(`step-error-${id}`, "Error", step?.error, { startOpen: true }),
      panels.panel(`step-suspend-${id}`, "Suspend payload", step?.suspendPayload),
      panels.panel(`step-resume-${id}`, "Resume payload", step?.resumePayload),
      panels.panel(`step-meta-${id}`, "Metadata", step?.metadata),
    ];
    if (writer && SETTLED.has(shortStatus(run?.status))) parts.push(timeTravelForm(id, step?.payload));
    replace(stepSlot, ...parts);
  }

  function timeTravelForm(id: string, payload: Json | undefined): HTMLElement {
    const input = h("textarea", { id: "tt-input", class: "json-input", rows: 5, spellcheck: "false", "aria-describedby": "tt-error" });
    input.value = jsonText(payload ?? null);
    const perStep = h("input", { type: "checkbox", id: "tt-per-step" });
    const error = h("div", { class: "form-error", id: "tt-error", role: "alert" });
    const button = h("button", { type: "submit", class: "primary", id: "tt-submit" }, "Time travel from here");
    const form = h(
      "form",
      { class: "time-travel", novalidate: true },
      h("h3", null, "Time travel"),
      h("p", { class: "muted" }, "Re-execute the run from this step with this input; the steps before it keep their results."),
      h("label", { for: "tt-input" }, "Input for ", h("span", { class: "mono" }, id)),
      input,
      h("label", { class: "check", for: "tt-per-step" }, perStep, " Stop after one step (per_step)"),
      error,
      h("div", { class: "form-actions" }, button),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let data: Json;
      try {
        data = JSON.parse(input.value || "null") as Json;
      } catch {
        error.textContent = "not valid JSON";
        return;
      }
      error.textContent = "";
      button.disabled = true;
      void act(`Time travelled from ${id}.`, () => post(`${runPath(runId)}:timeTravel`, { step: [id], inputData: data, perStep: perStep.checked }), true, (err) => {
        error.textContent = err.violations.length ? `${err.message}: ${err.violations.map((v) => `${v.field}: ${v.description}`).join("; ")}` : err.message;
      }).finally(() => (button.disabled = false));
    });
    return form;
  }

  function renderPayloads(): void {
    if (!run) return;
    const suspends = (run.suspended ?? []).map((leaf) => ({ step: (leaf.path ?? []).join("."), payload: leaf.payload ?? null }));
    replace(
      payloadSlot,
      panels.panel("input", "Input", run.input, { startOpen: true }),
      panels.panel("output", "Output", run.result, { startOpen: true }),
      panels.panel("error", "Error", run.error, { startOpen: true }),
      panels.panel("suspend", "Suspend payload", suspends.length ? suspends : undefined),
      panels.panel("state", "State", run.state),
      panels.panel("context", "Request context", details?.requestContext),
      panels.panel("trace", "Trace metadata", details?.traceMetadata),
    );
  }

  function renderGraph(): void {
    if (!workflow) {
      replace(graphSlot, h("p", { class: "muted" }, "The workflow is not registered on this server."));
      return;
    }
    graph = drawGraph(workflow.graph ?? [], {
      expanded,
      toggle(id) {
        if (expanded.has(id)) expanded.delete(id);
        else expanded.add(id);
        renderGraph();
        graphSlot.querySelector<SVGGElement>(`[data-step="${CSS.escape(id)}"]`)?.focus();
      },
      select(id) {
        selected = id;
        repaint();
        renderStep();
      },
    });
    replace(graphSlot, graph.svg);
    repaint();
  }

  function renderAll(): void {
    renderHead();
    renderActions();
    renderSuspended();
    repaint();
    renderStep();
    replace(timelineSlot, run ? timeline(run) : "");
    renderPayloads();
  }

  // -- data ------------------------------------------------------------------------------------
  async function refresh(): Promise<void> {
    const query = new URLSearchParams({ include_state: "true" });
    const [fresh, extra] = await Promise.all([get<{ result?: RunResult }>(runPath(runId), query), fetchRunDetails(runId)]);
    if (disposed || !fresh.result) return;
    run = fresh.result;
    details = extra;
    const seen = lastSequence();
    for (const [id, live] of overlay) if (live.sequence <= seen) overlay.delete(id);
    renderAll();
  }

  function scheduleRefresh(): void {
    window.clearTimeout(refreshTimer);
    refreshTimer = window.setTimeout(() => void refresh().catch(() => undefined), REFRESH_DEBOUNCE_MS);
  }

  function onEvent(event: RunEvent): void {
    log.add(event);
    const sequence = Number(event.sequence ?? 0);
    const mark = (id: string | undefined, status: string): void => {
      if (id) overlay.set(id, { status, sequence });
    };
    if (event.stepStart) mark(event.stepStart.stepId, "running");
    if (event.stepResult) {
      mark(event.stepResult.stepId, stepStatus(event.stepResult.status));
      if (event.stepResult.stepId && event.stepResult.attempts) attempts.set(event.stepResult.stepId, event.stepResult.attempts);
    }
    if (event.stepSuspended) mark(event.stepSuspended.stepId, "suspended");
    if (event.stepWaiting) mark(event.stepWaiting.stepId, "waiting");
    if (event.stepProgress?.stepId) {
      progress.set(event.stepProgress.stepId, `${event.stepProgress.completedCount ?? 0}/${event.stepProgress.totalCount ?? 0}`);
    }
    if (event.workflowFinish && run) {
      run = { ...run, status: event.workflowFinish.status ?? run.status };
      const el = head.querySelector("#run-status");
      if (el) replace(el, badge(run.status));
    }
    repaint();
    if (sequence > lastSequence()) scheduleRefresh();
  }

  function follow(): void {
    if (disposed || (watch && !watch.closed)) return;
    watch = new RunWatch(runId, log.all.length ? Number(log.all[log.all.length - 1]?.sequence ?? 0) : 0, {
      event: onEvent,
      failed(err) {
        connection = "failed";
        renderHead();
        say(`Live updates stopped: ${err.message}`, "error");
      },
      ended() {
        connection = "ended";
        scheduleRefresh();
        // An action still in flight (time travel, restart) starts a new pass: follow it.
        if (inFlight > 0) window.setTimeout(follow, 400);
      },
      async settled() {
        try {
          const answer = await get<{ result?: RunResult }>(runPath(runId));
          const status = shortStatus(answer.result?.status);
          return FINISHED.has(status) || status === "paused";
        } catch {
          return false;
        }
      },
      connection(liveNow) {
        const next = liveNow ? "live" : "retrying";
        if (next !== connection) {
          connection = next;
          renderHead();
        }
      },
    });
  }

  async function act(done: string, call: () => Promise<unknown>, long = false, onError?: (err: ApiError) => void): Promise<void> {
    inFlight++;
    say(long ? "Working…" : "");
    if (long) window.setTimeout(follow, 300);
    try {
      await call();
      say(done);
    } catch (err) {
      if (err instanceof ApiError && onError) onError(err);
      say(err instanceof ApiError ? err.message : String(err), "error");
    } finally {
      inFlight--;
      follow();
      await refresh().catch(() => undefined);
    }
  }

  async function load(): Promise<void> {
    try {
      const query = new URLSearchParams({ include_state: "true" });
      const answer = await get<{ result?: RunResult }>(runPath(runId), query);
      run = answer.result ?? null;
    } catch (err) {
      replace(element, h("section", { class: "card" }, h("h1", null, "Run ", h("span", { class: "mono" }, runId)), h("p", { class: "form-error", role: "alert" }, err instanceof ApiError ? err.message : String(err)), h("p", null, h("a", { href: "/runs" }, "Back to the runs"))));
      return;
    }
    if (!run || disposed) return;
    const [info, extra] = await Promise.all([
      get<{ workflow?: WorkflowInfo }>(workflowPath(run.workflowId ?? "")).catch(() => null),
      fetchRunDetails(runId),
    ]);
    workflow = info?.workflow ?? null;
    details = extra;
    // Open on the step that needs attention: suspended, failed or running.
    const steps = Object.entries(run.steps ?? {});
    const first = (status: string): string | undefined => steps.find(([, step]) => step.status === status)?.[0];
    selected = (run.suspended?.[0]?.path ?? []).join(".") || first("STEP_STATUS_FAILED") || first("STEP_STATUS_RUNNING") || null;
    renderGraph();
    renderAll();
    follow();
  }

  void load();
  return {
    element,
    dispose() {
      disposed = true;
      watch?.close();
      window.clearTimeout(refreshTimer);
    },
  };
}
