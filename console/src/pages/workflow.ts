// One workflow: its graph, its schemas (workflow and steps), its recent runs, and (with the
// write scope) a form generated from its input schema that starts a run.

import { ApiError, get, post, workflowPath } from "../api";
import { type AppContext, type Page, canWrite, every } from "../app";
import { h, replace } from "../dom";
import { drawGraph, paint } from "../graph";
import { PanelMemory } from "../panels";
import { SchemaForm } from "../schemaform";
import type { Json, ListRunsResponse, WorkflowInfo } from "../types";
import { runsTable } from "./runs";

export function workflowPage(ctx: AppContext, workflowId: string): Page {
  ctx.title(`Workflow ${workflowId}`);
  const panels = new PanelMemory();
  const graphSlot = h("div", { class: "graph-slot" });
  const schemaSlot = h("div", { class: "payloads" });
  const startSlot = h("div");
  const runsSlot = h("div", { "aria-live": "polite" });
  const head = h("div", { class: "page-head" }, h("h1", null, "Workflow ", h("span", { class: "mono" }, workflowId)));
  const element = h(
    "section",
    { class: "page workflow-page" },
    h("nav", { class: "crumbs", "aria-label": "breadcrumb" }, h("a", { href: "/workflows" }, "Workflows"), " / ", h("span", { class: "mono" }, workflowId)),
    head,
    h(
      "div",
      { class: "split" },
      h("section", { class: "card graph-card", "aria-label": "graph" }, h("h2", null, "Graph"), graphSlot),
      h("div", { class: "stack" }, startSlot, h("section", { class: "card" }, h("h2", null, "Schemas"), schemaSlot)),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", null, "Recent runs ", h("a", { href: `/runs?workflow_id=${encodeURIComponent(workflowId)}`, class: "small" }, "all →")),
      runsSlot,
    ),
  );

  const expanded = new Set<string>();
  const drawInto = (wf: WorkflowInfo): void => {
    const view = drawGraph(wf.graph ?? [], {
      expanded,
      toggle(id) {
        if (expanded.has(id)) expanded.delete(id);
        else expanded.add(id);
        drawInto(wf);
      },
      select() {},
    });
    paint(view, new Map(), new Map(), null);
    replace(graphSlot, view.svg);
  };

  const loadRuns = async (): Promise<void> => {
    const answer = await get<ListRunsResponse>("/v1/runs", new URLSearchParams({ workflow_id: workflowId, page_size: "10" }));
    const runs = answer.runs ?? [];
    replace(runsSlot, runs.length ? runsTable(runs, false) : h("p", { class: "empty" }, "No runs yet."));
  };

  void get<{ workflow?: WorkflowInfo }>(workflowPath(workflowId)).then(
    (answer) => {
      const wf = answer.workflow ?? {};
      if (wf.description) head.appendChild(h("p", { class: "muted" }, wf.description));
      drawInto(wf);
      replace(
        schemaSlot,
        panels.panel("input", "Input schema", wf.inputSchema),
        panels.panel("output", "Output schema", wf.outputSchema),
        panels.panel("state", "State schema", wf.stateSchema),
        ...(wf.steps ?? []).map((step) =>
          h(
            "div",
            { class: "step-schemas" },
            h("h3", { class: "mono" }, step.id ?? ""),
            step.description ? h("p", { class: "muted" }, step.description) : null,
            panels.panel(`${step.id}-in`, "Input", step.inputSchema),
            panels.panel(`${step.id}-out`, "Output", step.outputSchema),
            step.resumeSchema ? panels.panel(`${step.id}-resume`, "Resume", step.resumeSchema) : null,
            step.suspendSchema ? panels.panel(`${step.id}-suspend`, "Suspend", step.suspendSchema) : null,
          ),
        ),
      );
      if (canWrite(ctx)) replace(startSlot, startCard(ctx, workflowId, wf));
    },
    (err: unknown) => replace(graphSlot, h("p", { class: "form-error", role: "alert" }, err instanceof ApiError ? err.message : String(err))),
  );
  void loadRuns().catch(() => undefined);
  const stop = every(5000, loadRuns);
  return { element, dispose: stop };
}

function startCard(ctx: AppContext, workflowId: string, wf: WorkflowInfo): HTMLElement {
  const resource = h("input", { type: "text", id: "start-resource", autocomplete: "off" });
  const perStep = h("input", { type: "checkbox", id: "start-per-step" });
  const form = new SchemaForm({
    schema: wf.inputSchema,
    initial: undefined,
    field: "input_data",
    submitLabel: "Start run",
    idPrefix: "start",
    extra: [
      h("div", { class: "field field-text" }, h("label", { for: "start-resource" }, "Resource id"), resource, h("span", { class: "field-hint" }, "optional")),
      h("label", { class: "check", for: "start-per-step" }, perStep, " Run one step at a time (per_step)"),
    ],
    async submit(value: Json) {
      try {
        const body: { [key: string]: Json } = { inputData: value };
        if (resource.value.trim()) body["resourceId"] = resource.value.trim();
        if (perStep.checked) body["perStep"] = true;
        const answer = await post<{ runId?: string }>(`${workflowPath(workflowId)}/runs`, body);
        if (answer.runId) ctx.navigate(`/runs/${encodeURIComponent(answer.runId)}`);
      } catch (err) {
        if (err instanceof ApiError) form.showViolations(err.message, err.violations);
        else form.fail(String(err));
      }
    },
  });
  return h("section", { class: "card start-card" }, h("h2", null, "Start a run"), form.element);
}
