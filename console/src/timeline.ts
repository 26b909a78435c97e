// A waterfall of the run's steps: for each step, the time it waited to start (the queue, or
// the steps before it) against the time it ran, suspended time hatched, attempts counted.

import { duration, h, parseTime, s, shortStatus } from "./dom";
import type { RunResult } from "./types";

const WIDTH = 1000;
const LABEL = 190;
const ROW = 24;
const TOP = 22;

interface Row {
  id: string;
  status: string;
  ready: number;
  start: number;
  runEnd: number;
  suspendEnd: number | null;
  end: number;
  attempts: number;
}

export function timeline(run: RunResult, now: number = Date.now()): HTMLElement {
  const created = parseTime(run.createdAt);
  const rows: Row[] = [];
  for (const [id, step] of Object.entries(run.steps ?? {})) {
    const start = parseTime(step.startedAt);
    if (start === null) continue;
    const status = shortStatus(step.status);
    const ended = parseTime(step.endedAt);
    const suspended = parseTime(step.suspendedAt);
    const resumed = parseTime(step.resumedAt);
    const end = ended ?? (status === "running" || status === "suspended" || status === "waiting" ? now : start);
    rows.push({
      id,
      status,
      ready: start,
      start,
      runEnd: suspended ?? end,
      suspendEnd: suspended === null ? null : (resumed ?? (status === "suspended" ? now : end)),
      end,
      attempts: step.attempts ?? 1,
    });
  }
  if (!rows.length) return h("p", { class: "muted" }, "No step has started yet.");
  rows.sort((a, b) => a.start - b.start || a.id.localeCompare(b.id));
  // A step became ready when the last step that ended before it started ended (or when the
  // run was created): the gap is time spent queued or waiting for a worker.
  const origin = Math.min(created ?? Infinity, ...rows.map((r) => r.start));
  for (const row of rows) {
    const before = rows.filter((r) => r !== row && r.end <= row.start).map((r) => r.end);
    row.ready = before.length ? Math.max(...before) : origin;
  }
  const last = Math.max(...rows.map((r) => r.end), origin + 1);
  const span = last - origin;
  const x = (t: number): number => LABEL + ((t - origin) / span) * (WIDTH - LABEL - 90);
  const height = TOP + rows.length * ROW + 6;
  const svg = s("svg", { class: "timeline", viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "timeline of the run's steps" });
  svg.appendChild(
    s("defs", null, s("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, s("rect", { width: 3, height: 6, class: "hatch" }))),
  );
  for (let i = 0; i <= 4; i++) {
    const t = origin + (span * i) / 4;
    svg.appendChild(s("line", { class: "tick", x1: x(t), x2: x(t), y1: TOP - 6, y2: height }));
    svg.appendChild(s("text", { class: "tick-label", x: x(t), y: 12, "text-anchor": i === 0 ? "start" : "middle" }, i === 0 ? "0" : `+${duration(t - origin)}`));
  }
  rows.forEach((row, index) => {
    const y = TOP + index * ROW;
    const g = s("g", { class: `tl-row st-${row.status}`, "data-step": row.id });
    g.appendChild(s("title", null, `${row.id}: waited ${duration(row.start - row.ready)}, ran ${duration(row.runEnd - row.start)}${row.suspendEnd !== null ? `, suspended ${duration(row.suspendEnd - row.runEnd)}` : ""}${row.attempts > 1 ? `, ${row.attempts} attempts` : ""}`));
    g.appendChild(s("text", { class: "tl-label", x: 4, y: y + 15 }, row.id.length > 26 ? `${row.id.slice(0, 25)}…` : row.id));
    if (row.start > row.ready) {
      g.appendChild(s("rect", { class: "tl-wait", x: x(row.ready), y: y + 7, width: Math.max(1, x(row.start) - x(row.ready)), height: 6, rx: 2 }));
    }
    g.appendChild(s("rect", { class: "tl-run", x: x(row.start), y: y + 3, width: Math.max(2, x(row.runEnd) - x(row.start)), height: 14, rx: 3 }));
    if (row.suspendEnd !== null) {
      g.appendChild(s("rect", { class: "tl-suspended", x: x(row.runEnd), y: y + 3, width: Math.max(2, x(row.suspendEnd) - x(row.runEnd)), height: 14, rx: 3 }));
      if (row.end > row.suspendEnd) {
        g.appendChild(s("rect", { class: "tl-run", x: x(row.suspendEnd), y: y + 3, width: Math.max(2, x(row.end) - x(row.suspendEnd)), height: 14, rx: 3 }));
      }
    }
    const label = `${duration(row.end - row.start)}${row.attempts > 1 ? ` · ×${row.attempts}` : ""}`;
    g.appendChild(s("text", { class: "tl-duration", x: x(row.end) + 6, y: y + 15 }, label));
    svg.appendChild(g);
  });
  const first = rows[0];
  const queued = first ? first.start - origin : 0;
  return h(
    "div",
    { class: "timeline-wrap" },
    h(
      "p",
      { class: "legend" },
      h("span", { class: "key key-wait" }), " waiting / queued ",
      h("span", { class: "key key-run" }), " running ",
      h("span", { class: "key key-suspended" }), " suspended",
      h("span", { class: "muted" }, ` · first step started ${duration(queued)} after the run was created`),
    ),
    svg,
  );
}
