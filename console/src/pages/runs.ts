// The runs list: filters kept in the URL (so a filtered view is a link to share), server-side
// paging with ListRuns' page tokens, and the current page refreshed every few seconds.

import { ApiError, get } from "../api";
import { type AppContext, type Page, every } from "../app";
import { badge, duration, h, idWithCopy, parseTime, replace, shortStatus, timeEl } from "../dom";
import type { ListRunsResponse, RunSummary, WorkflowInfo } from "../types";
import { RUN_STATUSES } from "../types";

const REFRESH_MS = 3000;
const PAGE_SIZES = ["25", "50", "100"];

interface Filters {
  workflowId: string;
  statuses: string[];
  resourceId: string;
  createdAfter: string;
  createdBefore: string;
  pageSize: string;
  pageToken: string;
}

function readFilters(search: string): Filters {
  const q = new URLSearchParams(search);
  return {
    workflowId: q.get("workflow_id") ?? "",
    statuses: q.getAll("status").filter((s) => RUN_STATUSES.some((r) => shortStatus(r) === s)),
    resourceId: q.get("resource_id") ?? "",
    createdAfter: q.get("created_after") ?? "",
    createdBefore: q.get("created_before") ?? "",
    pageSize: PAGE_SIZES.includes(q.get("page_size") ?? "") ? (q.get("page_size") as string) : "50",
    pageToken: q.get("page_token") ?? "",
  };
}

export function filtersUrl(f: Partial<Filters>): string {
  const q = new URLSearchParams();
  if (f.workflowId) q.set("workflow_id", f.workflowId);
  for (const status of f.statuses ?? []) q.append("status", status);
  if (f.resourceId) q.set("resource_id", f.resourceId);
  if (f.createdAfter) q.set("created_after", f.createdAfter);
  if (f.createdBefore) q.set("created_before", f.createdBefore);
  if (f.pageSize && f.pageSize !== "50") q.set("page_size", f.pageSize);
  if (f.pageToken) q.set("page_token", f.pageToken);
  const text = q.toString();
  return text ? `/runs?${text}` : "/runs";
}

function apiQuery(f: Filters): URLSearchParams {
  const q = new URLSearchParams();
  if (f.workflowId) q.set("workflow_id", f.workflowId);
  for (const status of f.statuses) q.append("statuses", `RUN_STATUS_${status.toUpperCase()}`);
  if (f.resourceId) q.set("resource_id", f.resourceId);
  if (f.createdAfter) q.set("created_after", f.createdAfter);
  if (f.createdBefore) q.set("created_before", f.createdBefore);
  q.set("page_size", f.pageSize);
  if (f.pageToken) q.set("page_token", f.pageToken);
  return q;
}

// <input type="datetime-local"> speaks local time without a zone; the URL keeps UTC.
function toLocalInput(iso: string): string {
  const ms = parseTime(iso);
  if (ms === null) return "";
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

function fromLocalInput(value: string): string {
  if (!value) return "";
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? "" : new Date(ms).toISOString().replace(/\.000Z$/, "Z");
}

export function runRow(run: RunSummary, showWorkflow = true): HTMLTableRowElement {
  const id = run.runId ?? "";
  const created = parseTime(run.createdAt);
  const updated = parseTime(run.updatedAt);
  const status = shortStatus(run.status);
  const settled = ["success", "failed", "canceled"].includes(status);
  const span = created === null ? null : (settled ? (updated ?? created) : Date.now()) - created;
  return h(
    "tr",
    { "data-run": id, "data-status": status },
    h("td", null, idWithCopy(id, `/runs/${encodeURIComponent(id)}`)),
    showWorkflow
      ? h("td", null, h("a", { href: `/workflows/${encodeURIComponent(run.workflowId ?? "")}` }, run.workflowId ?? ""))
      : null,
    h("td", null, badge(run.status)),
    h("td", { class: "mono" }, run.resourceId ?? ""),
    h("td", null, timeEl(run.createdAt)),
    h("td", null, timeEl(run.updatedAt)),
    h("td", { class: "num" }, span === null ? "" : duration(span)),
  );
}

export function runsTable(runs: RunSummary[], showWorkflow = true): HTMLTableElement {
  return h(
    "table",
    { class: "runs" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", { scope: "col" }, "Run"),
        showWorkflow ? h("th", { scope: "col" }, "Workflow") : null,
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Resource"),
        h("th", { scope: "col" }, "Created"),
        h("th", { scope: "col" }, "Updated"),
        h("th", { scope: "col", class: "num" }, "Duration"),
      ),
    ),
    h("tbody", null, runs.map((run) => runRow(run, showWorkflow))),
  );
}

export function runsPage(ctx: AppContext): Page {
  const filters = readFilters(location.search);
  ctx.title("Runs");
  const workflowSelect = h("select", { id: "f-workflow", name: "workflow_id" }, h("option", { value: "" }, "All workflows"));
  if (filters.workflowId) workflowSelect.appendChild(h("option", { value: filters.workflowId, selected: true }, filters.workflowId));
  const statusBoxes = RUN_STATUSES.map((full) => {
    const name = shortStatus(full);
    const box = h("input", { type: "checkbox", name: "status", value: name, id: `f-status-${name}` });
    box.checked = filters.statuses.includes(name);
    return h("label", { class: `chip st-${name}`, for: `f-status-${name}` }, box, name);
  });
  const resource = h("input", { type: "text", id: "f-resource", name: "resource_id", autocomplete: "off" });
  resource.value = filters.resourceId;
  const after = h("input", { type: "datetime-local", id: "f-after", name: "created_after" });
  after.value = toLocalInput(filters.createdAfter);
  const before = h("input", { type: "datetime-local", id: "f-before", name: "created_before" });
  before.value = toLocalInput(filters.createdBefore);
  const size = h("select", { id: "f-size", name: "page_size" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === filters.pageSize }, n)));

  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "filter runs" },
    h("div", { class: "filter" }, h("label", { for: "f-workflow" }, "Workflow"), workflowSelect),
    h("div", { class: "filter" }, h("label", { for: "f-resource" }, "Resource id"), resource),
    h("div", { class: "filter" }, h("label", { for: "f-after" }, "Created after"), after),
    h("div", { class: "filter" }, h("label", { for: "f-before" }, "Created before"), before),
    h("div", { class: "filter" }, h("label", { for: "f-size" }, "Per page"), size),
    h("fieldset", { class: "statuses" }, h("legend", null, "Status"), statusBoxes),
    h(
      "div",
      { class: "form-actions" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { href: "/runs", class: "button" }, "Clear"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.navigate(
      filtersUrl({
        workflowId: workflowSelect.value,
        statuses: statusBoxes.map((l) => l.querySelector("input")).filter((b): b is HTMLInputElement => !!b?.checked).map((b) => b.value),
        resourceId: resource.value.trim(),
        createdAfter: fromLocalInput(after.value),
        createdBefore: fromLocalInput(before.value),
        pageSize: size.value,
      }),
    );
  });

  const tableSlot = h("div", { class: "table-slot", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const pager = h("nav", { class: "pager", "aria-label": "pages" });
  const status = h("span", { class: "live muted" });
  const element = h(
    "section",
    { class: "page runs-page" },
    h("div", { class: "page-head" }, h("h1", null, "Runs"), status),
    form,
    tableSlot,
    pager,
  );

  let lastRendered = "";
  const load = async (): Promise<void> => {
    const started = performance.now();
    let page: ListRunsResponse;
    try {
      page = await get<ListRunsResponse>("/v1/runs", apiQuery(filters));
    } catch (err) {
      replace(tableSlot, h("p", { class: "form-error", role: "alert" }, err instanceof ApiError ? err.message : String(err)));
      status.textContent = "";
      return;
    }
    const took = Math.round(performance.now() - started);
    const runs = page.runs ?? [];
    const signature = JSON.stringify(page);
    status.textContent = `live · ${runs.length} shown · ${took} ms`;
    status.setAttribute("data-ms", String(took));
    if (signature === lastRendered) return;
    lastRendered = signature;
    replace(
      tableSlot,
      runs.length
        ? runsTable(runs)
        : h("p", { class: "empty" }, filters.pageToken ? "No more runs." : "No runs match these filters."),
    );
    replace(
      pager,
      filters.pageToken ? h("a", { href: filtersUrl({ ...filters, pageToken: "" }), class: "button" }, "← Newest") : null,
      page.nextPageToken
        ? h("a", { href: filtersUrl({ ...filters, pageToken: page.nextPageToken }), class: "button", rel: "next" }, "Older →")
        : null,
    );
  };
  void load();
  void get<{ workflows?: WorkflowInfo[] }>("/v1/workflows").then((answer) => {
    for (const wf of answer.workflows ?? []) {
      if (wf.id && wf.id !== filters.workflowId) workflowSelect.appendChild(h("option", { value: wf.id }, wf.id));
    }
  }, () => undefined);
  const stop = every(REFRESH_MS, load);
  return { element, dispose: stop };
}
