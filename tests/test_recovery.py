"""Runs outlive the process that held them: orphan recovery, Restart, and drain hand-back,
on both stores (replicas in one process share one store)."""

from __future__ import annotations

import asyncio

import pytest

from stepline.client import Client
from stepline.client import EventType as ClientEventType
from stepline.client import RunStatus as ClientStatus
from stepline.server.app import Server
from stepline.server.errors import FailedPrecondition, ShuttingDown
from stepline.server.events import Event, StepStart, WorkflowStart
from stepline.server.model import RunStatus, StepRecord, StepStatus, now
from stepline.server.runs import RestartParams, RunService, StartParams
from stepline.server.settings import Settings
from stepline.server.store import Store
from stepline.server.worker import Worker
from tests import flows
from tests.engine_harness import kinds, registry


async def orphan(store: Store, service: RunService, workflow_id: str, value: int) -> str:
    """A run whose replica died mid-step: leased, RUNNING, first step started, never renewed."""
    started = await service.start(StartParams(workflow_id, {"value": value}))
    lease = await store.acquire(started.run_id, "dead-replica", ttl=0.3)
    assert lease is not None
    snap = lease.run.snapshot
    snap.status = RunStatus.RUNNING
    snap.steps["add_one"] = StepRecord(
        status=StepStatus.RUNNING, payload={"value": value}, started_at=now()
    )
    snap.active_steps["add_one"] = [0]
    events = [
        Event(data=WorkflowStart(workflow_id=workflow_id, reason="start")),
        Event(data=StepStart(step_id="add_one", payload={"value": value})),
    ]
    await store.write(snap, events, fence=lease.fence)
    return started.run_id


async def test_an_orphaned_run_is_recovered_after_its_lease_expires(store: Store) -> None:
    service = RunService(store, registry())
    run_id = await orphan(store, service, "sequence", 1)
    worker = Worker(store, registry(), lease_ttl=1.0, poll_block=0.1)
    await worker.start()
    try:
        done = await service.wait(run_id, timeout=10)
    finally:
        await worker.stop(grace=1.0)
    snap = done.snapshot
    assert snap.status is RunStatus.SUCCESS and snap.result == {"value": 4}
    events = await store.read_events(run_id, 0)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.data.reason for e in events if isinstance(e.data, WorkflowStart)] == [
        "start",
        "restart",
    ]
    assert kinds(events).count("step-result:add_one") == 1  # recorded exactly once


async def test_restart_redrives_an_orphan_and_refuses_a_held_run(store: Store) -> None:
    service = RunService(store, registry())
    run_id = await orphan(store, service, "sequence", 2)
    with pytest.raises(FailedPrecondition) as info:
        await service.restart(RestartParams(run_id))  # the dead replica's lease is live
    assert info.value.reason == "RUN_HELD"
    await asyncio.sleep(0.4)
    worker = Worker(store, registry(), lease_ttl=5.0, poll_block=0.1)
    await worker.start()
    try:
        done = await asyncio.wait_for(service.restart(RestartParams(run_id)), 10)
    finally:
        await worker.stop(grace=1.0)
    assert done.snapshot.status is RunStatus.SUCCESS and done.snapshot.result == {"value": 6}


async def test_drain_ends_watches_with_shutting_down(store: Store) -> None:
    service = RunService(store, registry())
    started = await service.start(StartParams("sequence", {"value": 1}))  # no worker: pending

    async def follow() -> list[Event]:
        return [e async for e in service.watch(started.run_id)]

    watching = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    service.drain()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(watching, 5)


async def test_shutdown_hands_runs_to_another_replica_and_watch_follows(store: Store) -> None:
    settings = Settings(host="127.0.0.1", port=0, workflows=["tests.flows"], lease_ttl=1.0)
    first = await Server.start(settings, store=store)
    second = await Server.start(settings, store=store)
    second.worker.max_concurrent_runs = 1
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    client = await Client.connect(target)
    try:
        # Only the first replica takes work until it stops: the second's worker is paused.
        await second.worker.stop(grace=0)
        run = await client.start_async("cancellable", {"seconds": 1.5})
        seen: list[int] = []
        events = client.watch(run.run_id)
        async for event in events:
            seen.append(event.sequence)
            if event.type is ClientEventType.STEP_START:
                break
        await first.stop(grace=0.1)  # the step is still running: hand it back
        second.worker = Worker(store, second.registry, lease_ttl=1.0, poll_block=0.1)
        await second.worker.start()
        async for event in events:  # reconnects to the second replica from its cursor
            seen.append(event.sequence)
        assert seen == list(range(1, len(seen) + 1))
        result = await client.get_result(run.run_id)
        assert result.status is ClientStatus.SUCCESS  # handed over, never canceled
        assert result.result == {"canceled": False}
        # Steps are at-least-once: the handed-back step ran again on the second replica.
        assert flows.SEEN[run.run_id] == ["waiting", "waiting", "never_after_cancel"]
    finally:
        await client.close()
        await second.stop(grace=1)


async def test_restart_of_a_run_this_replica_recovered_answers_that_pass(store: Store) -> None:
    """The dead replica's lease expires, this replica's recovery takes the run over, and a
    Restart sent to this replica meanwhile waits for that pass instead of refusing the run
    as held (as a Start waits for a run its replica executes)."""
    service = RunService(store, registry())
    started = await service.start(StartParams("cancellable", {"seconds": 1.5}))
    run_id = started.run_id
    lease = await store.acquire(run_id, "dead-replica", ttl=0.3)
    assert lease is not None
    snap = lease.run.snapshot
    snap.status = RunStatus.RUNNING
    snap.steps["wait_for_cancel"] = StepRecord(
        status=StepStatus.RUNNING, payload={"seconds": 1.5}, started_at=now()
    )
    snap.active_steps["wait_for_cancel"] = [0]
    start = Event(data=WorkflowStart(workflow_id="cancellable"))
    step = Event(data=StepStart(step_id="wait_for_cancel"))
    await store.write(snap, [start, step], fence=lease.fence)

    settings = Settings(host="127.0.0.1", port=0, workflows=["tests.flows"], lease_ttl=1.0)
    server = await Server.start(settings, store=store)
    client = await Client.connect(server.target)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while server.worker.pass_of(run_id) is None:  # recovery has not taken it over yet
            assert asyncio.get_running_loop().time() < deadline, "the run was not recovered"
            await asyncio.sleep(0.02)
        result = await client.restart(run_id)
        events = [event async for event in client.watch(run_id)]
    finally:
        await client.close()
        await server.stop(grace=1)
    assert result.status is ClientStatus.SUCCESS
    assert result.result == {"canceled": False}
    starts = [e for e in events if e.type is ClientEventType.WORKFLOW_START]
    assert len(starts) == 2  # the original pass and the recovery: the restart added none
    assert flows.SEEN[run_id] == ["waiting", "never_after_cancel"]  # re-run once, not twice


async def test_a_duplicate_queue_entry_leaves_the_pass_in_progress_alone(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Recovery, timers and Restart may queue a run twice. The worker that takes the spare
    entry while its own pass of the run is in progress drops it, and waiters on this replica
    (a Start, a Restart) still follow that pass."""
    worker = Worker(store, registry(), lease_ttl=5.0, poll_block=0.1)
    service = RunService(store, registry(), runner=worker)
    await worker.start()
    try:
        started = await service.start(StartParams("cancellable", {"seconds": 1.0}))
        run_id = started.run_id
        in_progress = worker.pass_of(run_id)
        assert in_progress is not None
        await store.enqueue(run_id)  # the spare entry
        deadline = asyncio.get_running_loop().time() + 5
        while await store.queue_depth() > 0:
            assert asyncio.get_running_loop().time() < deadline, "the entry was never taken"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the spare entry's task acquires nothing and ends
        assert worker.pass_of(run_id) is in_progress and not in_progress.done()
        done = await asyncio.wait_for(service.wait(run_id), 10)
    finally:
        await worker.stop(grace=1.0)
    assert done.snapshot.status is RunStatus.SUCCESS
    assert "engine error" not in caplog.text
