"""The three suites: load, soak and chaos. Each starts its own Redis and replicas, drives
traffic through the typed client, checks every run against the store, and returns a report
object (rendered by `report.py`). Every process is stopped by pid in a `finally`."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import flows
from .cluster import Cluster, serve_supports
from .stats import Latency, Series
from .traffic import Outcome, Pool, RunSpec, Traffic, specs
from .verify import Verdict, extra_runs, verify

MiB = 1024 * 1024
RETENTION_FLAG = "--run-retention"


# -- shared pieces -----------------------------------------------------------------------------
@dataclass
class Common:
    """What every suite reports besides its own figures."""

    seconds: float = 0.0
    verdict: Verdict = field(default_factory=Verdict)
    run_latency: dict[str, Latency] = field(default_factory=dict)
    call_latency: dict[str, Latency] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    logs: dict[str, int] = field(default_factory=dict)
    log_errors: list[str] = field(default_factory=list)
    redis_end: dict[str, float] = field(default_factory=dict)
    server_flags: list[str] = field(default_factory=list)
    # The machine's 1-minute load average when the suite started (other work shares it).
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def throughput(self) -> float:
        return self.verdict.completed / self.seconds if self.seconds else 0.0


def _tag(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _latencies(traffic: Traffic, outcomes: list[Outcome], common: Common) -> None:
    done = [o.latency for o in outcomes if o.completed]
    common.run_latency = {"all runs": Latency.of(done)}
    for workflow_id in flows.WORKFLOWS:
        latencies = traffic.latencies.get(f"run {workflow_id}", [])
        common.run_latency[workflow_id] = Latency.of(latencies)
    common.call_latency = {
        op: Latency.of(values)
        for op, values in sorted(traffic.latencies.items())
        if not op.startswith("run ")
    }
    common.retries = traffic.retries
    common.unexpected = traffic.unexpected


async def _redis_figures(cluster: Cluster) -> dict[str, float]:
    admin = cluster.admin()
    try:
        memory = await admin.info("memory")
        clients = await admin.info("clients")
        return {
            "keys": float(await admin.dbsize()),
            "used_memory": float(memory["used_memory"]),
            "used_memory_rss": float(memory["used_memory_rss"]),
            "connected_clients": float(clients["connected_clients"]),
        }
    finally:
        await admin.aclose()


def _unfinished(issued: dict[str, RunSpec], outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes for runs whose caller never got to the end (so the store is still checked)."""
    seen = {o.spec.run_id for o in outcomes}
    return [
        Outcome(spec, problems=["the caller did not finish (suite deadline)"])
        for run_id, spec in issued.items()
        if run_id not in seen
    ]


async def _callers(
    count: int,
    traffic: Traffic,
    runs: Iterator[RunSpec],
    keep_going: Callable[[], bool],
    outcomes: list[Outcome],
    issued: dict[str, RunSpec],
    deadline: float,
) -> None:
    """`count` callers, each driving one run after another while `keep_going()`; bounded by
    `deadline` (monotonic), after which the remaining callers are cancelled."""

    async def caller() -> None:
        while keep_going():
            spec = next(runs, None)
            if spec is None:
                return
            issued[spec.run_id] = spec
            outcomes.append(await traffic.drive(spec))

    tasks = [asyncio.create_task(caller()) for _ in range(count)]
    try:
        await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _limited(runs: Iterator[RunSpec], limit: int) -> Iterator[RunSpec]:
    for i, spec in enumerate(runs):
        if i >= limit:
            return
        yield spec


# -- load --------------------------------------------------------------------------------------
@dataclass
class LoadConfig:
    runs: int = 20_000
    callers: int = 200
    replicas: int = 2
    delay_ms: int = 0
    budget: float = 300.0  # per run
    channels: int = 0  # 0: one per 25 callers


@dataclass
class LoadReport:
    config: LoadConfig
    common: Common


async def run_load(config: LoadConfig, workdir: Path) -> LoadReport:
    tag = _tag("load")
    cluster = Cluster(workdir / tag, replicas=config.replicas, prefix=f"rel-{tag}")
    report = LoadReport(config, Common(server_flags=cluster.flags))
    outcomes: list[Outcome] = []
    issued: dict[str, RunSpec] = {}
    try:
        await asyncio.to_thread(cluster.start)
        pool = await Pool.open(cluster.target, config.channels or math.ceil(config.callers / 25))
        try:
            traffic = Traffic(pool, budget=config.budget)
            runs = _limited(specs(tag, delay_ms=config.delay_ms), config.runs)
            began = time.monotonic()
            deadline = began + config.budget + config.runs / 5 + 60
            await _callers(config.callers, traffic, runs, lambda: True, outcomes, issued, deadline)
            report.common.seconds = time.monotonic() - began
        finally:
            await pool.close()
        outcomes += _unfinished(issued, outcomes)
        admin = cluster.admin()
        try:
            report.common.verdict = await verify(admin, cluster.prefix, outcomes)
        finally:
            await admin.aclose()
        _latencies(traffic, outcomes, report.common)
        report.common.redis_end = await _redis_figures(cluster)
    finally:
        await asyncio.to_thread(cluster.stop)
        report.common.logs = cluster.log_counts()
        report.common.log_errors = cluster.log_errors()
    return report


# -- soak --------------------------------------------------------------------------------------
@dataclass
class SoakConfig:
    seconds: float = 600.0
    rate: float = 40.0  # operations started per second, all callers together
    callers: int = 32
    replicas: int = 2
    sample_every: float = 5.0
    retention: float = 60.0  # passed as --run-retention when the server has it
    delay_ms: int = 5
    budget: float = 120.0


@dataclass
class Sample:
    t: float
    rss: list[int]
    fds: list[int]
    threads: list[int]
    redis: dict[str, float]
    active_runs: float
    held_leases: float
    queue_depth: float
    runs_started: int


@dataclass
class Check:
    name: str
    held: bool
    detail: str


@dataclass
class SoakReport:
    config: SoakConfig
    common: Common
    retention: float | None = None
    operations: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    drained: Sample | None = None
    watch_problems: list[str] = field(default_factory=list)

    @property
    def bounded(self) -> bool:
        return all(check.held for check in self.checks)


async def run_soak(config: SoakConfig, workdir: Path) -> SoakReport:
    tag = _tag("soak")
    supported = await asyncio.to_thread(serve_supports, RETENTION_FLAG)
    retention = config.retention if supported else None
    flags = [RETENTION_FLAG, f"{retention:g}"] if retention is not None else []
    cluster = Cluster(workdir / tag, replicas=config.replicas, prefix=f"rel-{tag}", flags=flags)
    report = SoakReport(config, Common(server_flags=flags), retention=retention)
    outcomes: list[Outcome] = []
    issued: dict[str, RunSpec] = {}
    verdict = Verdict()
    try:
        await asyncio.to_thread(cluster.start)
        pool = await Pool.open(cluster.target, max(1, config.callers // 16))
        admin = cluster.admin()
        try:
            traffic = Traffic(pool, budget=config.budget)
            runs = specs(tag, delay_ms=config.delay_ms)
            finished: list[str] = []  # recent finished run ids, for watches
            to_verify: list[Outcome] = []
            began = time.monotonic()
            stop_at = began + config.seconds
            pace = _Pacer(config.rate)

            async def operation() -> None:
                await pace.wait()
                roll = random.random()
                deadline = time.monotonic() + config.budget
                if roll < 0.15 and finished:
                    report.operations["watch"] += 1
                    run_id = random.choice(finished[-500:])
                    try:
                        problems = await traffic.watch_finished(run_id, deadline)
                    except Exception as error:  # e.g. expired by retention meanwhile
                        if retention is None or "RUN_NOT_FOUND" not in str(error):
                            report.watch_problems.append(f"{run_id}: {error}")
                        return
                    report.watch_problems += problems
                elif roll < 0.30:
                    report.operations["list"] += 1
                    await traffic.list_pages(random.choice(flows.WORKFLOWS), deadline)
                else:
                    spec = next(runs)
                    report.operations[f"run {spec.workflow_id} ({spec.mode})"] += 1
                    issued[spec.run_id] = spec
                    outcome = await traffic.drive(spec)
                    outcomes.append(outcome)
                    to_verify.append(outcome)
                    if outcome.completed:
                        finished.append(spec.run_id)
                        del finished[:-2000]

            async def caller() -> None:
                while time.monotonic() < stop_at:
                    try:
                        await operation()
                    except Exception as error:  # recorded; the soak goes on
                        traffic.unexpected[type(error).__name__] += 1

            async def check_soon() -> None:
                """Verify finished runs within seconds, before any retention removes them."""
                while True:
                    await asyncio.sleep(1.0)
                    batch, to_verify[:] = list(to_verify), []
                    if batch:
                        verdict.merge(await verify(admin, cluster.prefix, batch, check_extra=False))

            async def sample() -> None:
                while True:
                    report.samples.append(await _sample(cluster, began, len(issued)))
                    await asyncio.sleep(config.sample_every)

            helpers = [asyncio.create_task(check_soon()), asyncio.create_task(sample())]
            try:
                tasks = [asyncio.create_task(caller()) for _ in range(config.callers)]
                limit = stop_at + config.budget + 30
                _, pending = await asyncio.wait(tasks, timeout=limit - time.monotonic())
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                report.common.seconds = time.monotonic() - began
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            # Quiet: every replica idle and nothing queued, then one more sample.
            await _quiesce(cluster, seconds=30)
            report.drained = await _sample(cluster, began, len(issued))
            leftovers = to_verify + _unfinished(issued, outcomes)
            verdict.merge(await verify(admin, cluster.prefix, leftovers, check_extra=False))
            if retention is None:  # nothing expires: every stored run must be one we started
                verdict.merge(await extra_runs(admin, cluster.prefix, set(issued)))
            report.common.verdict = verdict
        finally:
            await admin.aclose()
            await pool.close()
        _latencies(traffic, outcomes, report.common)
        report.common.redis_end = await _redis_figures(cluster)
        _growth(report)
    finally:
        await asyncio.to_thread(cluster.stop)
        report.common.logs = cluster.log_counts()
        report.common.log_errors = cluster.log_errors()
    return report


class _Pacer:
    """Hands out start times `1/rate` apart, shared by every caller."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def _sample(cluster: Cluster, began: float, runs_started: int) -> Sample:
    resources = await asyncio.to_thread(cluster.replica_resources)
    metrics = await asyncio.to_thread(lambda: [r.metrics() for r in cluster.replicas])
    return Sample(
        t=time.monotonic() - began,
        rss=[rss for rss, _, _ in resources],
        fds=[fds for _, fds, _ in resources],
        threads=[threads for _, _, threads in resources],
        redis=await _redis_figures(cluster),
        active_runs=sum(m.get("stepline_active_runs", 0.0) for m in metrics),
        held_leases=sum(m.get("stepline_held_leases", 0.0) for m in metrics),
        queue_depth=max((m.get("stepline_queue_depth", 0.0) for m in metrics), default=0.0),
        runs_started=runs_started,
    )


async def _quiesce(cluster: Cluster, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        metrics = await asyncio.to_thread(lambda: [r.metrics() for r in cluster.replicas])
        busy = sum(
            m.get("stepline_active_runs", 0.0) + m.get("stepline_queue_depth", 0.0) for m in metrics
        )
        if metrics and all(metrics) and busy == 0:
            return True
        await asyncio.sleep(0.5)
    return False


def _growth(report: SoakReport) -> None:
    """Series of every sampled quantity, and the bounded-growth checks (generous margins:
    they catch leaks, not noise)."""
    samples = report.samples
    if len(samples) < 4:
        report.checks.append(Check("enough samples", False, f"only {len(samples)} samples"))
        return
    times = [s.t for s in samples]

    def series(name: str, unit: str, values: list[float]) -> Series:
        found = Series.of(name, unit, times, values)
        report.series.append(found)
        return found

    rss = series("replica RSS (sum)", "MiB", [sum(s.rss) / MiB for s in samples])
    fds = series("replica open fds (sum)", "fds", [float(sum(s.fds)) for s in samples])
    threads = series("replica threads (sum)", "threads", [float(sum(s.threads)) for s in samples])
    clients = series(
        "redis connected clients", "clients", [s.redis["connected_clients"] for s in samples]
    )
    keys = series("redis keys (DBSIZE)", "keys", [s.redis["keys"] for s in samples])
    memory = series("redis used_memory", "MiB", [s.redis["used_memory"] / MiB for s in samples])
    series("redis RSS", "MiB", [s.redis["used_memory_rss"] / MiB for s in samples])
    series("active runs (both replicas)", "runs", [s.active_runs for s in samples])
    series("held leases (both replicas)", "leases", [s.held_leases for s in samples])
    series("queue depth", "runs", [s.queue_depth for s in samples])

    quarter = max(1, len(samples) // 4)
    mid, late = slice(quarter, 2 * quarter), slice(len(samples) - quarter, len(samples))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    rss_mid = mean([sum(s.rss) / MiB for s in samples[mid]])
    rss_late = mean([sum(s.rss) / MiB for s in samples[late]])
    report.checks.append(
        Check(
            "replica RSS levels off",
            rss_late <= 1.5 * rss_mid + 64,
            f"mean {rss_mid:.0f} MiB in the 2nd quarter, {rss_late:.0f} MiB in the last "
            f"(limit 1.5x + 64 MiB); slope after warm-up {rss.slope_per_min:+.1f} MiB/min",
        )
    )

    def bounded(name: str, values: list[float], margin: float, what: Series) -> None:
        top_mid, top_late = max(values[mid]), max(values[late])
        report.checks.append(
            Check(
                name,
                top_late <= top_mid + margin,
                f"max {top_mid:.0f} in the 2nd quarter, {top_late:.0f} in the last "
                f"(limit +{margin:.0f}); slope {what.slope_per_min:+.2f}/min",
            )
        )

    bounded("replica fds bounded", [float(sum(s.fds)) for s in samples], 64, fds)
    bounded("replica threads bounded", [float(sum(s.threads)) for s in samples], 16, threads)
    bounded(
        "redis connections bounded",
        [s.redis["connected_clients"] for s in samples],
        64,
        clients,
    )
    started = samples[-1].runs_started - samples[0].runs_started
    key_growth = samples[-1].redis["keys"] - samples[0].redis["keys"]
    memory_growth = (samples[-1].redis["used_memory"] - samples[0].redis["used_memory"]) / MiB
    if report.retention is not None and report.config.seconds >= 3 * report.retention:
        key_values = [s.redis["keys"] for s in samples]
        bounded("redis keys level off (retention)", key_values, 0.5 * max(key_values[mid]), keys)
        memory_values = [s.redis["used_memory"] / MiB for s in samples]
        bounded(
            "redis memory levels off (retention)",
            memory_values,
            0.5 * max(memory_values[mid]) + 32,
            memory,
        )
    else:
        per_run = key_growth / started if started else 0.0
        report.checks.append(
            Check(
                "redis keys = retained runs",
                per_run <= 2.5,
                f"{key_growth:+.0f} keys for {started} runs started = {per_run:.2f} per run "
                "(a run is 2 keys: its hash and its event stream; limit 2.5). Finished runs "
                "are kept"
                + (
                    f" for {report.retention:g} s, longer than a third of this soak"
                    if report.retention is not None
                    else " until deleted (this server has no --run-retention)"
                )
                + ", so keys grow with runs",
            )
        )
        bytes_per_run = memory_growth * MiB / started if started else 0.0
        report.checks.append(
            Check(
                "redis memory = retained runs",
                bytes_per_run <= 64 * 1024,
                f"{memory_growth:+.1f} MiB for {started} runs = {bytes_per_run / 1024:.1f} KiB "
                "per run (limit 64 KiB)",
            )
        )
    drained = report.drained
    if drained is not None:
        report.checks.append(
            Check(
                "idle after the traffic stops",
                drained.active_runs == 0 and drained.held_leases == 0 and drained.queue_depth == 0,
                f"active runs {drained.active_runs:g}, held leases {drained.held_leases:g}, "
                f"queue depth {drained.queue_depth:g}",
            )
        )


# -- chaos -------------------------------------------------------------------------------------
@dataclass
class ChaosConfig:
    seconds: float = 150.0  # traffic (and faults) for this long, then every run must finish
    callers: int = 100
    replicas: int = 2
    kill_every: float = 5.0
    max_down: float = 1.5  # a killed replica stays down a random 0..max_down seconds
    pause_every: float = 30.0
    pause_ms: int = 3000
    redis_restarts: int = 2
    delay_ms: int = 25
    budget: float = 180.0  # per run


@dataclass
class Fault:
    at: float
    kind: str
    detail: str = ""
    took: float = 0.0


@dataclass
class ChaosReport:
    config: ChaosConfig
    common: Common
    faults: list[Fault] = field(default_factory=list)
    # The work queue's consumer group at the end: consumers (one per replica start ever)
    # and entries delivered but never acknowledged.
    queue_consumers: int = 0
    queue_pending: int = 0
    replica_starts: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for fault in self.faults if fault.kind == kind)


async def _queue_group(cluster: Cluster) -> tuple[int, int]:
    """(consumers, pending) of the work queue's consumer group; (0, 0) if there is none."""
    admin = cluster.admin()
    try:
        groups = await admin.xinfo_groups(f"{cluster.prefix}:queue")
    except Exception:  # no queue yet, or a layout this suite does not know
        return 0, 0
    finally:
        await admin.aclose()
    return (
        sum(int(g.get("consumers", 0)) for g in groups),
        sum(int(g.get("pending", 0)) for g in groups),
    )


def chaos_plan(config: ChaosConfig) -> list[Fault]:
    """When each fault happens (seconds after the traffic starts), in order."""
    plan: list[Fault] = []
    if config.kill_every > 0:
        at = config.kill_every
        while at < config.seconds:
            plan.append(Fault(at, "kill"))
            at += config.kill_every
    if config.pause_every > 0 and config.pause_ms > 0:
        at = config.pause_every / 2
        while at < config.seconds:
            plan.append(Fault(at, "pause"))
            at += config.pause_every
    for i in range(config.redis_restarts):
        plan.append(Fault(config.seconds * (i + 1) / (config.redis_restarts + 1) + 0.7, "redis"))
    return sorted(plan, key=lambda fault: fault.at)


async def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosReport:
    tag = _tag("chaos")
    cluster = Cluster(workdir / tag, replicas=config.replicas, prefix=f"rel-{tag}")
    report = ChaosReport(config, Common(server_flags=cluster.flags))
    outcomes: list[Outcome] = []
    issued: dict[str, RunSpec] = {}
    rng = random.Random()
    try:
        await asyncio.to_thread(cluster.start)
        pool = await Pool.open(cluster.target, max(1, config.callers // 25))
        try:
            traffic = Traffic(pool, budget=config.budget)
            began = time.monotonic()
            stop_at = began + config.seconds

            async def inflict() -> None:
                for fault in chaos_plan(config):
                    await asyncio.sleep(max(0.0, began + fault.at - time.monotonic()))
                    fault.at = time.monotonic() - began
                    t0 = time.monotonic()
                    if fault.kind == "kill":
                        index = rng.randrange(len(cluster.replicas))
                        down = rng.uniform(0, config.max_down)
                        await asyncio.to_thread(cluster.kill_replica, index)
                        await asyncio.sleep(down)
                        await asyncio.to_thread(cluster.start_replica, index)
                        fault.detail = f"replica {index} SIGKILLed, down {down:.1f} s + start-up"
                    elif fault.kind == "pause":
                        await cluster.pause_redis(config.pause_ms)
                        fault.detail = f"CLIENT PAUSE {config.pause_ms} ALL"
                    else:
                        await asyncio.to_thread(cluster.restart_redis)
                        fault.detail = "redis-server SIGTERM, restarted on its port with its AOF"
                    fault.took = time.monotonic() - t0
                    report.faults.append(fault)

            chaos = asyncio.create_task(inflict())
            try:
                deadline = stop_at + config.budget + 60
                await _callers(
                    config.callers,
                    traffic,
                    specs(tag, delay_ms=config.delay_ms),
                    lambda: time.monotonic() < stop_at,
                    outcomes,
                    issued,
                    deadline,
                )
                report.common.seconds = time.monotonic() - began
                await chaos
            finally:
                chaos.cancel()
                await asyncio.gather(chaos, return_exceptions=True)
        finally:
            await pool.close()
        for replica in cluster.replicas:  # a fault cut short leaves a replica down
            if replica.pid is None:
                await asyncio.to_thread(cluster.start_replica, replica.index)
        report.queue_consumers, report.queue_pending = await _queue_group(cluster)
        report.replica_starts = sum(replica.starts for replica in cluster.replicas)
        outcomes += _unfinished(issued, outcomes)
        admin = cluster.admin()
        try:
            report.common.verdict = await verify(admin, cluster.prefix, outcomes)
        finally:
            await admin.aclose()
        _latencies(traffic, outcomes, report.common)
        report.common.redis_end = await _redis_figures(cluster)
    finally:
        await asyncio.to_thread(cluster.stop)
        report.common.logs = cluster.log_counts()
        report.common.log_errors = cluster.log_errors()
    return report
