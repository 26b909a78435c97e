"""The multi-process matrix: real `stepline serve` replicas and real `redis-server`s on
127.0.0.1, killed, stopped, drained and restarted underneath running workflows.

Every wait has a deadline. Timings (recovery after SIGKILL, UNAVAILABLE latency while Redis
is down, time to carry on after it returns) are measured and reported, never asserted: each
test prints `[distributed] ...` lines straight to the terminal (and records them as junit
properties). The replicas serve tests/distributed_flows.py, whose steps report the pid of the
process that executed them, so a test can tell which replica recorded each step.

Replica state the API does not expose (which replica holds which lease right now) is read
from Redis directly through `Peek`, with the store's own key layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from redis.asyncio import Redis

from stepline.client import (
    Client,
    EventType,
    ResumeAlreadyClaimed,
    RunEvent,
    RunNotFound,
    RunResult,
    RunStatus,
    SteplineError,
)
from stepline.server.errors import StoreUnavailable
from stepline.server.model import Snapshot
from stepline.server.store import RedisStore
from stepline.server.store.keys import Keys
from tests.distributed_flows import LONG_RELAY_HOPS, RELAY_HOPS, expected_acc
from tests.processes import Launcher, Replica, healthy, start_redis, stop_process

pytestmark = pytest.mark.timeout(150)

T = TypeVar("T")

LEASE_TTL = 1.5  # seconds: short, so an orphaned run is taken over quickly
RELAY_STEPS = [f"hop{i}" for i in range(1, RELAY_HOPS + 1)]
LONG_RELAY_STEPS = [f"hop{i}" for i in range(1, LONG_RELAY_HOPS + 1)]
CALL_SECONDS = 10.0  # deadline of one ordinary RPC


# -- fixtures and small helpers --------------------------------------------------------------
@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        # A replica a test left stopped (SIGSTOP) would ignore SIGTERM until continued.
        for replica in launcher.replicas:
            if replica.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replica.process.pid, signal.SIGCONT)
        launcher.stop_all()


Report = Callable[[str], None]


@pytest.fixture
def report(
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> Report:
    """Print a measurement to the terminal (even without -s) and record it in junit."""
    count = 0

    def emit(line: str) -> None:
        nonlocal count
        count += 1
        record_property(f"measure_{count}", line)
        with capsys.disabled():
            print(f"\n[distributed] {line}", flush=True)

    return emit


def serve_flags(redis_url: str, prefix: str, *extra: str) -> tuple[str, ...]:
    return (
        "--redis-url", redis_url,
        "--redis-prefix", prefix,
        "--workflows", "tests.distributed_flows",
        "--lease-ttl", str(LEASE_TTL),
        *extra,
    )  # fmt: skip


def new_prefix(name: str) -> str:
    return f"dist-{name}-{uuid.uuid4().hex[:8]}"


async def start_replicas(serve: Launcher, count: int, *flags: str) -> list[Replica]:
    return list(await asyncio.gather(*(asyncio.to_thread(serve, *flags) for _ in range(count))))


async def connect_all(
    stack: contextlib.AsyncExitStack, replicas: Iterable[Replica]
) -> list[Client]:
    return [await stack.enter_async_context(await Client.connect(r.target)) for r in replicas]


def owner_pid(owner: str) -> int | None:
    """The pid in a worker's owner name (`<host>-<pid>-<hex>`)."""
    parts = owner.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def kill(replica: Replica, sig: signal.Signals) -> float:
    """Send `sig` to the replica by pid; returns the wall-clock time it was sent."""
    sent = time.time()
    os.kill(replica.process.pid, sig)
    return sent


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"min {min(values):.2f}s median {statistics.median(values):.2f}s "
        f"max {max(values):.2f}s (n={len(values)})"
    )


async def until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, seconds: float, what: str
) -> T:
    """Call `probe` until `done(value)`, at most `seconds`; fails the test naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.05)


async def gather_limited(coros: Iterable[Awaitable[T]], limit: int) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


class Peek:
    """Reads one deployment's run hashes straight from Redis (lease owners, statuses)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.redis: Redis = Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        self.keys = Keys(prefix)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _fields(self, run_ids: Sequence[str], *names: str) -> list[list[Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), list(names))
        return list(await pipe.execute())

    async def owners(self, run_ids: Sequence[str], *, live_only: bool = True) -> dict[str, int]:
        """run id -> pid of the replica whose lease is on it (live leases, unless told)."""
        now = time.time()
        held: dict[str, int] = {}
        for run_id, (owner, until) in zip(
            run_ids, await self._fields(run_ids, "lease_owner", "lease_until"), strict=True
        ):
            pid = owner_pid(owner or "")
            if pid is not None and (not live_only or float(until) >= now):
                held[run_id] = pid
        return held

    async def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        rows = await self._fields(run_ids, "status")
        return {run_id: row[0] or "missing" for run_id, row in zip(run_ids, rows, strict=True)}

    async def count(self, run_ids: Sequence[str]) -> Counter[str]:
        return Counter((await self.statuses(run_ids)).values())


async def events_of(client: Client, run_id: str, seconds: float = 20.0) -> list[RunEvent]:
    async with asyncio.timeout(seconds):
        return [event async for event in client.watch(run_id)]


def check_history(
    events: Sequence[RunEvent],
    run_id: str,
    steps: Sequence[str],
    *,
    finishes: Sequence[RunStatus] = (RunStatus.SUCCESS,),
) -> None:
    """A consistent log: dense sequences from 1, one run, exactly the expected finish events
    (the last event is the final one), no cancel, and each step's result recorded once."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), run_id
    assert {e.run_id for e in events} == {run_id}
    ends = [e for e in events if e.type is EventType.WORKFLOW_FINISH]
    assert [e.data["status"] for e in ends] == list(finishes), (run_id, ends)
    assert events[-1] is ends[-1], run_id
    assert not [e for e in events if e.type is EventType.WORKFLOW_CANCELED], run_id
    step_results = [e for e in events if e.type is EventType.STEP_RESULT]
    assert Counter(e.step_id for e in step_results) == Counter(steps), (run_id, step_results)
    assert {e.data["status"] for e in step_results} == {"success"}, run_id


def check_relay(result: RunResult, n: int, hops: int = RELAY_HOPS) -> None:
    assert result.status is RunStatus.SUCCESS, result
    assert isinstance(result.result, dict)
    assert result.result["n"] == n and result.result["acc"] == expected_acc(n, hops), result


def step_pids(result: RunResult) -> dict[str, int]:
    return {sid: int(step.output["pid"]) for sid, step in result.steps.items() if step.output}


@dataclass
class Checked:
    result: RunResult
    events: list[RunEvent]


async def check_runs(
    client: Client, runs: dict[str, int], *, hops: int = RELAY_HOPS, limit: int = 16
) -> dict[str, Checked]:
    """Every run's stored result (SUCCESS, expected value) and event log (consistent)."""
    steps = [f"hop{i}" for i in range(1, hops + 1)]

    async def one(run_id: str, n: int) -> tuple[str, Checked]:
        result = await client.get_result(run_id, timeout=CALL_SECONDS)
        check_relay(result, n, hops)
        events = await events_of(client, run_id)
        check_history(events, run_id, steps)
        assert events[-1].sequence == result.last_sequence, run_id
        assert events[-1].data["result"] == result.result, run_id
        return run_id, Checked(result, events)

    return dict(await gather_limited((one(r, n) for r, n in runs.items()), limit))


def after(events: Sequence[RunEvent], moment: float, kind: EventType | None = None) -> float | None:
    """Seconds from `moment` (wall clock) to the first event after it (of `kind`)."""
    for event in events:
        stamp = event.timestamp.timestamp()
        if stamp > moment and (kind is None or event.type is kind):
            return stamp - moment
    return None


def recovered_at(replicas: Iterable[Replica]) -> dict[str, float]:
    """run id -> earliest time (wall clock) a replica's recovery loop queued it again, from
    the replicas' console logs (`<ISO time>Z WARNING ...: recovering run <id>: ...`)."""
    found: dict[str, float] = {}
    for replica in replicas:
        for line in replica.log.splitlines():
            stamp, _, rest = line.partition(" ")
            if "recovering run " not in rest:
                continue
            run_id = rest.split("recovering run ", 1)[1].split(":", 1)[0]
            with contextlib.suppress(ValueError):
                moment = datetime.fromisoformat(stamp).timestamp()
                found[run_id] = min(found.get(run_id, moment), moment)
    return found


def restart_reasons(events: Sequence[RunEvent]) -> list[str]:
    return [str(e.data["reason"]) for e in events if e.type is EventType.WORKFLOW_START]


# -- 1. SIGKILL one of three replicas under a 300-run batch ----------------------------------
BATCH = 300


async def test_sigkill_one_of_three_replicas_loses_and_duplicates_nothing(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    prefix = new_prefix("kill")
    flags = serve_flags(redis_server, prefix, "--max-concurrent-runs", "16")
    replicas = await start_replicas(serve, 3, *flags)
    victim, survivors = replicas[0], replicas[1:]
    peek = Peek(redis_server, prefix)
    runs = {f"kill-{i:03d}": i for i in range(BATCH)}
    run_ids = list(runs)
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(110):
        stack.push_async_callback(peek.close)
        clients = await connect_all(stack, replicas)
        began = time.monotonic()

        async def start(index: int, run_id: str) -> None:
            started = await clients[index % 3].start_async(
                "relay",
                {"n": runs[run_id], "delay": 0.08},
                run_id=run_id,
                request_id=run_id,
                timeout=CALL_SECONDS,
            )
            assert started.run_id == run_id and started.created

        await gather_limited((start(i, r) for i, r in enumerate(run_ids)), 48)
        started_in = time.monotonic() - began

        # Kill the victim while it holds runs mid-step and the batch is well under way.
        async def progress() -> tuple[int, int]:
            held = await peek.owners(run_ids)
            done = (await peek.count(run_ids))["success"]
            return done, sum(1 for pid in held.values() if pid == victim.process.pid)

        done_at_kill, _ = await until(
            progress,
            lambda p: p[0] >= BATCH // 5 and p[1] > 0,
            seconds=30,
            what="the victim to hold runs with a fifth of the batch done",
        )
        killed_at = kill(victim, signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait, 5)
        # The victim's lease fields stay as it left them until another replica takes over
        # (a lease it renewed lasts at least 2/3 of the TTL more). Its last writes may still
        # sit unread in Redis's socket buffer: let Redis apply them first.
        await asyncio.sleep(0.3)
        orphans = sorted(
            r
            for r, pid in (await peek.owners(run_ids, live_only=False)).items()
            if pid == victim.process.pid
        )
        assert orphans, "the victim held no run when it was killed"

        counts = await until(
            lambda: peek.count(run_ids),
            lambda c: c["success"] + c["failed"] + c["canceled"] == BATCH,
            seconds=60,
            what="every run to finish",
        )
        finished_in = time.monotonic() - began
        assert counts == Counter({"success": BATCH}), counts

        reader = clients[1]
        checked = await check_runs(reader, runs)

        # None lost, none duplicated: the listing holds exactly the batch, once each.
        listed: list[str] = []
        token = ""
        while True:
            page = await reader.list_runs(workflow_id="relay", page_size=100, page_token=token)
            listed += [row.run_id for row in page.runs]
            token = page.next_page_token
            if not token:
                break
        assert sorted(listed) == sorted(run_ids)

    # The victim's runs were finished by the survivors, from where the victim left them.
    survivor_pids = {r.process.pid for r in survivors}
    requeued_at = recovered_at(survivors)
    resumed, first_event, detected, queued, kept_from_victim = [], [], [], [], 0
    for run_id in orphans:
        result, events = checked[run_id].result, checked[run_id].events
        # The victim was dead by then, so another replica wrote the finish.
        assert events[-1].timestamp.timestamp() > killed_at, run_id
        pids = step_pids(result)
        for step_id, step in result.steps.items():
            assert step.ended_at is not None
            if step.ended_at.timestamp() > killed_at:
                assert pids[step_id] in survivor_pids, (run_id, step_id)
        kept_from_victim += any(pid == victim.process.pid for pid in pids.values())
        gap = after(events, killed_at)
        resume = after(events, killed_at, EventType.STEP_START)
        if gap is not None:
            first_event.append(gap)
        if resume is not None:
            resumed.append(resume)
        if run_id in requeued_at and gap is not None:
            detected.append(requeued_at[run_id] - killed_at)
            queued.append(killed_at + gap - requeued_at[run_id])
    reexecuted = sum(
        sum(1 for e in c.events if e.type is EventType.STEP_START) - RELAY_HOPS
        for c in checked.values()
    )
    restarted = sum("restart" in restart_reasons(c.events) for c in checked.values())
    # Runs the victim had taken from the queue but not leased yet are not orphans by lease:
    # housekeeping queues them again after a lease's time (see the test below).
    late = {
        run_id: (
            round(c.events[-1].timestamp.timestamp() - killed_at, 1),
            "leased by the victim" if run_id in orphans else "taken by the victim, unleased",
        )
        for run_id, c in checked.items()
        if c.events[-1].timestamp.timestamp() > killed_at + 10
    }

    report(
        f"SIGKILL 1 of 3 replicas: {BATCH} runs started in {started_in:.1f}s, all settled "
        f"{finished_in:.1f}s after the first start; killed with {done_at_kill} done and "
        f"{len(orphans)} held by the victim; lost 0, duplicated 0, failed 0"
    )
    report(
        f"SIGKILL recovery (lease-ttl {LEASE_TTL}s): kill -> next event on an orphaned run "
        f"{summary(first_event)}; kill -> next step-start {summary(resumed)}"
    )
    report(
        f"SIGKILL recovery breakdown: kill -> requeued by a survivor's recovery loop "
        f"{summary(detected)}; requeued -> taken up again (waits behind the queued backlog) "
        f"{summary(queued)}"
    )
    report(
        f"SIGKILL: {restarted} runs restarted, {kept_from_victim} orphans kept steps the victim "
        f"recorded, {reexecuted} step executions repeated (at-least-once); runs that "
        f"finished over 10 s after the kill: {late or 'none'}"
    )


# -- 2. a stalled replica (SIGSTOP) past its lease cannot write -----------------------------
async def test_sigstopped_replica_is_fenced_after_takeover(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    prefix = new_prefix("fence")
    flags = serve_flags(redis_server, prefix)
    peek = Peek(redis_server, prefix)
    stalled = await asyncio.to_thread(serve, *flags)
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        stack.push_async_callback(peek.close)
        (via_stalled,) = await connect_all(stack, [stalled])
        run = await via_stalled.start_async("stalling", {"seconds": 3.0}, timeout=CALL_SECONDS)
        run_id = run.run_id
        seen: list[RunEvent] = []
        async with asyncio.timeout(10):
            async for event in via_stalled.watch(run_id):
                seen.append(event)
                if event.type is EventType.STEP_START and event.step_id == "stall":
                    break
        assert (await peek.owners([run_id])).get(run_id) == stalled.process.pid
        stopped_at = kill(stalled, signal.SIGSTOP)

        taker = await asyncio.to_thread(serve, *flags)
        taker_ready = time.time()
        (via_taker,) = await connect_all(stack, [taker])
        # Follow the log on the new replica until it runs the stalled step itself.
        async with asyncio.timeout(20):
            async for event in via_taker.watch(run_id, after_sequence=seen[-1].sequence):
                seen.append(event)
                if event.type is EventType.STEP_START and event.step_id == "stall":
                    break
        took_over_at = seen[-1].timestamp.timestamp()
        requeued = recovered_at([taker]).get(run_id)
        assert (await peek.owners([run_id])).get(run_id) == taker.process.pid
        # The stalled replica wakes up with its step overdue and its lease long gone.
        kill(stalled, signal.SIGCONT)

        await until(
            lambda: asyncio.to_thread(lambda: stalled.log),
            lambda log: f"lost the lease on run {run_id}" in log,
            seconds=15,
            what="the stalled replica's write to be refused",
        )
        result = await via_taker.get_result(run_id, wait=15, timeout=20)
        events = await events_of(via_taker, run_id)

    assert result.status is RunStatus.SUCCESS, result
    # Only the new holder's results were recorded.
    assert result.result == {"stalled_pid": taker.process.pid, "pid": taker.process.pid}
    assert step_pids(result) == {"stall": taker.process.pid, "after_stall": taker.process.pid}
    check_history(events, run_id, ["stall", "after_stall"])
    assert restart_reasons(events) == ["start", "restart"]
    assert [e.step_id for e in events if e.type is EventType.STEP_START] == [
        "stall",
        "stall",
        "after_stall",
    ]
    stall_result = next(e for e in events if e.type is EventType.STEP_RESULT)
    assert stall_result.data["output"]["pid"] == taker.process.pid
    assert stalled.process.poll() is None, "the stalled replica should carry on after SIGCONT"
    report(
        f"SIGSTOP fencing: taken over {took_over_at - stopped_at:.2f}s after the stop "
        f"(lease-ttl {LEASE_TTL}s; requeued after "
        f"{'n/a' if requeued is None else f'{requeued - stopped_at:.2f}s'}, the new replica "
        f"was serving {taker_ready - stopped_at:.2f}s after the stop); the stalled "
        f"replica's step-result was refused (LeaseLost); log dense with 1 step-result per "
        f"step and 1 finish"
    )


# -- 2b. Restart after a SIGKILL answers the recovering pass ---------------------------------
async def test_restart_after_a_kill_answers_with_the_recovering_pass(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    """A replica dies mid-step; once its lease expires the survivor's recovery re-drives the
    run. A Restart sent to the survivor while that pass runs waits for it and answers its
    result, instead of refusing the run as held by a live replica."""
    prefix = new_prefix("restart")
    peek = Peek(redis_server, prefix)
    victim, survivor = await start_replicas(serve, 2, *serve_flags(redis_server, prefix))
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        stack.push_async_callback(peek.close)
        via_victim, via_survivor = await connect_all(stack, [victim, survivor])
        run = await via_victim.start_async("stalling", {"seconds": 3.0}, timeout=CALL_SECONDS)
        run_id = run.run_id
        async with asyncio.timeout(10):
            async for event in via_survivor.watch(run_id):
                if event.type is EventType.STEP_START and event.step_id == "stall":
                    break
        assert (await peek.owners([run_id])).get(run_id) == victim.process.pid
        killed_at = kill(victim, signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait, 5)

        await until(
            lambda: peek.owners([run_id]),
            lambda held: held.get(run_id) == survivor.process.pid,
            seconds=20,
            what="the survivor's recovery to take the run over",
        )
        taken_at = time.time()
        result = await via_survivor.restart(run_id)
        answered_at = time.time()
        events = await events_of(via_survivor, run_id)

    assert result.status is RunStatus.SUCCESS, result
    pid = survivor.process.pid
    assert result.result == {"stalled_pid": pid, "pid": pid}
    assert step_pids(result) == {"stall": pid, "after_stall": pid}
    check_history(events, run_id, ["stall", "after_stall"])
    # One recovery pass, which the restart waited for: it started no pass of its own.
    assert restart_reasons(events) == ["start", "restart"]
    assert [e.step_id for e in events if e.type is EventType.STEP_START] == [
        "stall",
        "stall",
        "after_stall",
    ]
    report(
        f"Restart after SIGKILL: recovery took the run {taken_at - killed_at:.2f}s after the "
        f"kill (lease-ttl {LEASE_TTL}s); Restart answered SUCCESS "
        f"{answered_at - taken_at:.2f}s later, with the recovering pass's result"
    )


# -- 3. SIGTERM drains: in-flight runs are handed over, never canceled -----------------------
async def test_sigterm_drain_hands_runs_to_the_other_replica(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    prefix = new_prefix("drain")
    grace = 0.2
    flags = serve_flags(
        redis_server, prefix, "--max-concurrent-runs", "12", "--shutdown-grace", str(grace)
    )
    leaving, staying = await start_replicas(serve, 2, *flags)
    peek = Peek(redis_server, prefix)
    runs = {f"drain-{i:02d}": i for i in range(48)}
    run_ids = list(runs)
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        stack.push_async_callback(peek.close)
        clients = await connect_all(stack, [leaving, staying])

        async def start(index: int, run_id: str) -> None:
            await clients[index % 2].start_async(
                "relay", {"n": runs[run_id], "delay": 0.25}, run_id=run_id, timeout=CALL_SECONDS
            )

        await gather_limited((start(i, r) for i, r in enumerate(run_ids)), 32)

        async def held_by_leaving() -> tuple[list[str], int]:
            """The runs the leaver holds, and the fewest hops any of them has recorded."""
            held = await peek.owners(run_ids)
            mine = [r for r, pid in held.items() if pid == leaving.process.pid]
            results = [await clients[1].get_result(r, timeout=CALL_SECONDS) for r in mine]
            hops = [sum(s.status.value == "success" for s in r.steps.values()) for r in results]
            return mine, min(hops, default=RELAY_HOPS)

        # SIGTERM while the leaver holds runs, one of them with at least two 0.25 s hops to
        # go: longer than the grace, so that one must be handed back.
        in_flight, _ = await until(
            held_by_leaving,
            lambda state: len(state[0]) >= 4 and state[1] <= 1,
            seconds=20,
            what="runs early in flight on the leaver",
        )
        termed_at = time.time()
        code = await asyncio.to_thread(leaving.stop)
        exited_at = time.time()
        assert code == 0, leaving.log
        assert "stopped" in leaving.log, leaving.log
        # Handed back means released at once, not left to expire.
        left_held = [
            r
            for r, pid in (await peek.owners(run_ids, live_only=False)).items()
            if pid == leaving.process.pid
        ]
        assert not left_held, f"leases the leaver did not release: {left_held}"

        counts = await until(
            lambda: peek.count(run_ids),
            lambda c: c["success"] + c["failed"] + c["canceled"] == len(runs),
            seconds=30,
            what="every run to finish",
        )
        assert counts == Counter({"success": len(runs)}), counts
        checked = await check_runs(clients[1], runs)

    handed_back: list[str] = []
    handover: list[float] = []
    finished_in_grace = 0
    for run_id in in_flight:
        result, events = checked[run_id].result, checked[run_id].events
        finish = events[-1].timestamp.timestamp()
        if int(result.result["pid"]) == leaving.process.pid:
            # Finished by the leaver within its grace period, before it exited.
            assert finish <= exited_at, run_id
            finished_in_grace += 1
            continue
        assert int(result.result["pid"]) == staying.process.pid, (run_id, result.result)
        handed_back.append(run_id)
        gap = after(events, termed_at, EventType.WORKFLOW_START)
        assert gap is not None and restart_reasons(events)[-1] == "restart", run_id
        handover.append(gap)
    # Nothing the leaver recorded after it exited.
    for c in checked.values():
        for step_id, pid in step_pids(c.result).items():
            ended = c.result.steps[step_id].ended_at
            if pid == leaving.process.pid:
                assert ended is not None and ended.timestamp() <= exited_at
    assert handed_back, "no run was in flight past the grace period"
    report(
        f"SIGTERM drain (grace {grace}s): exited in {exited_at - termed_at:.2f}s with "
        f"{len(in_flight)} runs in flight: {finished_in_grace} finished within the grace, "
        f"{len(handed_back)} handed back and finished by the other replica; 0 canceled; "
        f"SIGTERM -> restart on the other replica {summary(handover)}"
    )


# -- 4. Redis restarted, and Redis unreachable --------------------------------------------
class PrivateRedis:
    """A redis-server of the test's own, which it may stop, restart (same port, same AOF
    directory), pause (SIGSTOP) and continue. Stopped by pid."""

    def __init__(self, workdir: Path, *, appendonly: bool) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.process, self.port = start_redis(workdir, appendonly=appendonly)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
        stop_process(self.process)

    def restart(self, down_for: float = 0.0) -> None:
        """SIGTERM (Redis writes out its AOF), `down_for` seconds without a server, then a
        new one on the same port and directory."""
        self.stop()
        time.sleep(down_for)
        self.process, _ = start_redis(self.workdir, self.port, appendonly=self.appendonly)

    def pause(self) -> float:
        sent = time.monotonic()
        os.kill(self.process.pid, signal.SIGSTOP)
        return sent

    def resume(self) -> float:
        sent = time.monotonic()
        os.kill(self.process.pid, signal.SIGCONT)
        return sent


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = PrivateRedis(workdir, appendonly=True)
    try:
        yield server
    finally:
        server.stop()


async def test_redis_restart_with_aof_loses_no_acknowledged_run(
    serve: Launcher, private_redis: PrivateRedis, report: Report
) -> None:
    prefix = new_prefix("aof")
    replicas = await start_replicas(serve, 2, *serve_flags(private_redis.url, prefix))
    peek = Peek(private_redis.url, prefix)
    acknowledged: dict[str, int] = {}
    refused: dict[str, str] = {}
    refused_in: list[float] = []
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(90):
        stack.push_async_callback(peek.close)
        clients = await connect_all(stack, replicas)

        async def start(index: int) -> None:
            run_id = f"aof-{index:03d}"
            began = time.monotonic()
            try:
                await clients[index % 2].start_async(
                    "relay", {"n": index, "delay": 0.1}, run_id=run_id, timeout=8
                )
            except SteplineError as err:
                refused[run_id] = err.code.name
                refused_in.append(time.monotonic() - began)
            else:
                acknowledged[run_id] = index

        # Starts keep arriving, one every 25 ms, before, during and after the restart.
        starts: list[asyncio.Task[None]] = []

        async def feed() -> None:
            for index in range(120):
                starts.append(asyncio.create_task(start(index)))
                await asyncio.sleep(0.025)

        feeding = asyncio.create_task(feed())
        await asyncio.sleep(1.0)
        down_at = time.monotonic()
        await asyncio.to_thread(private_redis.restart, 1.0)
        up_at = time.monotonic()
        await feeding
        await asyncio.gather(*starts)
        assert acknowledged, refused

        ids = list(acknowledged)
        counts = await until(
            lambda: peek.count(ids),
            lambda c: c["success"] + c["failed"] + c["canceled"] == len(ids),
            seconds=45,
            what="every acknowledged run to finish",
        )
        settled_at = time.monotonic()
        assert counts == Counter({"success": len(ids)}), counts
        checked = await check_runs(clients[0], acknowledged)

        # A refused start left nothing behind, or a run that also finished cleanly.
        recorded_anyway = 0
        for run_id in refused:
            try:
                result = await clients[0].get_result(run_id, wait=35, timeout=40)
            except RunNotFound:
                continue
            recorded_anyway += 1
            check_relay(result, int(run_id.removeprefix("aof-")))
            check_history(await events_of(clients[0], run_id), run_id, RELAY_STEPS)

    restarted = sum("restart" in restart_reasons(c.events) for c in checked.values())
    report(
        f"Redis restart (AOF): down {up_at - down_at:.2f}s; {len(acknowledged)} starts "
        f"acknowledged, all finished SUCCESS (lost 0; {restarted} recovered mid-run); "
        f"{len(refused)} refused {sorted(Counter(refused.values()).items())} in "
        f"{summary(refused_in)}, of which "
        f"{recorded_anyway} were recorded anyway; all settled {settled_at - up_at:.1f}s "
        f"after Redis was back"
    )
    # Refused while Redis was down or still loading its AOF: UNAVAILABLE, never INTERNAL.
    assert set(refused.values()) <= {"UNAVAILABLE"}, refused


@dataclass
class Probe:
    name: str
    code: str
    seconds: float


async def probe_call(name: str, call: Awaitable[Any]) -> Probe:
    began = time.monotonic()
    try:
        await call
    except SteplineError as err:
        code = err.code.name
    except TimeoutError:
        code = "NO_ANSWER_BY_DEADLINE"
    else:
        code = "OK"
    return Probe(name, code, time.monotonic() - began)


OUTAGE_SECONDS = 6.0
OUTAGE_DEADLINE = 8.0  # call deadline of the RPCs made while Redis is paused
SHORT_DEADLINE = 2.0  # a deadline shorter than the store's command timeout (5 s)


async def test_redis_outage_answers_unavailable_and_replicas_carry_on(
    serve: Launcher, private_redis: PrivateRedis, report: Report
) -> None:
    prefix = new_prefix("outage")
    replicas = await start_replicas(serve, 2, *serve_flags(private_redis.url, prefix))
    peek = Peek(private_redis.url, prefix)
    runs = {f"outage-{i:02d}": i for i in range(20)}
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(90):
        stack.push_async_callback(peek.close)
        clients = await connect_all(stack, replicas)
        for index, (run_id, n) in enumerate(runs.items()):
            await clients[index % 2].start_async(
                "relay", {"n": n, "delay": 0.1}, run_id=run_id, timeout=CALL_SECONDS
            )
        known = next(iter(runs))
        await until(lambda: peek.owners(list(runs)), bool, seconds=10, what="runs to be in flight")

        paused_at = private_redis.pause()

        def calls(i: int, client: Client) -> list[tuple[str, Awaitable[Any]]]:
            return [
                ("GetExecutionResult", client.get_result(known, timeout=OUTAGE_DEADLINE)),
                (
                    "StartAsync",
                    client.start_async(
                        "relay",
                        {"n": 0, "delay": 0.1},
                        run_id=f"during-outage-{i}",
                        timeout=OUTAGE_DEADLINE,
                    ),
                ),
                (
                    "GetExecutionResult(wait=3)",
                    client.get_result(known, wait=3, timeout=OUTAGE_DEADLINE),
                ),
                ("Cancel", asyncio.wait_for(client.cancel(known), OUTAGE_DEADLINE)),
                ("ListRuns", asyncio.wait_for(client.list_runs(), OUTAGE_DEADLINE)),
                (
                    "Watch",
                    asyncio.wait_for(_drain(client.watch(known, reconnect=False)), OUTAGE_DEADLINE),
                ),
                # Shorter than the store's own command timeout: honoured too, no hang past it.
                (
                    f"GetExecutionResult(deadline {SHORT_DEADLINE}s)",
                    client.get_result(known, timeout=SHORT_DEADLINE),
                ),
            ]

        # Every kind of call, on both replicas, while Redis answers nothing at all.
        answered = await asyncio.gather(
            *(
                probe_call(f"{name}@{i}", call)
                for i, client in enumerate(clients)
                for name, call in calls(i, client)
            )
        )
        probes = [p for p in answered if "deadline" not in p.name]
        short = [p for p in answered if "deadline" in p.name]
        not_serving = [not await asyncio.to_thread(healthy, r.target, 1.0) for r in replicas]
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - paused_at)))
        resumed_at = private_redis.resume()
        outage = resumed_at - paused_at

        # Carrying on: health SERVING again, and a new run goes through on each replica.
        async def serving() -> list[bool]:
            return [await asyncio.to_thread(healthy, r.target, 1.0) for r in replicas]

        await until(serving, all, seconds=20, what="both replicas to report SERVING")
        serving_after = time.monotonic() - resumed_at
        fresh = {}
        for i, client in enumerate(clients):
            started = await client.start_async(
                "relay", {"n": 100 + i, "delay": 0.0}, timeout=CALL_SECONDS
            )
            done = await client.get_result(started.run_id, wait=20, timeout=25)
            check_relay(done, 100 + i)
            fresh[started.run_id] = 100 + i
        carried_on = time.monotonic() - resumed_at

        ids = list(runs)
        counts = await until(
            lambda: peek.count(ids),
            lambda c: c["success"] + c["failed"] + c["canceled"] == len(ids),
            seconds=40,
            what="the runs in flight during the outage to finish",
        )
        assert counts == Counter({"success": len(ids)}), counts
        checked = await check_runs(clients[0], runs | fresh)

        # Starts answered UNAVAILABLE: did any of them leave a run behind?
        half_written = []
        for probe in probes:
            if probe.name.startswith("StartAsync") and probe.code != "OK":
                run_id = f"during-outage-{probe.name.rsplit('@', 1)[1]}"
                with contextlib.suppress(RunNotFound):
                    await clients[0].get_result(run_id, timeout=CALL_SECONDS)
                    half_written.append(run_id)

    for probe in probes:
        assert probe.code == "UNAVAILABLE", probes
        assert probe.seconds < OUTAGE_DEADLINE, probes
    for probe in short:
        assert probe.code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), short
        assert probe.seconds < SHORT_DEADLINE + 0.5, short
    assert all(not_serving), "health should be NOT_SERVING while Redis is paused"
    restarted = sum("restart" in restart_reasons(c.events) for c in checked.values())
    report(
        f"Redis paused (SIGSTOP) {outage:.1f}s: {len(probes)} RPCs answered UNAVAILABLE in "
        f"{summary([p.seconds for p in probes])} (deadline {OUTAGE_DEADLINE}s; "
        + ", ".join(f"{p.name} {p.seconds:.2f}s" for p in probes)
        + "); with a "
        + ", ".join(f"{p.name}: {p.code} in {p.seconds:.2f}s" for p in short)
    )
    report(
        f"Redis back: health SERVING after {serving_after:.2f}s, a new run through each "
        f"replica done {carried_on:.2f}s after SIGCONT (no restart); {len(runs)} runs in "
        f"flight all SUCCESS ({restarted} recovered); starts refused with UNAVAILABLE but "
        f"recorded anyway: {half_written or 'none'}"
    )


async def _drain(events: AsyncIterator[RunEvent]) -> None:
    async for _ in events:
        pass


# -- 5. a Stream consumer reconnects across a replica kill ---------------------------------
async def test_stream_reconnects_across_a_replica_kill_exactly_once(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    prefix = new_prefix("stream")
    flags = serve_flags(redis_server, prefix)
    victim, heir = await start_replicas(serve, 2, *flags)
    peek = Peek(redis_server, prefix)
    # Pause the heir until the victim has taken every run; its blocked queue read must
    # expire first (the worker polls with a 1 s block), so nothing is delivered to it.
    kill(heir, signal.SIGSTOP)
    await asyncio.sleep(1.3)
    streams: dict[int, list[RunEvent]] = {i: [] for i in range(4)}
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        stack.push_async_callback(peek.close)
        # One channel over both replicas: pick_first uses the victim, then falls back.
        client = await stack.enter_async_context(
            await Client.connect(f"ipv4:{victim.target},{heir.target}")
        )

        async def consume(n: int) -> None:
            async for event in client.stream("long_relay", {"n": n, "delay": 0.25}):
                streams[n].append(event)

        consumers = [asyncio.create_task(consume(n)) for n in streams]
        stack.push_async_callback(_cancel_all, consumers)

        def progressed() -> bool:
            return all(
                sum(e.type is EventType.STEP_RESULT for e in seen) >= 2 for seen in streams.values()
            )

        await until(
            lambda: asyncio.sleep(0, progressed()), bool, seconds=15, what="two hops per run"
        )
        run_ids = {n: seen[0].run_id for n, seen in streams.items()}
        held = await peek.owners(list(run_ids.values()))
        assert set(held.values()) == {victim.process.pid}, held
        kill(heir, signal.SIGCONT)
        killed_at = kill(victim, signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait, 5)
        before_kill = {n: len(seen) for n, seen in streams.items()}
        async with asyncio.timeout(30):
            await asyncio.gather(*consumers)

        replays = {n: await events_of(client, run_id) for n, run_id in run_ids.items()}
        results = {
            n: await client.get_result(run_id, timeout=CALL_SECONDS)
            for n, run_id in run_ids.items()
        }

    recovery = []
    for n, seen in streams.items():
        run_id = run_ids[n]
        # Exactly once: dense, no repeat, ends with the finish, and equal to the stored log.
        assert [e.sequence for e in seen] == list(range(1, len(seen) + 1)), n
        assert seen == replays[n], n
        check_history(seen, run_id, LONG_RELAY_STEPS)
        assert len(seen) > before_kill[n], "nothing arrived after the kill"
        check_relay(results[n], n, LONG_RELAY_HOPS)
        assert results[n].result["pid"] == heir.process.pid
        assert restart_reasons(seen) == ["start", "restart"]
        gap = after(seen, killed_at, EventType.WORKFLOW_START)
        if gap is not None:
            recovery.append(gap)
    report(
        f"Stream across SIGKILL: {len(streams)} streams, "
        f"{sum(before_kill.values())} events before the kill and "
        f"{sum(len(s) for s in streams.values()) - sum(before_kill.values())} after, "
        f"0 missing, 0 repeated; kill -> run resumed on the other replica {summary(recovery)}"
    )


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- 6. 50 concurrent resumes of one suspension across three replicas ------------------------
async def test_concurrent_resumes_across_replicas_one_wins(
    serve: Launcher, redis_server: str, report: Report
) -> None:
    prefix = new_prefix("resume")
    replicas = await start_replicas(serve, 3, *serve_flags(redis_server, prefix))
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        clients = await connect_all(stack, replicas)
        parked = await clients[0].start("balloting", {"hold": 1.5}, timeout=CALL_SECONDS)
        assert parked.status is RunStatus.SUSPENDED, parked
        run_id = parked.run_id

        began = time.monotonic()
        outcomes = await asyncio.gather(
            *(
                clients[voter % 3].resume(
                    run_id, {"voter": voter}, label="ballot", timeout=CALL_SECONDS
                )
                for voter in range(50)
            ),
            return_exceptions=True,
        )
        raced_in = time.monotonic() - began
        events = await events_of(clients[2], run_id)
        stored = await clients[1].get_result(run_id, timeout=CALL_SECONDS)

    winners = [o for o in outcomes if isinstance(o, RunResult)]
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(winners) == 1, outcomes
    assert all(
        isinstance(o, ResumeAlreadyClaimed) and o.code is grpc.StatusCode.ABORTED for o in losers
    ), [repr(o) for o in losers if not isinstance(o, ResumeAlreadyClaimed)]
    assert len(losers) == 49
    won = winners[0]
    assert won.status is RunStatus.SUCCESS, won
    assert stored.result == won.result
    voter = won.result["voter"]
    assert isinstance(voter, int) and won.steps["ballot"].resume_payload == {"voter": voter}
    check_history(
        events,
        run_id,
        ["ballot", "tally"],
        finishes=(RunStatus.SUSPENDED, RunStatus.SUCCESS),
    )
    assert restart_reasons(events) == ["start", "resume"]
    assert [e.step_id for e in events if e.type is EventType.STEP_START] == [
        "ballot",
        "ballot",
        "tally",
    ]
    report(
        f"50 concurrent resumes over 3 replicas: 1 proceeded (voter {voter}), "
        f"49 ABORTED, one finish; all answered in {raced_in:.2f}s"
    )


# -- a queued run delivered to a replica that dies before taking its lease ------------------
async def test_queued_run_delivered_to_a_replica_that_dies_is_taken_over(
    serve: Launcher, private_redis: PrivateRedis, report: Report
) -> None:
    prefix = new_prefix("hostage")
    flags = serve_flags(private_redis.url, prefix, "--max-concurrent-runs", "1")
    replicas = await start_replicas(serve, 2, *flags)
    peek = Peek(private_redis.url, prefix)
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
        stack.push_async_callback(peek.close)
        clients = await connect_all(stack, replicas)
        # Fill one replica's only slot; the other is idle, parked in its blocking queue read.
        busy = await clients[0].start_async("stalling", {"seconds": 4.0}, timeout=CALL_SECONDS)
        holder = await until(
            lambda: peek.owners([busy.run_id]), bool, seconds=10, what="the busy run's lease"
        )
        full = next(i for i, r in enumerate(replicas) if r.process.pid == holder[busy.run_id])
        idle = replicas[1 - full]
        # A queue read the full replica began before its slot filled ends within its 1 s
        # block; after that it waits for a free slot and reads nothing.
        await asyncio.sleep(1.2)

        async def blocked_readers() -> int:
            clients_now = await peek.redis.client_list()
            return sum(1 for c in clients_now if c.get("cmd") == "xreadgroup" and "b" in c["flags"])

        for _ in range(40):  # stop the idle replica while its queue read is pending in Redis
            kill(idle, signal.SIGSTOP)
            if await blocked_readers() == 1:
                break
            kill(idle, signal.SIGCONT)
            await asyncio.sleep(0.05)
        else:
            pytest.fail("could not catch the idle replica in its blocking queue read")

        # The full replica cannot take it here: it goes through the queue, to the idle one.
        queued = await clients[full].start_async(
            "relay", {"n": 5, "delay": 0.0}, timeout=CALL_SECONDS
        )
        pending = await peek.redis.xpending(peek.keys.queue, peek.keys.group)
        consumers = {owner_pid(c["name"]): int(c["pending"]) for c in pending["consumers"]}
        if consumers.get(idle.process.pid) != 1:
            pytest.fail(f"the queued run was not delivered to the idle replica: {pending}")
        killed_at = kill(idle, signal.SIGKILL)
        await asyncio.to_thread(idle.process.wait, 5)

        # The full replica is free again within ~3 s; a lease-like bound would be ~2 s more.
        result = await clients[full].get_result(queued.run_id, wait=10, timeout=15)
        report(
            f"queued run delivered to a replica killed before acquiring it: "
            f"{result.status} {time.time() - killed_at:.1f}s after the kill"
        )
    assert result.status is RunStatus.SUCCESS, result


# -- a Redis still loading its dataset (restart with AOF) is unavailable, not an error --------
async def test_redis_loading_its_dataset_is_store_unavailable() -> None:
    """While a restarted Redis loads its AOF it answers every command `-LOADING ...`; the
    store must report that as StoreUnavailable (UNAVAILABLE over gRPC), not let a bare
    ResponseError through (INTERNAL). A stand-in server answers that way on loopback."""

    async def loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One `-LOADING` reply per command (a RESP array of bulk strings)."""
        with contextlib.closing(writer):
            while header := await reader.readline():
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    await reader.readexactly(size + 2)
                writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                await writer.drain()

    server = await asyncio.start_server(loading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix=new_prefix("loading"))
    try:
        async with asyncio.timeout(10):
            with pytest.raises(StoreUnavailable):
                await store.get("some-run")
            with pytest.raises(StoreUnavailable):
                await store.create(Snapshot(run_id="some-run", workflow_id="relay"))
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
