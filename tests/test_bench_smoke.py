"""Smoke test of the benchmark harness: `bench/run.py --quick` starts its own redis-server and
`stepline serve`, drives W1, W3, W8 and W9 (at tiny sizes) from a separate process, and ends
with one JSON line whose counts match what it was asked to run. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import REPO_ROOT, environment, redis_binary


def quick_bench(*flags: str) -> subprocess.CompletedProcess[str]:
    redis_binary()  # skips without redis-server
    return subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--no-mastra", "--deadline", "50", *flags],
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_quick_bench_reports_every_run() -> None:
    # Few calls in flight: this checks the harness, not the server under load.
    done = quick_bench("--workloads", "W1,W3,W8,W9", "--concurrency", "16")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "W1 Start, sequential, p50" in done.stdout  # the table came first

    config = report["config"]
    assert config["workloads"] == ["W1", "W3", "W8", "W9"]
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

    short, long = config["w8_steps"]
    assert figures[f"W8.chain{short}_runs"]["median"] == config["w8_runs"]
    assert figures[f"W8.chain{long}_runs"]["median"] == config["w8_long_runs"]
    for key in (f"chain{short}_per_step_us", f"chain{long}_per_step_us"):
        assert figures[f"W8.{key}"]["median"] > 0, key
    assert f"W8.chain{long}_vs_chain{short}" in figures
    assert f"W8 chain of {long} steps, per step" in done.stdout

    small, large = config["w9_sizes"]
    for size in (small, large):
        assert figures[f"W9.n{size}_items"]["median"] == size  # every output came back right
        assert figures[f"W9.n{size}_over_limit"]["median"] == 0
        assert figures[f"W9.n{size}_per_item_us"]["median"] > 0
        assert figures[f"W9.n{size}_result_bytes"]["median"] > 0
        assert figures[f"W9.n{size}_rss_peak_mb"]["median"] > 0  # the server's
    assert f"W9.n{large}_vs_n{small}" in figures
    assert f"W9 foreach {large} items, per item" in done.stdout


def test_a_foreach_over_its_time_limit_is_reported_and_larger_sizes_are_skipped() -> None:
    done = quick_bench("--workloads", "W9", "--w9-sizes", "10,20", "--w9-limit", "0.001")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    figures = report["engines"]["stepline"]
    assert figures["W9.n10_over_limit"]["median"] == 1
    assert figures["W9.n20_not_run"]["median"] == 1
    assert "W9.n10_total_s" not in figures
    assert figures["W9.n10_total_s_above"]["median"] == 0.001
    assert "W9 foreach 10 items, total" in done.stdout
    assert "(not run)" in done.stdout  # the 20-item row shows a bound, not a figure
    assert report["call_errors"] == {"stepline": 0}
