"""RELIABILITY.md: one section per suite, each replaced by the latest run of that suite (the
others are kept as they are), between `<!-- section:NAME -->` markers."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from . import flows, known
from .scenarios import ChaosReport, Common, LoadReport, SoakReport
from .stats import Latency
from .traffic import MIX, MODES
from .verify import Verdict

ORDER = ("load", "soak", "chaos")
TITLE = "# Reliability\n"
PREAMBLE = """
What the reliability suites (`reliability/`) found the last time each ran. Regenerate with
one command from the repository root, after
`bash scripts/bootstrap.sh dev && source .venv/bin/activate`:

```bash
python -m reliability all        # or: load | soak | chaos; --help lists the scale flags
```

Each suite starts its own `redis-server` (append-only file, fsync every second) and
`stepline serve` replicas (`--workflows reliability.flows`) on loopback, drives them through
the typed Python client, stops every process by pid, and checks every run against the store
itself: the run's snapshot and its raw event log in Redis (exactly one terminal finish, dense
sequences, each step's result recorded once, listed in the indexes) and against what its caller
saw. The quick variants run in CI as `tests/test_reliability_quick.py`; they assert
correctness, never timings.

Runs mix four workflows (`reliability/flows.py`), so every run has one expected final status:
`rel_ok` (success), `rel_fail` (failed, non-retryable), `rel_approval` (suspends, is resumed
once, succeeds) and `rel_cancel` (canceled while it waits). Callers drive them by `Start`,
`StartAsync` + `GetExecutionResult`, or `Stream` (+ `Watch` after a break), in turn; every run
has a caller-chosen `run_id` and a `request_id`, so a start retried after `UNAVAILABLE` or a
deadline returns the same run. The typed client retries nothing unary by itself (it only
resumes a broken `Watch`/`Stream` from its last sequence, five times), so the callers retry
`UNAVAILABLE` / `DEADLINE_EXCEEDED` with jittered backoff, spread over the replicas by one
round-robin channel — as an application behind a load balancer would.
"""


def _mark(held: bool) -> str:
    return "held" if held else "**FAILED**"


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _latency_rows(rows: dict[str, Latency], label: str) -> list[str]:
    lines = [f"| {label} | count | p50 | p99 | max |", "|---|---:|---:|---:|---:|"]
    for name, latency in rows.items():
        if latency.count:
            lines.append(
                f"| {name} | {latency.count:,} | {_seconds(latency.p50)} | "
                f"{_seconds(latency.p99)} | {_seconds(latency.max)} |"
            )
    return lines


def _machine() -> str:
    redis = shutil.which("redis-server")
    version = ""
    if redis:
        done = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False)
        found = re.search(r"v=([\d.]+)", done.stdout)
        version = f", redis-server {found.group(1)}" if found else ""
    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}{version}, "
        f"{platform.system()} {platform.release()}"
    )


def _header(name: str, command: str, held: bool, common: Common) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        f"## {name} — {_mark(held)}",
        "",
        f"`{command}` — finished {when}, {_machine()}; load generator, replicas and Redis share "
        f"the machine (1-minute load average {common.load_before:.1f} when the suite began).",
        "",
    ]


def _verdict_lines(verdict: Verdict, common: Common) -> list[str]:
    lines = [
        "| figure | value |",
        "|---|---:|",
        f"| runs started | {verdict.runs:,} |",
        f"| reached their expected final status | {verdict.completed - verdict.wrong:,} |",
        f"| lost (missing, or never finished) | {verdict.lost:,} |",
        f"| duplicated (second finish, pass or step result) | {verdict.duplicated:,} |",
        f"| wrong (status, result, log or index) | {verdict.wrong:,} |",
        f"| caller's view differs from the store | {verdict.caller_mismatch:,} |",
        f"| runs in the store no caller started | {verdict.extra_runs:,} |",
        f"| recovery passes (`restart` starts in logs) | {verdict.recovered_passes:,} |",
        f"| wall time of the traffic | {common.seconds:.1f} s |",
        f"| throughput (finished runs / wall time) | {common.throughput:.1f} runs/s |",
        f"| retried calls | {sum(common.retries.values()):,} |",
    ]
    return lines


def _checks(verdict: Verdict, extra: Iterable[tuple[str, bool, str]] = ()) -> list[str]:
    items = [
        (
            "every run reached its expected final status exactly once",
            verdict.lost == 0 and verdict.duplicated == 0 and verdict.wrong == 0,
            f"{verdict.completed:,} of {verdict.runs:,} finished; {verdict.lost} lost, "
            f"{verdict.duplicated} duplicated, {verdict.wrong} wrong",
        ),
        (
            "every caller's view matches the store",
            verdict.caller_mismatch == 0,
            f"{verdict.caller_mismatch} mismatches",
        ),
        ("no run in the store that no caller started", verdict.extra_runs == 0, ""),
        *extra,
    ]
    lines = ["What held:", ""]
    for name, held, detail in items:
        lines.append(f"- {_mark(held)}: {name}" + (f" ({detail})" if detail else ""))
    return [*lines, ""]


def _tail(common: Common) -> list[str]:
    verdict = common.verdict
    lines = ["", *_latency_rows(common.run_latency, "run latency (first call → final status)")]
    lines += ["", *_latency_rows(common.call_latency, "call latency (successful attempt)")]
    statuses = ", ".join(f"{name}: {count:,}" for name, count in sorted(verdict.statuses.items()))
    lines += ["", f"Final statuses in the store: {statuses or 'none'}."]
    if common.retries:
        retried = ", ".join(f"{k} x{v:,}" for k, v in sorted(common.retries.items()))
        lines.append(f"Retries: {retried}.")
    if verdict.resumes_found_claimed:
        lines.append(
            f"Resumes retried after a lost reply that found the run already claimed (by that "
            f"same caller's earlier attempt; counted as one resume): "
            f"{verdict.resumes_found_claimed}."
        )
    if common.unexpected:
        unexpected = ", ".join(f"{k} x{v}" for k, v in sorted(common.unexpected.items()))
        lines.append(f"Unexpected errors at callers: {unexpected}.")
    redis = common.redis_end
    if redis:
        lines.append(
            f"Redis at the end: {redis['keys']:,.0f} keys, used_memory "
            f"{redis['used_memory'] / 2**20:.1f} MiB, {redis['connected_clients']:.0f} clients."
        )
    if common.logs:
        logs = ", ".join(f"{k}: {v}" for k, v in common.logs.items())
        lines.append(f"Replica logs: {logs}.")
    if common.log_errors:
        lines += ["", "First ERROR lines in the replicas' logs:", ""]
        lines += [f"- `{error}`" for error in common.log_errors]
        lines.append("")
    if common.server_flags:
        lines.append(f"Extra server flags: `{' '.join(common.server_flags)}`.")
    if verdict.flagged:
        causes = Counter(
            f"{flag.kind} / {bug.key if (bug := known.cause(flag)) else 'unexplained'}"
            for flag in verdict.flagged
        )
        listed = ", ".join(f"{key}: {count}" for key, count in sorted(causes.items()))
        lines.append(f"Flagged runs by kind and cause (bugs listed above): {listed}.")
    for kind, samples in verdict.problems.items():
        lines += ["", f"Problems ({kind}, first {len(samples)}):", ""]
        lines += [f"- `{sample}`" for sample in samples]
    return [*lines, ""]


def _mix() -> str:
    shares = {wf: MIX.count(wf) * 100 // len(MIX) for wf in flows.WORKFLOWS}
    return ", ".join(f"{shares[wf]}% `{wf}`" for wf in flows.WORKFLOWS)


def render_load(report: LoadReport, command: str) -> str:
    c, common = report.config, report.common
    lines = _header("Load", command, common.verdict.clean, common)
    lines += [
        f"{c.runs:,} runs from {c.callers} concurrent callers (each takes the next run when "
        f"its last one is done) over {c.replicas} replicas sharing one redis-server. Mix: "
        f"{_mix()}; modes {', '.join(MODES)} in turn. Steps sleep {c.delay_ms} ms.",
        "",
        *_checks(common.verdict),
        *_verdict_lines(common.verdict, common),
        *_tail(common),
    ]
    return "\n".join(lines)


def render_soak(report: SoakReport, command: str) -> str:
    c, common = report.config, report.common
    held = common.verdict.clean and report.bounded and not report.watch_problems
    lines = _header("Soak", command, held, common)
    retention = (
        f"with `--run-retention {report.retention:g}`"
        if report.retention is not None
        else "without retention (this server has no `--run-retention` flag yet: finished runs "
        "are kept until deleted)"
    )
    ops = ", ".join(f"{k} x{v:,}" for k, v in sorted(report.operations.items()))
    lines += [
        f"{c.seconds:.0f} s of mixed traffic at up to {c.rate:g} operations/s from "
        f"{c.callers} callers over {c.replicas} replicas, {retention}: starts (unary, async, "
        f"stream), suspend/resume, cancel, Watch replays of finished runs, ListRuns (3 pages). "
        f"Sampled every {c.sample_every:g} s: RSS, open fds and threads of each replica "
        "process (psutil), Redis DBSIZE, used_memory, RSS and connected clients, and the "
        "replicas' `/metrics` gauges; finished runs are checked against the store within "
        "seconds of finishing.",
        "",
        f"Operations: {ops}.",
        "",
        *_checks(
            common.verdict,
            [
                (
                    "Watch replays of finished runs are whole and dense",
                    not report.watch_problems,
                    f"{len(report.watch_problems)} problems",
                ),
                *((check.name, check.held, check.detail) for check in report.checks),
            ],
        ),
        "| quantity | first | min | max | last | slope after warm-up | last quarter minus 2nd |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.series:
        lines.append(
            f"| {s.name} ({s.unit}) | {s.first:,.1f} | {s.min:,.1f} | {s.max:,.1f} | "
            f"{s.last:,.1f} | {s.slope_per_min:+,.2f}/min | {s.late_growth:+,.1f} |"
        )
    if report.drained is not None:
        d = report.drained
        lines += [
            "",
            f"After the traffic stopped and the replicas went idle: replica RSS "
            f"{sum(d.rss) / 2**20:.0f} MiB, fds {sum(d.fds)}, threads {sum(d.threads)}; Redis "
            f"{d.redis['keys']:,.0f} keys, {d.redis['used_memory'] / 2**20:.1f} MiB, "
            f"{d.redis['connected_clients']:.0f} clients.",
        ]
    lines += [
        "",
        "Asyncio task count: not sampled. `/metrics` has no task gauge (only "
        "`stepline_active_runs`, `stepline_held_leases`, `stepline_queue_depth`, "
        "`stepline_store_up` and counters), and the suite does not change the server; open fds, "
        "threads, Redis connections and the run gauges stand in for it.",
    ]
    if report.watch_problems:
        lines += ["", "Watch problems:", ""] + [f"- `{p}`" for p in report.watch_problems[:20]]
    lines += ["", *_verdict_lines(common.verdict, common)]
    lines += _tail(common)
    return "\n".join(lines)


def render_chaos(report: ChaosReport, command: str) -> str:
    c, common = report.config, report.common
    lines = _header("Chaos", command, common.verdict.clean, common)
    lines += [
        f"{c.seconds:.0f} s of traffic from {c.callers} callers over {c.replicas} replicas "
        f"(steps sleep {c.delay_ms} ms, so runs are mid-flight) while: a random replica is "
        f"SIGKILLed every {c.kill_every:g} s and restarted on its port after up to "
        f"{c.max_down:g} s; Redis is paused (`CLIENT PAUSE {c.pause_ms} ALL`) every "
        f"{c.pause_every:g} s; redis-server is restarted (SIGTERM, then started again on its "
        f"port and directory, reloading its append-only file) {c.redis_restarts} time(s). "
        "Then every run must finish correctly.",
        "",
        f"Faults: {report.count('kill')} replica kills, {report.count('pause')} Redis pauses, "
        f"{report.count('redis')} Redis restarts. Afterwards the work queue's consumer group "
        f"has {report.queue_consumers} consumers ({report.replica_starts} replica processes "
        f"were started) and {report.queue_pending} entries delivered but not acknowledged.",
        "",
        *_checks(common.verdict),
        *_verdict_lines(common.verdict, common),
        "",
        "| at (s) | fault | took (s) |",
        "|---:|---|---:|",
        *(f"| {f.at:.1f} | {f.detail} | {f.took:.1f} |" for f in report.faults),
        *_tail(common),
    ]
    return "\n".join(lines)


def _bugs() -> str:
    lines = ["## Server bugs these suites found", ""]
    for bug in known.KNOWN:
        state = "open" if bug.open else "fixed"
        lines += [
            f"- **{bug.title}** ({state}; `{bug.key}`; reproduction: "
            f"`tests/test_reliability_quick.py::{bug.repro}`). {bug.detail}",
        ]
    return "\n".join(lines) + "\n"


def write(path: Path, sections: dict[str, str]) -> None:
    """Replace the named sections of `path` (creating it), keeping every other section."""
    existing = path.read_text() if path.exists() else ""
    kept: dict[str, str] = {}
    for name in ORDER:
        found = re.search(
            rf"<!-- section:{name} -->\n(.*?)<!-- /section:{name} -->", existing, re.DOTALL
        )
        if found:
            kept[name] = found.group(1).rstrip("\n")
    kept.update({name: body.rstrip("\n") for name, body in sections.items()})
    parts = [TITLE, PREAMBLE, _bugs()]
    for name in ORDER:
        body = kept.get(name, f"## {name.title()}\n\nNot run yet.")
        parts.append(f"<!-- section:{name} -->\n{body}\n<!-- /section:{name} -->\n")
    path.write_text("\n".join(parts))
