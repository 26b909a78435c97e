// The run's event log as it arrives over SSE: filterable by type and to failures only, each
// event expandable to its JSON, the whole log downloadable as JSON.

import { download, h, jsonText, replace, shortStatus } from "./dom";
import type { EventType, RunEvent } from "./types";
import { EVENT_TYPES } from "./types";

const SHOWN_MAX = 2000;

export function eventType(event: RunEvent): EventType | "unknown" {
  for (const type of EVENT_TYPES) if (event[type] !== undefined) return type;
  return "unknown";
}

export function isFailure(event: RunEvent): boolean {
  return (
    event.stepResult?.status === "STEP_STATUS_FAILED" ||
    event.workflowFinish?.status === "RUN_STATUS_FAILED" ||
    event.stepProgress?.iterationStatus === "STEP_STATUS_FAILED" ||
    !!event.stepResult?.error ||
    !!event.workflowFinish?.error
  );
}

function stepOf(event: RunEvent): string {
  return (
    event.stepStart?.stepId ??
    event.stepOutput?.stepId ??
    event.stepProgress?.stepId ??
    event.stepResult?.stepId ??
    event.stepSuspended?.stepId ??
    event.stepWaiting?.stepId ??
    ""
  );
}

function summary(event: RunEvent): string {
  if (event.workflowStart) return `started (${(event.workflowStart.reason ?? "START_REASON_START").replace("START_REASON_", "").toLowerCase()})`;
  if (event.stepStart) return event.stepStart.resumePayload !== undefined ? "started (resume pass)" : "started";
  if (event.stepOutput) return `wrote ${jsonText(event.stepOutput.output).replace(/\s+/g, " ").slice(0, 80)}`;
  if (event.stepProgress) {
    const p = event.stepProgress;
    return `${p.completedCount ?? 0}/${p.totalCount ?? 0} done (item ${p.currentIndex ?? 0}: ${shortStatus(p.iterationStatus)})`;
  }
  if (event.stepResult) {
    const r = event.stepResult;
    const attempts = (r.attempts ?? 1) > 1 ? ` after ${r.attempts} attempts` : "";
    return `${shortStatus(r.status)}${attempts}${r.error ? `: ${r.error.name ?? "Error"}: ${r.error.message ?? ""}` : ""}`;
  }
  if (event.stepSuspended) return `suspended${event.stepSuspended.labels?.length ? ` (${event.stepSuspended.labels.join(", ")})` : ""}`;
  if (event.stepWaiting) return `sleeping until ${event.stepWaiting.wakeAt ?? "?"}`;
  if (event.workflowCanceled) return "canceled";
  if (event.workflowPaused) return "paused after one step";
  if (event.workflowFinish) {
    const f = event.workflowFinish;
    return `${shortStatus(f.status)}${f.error ? `: ${f.error.name ?? "Error"}: ${f.error.message ?? ""}` : ""}`;
  }
  return "";
}

export class EventLog {
  readonly element: HTMLElement;
  private readonly events: RunEvent[] = [];
  private readonly body = h("tbody");
  private readonly count = h("span", { class: "muted" });
  private readonly hiddenTypes = new Set<string>();
  private failuresOnly = false;
  private readonly typeChips = h("fieldset", { class: "types" }, h("legend", null, "Types"));
  private readonly seenTypes = new Set<string>();

  constructor(private readonly runId: string) {
    const failures = h("input", { type: "checkbox", id: "ev-failures" });
    failures.addEventListener("change", () => {
      this.failuresOnly = failures.checked;
      this.applyFilter();
    });
    const save = h("button", { type: "button" }, "Download JSON");
    save.addEventListener("click", () => download(`${this.runId}-events.json`, jsonText(this.events)));
    this.element = h(
      "div",
      { class: "eventlog" },
      h(
        "div",
        { class: "eventlog-controls" },
        this.typeChips,
        h("label", { class: "chip", for: "ev-failures" }, failures, "Failures only"),
        save,
        this.count,
      ),
      h(
        "div",
        { class: "eventlog-scroll" },
        h(
          "table",
          { class: "events" },
          h("thead", null, h("tr", null, h("th", { scope: "col", class: "num" }, "#"), h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Step"), h("th", { scope: "col" }, "What"))),
          this.body,
        ),
      ),
    );
  }

  get all(): readonly RunEvent[] {
    return this.events;
  }

  add(event: RunEvent): void {
    this.events.push(event);
    const type = eventType(event);
    if (!this.seenTypes.has(type)) {
      this.seenTypes.add(type);
      const box = h("input", { type: "checkbox", id: `ev-type-${type}`, value: type, checked: true });
      box.addEventListener("change", () => {
        if (box.checked) this.hiddenTypes.delete(type);
        else this.hiddenTypes.add(type);
        this.applyFilter();
      });
      this.typeChips.appendChild(h("label", { class: "chip", for: `ev-type-${type}` }, box, type));
    }
    const time = event.timestamp ? new Date(event.timestamp) : null;
    const row = h(
      "tr",
      { "data-type": type, class: isFailure(event) ? "failure" : null },
      h("td", { class: "num mono" }, String(event.sequence ?? "")),
      h("td", { class: "mono", title: time ? time.toISOString() : "" }, time ? time.toLocaleTimeString() : ""),
      h("td", null, type),
      h("td", { class: "mono" }, stepOf(event)),
      h("td", null, h("details", null, h("summary", null, summary(event)), h("pre", { class: "json" }, jsonText(event)))),
    );
    row.hidden = !this.visible(event);
    this.body.appendChild(row);
    while (this.body.childElementCount > SHOWN_MAX) this.body.firstElementChild?.remove();
    this.updateCount();
  }

  reset(): void {
    this.events.length = 0;
    replace(this.body);
    this.updateCount();
  }

  private visible(event: RunEvent): boolean {
    return !this.hiddenTypes.has(eventType(event)) && (!this.failuresOnly || isFailure(event));
  }

  private applyFilter(): void {
    const offset = this.events.length - this.body.childElementCount;
    Array.from(this.body.children).forEach((row, index) => {
      const event = this.events[offset + index];
      if (event && row instanceof HTMLElement) row.hidden = !this.visible(event);
    });
    this.updateCount();
  }

  private updateCount(): void {
    const shown = Array.from(this.body.children).filter((r) => !(r as HTMLElement).hidden).length;
    this.count.textContent = `${shown} of ${this.events.length} events`;
  }
}
