"""Smoke test of the benchmark harness: `bench/run.py --quick` starts its own redis-server and
`stepline serve`, drives W1 and W3 from a separate process, and ends with one JSON line whose
counts match what it was asked to run. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import REPO_ROOT, environment, redis_binary


def test_quick_bench_reports_every_run() -> None:
    redis_binary()  # skips without redis-server
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--no-mastra",
            "--workloads",
            "W1,W3",
            # Few calls in flight: this checks the harness, not the server under load.
            "--concurrency",
            "16",
            "--deadline",
            "50",
        ],
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "W1 Start, sequential, p50" in done.stdout  # the table came first

    config = report["config"]
    assert config["workloads"] == ["W1", "W3"]
    assert report["failures"] == []
    assert report["count_problems"] == []
    assert report["counts_ok"] is True
    assert report["mastra"].startswith("skipped")
    figures = report["engines"]["stepline"]
    assert figures["W1.seq_runs"]["median"] == config["w1_seq_runs"]
    assert figures["W1.conc_runs"]["median"] == config["w1_conc_runs"]
    assert figures["W3.cycles"]["median"] == config["w3_cycles"]
    for key in ("W1.seq_p50_ms", "W1.seq_p99_ms", "W1.conc_runs_per_s", "W3.cycles_per_s"):
        assert figures[key]["median"] > 0, key
    assert not any(key.startswith(("W2.", "W4.", "W5.", "W6.", "W7.")) for key in figures)
    assert report["call_errors"] == {"stepline": 0}
