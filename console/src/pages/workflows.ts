// The registered workflows.

import { ApiError, get } from "../api";
import type { AppContext, Page } from "../app";
import { h, replace } from "../dom";
import type { WorkflowInfo } from "../types";

export function workflowsPage(ctx: AppContext): Page {
  ctx.title("Workflows");
  const slot = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const element = h("section", { class: "page" }, h("div", { class: "page-head" }, h("h1", null, "Workflows")), slot);
  void get<{ workflows?: WorkflowInfo[] }>("/v1/workflows").then(
    (answer) => {
      const workflows = answer.workflows ?? [];
      replace(
        slot,
        workflows.length
          ? h(
              "table",
              { class: "workflows" },
              h("thead", null, h("tr", null, h("th", { scope: "col" }, "Workflow"), h("th", { scope: "col" }, "Description"), h("th", { scope: "col", class: "num" }, "Steps"), h("th", { scope: "col" }, "Runs"))),
              h(
                "tbody",
                null,
                workflows.map((wf) => {
                  const id = wf.id ?? "";
                  return h(
                    "tr",
                    null,
                    h("td", null, h("a", { href: `/workflows/${encodeURIComponent(id)}`, class: "mono" }, id)),
                    h("td", null, wf.description ?? ""),
                    h("td", { class: "num" }, String(wf.steps?.length ?? 0)),
                    h("td", null, h("a", { href: `/runs?workflow_id=${encodeURIComponent(id)}` }, "runs →")),
                  );
                }),
              ),
            )
          : h("p", { class: "empty" }, "No workflows are registered."),
      );
    },
    (err: unknown) => replace(slot, h("p", { class: "form-error", role: "alert" }, err instanceof ApiError ? err.message : String(err))),
  );
  return { element, dispose() {} };
}
