"""Stepline benchmark: one command, one machine, loopback only.

    python bench/run.py                       # every workload, 3 repetitions, Mastra too
    python bench/run.py --quick --no-mastra   # a seconds-long smoke run
    python bench/run.py --workloads W1,W3 --runs 0.1 --reps 1

For each repetition it starts a private `redis-server` (append-only file, fsync every second)
and `stepline serve --workflows bench.flows` as separate processes, drives them from a third
(bench/driver.py), and stops both by pid. The same workloads then run in-process on
`@mastra/core` 1.71.0 with its in-memory and its LibSQL store (bench/mastra/, installed with npm
into .cache/bench-mastra by npm ci, on Node 22 pinned by bench/node22 when the system Node is
older). It prints a table (median of the repetitions, min..max) and, as the last stdout line,
one JSON object with every figure and the ratio Stepline/Mastra per workload.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = ROOT / ".cache"
MASTRA_SRC = BENCH / "mastra"
MASTRA_CACHE = CACHE / "bench-mastra"
NODE_CACHE = CACHE / "bench-node22"
NODE_SRC = BENCH / "node22"
PROFILE_DIR = CACHE / "bench-profiles"
# py-spy's output formats and the file suffix each is written with.
PROFILE_FORMATS = {"flamegraph": ".svg", "raw": ".txt", "speedscope": ".json"}
NODE_MIN = (22, 13)  # @mastra/core 1.71.0 declares engines.node >= 22.13.0
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9")
# W9 reads the result of its largest foreach: the server may send that much (the driver's
# channel accepts as much, bench/driver.py MAX_MESSAGE_BYTES).
W9_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
W9_NOT_FIGURES = ("_above", "_over_limit", "_over_memory", "_not_run", "limit_s", "rss_cap_mb")
W9_CANCEL_SECONDS = 180  # bench/long_runs.py: cancel, then wait up to 120 s for the run to stop
MASTRA_STORES = ("memory", "libsql")
READY_SECONDS = 30.0
STOP_SECONDS = 15.0

# Counts at --runs 1 (bench/driver.py's Config has the same fields). Scaled by --runs except
# the Watch fan-out, which is 1,000 subscribers by definition.
DEFAULTS: dict[str, Any] = {
    "concurrency": 64,
    "w1_seq_runs": 2000,
    "w1_seq_warmup": 200,
    "w1_conc_runs": 10000,
    "w1_conc_warmup": 1000,
    "w2_runs": 20000,
    "w3_cycles": 5000,
    "w3_warmup": 500,
    "w4_stream_runs": 500,
    "w4_stream_warmup": 50,
    "w4_subscribers": 1000,
    "w4_tick_delay": 0.02,
    "w4_hold": 1.0,
    "w5_runs": 50,
    "w5_warmup": 5,
    "w7_runs": 100000,
    "populate_concurrency": 256,
    "w8_steps": [10, 1000],
    "w8_runs": 50,
    "w8_warmup": 5,
    "w8_long_runs": 3,
    "w9_sizes": [1000, 10000, 100000],
    "w9_limit": 600.0,
    "w9_rss_cap_mb": 6144.0,
}
QUICK: dict[str, Any] = {
    "w1_seq_runs": 40,
    "w1_seq_warmup": 5,
    "w1_conc_runs": 200,
    "w1_conc_warmup": 20,
    "w2_runs": 200,
    "w3_cycles": 100,
    "w3_warmup": 10,
    "w4_stream_runs": 10,
    "w4_stream_warmup": 2,
    "w4_subscribers": 50,
    "w4_tick_delay": 0.005,
    "w4_hold": 0.3,
    "w5_runs": 3,
    "w5_warmup": 1,
    "w7_runs": 300,
    "populate_concurrency": 64,
    "w8_steps": [10, 50],
    "w8_runs": 5,
    "w8_warmup": 1,
    "w8_long_runs": 1,
    "w9_sizes": [20, 100],
}
SCALED = (
    "w1_seq_runs",
    "w1_seq_warmup",
    "w1_conc_runs",
    "w1_conc_warmup",
    "w2_runs",
    "w3_cycles",
    "w3_warmup",
    "w4_stream_runs",
    "w4_stream_warmup",
    "w5_runs",
    "w5_warmup",
    "w7_runs",
    "w8_runs",
    "w8_warmup",
    "w8_long_runs",
)
# (metric, config field it must equal): a run that lost or failed work shows here.
COUNTS = (
    ("W1.seq_runs", "w1_seq_runs"),
    ("W1.conc_runs", "w1_conc_runs"),
    ("W2.accepted", "w2_runs"),
    ("W2.finished", "w2_runs"),
    ("W3.cycles", "w3_cycles"),
    ("W4.streams", "w4_stream_runs"),
    ("W4.watch_complete", "w4_subscribers"),
    ("W5.runs", "w5_runs"),
    ("W6.seq_runs", "w1_seq_runs"),
    ("W6.conc_runs", "w1_conc_runs"),
    ("W7.runs", "w7_runs"),
)


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric, which way is better, and the issue's target."""

    key: str
    label: str
    unit: str
    better: str  # "higher" | "lower" | "" (a count)
    target: str = ""
    at_most: float | None = None  # the target, when it is "the median is at most this"


ROWS = (
    Row("W1.seq_p50_ms", "W1 Start, sequential, p50", "ms", "lower", "<= 1.5"),
    Row("W1.seq_p99_ms", "W1 Start, sequential, p99", "ms", "lower"),
    Row("W1.conc_runs_per_s", "W1 Start, 64 in flight", "runs/s", "higher", ">= 2x LibSQL"),
    Row("W2.accepted_per_s", "W2 StartAsync accepted", "runs/s", "higher", ">= 2500"),
    Row("W2.drain_s", "W2 drain the backlog (first submit → last done)", "s", "lower"),
    Row("W2.drain_runs_per_s", "W2 drain rate", "runs/s", "higher"),
    Row(
        "W3.cycles_per_s",
        "W3 start→suspend→resume, 64 in flight",
        "cycles/s",
        "higher",
        ">= 2x LibSQL",
    ),
    Row("W3.cycle_p50_ms", "W3 cycle p50", "ms", "lower"),
    Row("W4.first_event_p50_ms", "W4 Stream first event p50", "ms", "lower", "<= 1.5"),
    Row("W4.first_event_p99_ms", "W4 Stream first event p99", "ms", "lower"),
    Row("W4.finish_p50_ms", "W4 Stream finish p50", "ms", "lower"),
    Row("W4.finish_p99_ms", "W4 Stream finish p99", "ms", "lower"),
    Row("W4.watch_complete", "W4 Watch subscribers with every event", "subs", "", "= all"),
    Row("W4.watch_lost_events", "W4 Watch events lost (all subscribers)", "events", "", "= 0"),
    Row("W4.watch_duplicate_events", "W4 Watch events duplicated", "events", "", "= 0"),
    Row("W4.watch_failed_streams", "W4 Watch streams ended by an error", "subs", "", "= 0"),
    Row("W4.watch_finish_spread_ms", "W4 Watch finish spread (first→last sub)", "ms", "lower"),
    Row("W5.per_step_us", "W5 100-step run, per step (p50/100)", "us", "lower", "<= 250"),
    Row("W5.run_p50_ms", "W5 100-step run p50", "ms", "lower"),
    Row("W6.seq_p50_ms", "W6 = W1 after W7 stored its runs: seq p50", "ms", "lower", "<= 1.1x W1"),
    Row(
        "W6.conc_runs_per_s",
        "W6 = W1 after W7 stored its runs: 64 in flight",
        "runs/s",
        "higher",
        ">= 0.9x W1",
    ),
    Row("W6.stored_runs", "W6 finished runs stored before it", "runs", ""),
    Row("W7.rss_growth_mb", "W7 server RSS growth over the runs", "MB", "lower", "< 50"),
    Row("W7.store_bytes_per_run", "W7 store bytes per finished run", "B", "lower", "<= 1536"),
    Row("W7.aof_bytes_per_run", "W7 Redis AOF bytes per run (no rewrite)", "B", "lower"),
    Row("W7.populate_runs_per_s", "W7 populate rate", "runs/s", "higher"),
)


def scale_rows(config: dict[str, Any]) -> list[Row]:
    """W8 and W9 rows for the chain lengths and foreach sizes this run used."""
    rows: list[Row] = []
    workloads = config.get("workloads") or []
    steps = sorted(config.get("w8_steps") or []) if "W8" in workloads else []
    for n in steps:
        rows.append(
            Row(f"W8.chain{n}_per_step_us", f"W8 chain of {n:,} steps, per step", "us", "lower")
        )
    for n in steps[1:]:
        last = n == steps[-1]
        rows.append(
            Row(
                f"W8.chain{n}_vs_chain{steps[0]}",
                f"W8 per step: {n:,} steps / {steps[0]:,} steps",
                "x",
                "lower",
                "<= 1.2" if last else "",
                1.2 if last else None,
            )
        )
    sizes = sorted(config.get("w9_sizes") or []) if "W9" in workloads else []
    for n in sizes:
        big = n == 100_000
        rows += [
            Row(f"W9.n{n}_per_item_us", f"W9 foreach {n:,} items, per item", "us", "lower"),
            Row(
                f"W9.n{n}_total_s",
                f"W9 foreach {n:,} items, total",
                "s",
                "lower",
                "< 60" if big else "",
                60.0 if big else None,
            ),
            Row(f"W9.n{n}_result_bytes", f"W9 foreach {n:,} items, result size", "B", "lower"),
            Row(f"W9.n{n}_result_read_ms", f"W9 foreach {n:,} items, result read", "ms", "lower"),
            Row(f"W9.n{n}_rss_peak_mb", f"W9 foreach {n:,} items, peak RSS", "MB", "lower"),
        ]
    for n in sizes[1:]:
        last = n == sizes[-1]
        rows.append(
            Row(
                f"W9.n{n}_vs_n{sizes[0]}",
                f"W9 per item: {n:,} items / {sizes[0]:,} items",
                "x",
                "lower",
                "<= 1.3" if last else "",
                1.3 if last else None,
            )
        )
    return rows


def expected_counts(config: dict[str, Any]) -> list[tuple[str, int]]:
    """(metric, the count it must equal): COUNTS, W8's runs per chain, W9's items per size."""
    out = [(key, int(config[field])) for key, field in COUNTS if field in config]
    for index, n in enumerate(sorted(config.get("w8_steps") or [])):
        out.append((f"W8.chain{n}_runs", config["w8_runs" if index == 0 else "w8_long_runs"]))
    out += [(f"W9.n{n}_items", n) for n in config.get("w9_sizes") or []]
    return out


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes] | None, pid: int | None = None) -> None:
    """SIGTERM `pid` (default: the process's own) and wait; SIGKILL after STOP_SECONDS."""
    if process is None or process.poll() is not None:
        return
    target = pid if pid is not None else process.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(target, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
        if target != process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def environment(**extra: str) -> dict[str, str]:
    """This environment without STEPLINE_* settings, with the repo root importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: redis-server is not on PATH (apt-get install redis-server)")
    for _attempt in range(3):  # a probed free port can be taken before redis binds it
        port = free_port()
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if _redis_ping(port):
                return process, port
            time.sleep(0.05)
        stop(process)
    raise SystemExit(f"bench: redis-server did not start; see {workdir / 'redis.log'}")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _venv_path() -> str:
    """PATH with this interpreter's bin directory first (the venv's scripts, not activated)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def stepline_command() -> list[str]:
    script = shutil.which("stepline", path=_venv_path())
    return [script] if script else [sys.executable, "-m", "stepline.server.cli"]


def healthy(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    pid: int  # the stepline process itself (under --profile, py-spy's child)
    target: str
    log_path: Path


def start_server(
    workdir: Path, redis_port: int, extra: list[str], profile_to: Path | None
) -> Server:
    for attempt in range(3):
        port = free_port()
        command = [
            *stepline_command(),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
            "--workflows", "bench.flows",
            *extra,
        ]  # fmt: skip
        if profile_to is not None:
            spy = shutil.which("py-spy", path=_venv_path())
            if spy is None:
                raise SystemExit("bench: --profile needs py-spy: bash scripts/bootstrap.sh dev")
            kind = next(k for k, v in PROFILE_FORMATS.items() if v == profile_to.suffix)
            command = [
                spy, "record", "--rate", "250", "--format", kind,
                "--output", str(profile_to), "--", *command,
            ]  # fmt: skip
        log_path = workdir / f"serve-{attempt}.log"
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if healthy(target):
                return Server(
                    process, _server_pid(process, profile_to is not None), target, log_path
                )
            time.sleep(0.1)
        stop(process)
        text = log_path.read_text(errors="replace")
        if "bind" not in text.lower() and "address" not in text.lower():
            raise SystemExit(f"bench: stepline serve did not become ready:\n{text[-3000:]}")
    raise SystemExit("bench: stepline serve could not bind a port")


def _server_pid(process: subprocess.Popen[bytes], profiled: bool) -> int:
    if not profiled:
        return process.pid
    import psutil

    children = psutil.Process(process.pid).children()
    return children[0].pid if children else process.pid


# -- Stepline ----------------------------------------------------------------------------------


def driver_deadline(args: argparse.Namespace, config: dict[str, Any]) -> float:
    """--deadline, plus what W9's sizes may take on top: each its limit twice (the run, then
    the read of its result) and the cancel of one over the limit."""
    if "W9" not in config["workloads"]:
        return float(args.deadline)
    sizes = len(config["w9_sizes"])
    return float(args.deadline) + sizes * 2 * float(config["w9_limit"]) + W9_CANCEL_SECONDS


def server_flags(args: argparse.Namespace, config: dict[str, Any]) -> list[str]:
    """--server-arg flags, and for W9 a message limit that lets its largest result through."""
    flags = list(args.server_arg or [])
    if "W9" in config["workloads"] and not any("max-message-bytes" in f for f in flags):
        flags.append(f"--max-message-bytes={W9_MAX_MESSAGE_BYTES}")
    return flags


def run_stepline(rep: int, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    deadline = driver_deadline(args, config)
    workdir = Path(tempfile.mkdtemp(prefix="stepline-bench-"))
    redis: subprocess.Popen[bytes] | None = None
    server: Server | None = None
    profile_to = None
    if args.profile:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        profile_to = PROFILE_DIR / f"stepline-rep{rep}{PROFILE_FORMATS[args.profile_format]}"
    keep = args.keep_workdir
    try:
        redis, redis_port = start_redis(workdir)
        server = start_server(workdir, redis_port, server_flags(args, config), profile_to)
        log(f"stepline rep {rep}: server pid {server.pid} on {server.target}, redis :{redis_port}")
        command = [
            sys.executable, "-m", "bench.driver",
            "--target", server.target,
            "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
            "--server-pid", str(server.pid),
            "--config", json.dumps(config),
            "--deadline", str(deadline),
        ]  # fmt: skip
        if args.no_uvloop:
            command.append("--no-uvloop")
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                timeout=deadline + 60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            keep = True
            return {"error": f"driver timed out after {deadline + 60:.0f} s"}
        result = _last_json(done.stdout.decode(errors="replace"))
        if done.returncode != 0 or result is None:
            keep = True
            tail = server.log_path.read_text(errors="replace")[-2000:]
            return {"error": f"driver exited {done.returncode}; server log tail:\n{tail}"}
        if server.process.poll() is not None:
            result["error"] = f"the server exited ({server.process.returncode}) during the run"
        return result
    finally:
        if server is not None:
            stop(server.process, server.pid)
            if profile_to is not None and profile_to.exists():
                log(f"profile written to {profile_to}")
        stop(redis)
        if keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


# -- Mastra ------------------------------------------------------------------------------------


def _node_version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return tuple(int(part) for part in out.lstrip("v").split(".")[:3])
    except ValueError:
        return None


def _npm(args: list[str], cwd: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH")
    log(f"npm {' '.join(args)} (in {cwd.relative_to(ROOT)})")
    done = subprocess.run(
        [npm, *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _npm_ci(source: Path, cache: Path) -> None:
    """Installs the npm package in `source` into `cache` exactly as its package-lock says.

    Runs `npm ci` again only when package.json or package-lock.json changed."""
    files = [source / "package.json", source / "package-lock.json"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    stamp = cache / ".installed"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    cache.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy2(file, cache / file.name)
    _npm(["ci"], cache)
    stamp.write_text(digest + "\n")


def ensure_node() -> str:
    """A Node >= 22.13 binary: the system one, else `node` pinned by bench/node22 (npm ci)."""
    system = shutil.which("node")
    if system is not None and (_node_version(system) or (0,)) >= NODE_MIN:
        return system
    _npm_ci(NODE_SRC, NODE_CACHE)
    binary = NODE_CACHE / "node_modules" / ".bin" / "node"
    version = _node_version(str(binary))
    if version is None or version < NODE_MIN:
        raise RuntimeError(f"node from bench/node22 did not give a usable node ({version})")
    return str(binary)


def ensure_mastra() -> tuple[str, Path]:
    """Node and the bench/mastra package, installed by npm ci into .cache/bench-mastra."""
    node = ensure_node()
    _npm_ci(MASTRA_SRC, MASTRA_CACHE)
    shutil.copy2(MASTRA_SRC / "driver.mjs", MASTRA_CACHE / "driver.mjs")
    return node, MASTRA_CACHE


def run_mastra(
    node: str, home: Path, store: str, rep: int, config: dict[str, Any], deadline: float
) -> dict[str, Any]:
    dbdir = Path(tempfile.mkdtemp(prefix=f"stepline-bench-mastra-{store}-"))
    try:
        log(f"mastra-{store} rep {rep}")
        try:
            done = subprocess.run(
                [
                    node,
                    "--expose-gc",
                    "driver.mjs",
                    "--store",
                    store,
                    "--dbdir",
                    str(dbdir),
                    "--config",
                    json.dumps(config),
                ],
                cwd=home,
                env={**os.environ, "MASTRA_TELEMETRY_DISABLED": "1", "NODE_ENV": "production"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                timeout=deadline,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"mastra-{store} timed out after {deadline:.0f} s"}
        result = _last_json(done.stdout.decode(errors="replace"))
        if done.returncode != 0 or result is None:
            return {"error": f"mastra-{store} driver exited {done.returncode}"}
        return result
    finally:
        shutil.rmtree(dbdir, ignore_errors=True)


# -- figures -----------------------------------------------------------------------------------


def flatten(result: dict[str, Any]) -> dict[str, float]:
    """{"W1": {"seq_p50_ms": 1.2}} → {"W1.seq_p50_ms": 1.2}, numbers only; adds W6 vs W1."""
    flat: dict[str, float] = {}
    for workload, figures in (result.get("workloads") or {}).items():
        for name, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            flat[f"{workload}.{name}"] = float(value)
    for name in ("seq_p50_ms", "conc_runs_per_s"):
        w1, w6 = flat.get(f"W1.{name}"), flat.get(f"W6.{name}")
        if w1 and w6 is not None:
            flat[f"W6.{name}_vs_W1"] = round(w6 / w1, 4)
    return flat


def summarize(reps: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for rep in reps for k in rep})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [rep[key] for rep in reps if key in rep]
        out[key] = {
            "median": round(statistics.median(values), 4),
            "min": round(min(values), 4),
            "max": round(max(values), 4),
            "n": len(values),
        }
    return out


def target_met(
    row: Row, figures: dict[str, dict[str, float]], libsql: dict[str, Any]
) -> bool | None:
    """Whether the median meets the issue's target (None: no target or no figure)."""
    key = row.key
    value = figures.get(key, {}).get("median")
    if row.at_most is not None:
        if value is not None:
            return value <= row.at_most
        above = figures.get(f"{key}_above", {}).get("median")  # over the W9 time limit
        return False if above is not None and above > row.at_most else None
    if value is None:
        return None
    subs = figures.get("W4.watch_subscribers", {}).get("median")
    checks: dict[str, bool | None] = {
        "W1.seq_p50_ms": value <= 1.5,
        "W2.accepted_per_s": value >= 2500,
        "W4.first_event_p50_ms": value <= 1.5,
        "W4.watch_complete": None if subs is None else value == subs,
        "W4.watch_lost_events": value == 0,
        "W4.watch_duplicate_events": value == 0,
        "W4.watch_failed_streams": value == 0,
        "W5.per_step_us": value <= 250,
        "W7.rss_growth_mb": value < 50,
        "W7.store_bytes_per_run": value <= 1536,
    }
    if key in ("W1.conc_runs_per_s", "W3.cycles_per_s"):  # issue 14: twice Mastra+LibSQL
        base = libsql.get(key, {}).get("median")
        return None if not base else value >= 2 * base
    if key == "W6.seq_p50_ms":
        ratio = figures.get("W6.seq_p50_ms_vs_W1", {}).get("median")
        return None if ratio is None else ratio <= 1.1
    if key == "W6.conc_runs_per_s":
        ratio = figures.get("W6.conc_runs_per_s_vs_W1", {}).get("median")
        return None if ratio is None else ratio >= 0.9
    return checks.get(key)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if value.is_integer() and magnitude < 1000:
        return str(int(value))
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if magnitude >= 1 or value == 0 else f"{value:.3f}"


def cell(figure: dict[str, float] | None) -> str:
    if not figure:
        return "-"
    if figure["n"] <= 1 or figure["min"] == figure["max"]:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} [{fmt(figure['min'])}..{fmt(figure['max'])}]"


def figure_cell(figures: dict[str, dict[str, float]], key: str) -> str:
    """The figure, or for a W9 size stopped by its time limit "> bound", by the RSS cap
    "RSS > cap" ("not run" when a smaller size already was)."""
    if key in figures:
        return cell(figures[key])
    size = key.split("_", 1)[0]  # "W9.n100000"
    not_run = " (not run)" if figures.get(f"{size}_not_run", {}).get("min") else ""
    if f"{key}_above" in figures:
        return f"> {fmt(figures[f'{key}_above']['median'])}{not_run}"
    cap = figures.get("W9.rss_cap_mb", {}).get("median")
    if cap is not None and figures.get(f"{size}_over_memory", {}).get("min"):
        return f"RSS > {fmt(cap)} MB{not_run}"
    return "-"


def ratio_cell(
    key: str,
    stepline: dict[str, dict[str, float]],
    other: dict[str, dict[str, float]],
    ratio: float | None,
) -> str:
    """Stepline / Mastra, or a bound when one side ran past the W9 time limit."""
    if ratio is not None:
        return f"{ratio + 0.0:.2f}x"  # + 0.0: no "-0.00x"
    mine, theirs = stepline.get(key, {}).get("median"), other.get(key, {}).get("median")
    mine_above = stepline.get(f"{key}_above", {}).get("median")
    theirs_above = other.get(f"{key}_above", {}).get("median")
    if mine_above is not None and theirs:
        return f"> {mine_above / theirs:.2f}x"
    if mine is not None and theirs_above:
        return f"< {mine / theirs_above:.2f}x"
    return "-"


def table(
    engines: dict[str, dict[str, dict[str, float]]],
    ratios: dict[str, dict[str, float]],
    met: dict[str, bool | None],
    rows_wanted: list[Row],
) -> str:
    columns = [name for name in ("mastra-memory", "mastra-libsql") if engines.get(name)]
    header = ["workload / figure", "unit", "Stepline median [min..max]", "target", "met"]
    for name in columns:
        header.append(name.replace("mastra-", "Mastra "))
    for name in columns:
        header.append("S/" + name.replace("mastra-", ""))
    rows = [header]
    stepline = engines.get("stepline", {})
    shown = [stepline, *(engines[c] for c in columns)]
    for row in rows_wanted:
        cells = [figure_cell(figures, row.key) for figures in shown]
        if all(text == "-" for text in cells):
            continue
        verdict = met.get(row.key)
        line = [
            row.label,
            row.unit + ("" if not row.better else " ↑" if row.better == "higher" else " ↓"),
            cells[0],
            row.target,
            "" if verdict is None else "yes" if verdict else "NO",
            *cells[1:],
        ]
        line += [
            ratio_cell(row.key, stepline, engines[c], ratios.get(row.key, {}).get(c))
            for c in columns
        ]
        rows.append(line)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, r in enumerate(rows):
        lines.append("  ".join(text.ljust(widths[i]) for i, text in enumerate(r)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def count_problems(engine: str, reps: list[dict[str, float]], config: dict[str, Any]) -> list[str]:
    problems = []
    for index, rep in enumerate(reps):
        for key, want in expected_counts(config):
            if key.split(".")[0] not in config["workloads"] or key not in rep:
                continue
            if rep[key] != want:
                problems.append(f"{engine} rep {index + 1}: {key} = {rep[key]:g}, want {want}")
    return problems


# -- main --------------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    config = dict(DEFAULTS)
    if args.quick:
        config.update(QUICK)
    for name in SCALED:
        config[name] = max(1, round(config[name] * args.runs))
    config["concurrency"] = args.concurrency
    if args.w9_sizes is not None:
        config["w9_sizes"] = args.w9_sizes
    else:
        config["w9_sizes"] = sorted({max(1, round(n * args.runs)) for n in config["w9_sizes"]})
    config["w9_limit"] = args.w9_limit
    config["w9_rss_cap_mb"] = args.w9_rss_cap_mb
    if args.subscribers is not None:
        config["w4_subscribers"] = args.subscribers
    config["workloads"] = args.workloads
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Stepline (gRPC + Redis) against @mastra/core 1.71.0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--runs", type=float, default=1.0, help="scale every run count")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (W1, W2, W3)")
    parser.add_argument("--subscribers", type=int, default=None, help="W4 Watch subscribers")
    parser.add_argument(
        "--w9-sizes",
        default=None,
        help="W9 foreach sizes, e.g. 1000,10000 (default 1000,10000,100000 scaled by --runs)",
    )
    parser.add_argument(
        "--w9-limit",
        type=float,
        default=600.0,
        help="seconds one W9 foreach may take; over it: reported '> limit', larger sizes skipped",
    )
    parser.add_argument(
        "--w9-rss-cap-mb",
        type=float,
        default=6144.0,
        help="W9: a foreach whose process (server or node) passes this RSS is stopped likewise",
    )
    parser.add_argument("--no-mastra", action="store_true", help="skip the Mastra side")
    parser.add_argument(
        "--mastra-stores", default=",".join(MASTRA_STORES), help="memory and/or libsql"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--json-out", type=Path, help="also write the JSON result here")
    parser.add_argument("--profile", action="store_true", help="run the server under py-spy")
    parser.add_argument(
        "--profile-format",
        choices=sorted(PROFILE_FORMATS),
        default="flamegraph",
        help="py-spy output; raw (collapsed stacks) is what bench/profile_top.py summarises",
    )
    parser.add_argument(
        "--server-arg", action="append", help="extra `stepline serve` flag (repeatable)"
    )
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds per driver run")
    parser.add_argument("--keep-workdir", action="store_true", help="keep redis/server logs")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio in the driver")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: re-print the table of a saved --json-out"
    )
    args = parser.parse_args(argv)
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.w9_sizes is not None:
        try:
            args.w9_sizes = sorted({int(n) for n in args.w9_sizes.split(",") if n.strip()})
        except ValueError:
            parser.error("--w9-sizes: comma-separated whole numbers")
        if not args.w9_sizes or args.w9_sizes[0] < 1:
            parser.error("--w9-sizes: at least one size, each >= 1")
    if args.w9_limit <= 0 or args.w9_rss_cap_mb <= 0:
        parser.error("--w9-limit and --w9-rss-cap-mb must be > 0")
    args.mastra_stores = [s.strip() for s in args.mastra_stores.split(",") if s.strip()]
    if set(args.mastra_stores) - set(MASTRA_STORES):
        parser.error(f"--mastra-stores: choose from {', '.join(MASTRA_STORES)}")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1 or args.runs <= 0:
        parser.error("--reps must be >= 1 and --runs > 0")
    return args


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    log(f"{name} took {time.monotonic() - began:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:  # re-print a saved result with this version's table
        saved = json.loads(args.from_json.read_text().strip().splitlines()[-1])
        saved_run = {k: saved[k] for k in ("reps", "scale", "quick", "mastra")}
        saved_run["node"] = saved["environment"]["node"]
        return report(saved["raw"], saved["config"], saved["failures"], saved_run, None)
    config = build_config(args)
    log(f"workloads {','.join(args.workloads)}, {args.reps} rep(s), scale {args.runs:g}")
    raw: dict[str, list[dict[str, Any]]] = {"stepline": []}
    failures: list[str] = []
    with _stage("stepline"):
        for rep in range(1, args.reps + 1):
            result = run_stepline(rep, config, args)
            if "error" in result:
                failures.append(f"stepline rep {rep}: {result['error']}")
                log(failures[-1])
            raw["stepline"].append(result)
    mastra_note = "skipped (--no-mastra)" if args.no_mastra else ""
    node_version = ""
    if not args.no_mastra:
        try:
            node, home = ensure_mastra()
            node_version = ".".join(map(str, _node_version(node) or ()))
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            mastra_note = f"skipped: {error}"
            log(f"mastra {mastra_note}")
        else:
            for store in args.mastra_stores:
                name = f"mastra-{store}"
                raw[name] = []
                with _stage(name):
                    for rep in range(1, args.reps + 1):
                        result = run_mastra(
                            node, home, store, rep, config, driver_deadline(args, config)
                        )
                        if "error" in result:
                            failures.append(f"{name} rep {rep}: {result['error']}")
                            log(failures[-1])
                        raw[name].append(result)

    return report(
        raw,
        config,
        failures,
        {
            "reps": args.reps,
            "scale": args.runs,
            "quick": args.quick,
            "mastra": mastra_note or "ran",
            "node": node_version,
        },
        args.json_out,
    )


def report(
    raw: dict[str, list[dict[str, Any]]],
    config: dict[str, Any],
    failures: list[str],
    run: dict[str, Any],
    json_out: Path | None,
) -> int:
    """Print the table and the JSON line (the last stdout line); 1 if a repetition failed."""
    flat = {
        name: [flatten(r) for r in results if "error" not in r] for name, results in raw.items()
    }
    engines = {name: summarize(reps) for name, reps in flat.items() if reps}
    ratios: dict[str, dict[str, float]] = {}
    for key, figure in engines.get("stepline", {}).items():
        if key.endswith(W9_NOT_FIGURES):  # W9's bounds, flags and settings: nothing to compare
            continue
        for name in ("mastra-memory", "mastra-libsql"):
            other = engines.get(name, {}).get(key, {}).get("median")
            if other:
                ratios.setdefault(key, {})[name] = round(figure["median"] / other, 4)
    stepline = engines.get("stepline", {})
    libsql = engines.get("mastra-libsql", {})
    rows = [*ROWS, *scale_rows(config)]
    met = {row.key: target_met(row, stepline, libsql) for row in rows if row.target}
    problems = [p for name, reps in flat.items() for p in count_problems(name, reps, config)]
    errors = {
        name: sum(sum((r.get("errors") or {}).values()) for r in results)
        for name, results in raw.items()
    }
    for problem in problems:
        log(f"count mismatch: {problem}")

    print(table(engines, ratios, met, rows))
    print(
        f"median of {run['reps']} rep(s) [min..max]; ↑ higher is better, ↓ lower;"
        " S/x = Stepline / Mastra x"
    )
    if run["mastra"] != "ran":
        print(f"Mastra: {run['mastra']}")
    for failure in failures:
        print(f"FAILED: {failure.splitlines()[0]}")
    for name, results in raw.items():
        for index, result in enumerate(results, 1):
            for kind, count in (result.get("errors") or {}).items():
                first = (result.get("first_errors") or {}).get(kind, "")
                print(f"call errors: {name} rep {index}: {count} x {kind} (first: {first})")
    for problem in problems:
        print(f"count mismatch: {problem}")
    summary = {
        "bench": "stepline",
        "reps": run["reps"],
        "scale": run["scale"],
        "quick": run["quick"],
        "config": config,
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "node": run["node"],
            "mastra_core": "1.71.0",
        },
        "engines": engines,
        "ratios": ratios,
        "targets": {
            row.key: {"target": row.target, "met": met.get(row.key)} for row in rows if row.target
        },
        "counts_ok": not problems and not failures,
        "count_problems": problems,
        "call_errors": errors,
        "failures": failures,
        "mastra": run["mastra"],
        "raw": raw,
    }
    line = json.dumps(summary, separators=(",", ":"), allow_nan=False, default=str)
    if json_out is not None:
        json_out.write_text(line + "\n")
    print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
