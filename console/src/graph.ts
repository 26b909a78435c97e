// Draws a workflow's graph (WorkflowInfo.graph, docs/graph.md) as SVG: the chain top to
// bottom, the children of parallel and conditional entries side by side, loops and foreach
// as frames around their step, nested workflows as nodes that expand into their own graph.

import { s } from "./dom";
import type { Json } from "./types";
import { isObject } from "./types";

const NODE_W = 188;
const NODE_H = 46;
const GAP_Y = 28;
const GAP_X = 16;
const PAD = 10;
const HEADER = 22;

type Entry = { [key: string]: Json };

interface Box {
  w: number;
  h: number;
  draw(parent: SVGGElement, x: number, y: number): void;
}

export interface GraphNode {
  // The step's id as RunResult.steps and events name it ("child.step" inside a nested workflow).
  id: string;
  kind: string;
  el: SVGGElement;
  sub: SVGTextElement;
}

export interface GraphOptions {
  // Nested workflow nodes (by full id) that are drawn expanded.
  expanded: Set<string>;
  toggle(id: string): void;
  select(id: string): void;
}

export interface GraphView {
  svg: SVGSVGElement;
  nodes: Map<string, GraphNode>;
  // Foreach frames' progress labels, by the full id of the step they iterate.
  progress: Map<string, SVGTextElement>;
}

export interface NodeState {
  status: string;
  detail?: string;
}

function str(value: Json | undefined, fallback = ""): string {
  return typeof value === "string" ? value : fallback;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

class Builder {
  readonly nodes = new Map<string, GraphNode>();
  readonly progress = new Map<string, SVGTextElement>();

  constructor(private readonly options: GraphOptions) {}

  chain(entries: Json[], prefix: string): Box {
    const boxes = entries.filter(isObject).map((e) => this.entry(e, prefix)).filter((b): b is Box => b !== null);
    const w = Math.max(NODE_W, ...boxes.map((b) => b.w));
    const h = boxes.reduce((sum, b) => sum + b.h, 0) + GAP_Y * Math.max(0, boxes.length - 1);
    return {
      w,
      h,
      draw(parent, x, y) {
        const cx = x + w / 2;
        let top = y;
        boxes.forEach((box, index) => {
          if (index > 0) {
            parent.appendChild(
              s("line", { class: "edge", x1: cx, y1: top - GAP_Y, x2: cx, y2: top - 3, "marker-end": "url(#arrow)" }),
            );
          }
          box.draw(parent, cx - box.w / 2, top);
          top += box.h + GAP_Y;
        });
      },
    };
  }

  entry(entry: Entry, prefix: string): Box | null {
    const type = str(entry["type"]);
    switch (type) {
      case "step": {
        const info = isObject(entry["step"]) ? entry["step"] : {};
        const id = str(info["id"], "?");
        return this.node(prefix + id, id, info["can_suspend"] === true ? "step · can suspend" : "step", str(info["description"]));
      }
      case "mapping":
        return this.node(prefix + str(entry["id"], "map"), str(entry["id"], "map"), "map", "");
      case "sleep":
        return this.node(prefix + str(entry["id"]), str(entry["id"], "sleep"), `sleep ${String(entry["seconds"] ?? "")} s`, "");
      case "sleep_until":
        return this.node(prefix + str(entry["id"]), str(entry["id"], "sleep"), "sleep until", "");
      case "workflow":
        return this.workflow(entry, prefix);
      case "parallel":
      case "conditional": {
        const children = Array.isArray(entry["steps"]) ? entry["steps"] : [];
        const boxes = children.filter(isObject).map((c) => this.entry(c, prefix)).filter((b): b is Box => b !== null);
        return this.frame(type === "parallel" ? "parallel" : "branch", `frame-${type}`, this.row(boxes));
      }
      case "loop": {
        const inner = isObject(entry["step"]) ? this.entry(entry["step"], prefix) : null;
        return inner ? this.frame(str(entry["loop_type"], "loop"), "frame-loop", inner) : null;
      }
      case "foreach": {
        const innerEntry = isObject(entry["step"]) ? entry["step"] : null;
        const inner = innerEntry ? this.entry(innerEntry, prefix) : null;
        if (!innerEntry || !inner) return null;
        const innerId = prefix + entryId(innerEntry);
        const concurrency = entry["concurrency"];
        const label = `foreach${typeof concurrency === "number" && concurrency > 1 ? ` ×${concurrency}` : ""}`;
        return this.frame(label, "frame-foreach", inner, innerId);
      }
      default:
        return null; // later versions may add entry types: ignore the ones we don't know
    }
  }

  row(boxes: Box[]): Box {
    const w = boxes.reduce((sum, b) => sum + b.w, 0) + GAP_X * Math.max(0, boxes.length - 1);
    const h = Math.max(0, ...boxes.map((b) => b.h));
    return {
      w,
      h,
      draw(parent, x, y) {
        let left = x;
        for (const box of boxes) {
          box.draw(parent, left, y);
          left += box.w + GAP_X;
        }
      },
    };
  }

  frame(label: string, cls: string, inner: Box, progressOf?: string): Box {
    const w = inner.w + 2 * PAD;
    const h = inner.h + HEADER + PAD;
    const progress = this.progress;
    return {
      w,
      h,
      draw(parent, x, y) {
        const g = s("g", { class: `frame ${cls}` });
        g.appendChild(s("rect", { x, y, width: w, height: h, rx: 8 }));
        g.appendChild(s("text", { class: "frame-label", x: x + PAD, y: y + 15 }, label));
        if (progressOf) {
          const text = s("text", { class: "frame-progress", x: x + w - PAD, y: y + 15, "text-anchor": "end" });
          progress.set(progressOf, text);
          g.appendChild(text);
        }
        parent.appendChild(g);
        inner.draw(parent, x + PAD, y + HEADER);
      },
    };
  }

  workflow(entry: Entry, prefix: string): Box {
    const id = str(entry["id"], "?");
    const full = prefix + id;
    const nested = Array.isArray(entry["graph"]) ? entry["graph"] : [];
    const options = this.options;
    if (!options.expanded.has(full) || !nested.length) {
      return this.node(full, id, nested.length ? "workflow ▸ expand" : "workflow", str(entry["description"]), true);
    }
    const inner = this.chain(nested, `${full}.`);
    const node = this.node(full, id, "workflow ▾ collapse", str(entry["description"]), true);
    const w = Math.max(inner.w, NODE_W) + 2 * PAD;
    const h = NODE_H + GAP_Y / 2 + inner.h + PAD;
    return {
      w,
      h,
      draw(parent, x, y) {
        parent.appendChild(s("rect", { class: "frame frame-workflow", x, y, width: w, height: h, rx: 10 }));
        node.draw(parent, x + (w - NODE_W) / 2, y);
        inner.draw(parent, x + (w - inner.w) / 2, y + NODE_H + GAP_Y / 2);
      },
    };
  }

  node(id: string, label: string, kind: string, description: string, nested = false): Box {
    const nodes = this.nodes;
    const options = this.options;
    return {
      w: NODE_W,
      h: NODE_H,
      draw(parent, x, y) {
        const sub = s("text", { class: "node-sub", x: x + 12, y: y + 35 }, kind);
        const g = s(
          "g",
          { class: "node", tabindex: 0, role: "button", "data-step": id, "aria-label": `${kind} ${id}` },
          s("title", null, description ? `${id}: ${description}` : id),
          s("rect", { x, y, width: NODE_W, height: NODE_H, rx: 7 }),
          s("text", { class: "node-label", x: x + 12, y: y + 19 }, clip(label, 24)),
          sub,
        );
        // Click or Enter selects; shift-click or Space expands a nested workflow.
        g.addEventListener("click", (event) => {
          if (nested && event.shiftKey) options.toggle(id);
          else options.select(id);
        });
        g.addEventListener("keydown", (event) => {
          if (event.key === "Enter") options.select(id);
          else if (event.key === " " && nested) options.toggle(id);
          else return;
          event.preventDefault();
        });
        if (nested) {
          // The ▸/▾ hint is clickable on its own.
          sub.classList.add("toggle");
          sub.addEventListener("click", (event) => {
            event.stopPropagation();
            options.toggle(id);
          });
        }
        nodes.set(id, { id, kind, el: g, sub });
        parent.appendChild(g);
      },
    };
  }
}

/** The id a graph entry's step is addressed by (for foreach progress). */
export function entryId(entry: Entry): string {
  if (str(entry["type"]) === "step" && isObject(entry["step"])) return str(entry["step"]["id"]);
  if (isObject(entry["step"])) return entryId(entry["step"]);
  return str(entry["id"]);
}

/** Top-level entries' ids, in order (for continuing a paused run step by step). */
export function topLevelIds(graph: Json[]): string[][] {
  return graph.filter(isObject).map((entry) => {
    const type = str(entry["type"]);
    if (type === "parallel" || type === "conditional") {
      const children = Array.isArray(entry["steps"]) ? entry["steps"] : [];
      return children.filter(isObject).map(entryId);
    }
    return [entryId(entry)];
  });
}

export function drawGraph(graph: Json[], options: GraphOptions): GraphView {
  const builder = new Builder(options);
  const box = builder.chain(graph, "");
  const margin = 8;
  const width = box.w + 2 * margin;
  const height = box.h + 2 * margin;
  const svg = s("svg", {
    class: "graph",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "group",
    "aria-label": "workflow graph",
  });
  svg.appendChild(
    s(
      "defs",
      null,
      s(
        "marker",
        { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }),
      ),
    ),
  );
  const root = s("g");
  svg.appendChild(root);
  box.draw(root, margin, margin);
  return { svg, nodes: builder.nodes, progress: builder.progress };
}

/** Colour each node by its step's status; steps without a record are shown as not run. */
export function paint(view: GraphView, states: Map<string, NodeState>, progress: Map<string, string>, selected: string | null): void {
  for (const node of view.nodes.values()) {
    const state = states.get(node.id);
    const status = state?.status ?? "none";
    node.el.setAttribute("class", `node st-${status}${node.id === selected ? " selected" : ""}`);
    node.el.setAttribute("data-status", status);
    const kind = node.kind.startsWith("workflow ") ? node.kind.replace(/ (expand|collapse)$/, "") : node.kind.split(" ")[0];
    node.sub.textContent = state ? `${kind} · ${status}${state.detail ? ` · ${state.detail}` : ""}` : node.kind;
    node.el.setAttribute("aria-label", `${node.kind} ${node.id}: ${status === "none" ? "not run" : status}`);
  }
  for (const [id, text] of view.progress) text.textContent = progress.get(id) ?? "";
}
