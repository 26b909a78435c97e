"""Quick variants of the reliability suites (`reliability/`, full scale: `python -m reliability
all`), and minimal reproductions of the server bugs those suites found.

Each suite starts its own redis-server and `stepline serve` replicas on loopback and stops them
by pid. These tests assert correctness only — zero lost, zero duplicated, the right final
status for every run, bounded resource growth with generous margins — never timings.

Bugs are listed in `reliability/known.py`; each reproduction below is `xfail(strict=True)`
while its bug is open, so fixing the server turns it into a failure until the bug is marked
fixed there (which also ends the chaos test's allowance for runs lost to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from reliability import flows, known
from reliability.cluster import Cluster
from reliability.run import QUICK_CHAOS, QUICK_LOAD, QUICK_SOAK
from reliability.scenarios import run_chaos, run_load, run_soak
from reliability.traffic import Pool, Traffic, specs
from reliability.verify import Verdict, verify
from stepline.client import Client, EventType, RunStatus, SteplineError
from stepline.server.errors import StoreUnavailable
from stepline.server.events import Event, StepStart
from stepline.server.model import Snapshot, SnapshotImage
from stepline.server.runs import RunService, StartParams
from stepline.server.store import Hold, RedisStore, WriteOutcome
from stepline.server.store.keys import Keys
from stepline.server.worker import Worker
from stepline.server.workflows import Registry

pytestmark = pytest.mark.timeout(300)


def _assert_correct(verdict: Verdict, *, allow_known: bool = False) -> None:
    """Nothing lost, duplicated, wrong, mismatched or extra; with `allow_known`, runs flagged
    because of an open known bug (reliability/known.py) are tolerated, and only those."""
    unexplained = [
        f"{flag.kind}: {flag.outcome.spec.run_id} stored {flag.status or 'nothing'}: "
        f"{flag.problems}"
        for flag in verdict.flagged
        if not (allow_known and known.cause(flag))
    ]
    assert not unexplained, unexplained
    assert verdict.extra_runs == 0, verdict.problems
    assert verdict.completed + verdict.lost == verdict.runs


# -- the suites, small -------------------------------------------------------------------------
async def test_load_quick(tmp_path: Path) -> None:
    report = await run_load(replace(QUICK_LOAD), tmp_path)
    verdict = report.common.verdict
    assert verdict.runs == QUICK_LOAD.runs
    _assert_correct(verdict)
    assert verdict.completed == QUICK_LOAD.runs
    assert set(verdict.statuses) == {
        "rel_ok success",
        "rel_fail failed",
        "rel_approval success",
        "rel_cancel canceled",
    }
    assert not report.common.unexpected
    assert report.common.logs["tracebacks"] == 0


async def test_soak_quick(tmp_path: Path) -> None:
    report = await run_soak(replace(QUICK_SOAK), tmp_path)
    verdict = report.common.verdict
    assert verdict.runs > 50
    _assert_correct(verdict)
    assert not report.watch_problems
    assert report.operations["watch"] > 0 and report.operations["list"] > 0
    failed = [check for check in report.checks if not check.held]
    assert not failed, failed
    assert not report.common.unexpected


async def test_chaos_quick(tmp_path: Path) -> None:
    report = await run_chaos(replace(QUICK_CHAOS), tmp_path)
    assert [f.kind for f in report.faults] == ["pause", "kill", "redis"]
    verdict = report.common.verdict
    assert verdict.runs > 50
    _assert_correct(verdict, allow_known=True)


async def test_verifier_flags_lost_duplicated_wrong_and_extra_runs(tmp_path: Path) -> None:
    """The checks themselves: tamper with a clean store and each kind of damage is found."""
    cluster = Cluster(tmp_path, replicas=1, prefix="rel-verifier")
    try:
        await asyncio.to_thread(cluster.start)
        pool = await Pool.open(cluster.target, 1)
        try:
            traffic = Traffic(pool, budget=30)
            runs = specs("verifier")
            outcomes = [await traffic.drive(next(runs)) for _ in range(8)]
        finally:
            await pool.close()
        admin, keys = cluster.admin(), Keys(cluster.prefix)
        try:
            assert (await verify(admin, cluster.prefix, outcomes)).clean
            lost, doubled, changed = outcomes[0].spec, outcomes[1].spec, outcomes[2].spec
            await admin.delete(keys.run(lost.run_id))
            seq = int(await admin.hget(keys.run(doubled.run_id), "seq") or 0) + 1
            finish = {"type": "workflow-finish", "data": {"status": "success"}, "timestamp": 0}
            await admin.xadd(keys.events(doubled.run_id), {"e": json.dumps(finish)}, id=f"0-{seq}")
            await admin.hset(keys.run(doubled.run_id), "seq", seq)
            snap = json.loads(await admin.hget(keys.run(changed.run_id), "snap") or "{}")
            snap["result"] = {"n": -1}
            await admin.hset(keys.run(changed.run_id), "snap", json.dumps(snap))
            await admin.hset(keys.run("nobody-started-this"), mapping={"snap": "{}"})
            verdict = await verify(admin, cluster.prefix, outcomes)
        finally:
            await admin.aclose()
    finally:
        await asyncio.to_thread(cluster.stop)
    assert verdict.lost == 1 and verdict.of("lost")[0].outcome.spec == lost
    assert verdict.duplicated == 1, verdict.problems
    assert any(changed.run_id in p for p in verdict.problems["wrong"]), verdict.problems
    assert verdict.caller_mismatch == 1, verdict.problems  # the changed result
    assert verdict.extra_runs == 1


# -- reproductions of the bugs found -----------------------------------------------------------
@pytest.fixture
async def one_replica(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, replicas=1, prefix="rel-repro", flags=["--shutdown-grace", "1"])
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.xfail(known.WATCH_HANGS.open, reason=known.WATCH_HANGS.title, strict=True)
async def test_watch_from_the_end_of_a_suspended_run_ends(one_replica: Cluster) -> None:
    async with await Client.connect(one_replica.replicas[0].target) as client:
        parked = await client.start(flows.APPROVAL, {"n": 1}, timeout=10)
        assert parked.status is RunStatus.SUSPENDED
        whole = [e async for e in client.watch(parked.run_id)]  # from 0: ends at the finish
        assert whole[-1].sequence == parked.last_sequence
        try:
            async with asyncio.timeout(3):
                rest = [
                    e
                    async for e in client.watch(parked.run_id, after_sequence=parked.last_sequence)
                ]
        except TimeoutError:
            pytest.fail("Watch from the last event of a suspended run did not end in 3 s")
        assert rest == []


@pytest.mark.xfail(known.CANCEL_LOST.open, reason=known.CANCEL_LOST.title, strict=True)
async def test_cancel_reaches_a_step_while_its_replica_resubscribes(one_replica: Cluster) -> None:
    async with await Client.connect(one_replica.replicas[0].target) as client:
        run = await client.start_async(flows.CANCEL, {"n": 1, "hold_seconds": 30}, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the step that waits for the cancel runs
            seen = await client.get_result(run.run_id, timeout=5)
            if "hold" in seen.steps:
                break
            await asyncio.sleep(0.05)
        admin = one_replica.admin()
        try:  # drop the replica's cancel subscription; it re-subscribes about a second later
            await admin.client_kill_filter(_type="pubsub")
        finally:
            await admin.aclose()
        answer = await client.cancel(run.run_id)
        assert answer.cancel_requested
        final = await client.get_result(run.run_id, wait=10, timeout=15)
    assert final.status is RunStatus.CANCELED, (
        f"still {final.status} 10 s after a cancel that answered cancel_requested=true"
    )


@pytest.mark.xfail(known.LOADING_INTERNAL.open, reason=known.LOADING_INTERNAL.title, strict=True)
async def test_start_while_redis_loads_is_unavailable_not_internal(one_replica: Cluster) -> None:
    admin = one_replica.admin()
    try:  # 3,000 keys in the AOF's RDB base: with a 1 ms delay per key, ~3 s of LOADING
        pipe = admin.pipeline(transaction=False)
        for i in range(3000):
            pipe.set(f"filler:{i}", i)
        await pipe.execute()
        await admin.bgrewriteaof()
        for _ in range(100):  # the rewrite takes well under a second
            await asyncio.sleep(0.1)
            if not (await admin.info("persistence"))["aof_rewrite_in_progress"]:
                break
    finally:
        await admin.aclose()
    codes: Counter[str] = Counter()
    async with await Client.connect(one_replica.replicas[0].target) as client:
        restart = asyncio.create_task(
            asyncio.to_thread(one_replica.restart_redis, key_load_delay_us=1000)
        )
        i = 0
        while not restart.done():
            i += 1
            try:
                await client.start_async(
                    flows.OK, {"n": i}, run_id=f"loading-{i}", request_id="r", timeout=2
                )
                codes["OK"] += 1
            except SteplineError as error:
                codes[error.code.name] += 1
            await asyncio.sleep(0.02)
        await restart
    assert codes["UNAVAILABLE"] > 0, codes  # it did answer while Redis was loading
    assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes


@pytest.mark.xfail(known.FAILED_STEP_RERUN.open, reason=known.FAILED_STEP_RERUN.title, strict=True)
async def test_a_failed_step_is_not_run_again_after_a_crash(tmp_path: Path) -> None:
    flags = ["--shutdown-grace", "1", "--lease-ttl", "1"]
    cluster = Cluster(tmp_path, replicas=1, prefix="rel-repro", flags=flags)
    try:
        await asyncio.to_thread(cluster.start)
        async with await Client.connect(cluster.replicas[0].target) as client:
            # reject_now fails at once and is stored FAILED while linger runs on for 5 s.
            run = await client.start_async("rel_split", {"seconds": 5}, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                seen = await client.get_result(run.run_id, timeout=5)
                if "reject_now" in seen.steps and seen.steps["reject_now"].status == "failed":
                    break
                await asyncio.sleep(0.05)
            assert seen.status is RunStatus.RUNNING, seen
        await asyncio.to_thread(cluster.kill_replica, 0)  # dies with the run unfinished
        await asyncio.to_thread(cluster.start_replica, 0)  # and recovers it
        async with await Client.connect(cluster.replicas[0].target) as client:
            final = await client.get_result(run.run_id, wait=20, timeout=25)
            events = [e async for e in client.watch(run.run_id)]
    finally:
        await asyncio.to_thread(cluster.stop)
    assert final.status is RunStatus.FAILED, final
    results = [
        str(e.data.get("status"))
        for e in events
        if e.type is EventType.STEP_RESULT and e.step_id == "reject_now"
    ]
    assert results == ["failed"], f"reject_now (retries=0) recorded {results}"


@pytest.mark.xfail(
    known.RECOVERY_FALLS_BEHIND.open, reason=known.RECOVERY_FALLS_BEHIND.title, strict=True
)
async def test_a_run_is_recovered_promptly_behind_a_watchdog_backlog(tmp_path: Path) -> None:
    flags = ["--shutdown-grace", "1", "--lease-ttl", "2"]
    cluster = Cluster(tmp_path, replicas=1, prefix="rel-repro", flags=flags)
    keys = Keys(cluster.prefix)
    try:
        await asyncio.to_thread(cluster.start)
        admin = cluster.admin()
        try:
            async with await Client.connect(cluster.replicas[0].target) as client:
                run = await client.start_async(flows.CANCEL, {"n": 1, "hold_seconds": 60})
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # until the holding step runs
                    if "hold" in (await client.get_result(run.run_id, timeout=5)).steps:
                        break
                    await asyncio.sleep(0.05)
            # What 2,000 runs that finished in the last seconds leave in the watchdog (their
            # runs are gone here, which `recover` treats exactly like settled ones).
            past = time.time() - 60
            await admin.zadd(keys.watchdog, {f"finished-{i}": past + i / 1000 for i in range(2000)})
            logged = await admin.xlen(keys.events(run.run_id))
            await asyncio.to_thread(cluster.kill_replica, 0)
            killed = time.monotonic()
            await asyncio.to_thread(cluster.start_replica, 0)
            recovered = None
            while time.monotonic() < killed + 10:  # lease 2 s + a 1 s recovery loop, plenty
                if await admin.xlen(keys.events(run.run_id)) > logged:  # workflow-start restart
                    recovered = time.monotonic() - killed
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.aclose()
    finally:
        await asyncio.to_thread(cluster.stop)
    assert recovered is not None, "not recovered within 10 s of its replica's death"


class _BlipOnHold(RedisStore):
    """A Redis store whose one write carrying the `hold` step's step-start fails, as a write
    does when Redis restarts under it (seen in the chaos suite)."""

    blipped = False

    async def write(
        self,
        snapshot: Snapshot | SnapshotImage,
        events: Sequence[Event] = (),
        *,
        fence: int | None = None,
        expected_version: int | None = None,
        release: bool = False,
        wake_at: float | None = None,
        hold: Hold | None = None,
    ) -> WriteOutcome:
        if not self.blipped and any(
            isinstance(e.data, StepStart) and e.data.step_id == "hold" for e in events
        ):
            self.blipped = True
            raise StoreUnavailable("injected: the connection dropped")
        return await super().write(
            snapshot,
            events,
            fence=fence,
            expected_version=expected_version,
            release=release,
            wake_at=wake_at,
            hold=hold,
        )


@pytest.mark.xfail(known.WRITE_BEHIND_LOST.open, reason=known.WRITE_BEHIND_LOST.title, strict=True)
async def test_a_failed_write_behind_reaches_the_log_while_the_step_runs(
    redis_server: str,
) -> None:
    registry = Registry()
    registry.load_module("reliability.flows")
    store = _BlipOnHold.from_url(redis_server, prefix=f"rel-blip-{uuid.uuid4().hex[:8]}")
    assert isinstance(store, _BlipOnHold)
    worker = Worker(store, registry, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    service = RunService(store, registry, cancel_wait=1.0)
    try:
        started = await service.start(
            StartParams(flows.CANCEL, {"n": 1, "hold_seconds": 20}, run_id="blip")
        )
        seen: list[str] = []
        deadline = time.monotonic() + 5  # the store answers again at once; the lease is held
        while time.monotonic() < deadline and "hold" not in seen:
            events = await store.read_events(started.run_id, 0)
            seen = [e.data.step_id for e in events if isinstance(e.data, StepStart)]
            await asyncio.sleep(0.1)
        assert store.blipped
        assert "hold" in seen, f"step-starts in the log after 5 s: {seen} (the step is running)"
    finally:
        with contextlib.suppress(Exception):
            await service.cancel("blip")
        await worker.stop(grace=1.0)
        await store.close()
