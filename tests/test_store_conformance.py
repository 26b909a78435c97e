"""One suite for every `Store`: each test runs against the memory and the Redis store.

The Redis-only tests at the end cover what the memory store has no notion of: an unreachable
server, blocking reads on a client with a short socket timeout, and the key layout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from stepline.server.errors import (
    InvalidArgument,
    LeaseLost,
    RunNotFound,
    StoreConflict,
    StoreUnavailable,
)
from stepline.server.events import Event, StepOutput, StepStart
from stepline.server.jsonvalue import JSON
from stepline.server.model import (
    ChangeSet,
    IterationRecord,
    RunStatus,
    Snapshot,
    SnapshotImage,
    StepRecord,
    StepStatus,
)
from stepline.server.store import (
    Hold,
    MemoryStore,
    RedisStore,
    RunFilter,
    RunHead,
    Store,
    StoredRun,
    WriteOutcome,
    scripts,
)
from stepline.server.store.keys import Keys, encode
from tests.engine_harness import data_of

PENDING, RUNNING, WAITING = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING
SUSPENDED, SUCCESS = RunStatus.SUSPENDED, RunStatus.SUCCESS
FAILED, CANCELED, PAUSED = RunStatus.FAILED, RunStatus.CANCELED, RunStatus.PAUSED

# Ids that would collide or escape their hash tag under a naive key layout.
TRICKY_IDS = [
    "a", "{a}", "a}", "{a", "{", "}", "{}", "a:events", "run:{a}:events", "a b", " a", "a\nb",
    "*", "a*", "?", "[a]", "%", "%25", "", "ünï ✓",
]  # fmt: skip


def snapshot(
    run_id: str = "run-1",
    *,
    workflow_id: str = "wf",
    resource_id: str = "",
    status: RunStatus = PENDING,
    created_at: float = 1000.0,
    **fields: Any,
) -> Snapshot:
    return Snapshot(
        run_id=run_id,
        workflow_id=workflow_id,
        resource_id=resource_id,
        status=status,
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


def events(*step_ids: str) -> list[Event]:
    return [Event(data=StepStart(step_id=step_id)) for step_id in step_ids]


def step_ids(found: Sequence[Event]) -> list[str]:
    return [data_of(event, StepStart).step_id for event in found]


async def create(store: Store, run_id: str = "run-1", **fields: Any) -> StoredRun:
    outcome = await store.create(snapshot(run_id, **fields))
    assert outcome.created
    return outcome.run


async def held(store: Store, run_id: str = "run-1", *, ttl: float = 30.0) -> int:
    """Create and lease a run; returns the fence."""
    await create(store, run_id)
    lease = await store.acquire(run_id, "worker-1", ttl)
    assert lease is not None
    return lease.fence


async def get(store: Store, run_id: str = "run-1") -> StoredRun:
    stored = await store.get(run_id)
    assert stored is not None
    return stored


# -- create and get --------------------------------------------------------------------------


async def test_create_records_a_pending_run(store: Store) -> None:
    snap = snapshot(input={"x": [1, 2]}, request_id="req-1")

    outcome = await store.create(snap)

    assert outcome.created
    assert outcome.run.snapshot == snap
    assert outcome.run.last_sequence == 0
    assert not outcome.run.cancel_requested
    assert not outcome.run.leased
    assert await store.get("run-1") == outcome.run


async def test_create_of_an_existing_id_returns_it_and_writes_nothing(store: Store) -> None:
    first = await store.create(snapshot(input="first"))

    again = await store.create(snapshot(input="second", workflow_id="other", created_at=5.0))

    assert not again.created
    assert again.run == first.run
    assert await store.get("run-1") == first.run
    assert [item.run_id for item in await store.dequeue("c1", 10, 0)] == ["run-1"]
    assert (await store.list_runs(RunFilter(workflow_id="other"), 10, "")).rows == []


async def test_racing_creates_of_one_id_make_one_run(store: Store) -> None:
    """What deduplicates a retried start on every replica at once (a start with only a
    request id names its run by that id): one create wins, every other gets its run."""
    outcomes = await asyncio.gather(
        *(store.create(snapshot(input=i, request_id="req-1")) for i in range(20))
    )

    winners = [outcome for outcome in outcomes if outcome.created]
    assert len(winners) == 1
    assert all(outcome.run == winners[0].run for outcome in outcomes)
    assert (await get(store)).snapshot.input == winners[0].run.snapshot.input
    assert [item.run_id for item in await store.dequeue("c1", 30, 0)] == ["run-1"]


async def test_tricky_run_ids_do_not_collide(store: Store) -> None:
    for i, run_id in enumerate(TRICKY_IDS):
        assert (await store.create(snapshot(run_id, input=i))).created
        lease = await store.acquire(run_id, "worker-1", 30)
        assert lease is not None
        own_events = events(*(f"{i}.{n}" for n in range(i % 3 + 1)))
        await store.write(snapshot(run_id, input=i, status=RUNNING), own_events, fence=lease.fence)

    for i, run_id in enumerate(TRICKY_IDS):
        assert (await get(store, run_id)).snapshot.input == i
        found = await store.read_events(run_id, 0)
        assert step_ids(found) == [f"{i}.{n}" for n in range(i % 3 + 1)]
    page = await store.list_runs(RunFilter(), 100, "")
    assert sorted(row.run_id for row in page.rows) == sorted(TRICKY_IDS)


async def test_get_of_a_missing_run_is_none(store: Store) -> None:
    assert await store.get("missing") is None


async def test_stored_state_is_a_copy(store: Store) -> None:
    state_items: list[JSON] = [1]
    snap = snapshot(state={"items": state_items})
    fence = await held(store)
    written: list[JSON] = [1]
    await store.write(snap, [Event(data=StepOutput(step_id="a", output=written))], fence=fence)

    state_items.append(2)
    written.append(2)
    stored_items = (await get(store)).snapshot.state["items"]
    assert isinstance(stored_items, list)
    stored_items.append(3)
    read = data_of((await store.read_events("run-1", 0))[0], StepOutput).output
    assert isinstance(read, list)
    read.append(3)

    assert (await get(store)).snapshot.state == {"items": [1]}
    assert (await store.read_events("run-1", 0))[0].data == StepOutput(step_id="a", output=[1])


async def test_values_come_back_as_json_holds_them(store: Store) -> None:
    fence = await held(store)
    tupled: Any = (3,)  # not JSON's: a list once stored

    await store.write(
        snapshot(status=RUNNING, input=tupled),
        [Event(data=StepOutput(step_id="a", output={"t": tupled}))],
        fence=fence,
    )

    assert (await get(store)).snapshot.input == [3]
    assert (await store.read_events("run-1", 0))[0].data == StepOutput(
        step_id="a", output={"t": [3]}
    )


async def test_durable_says_whether_runs_outlive_the_process(store: Store) -> None:
    assert store.durable is isinstance(store, RedisStore)


# -- write -----------------------------------------------------------------------------------


async def test_holder_writes_with_its_fence(store: Store) -> None:
    run = await create(store)
    lease = await store.acquire("run-1", "worker-1", 30)
    assert lease is not None
    assert lease.run.leased

    outcome = await store.write(
        snapshot(status=RUNNING, state={"k": 1}), events("a", "b"), fence=lease.fence
    )

    assert outcome == WriteOutcome(version=run.version + 1, last_sequence=2, cancel_requested=False)
    stored = await get(store)
    assert stored.snapshot.state == {"k": 1}
    assert stored.snapshot.status is RUNNING
    assert (stored.version, stored.last_sequence, stored.leased) == (outcome.version, 2, True)


async def test_stale_fence_raises_lease_lost_and_writes_nothing(store: Store) -> None:
    fence = await held(store)
    await store.write(snapshot(status=RUNNING), events("a"), fence=fence)
    before = await get(store)

    for stale in (fence + 1, fence - 1):
        with pytest.raises(LeaseLost):
            await store.write(snapshot(status=SUCCESS, result=1), events("b", "c"), fence=stale)

    assert await get(store) == before
    assert step_ids(await store.read_events("run-1", 0)) == ["a"]


async def test_unheld_write_compares_and_sets_the_version(store: Store) -> None:
    run = await create(store)

    outcome = await store.write(
        snapshot(status=SUSPENDED), events("s"), expected_version=run.version
    )

    assert outcome.version == run.version + 1
    with pytest.raises(StoreConflict):
        await store.write(snapshot(input="lost"), events("x"), expected_version=run.version)
    stored = await get(store)
    assert (stored.snapshot.status, stored.snapshot.input) == (SUSPENDED, None)
    assert stored.version == outcome.version
    assert step_ids(await store.read_events("run-1", 0)) == ["s"]


async def test_unheld_write_is_refused_while_a_lease_holds_the_run(store: Store) -> None:
    run = await create(store)
    lease = await store.acquire("run-1", "worker-1", 30)
    assert lease is not None

    with pytest.raises(StoreConflict):
        await store.write(snapshot(status=CANCELED), events("x"), expected_version=run.version)

    assert (await get(store)).snapshot.status is PENDING
    assert await store.read_events("run-1", 0) == []
    await store.release("run-1", lease.fence)
    await store.write(snapshot(status=CANCELED), expected_version=run.version)
    assert (await get(store)).snapshot.status is CANCELED


async def test_unheld_write_after_expiry_fences_out_the_old_holder(store: Store) -> None:
    run = await create(store)
    lease = await store.acquire("run-1", "worker-1", 0.05)
    assert lease is not None
    await asyncio.sleep(0.1)

    await store.write(snapshot(status=CANCELED), expected_version=run.version)

    with pytest.raises(LeaseLost):
        await store.write(snapshot(status=SUCCESS), fence=lease.fence)
    assert (await get(store)).snapshot.status is CANCELED


async def test_a_claim_with_a_hold_takes_the_lease_in_the_same_write(store: Store) -> None:
    run = await create(store)
    await store.write(snapshot(status=SUSPENDED), expected_version=run.version)
    suspended = await get(store)

    outcome = await store.write(
        snapshot(status=RUNNING),
        events("claim"),
        expected_version=suspended.version,
        hold=Hold("worker-1", 30),
    )

    assert outcome.fence is not None
    stored = await get(store)
    assert (stored.snapshot.status, stored.leased) == (RUNNING, True)
    assert await store.acquire("run-1", "worker-2", 30) is None  # held: nobody else takes it
    # The holder writes with the fence it was given; an unheld write is refused meanwhile.
    await store.write(snapshot(status=SUCCESS), events("done"), fence=outcome.fence, release=True)
    with pytest.raises(StoreConflict):
        await store.write(snapshot(), expected_version=suspended.version, hold=Hold("w-3", 30))
    assert step_ids(await store.read_events("run-1", 0)) == ["claim", "done"]
    assert (await get(store)).snapshot.status is SUCCESS


async def test_a_hold_fences_out_an_expired_holder(store: Store) -> None:
    run = await create(store)
    old = await store.acquire("run-1", "worker-1", 0.05)
    assert old is not None
    await asyncio.sleep(0.1)

    outcome = await store.write(
        snapshot(status=RUNNING), expected_version=run.version, hold=Hold("worker-2", 30)
    )

    assert outcome.fence is not None and outcome.fence > old.fence
    with pytest.raises(LeaseLost):
        await store.write(snapshot(status=SUCCESS), fence=old.fence)


async def test_only_an_unheld_write_takes_a_hold(store: Store) -> None:
    fence = await held(store)
    with pytest.raises(ValueError, match="unheld"):
        await store.write(snapshot(), fence=fence, hold=Hold("worker-2", 30))


async def test_write_needs_exactly_one_guard(store: Store) -> None:
    run = await create(store)
    with pytest.raises(ValueError, match="exactly one guard"):
        await store.write(snapshot())
    with pytest.raises(ValueError, match="exactly one guard"):
        await store.write(snapshot(), fence=1, expected_version=run.version)


async def test_write_to_a_missing_run_raises_run_not_found(store: Store) -> None:
    with pytest.raises(RunNotFound):
        await store.write(snapshot("missing"), events("a"), fence=1)
    with pytest.raises(RunNotFound):
        await store.write(snapshot("missing"), expected_version=1)
    assert await store.get("missing") is None


async def test_sequences_are_dense_across_writes(store: Store) -> None:
    fence = await held(store)
    total = 0

    for batch in (["a", "b"], [], ["c", "d", "e"], ["f"]):
        outcome = await store.write(snapshot(status=RUNNING), events(*batch), fence=fence)
        total += len(batch)
        assert outcome.last_sequence == total

    found = await store.read_events("run-1", 0)
    assert [event.sequence for event in found] == [1, 2, 3, 4, 5, 6]
    assert step_ids(found) == ["a", "b", "c", "d", "e", "f"]
    assert (await get(store)).last_sequence == 6


async def test_write_with_release_ends_the_lease(store: Store) -> None:
    fence = await held(store)

    await store.write(snapshot(status=RUNNING), events("a"), fence=fence, release=True)

    assert not (await get(store)).leased
    with pytest.raises(LeaseLost):
        await store.write(snapshot(status=RUNNING), fence=fence)
    lease = await store.acquire("run-1", "worker-2", 30)
    assert lease is not None
    assert lease.fence > fence


# -- events ----------------------------------------------------------------------------------


async def test_read_events_after_a_sequence_with_a_limit(store: Store) -> None:
    fence = await held(store)
    sent = events("a", "b", "c", "d", "e", "f")
    await store.write(snapshot(status=RUNNING), sent, fence=fence)

    assert [event.sequence for event in await store.read_events("run-1", 2, limit=3)] == [3, 4, 5]
    assert [event.sequence for event in await store.read_events("run-1", 0, limit=1)] == [1]
    assert await store.read_events("run-1", 6) == []
    first = (await store.read_events("run-1", 0))[0]
    assert first == sent[0].with_sequence(1)


async def test_sizes_must_be_positive(store: Store) -> None:
    await create(store)
    with pytest.raises(ValueError, match="limit"):
        await store.read_events("run-1", 0, limit=0)
    with pytest.raises(ValueError, match="limit"):
        await store.list_runs(RunFilter(), 0, "")
    with pytest.raises(ValueError, match="count"):
        await store.dequeue("c1", 0, 0)


async def test_read_events_of_a_missing_run_raises_run_not_found(store: Store) -> None:
    with pytest.raises(RunNotFound):
        await store.read_events("missing", 0)
    with pytest.raises(RunNotFound):
        await store.wait_events("missing", 0, 0.1)


async def test_wait_events_returns_what_is_already_there(store: Store) -> None:
    fence = await held(store)
    await store.write(snapshot(status=RUNNING), events("a", "b"), fence=fence)

    async with asyncio.timeout(2):
        found = await store.wait_events("run-1", 1, 30)

    assert [event.sequence for event in found] == [2]


async def test_wait_events_blocks_until_another_task_writes(store: Store) -> None:
    fence = await held(store)
    await store.write(snapshot(status=RUNNING), events("a"), fence=fence)
    waiter = asyncio.create_task(store.wait_events("run-1", 1, 10))
    await asyncio.sleep(0.2)
    assert not waiter.done()

    await store.write(snapshot(status=RUNNING), events("b", "c"), fence=fence)

    found = await asyncio.wait_for(waiter, 5)
    assert [event.sequence for event in found] == [2, 3]
    assert step_ids(found) == ["b", "c"]


async def test_wait_events_returns_nothing_on_timeout(store: Store) -> None:
    await create(store)

    started = time.monotonic()
    assert await store.wait_events("run-1", 0, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 3

    async with asyncio.timeout(2):
        assert await store.wait_events("run-1", 0, 0) == []


async def test_first_kept_sequence_is_one_when_nothing_was_trimmed(store: Store) -> None:
    fence = await held(store)
    assert (await store.head("run-1")).first_kept_sequence == 1

    await store.write(snapshot(status=RUNNING), events("a", "b", "c"), fence=fence)

    assert (await store.head("run-1")).first_kept_sequence == 1
    with pytest.raises(RunNotFound):
        await store.head("missing")


async def test_head_says_status_and_sequences_without_reading_the_run(store: Store) -> None:
    fence = await held(store)
    await store.write(with_records(), events("a", "b"), fence=fence)

    head = await store.head("run-1")

    assert (head.status, head.last_sequence, head.first_kept_sequence) == (RUNNING, 2, 1)
    await store.write(snapshot(status=SUCCESS), events("c"), fence=fence, release=True)
    assert await store.head("run-1") == RunHead(SUCCESS, 3, 1)


# -- leases ----------------------------------------------------------------------------------


async def test_acquire_takes_a_pending_run_once(store: Store) -> None:
    await create(store)

    lease = await store.acquire("run-1", "worker-1", 30)

    assert lease is not None
    assert (lease.run_id, lease.run.snapshot.run_id, lease.run.leased) == ("run-1", "run-1", True)
    assert lease.fence >= 1
    assert (await get(store)).leased
    assert await store.acquire("run-1", "worker-2", 30) is None
    assert await store.acquire("missing", "worker-2", 30) is None


@pytest.mark.parametrize("status", [RUNNING, WAITING])
async def test_acquire_takes_an_unheld_active_run(store: Store, status: RunStatus) -> None:
    run = await create(store)
    await store.write(snapshot(status=status), expected_version=run.version)

    lease = await store.acquire("run-1", "worker-1", 30)

    assert lease is not None
    assert lease.run.snapshot.status is status


@pytest.mark.parametrize("status", [SUSPENDED, PAUSED, SUCCESS, FAILED, CANCELED])
async def test_acquire_refuses_a_settled_run(store: Store, status: RunStatus) -> None:
    run = await create(store)
    await store.write(snapshot(status=status), expected_version=run.version)

    assert await store.acquire("run-1", "worker-1", 30) is None
    assert not (await get(store)).leased


async def test_expired_lease_is_taken_over_with_a_higher_fence(store: Store) -> None:
    await create(store)
    old = await store.acquire("run-1", "worker-1", 0.05)
    assert old is not None
    await asyncio.sleep(0.1)
    assert not (await get(store)).leased

    new = await store.acquire("run-1", "worker-2", 30)

    assert new is not None
    assert new.fence > old.fence
    with pytest.raises(LeaseLost):
        await store.write(snapshot(status=RUNNING), events("late"), fence=old.fence)
    assert not (await store.renew("run-1", old.fence, 30)).held
    await store.release("run-1", old.fence)
    assert (await get(store)).leased
    await store.write(snapshot(status=RUNNING), events("a"), fence=new.fence)
    assert step_ids(await store.read_events("run-1", 0)) == ["a"]


async def test_renew_extends_a_current_lease_only(store: Store) -> None:
    fence = await held(store, ttl=0.2)

    assert (await store.renew("run-1", fence, 30)).held
    await asyncio.sleep(0.3)

    assert (await get(store)).leased
    assert await store.acquire("run-1", "worker-2", 30) is None
    assert not (await store.renew("run-1", fence + 1, 30)).held
    assert not (await store.renew("missing", 1, 30)).held


async def test_renew_reports_a_requested_cancel(store: Store) -> None:
    fence = await held(store)
    assert not (await store.renew("run-1", fence, 30)).cancel_requested
    assert await store.request_cancel("run-1")
    renewal = await store.renew("run-1", fence, 30)
    assert renewal.held and renewal.cancel_requested


async def test_release_hands_the_run_back(store: Store) -> None:
    fence = await held(store)

    await store.release("run-1", fence)

    assert not (await get(store)).leased
    with pytest.raises(LeaseLost):
        await store.write(snapshot(status=RUNNING), fence=fence)
    assert not (await store.renew("run-1", fence, 30)).held
    lease = await store.acquire("run-1", "worker-2", 30)
    assert lease is not None
    assert lease.fence == fence + 1
    await store.release("missing", 1)


async def test_recover_pages_through_every_due_entry(store: Store) -> None:
    ids = [f"run-{i}" for i in range(250)]
    for run_id in ids:
        await create(store, run_id)
        assert await store.acquire(run_id, "dead-worker", 0.01) is not None
    await asyncio.sleep(0.05)

    assert sorted(await store.recover(time.time(), grace=30, limit=1000)) == sorted(ids)
    assert await store.recover(time.time(), grace=30, limit=1000) == []  # moved on by grace


@pytest.mark.parametrize("status", [SUCCESS, SUSPENDED, PAUSED])
async def test_a_settled_run_leaves_the_watchdog(store: Store, status: RunStatus) -> None:
    fence = await held(store, ttl=0.01)
    await store.write(snapshot(status=status), events("done"), fence=fence, release=True)
    await asyncio.sleep(0.05)
    # Due at once if it were still watched; nothing is recovered, nothing re-queued.
    assert await store.recover(time.time() + 3600, grace=30) == []


# -- cancel ----------------------------------------------------------------------------------


async def test_request_cancel_needs_a_live_lease(store: Store) -> None:
    await create(store)

    assert not await store.request_cancel("run-1")
    assert not await store.request_cancel("missing")

    assert not (await get(store)).cancel_requested


async def test_cancel_request_reaches_every_listener(store: Store) -> None:
    await held(store)
    listeners = [store.cancel_requests() for _ in range(2)]
    firsts = [asyncio.create_task(_first(listener)) for listener in listeners]
    try:
        # A subscription starts with the first iteration; repeat until both have seen one.
        for _attempt in range(100):
            assert await store.request_cancel("run-1")
            done, _pending = await asyncio.wait(firsts, timeout=0.05)
            if len(done) == len(firsts):
                break
        assert [first.result() for first in firsts] == ["run-1", "run-1"]
    finally:
        for first in firsts:
            first.cancel()
        for listener in listeners:
            assert isinstance(listener, AsyncGenerator)
            await listener.aclose()


async def test_cancel_request_reaches_the_holder_through_its_writes(store: Store) -> None:
    fence = await held(store)

    assert await store.request_cancel("run-1")

    assert (await get(store)).cancel_requested
    await store.release("run-1", fence)
    lease = await store.acquire("run-1", "worker-2", 30)
    assert lease is not None
    assert lease.run.cancel_requested
    running = await store.write(snapshot(status=RUNNING), events("a"), fence=lease.fence)
    assert running.cancel_requested
    final = await store.write(snapshot(status=CANCELED), fence=lease.fence, release=True)
    assert final.cancel_requested
    # Once the run settles the request has been honoured.
    assert not (await get(store)).cancel_requested


# -- queue -----------------------------------------------------------------------------------


async def test_create_queues_the_run(store: Store) -> None:
    await create(store, "a")
    await create(store, "b")

    items = await store.dequeue("c1", 10, 0.5)

    assert [item.run_id for item in items] == ["a", "b"]
    for item in items:
        await store.ack(item)
    assert await store.dequeue("c1", 10, 0) == []


async def test_dequeue_waits_up_to_block(store: Store) -> None:
    started = time.monotonic()
    assert await store.dequeue("c1", 1, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 3

    async with asyncio.timeout(2):
        assert await store.dequeue("c1", 1, 0) == []


async def test_dequeue_wakes_when_work_arrives(store: Store) -> None:
    taker = asyncio.create_task(store.dequeue("c1", 5, 10))
    await asyncio.sleep(0.2)
    assert not taker.done()

    await store.enqueue("run-9")

    items = await asyncio.wait_for(taker, 5)
    assert [item.run_id for item in items] == ["run-9"]


async def test_dequeue_takes_at_most_count(store: Store) -> None:
    for run_id in ("a", "b", "c"):
        await store.enqueue(run_id)

    assert [item.run_id for item in await store.dequeue("c1", 2, 0)] == ["a", "b"]
    assert [item.run_id for item in await store.dequeue("c1", 2, 0)] == ["c"]


async def test_each_item_goes_to_one_consumer(store: Store) -> None:
    run_ids = [f"run-{i}" for i in range(30)]
    for run_id in run_ids:
        await store.enqueue(run_id)

    async def drain(consumer: str) -> list[str]:
        taken: list[str] = []
        while items := await store.dequeue(consumer, 3, 0.2):
            taken += [item.run_id for item in items]
            for item in items:
                await store.ack(item)
        return taken

    first, second = await asyncio.gather(drain("c1"), drain("c2"))

    assert sorted(first + second) == sorted(run_ids)


async def test_queue_depth_counts_items_not_yet_taken(store: Store) -> None:
    assert await store.queue_depth() == 0
    await create(store, "a")
    await store.enqueue("b")
    await store.enqueue("c")
    assert await store.queue_depth() == 3

    items = await store.dequeue("c1", 2, 0.5)
    assert await store.queue_depth() == 1  # taken, even before the ack
    for item in items:
        await store.ack(item)
    assert await store.queue_depth() == 1


# -- list ------------------------------------------------------------------------------------

# run id, workflow, resource, created_at, status
LISTED = [
    ("r1", "wf-a", "res-1", 100.0, PENDING),
    ("r2", "wf-a", "res-2", 200.0, SUCCESS),
    ("r3", "wf-b", "res-1", 300.0, FAILED),
    ("r4", "wf-a", "", 300.0, SUSPENDED),
    ("r5", "wf-b", "res-2", 400.0, PENDING),
]


async def seed(store: Store) -> None:
    for run_id, workflow_id, resource_id, created_at, status in LISTED:
        run = await create(
            store, run_id, workflow_id=workflow_id, resource_id=resource_id, created_at=created_at
        )
        if status is not PENDING:
            update = run.snapshot.model_copy(update={"status": status, "updated_at": 999.0})
            await store.write(update, expected_version=run.version)


async def test_list_runs_newest_first(store: Store) -> None:
    await seed(store)

    page = await store.list_runs(RunFilter(), 100, "")

    assert [row.run_id for row in page.rows] == ["r5", "r4", "r3", "r2", "r1"]
    assert page.next_cursor == ""
    r2 = page.rows[3]
    assert (r2.workflow_id, r2.resource_id, r2.status) == ("wf-a", "res-2", SUCCESS)
    assert (r2.created_at, r2.updated_at) == (200.0, 999.0)


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (RunFilter(workflow_id="wf-a"), ["r4", "r2", "r1"]),
        (RunFilter(resource_id="res-1"), ["r3", "r1"]),
        (RunFilter(workflow_id="wf-b", resource_id="res-2"), ["r5"]),
        (RunFilter(statuses=frozenset({PENDING, SUSPENDED})), ["r5", "r4", "r1"]),
        (RunFilter(created_after=200.0, created_before=300.0), ["r4", "r3", "r2"]),
        (RunFilter(workflow_id="wf-a", created_after=150.0), ["r4", "r2"]),
        (RunFilter(resource_id="res-2", statuses=frozenset({SUCCESS})), ["r2"]),
        (RunFilter(created_before=99.0), []),
        (RunFilter(workflow_id="missing"), []),
    ],
    ids=["workflow", "resource", "both", "statuses", "created", "wf+after", "res+status",
         "before-all", "unknown"],
)  # fmt: skip
async def test_list_runs_filters(store: Store, filter: RunFilter, expected: list[str]) -> None:
    await seed(store)

    page = await store.list_runs(filter, 100, "")

    assert [row.run_id for row in page.rows] == expected


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
async def test_pages_cover_every_row_exactly_once(store: Store, limit: int) -> None:
    # Groups of three share a created_at, so the run id breaks ties.
    for i in range(12):
        await create(store, f"run-{i:02}", created_at=1000.0 + i // 3)
    expected = sorted(
        (f"run-{i:02}" for i in range(12)), key=lambda r: (1000.0 + int(r[4:]) // 3, r)
    )[::-1]

    assert await _all_pages(store, RunFilter(), limit) == expected


async def test_filtered_pages_span_more_runs_than_one_scan(store: Store) -> None:
    for i in range(250):
        run = await create(store, f"run-{i:03}", created_at=float(i // 7))
        if i % 5:
            await store.write(
                snapshot(f"run-{i:03}", status=CANCELED), expected_version=run.version
            )
    expected = sorted((f"run-{i:03}" for i in range(250) if i % 5 == 0), reverse=True)

    pending = RunFilter(statuses=frozenset({PENDING}))
    assert await _all_pages(store, pending, 7) == expected
    assert len(await _all_pages(store, RunFilter(), 40)) == 250


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        "bm90IGpzb24",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"at": 1, "id": "r"}').decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        base64.urlsafe_b64encode(b'["1", "r"]').decode(),
        base64.urlsafe_b64encode(b'[true, "r"]').decode(),
        base64.urlsafe_b64encode(b'[NaN, "r"]').decode(),
        base64.urlsafe_b64encode(b'[1e400, "r"]').decode(),
        base64.urlsafe_b64encode(b'[1, "r", 2]').decode(),
    ],
)
async def test_tampered_cursor_is_an_invalid_argument(store: Store, cursor: str) -> None:
    await seed(store)

    with pytest.raises(InvalidArgument) as raised:
        await store.list_runs(RunFilter(), 10, cursor)

    assert raised.value.message == "invalid page token"
    assert [violation.field for violation in raised.value.violations] == ["page_token"]


# -- records: step records and foreach iterations ---------------------------------------------


def step(output: Any, status: StepStatus = StepStatus.SUCCESS) -> StepRecord:
    return StepRecord(status=status, payload={"in": output}, output=output, attempts=1)


def iteration(output: Any) -> IterationRecord:
    return IterationRecord(status=StepStatus.SUCCESS, output=output)


def with_records(run_id: str = "run-1", status: RunStatus = RUNNING) -> Snapshot:
    """A snapshot with two step records and a foreach's two iterations."""
    return snapshot(
        run_id,
        status=status,
        steps={"a": step(1), "each": step(None, StepStatus.RUNNING)},
        step_execution_path=["a", "each"],
        iterations={"each": {0: iteration("x0"), 1: iteration("x1")}},
    )


async def test_a_write_with_a_change_set_stores_only_its_records(store: Store) -> None:
    fence = await held(store)
    snap = with_records()
    await store.write(snap, events("a"), fence=fence)  # full: every record

    changes = ChangeSet(full=False)
    snap.steps["a"] = step("not written")  # changed, but not in the change set
    snap.steps["b"] = step(2)
    snap.step_execution_path.append("b")
    changes.step("b")
    snap.iterations["each"][0] = iteration("not written")
    snap.iterations["each"][1] = iteration("y1")
    snap.iterations["each"][2] = iteration("y2")
    changes.item("each", 1)
    changes.item("each", 2)
    snap.state = {"seen": 3}
    image = SnapshotImage.of(snap, changes)
    assert not image.full and set(image.steps) == {"b"}
    assert image.items == {"each": {1: image.items["each"][1], 2: image.items["each"][2]}}
    assert changes.steps == set() and not changes.full  # taken by the image
    await store.write(image, events("b"), fence=fence)

    stored = (await get(store)).snapshot
    assert stored.state == {"seen": 3}
    assert stored.step_execution_path == ["a", "each", "b"]
    assert stored.steps == {"a": step(1), "each": step(None, StepStatus.RUNNING), "b": step(2)}
    assert list(stored.steps) == ["a", "each", "b"]
    assert stored.iterations == {
        "each": {0: iteration("x0"), 1: iteration("y1"), 2: iteration("y2")}
    }


async def test_a_full_write_replaces_the_records(store: Store) -> None:
    """A write without a change set (a resume claim, a time travel's rewind, a cancel)
    stores every record and drops those the snapshot no longer has."""
    fence = await held(store)
    await store.write(with_records(), events("a"), fence=fence, release=True)
    stored = await get(store)

    rewound = stored.snapshot.model_copy(deep=True)
    del rewound.steps["each"]
    rewound.step_execution_path = ["a"]
    rewound.iterations = {"other": {3: iteration("z3")}}
    await store.write(rewound, events("travel"), expected_version=stored.version)

    again = (await get(store)).snapshot
    assert again == rewound
    assert again.iterations == {"other": {3: iteration("z3")}}


def with_nested(run_id: str = "run-1") -> Snapshot:
    """A run whose nested workflow `child` (itself nesting `grand`) has records of its own:
    steps, and a foreach's iterations."""
    grand = Snapshot(run_id=run_id, workflow_id="grand", steps={"g": step("g")})
    child = Snapshot(
        run_id=run_id,
        workflow_id="child",
        steps={"c1": step("c1"), "each": step(None, StepStatus.RUNNING)},
        step_execution_path=["c1", "each", "grand"],
        iterations={"each": {0: iteration("i0")}},
        children={"grand": grand},
    )
    return snapshot(
        run_id,
        status=RUNNING,
        steps={"a": step(1), "child": step(None, StepStatus.RUNNING)},
        step_execution_path=["a", "child"],
        children={"child": child},
    )


async def test_nested_workflows_records_are_the_runs_own(store: Store) -> None:
    """A nested workflow's records are kept as the run's ("child.step", at any depth): a full
    write stores them, a change set naming one writes that one, and the run reads back
    whole with each record in its nested snapshot."""
    fence = await held(store)
    snap = with_nested()
    full = SnapshotImage.of(snap)
    assert set(full.steps) == {"a", "child", "child.c1", "child.each", "child.grand.g"}
    assert full.foreach_steps == ("child.each",)
    blob = json.loads(full.json)  # the blob holds no record, at any depth
    assert "steps" not in blob["children"]["child"]
    assert "iterations" not in blob["children"]["child"]
    assert "steps" not in blob["children"]["child"]["children"]["grand"]
    await store.write(full, events("a"), fence=fence)
    assert (await get(store)).snapshot == snap

    changes = ChangeSet(full=False)
    snap.children["child"].children["grand"].steps["g"] = step("g2")
    changes.step("child.grand.g")
    snap.children["child"].iterations["each"][1] = iteration("i1")
    changes.item("child.each", 1)
    snap.children["child"].steps["c1"] = step("not written")
    image = SnapshotImage.of(snap, changes)
    assert set(image.steps) == {"child.grand.g"}
    await store.write(image, events("g"), fence=fence)

    stored = (await get(store)).snapshot
    assert stored.children["child"].children["grand"].steps == {"g": step("g2")}
    assert stored.children["child"].iterations == {"each": {0: iteration("i0"), 1: iteration("i1")}}
    assert stored.children["child"].steps["c1"] == step("c1")
    assert list(stored.children["child"].steps) == ["c1", "each"]


async def test_a_nested_workflow_dropped_whole_leaves_no_records(store: Store) -> None:
    """A nested workflow run afresh (a loop's next iteration) drops its snapshot: the full
    write that follows stores none of the old one's records."""
    fence = await held(store)
    snap = with_nested()
    await store.write(snap, fence=fence)
    del snap.children["child"]
    await store.write(snap, fence=fence)

    stored = (await get(store)).snapshot
    assert stored.children == {} and set(stored.steps) == {"a", "child"}
    assert stored.iterations == {}


async def test_merged_images_store_both_change_sets(store: Store) -> None:
    """Group commit: two images waiting for one write store what each would have."""
    fence = await held(store)
    snap = with_records()
    await store.write(snap, fence=fence)
    changes = ChangeSet(full=False)
    snap.steps["a"] = step(10)
    changes.step("a")
    first = SnapshotImage.of(snap, changes)
    snap.iterations["each"][1] = iteration("m1")
    changes.item("each", 1)
    second = SnapshotImage.of(snap, changes)

    await store.write(first.merged(second), fence=fence)

    stored = (await get(store)).snapshot
    assert stored.steps["a"] == step(10)
    assert stored.iterations["each"] == {0: iteration("x0"), 1: iteration("m1")}


# -- delete ----------------------------------------------------------------------------------


async def test_delete_removes_the_run_everywhere(store: Store) -> None:
    fence = await held(store)
    await store.write(snapshot(status=RUNNING), events("a", "b"), fence=fence)
    await create(store, "other")

    assert await store.delete("run-1")

    assert await store.get("run-1") is None
    with pytest.raises(RunNotFound):
        await store.read_events("run-1", 0)
    with pytest.raises(RunNotFound):
        await store.head("run-1")
    for filter in (RunFilter(), RunFilter(workflow_id="wf")):
        assert [row.run_id for row in (await store.list_runs(filter, 10, "")).rows] == ["other"]
    with pytest.raises(RunNotFound):
        await store.write(snapshot(status=RUNNING), events("c"), fence=fence)
    with pytest.raises(RunNotFound):
        await store.write(snapshot(status=RUNNING), expected_version=1)
    assert await store.acquire("run-1", "worker-2", 30) is None
    assert not await store.request_cancel("run-1")
    assert not await store.delete("run-1")


async def test_a_deleted_id_can_be_created_again(store: Store) -> None:
    fence = await held(store)
    await store.write(snapshot(status=RUNNING), events("a", "b"), fence=fence)
    await store.delete("run-1")

    fence = await held(store)
    outcome = await store.write(snapshot(status=RUNNING), events("new"), fence=fence)

    assert outcome.last_sequence == 1
    found = await store.read_events("run-1", 0)
    assert [(e.sequence, data_of(e, StepStart).step_id) for e in found] == [(1, "new")]


# -- retention and trimming ------------------------------------------------------------------

RETENTION = 0.3  # seconds a finished run is kept by `limited_store`
KEPT_EVENTS = 5  # events kept per run by `limited_store`


@pytest.fixture(params=["memory", "redis"])
async def limited_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A store that keeps finished runs RETENTION seconds and KEPT_EVENTS events per run."""
    if request.param == "memory":
        yield MemoryStore(retention=RETENTION, max_events=KEPT_EVENTS)
        return
    url: str = request.getfixturevalue("redis_server")  # a prefix of its own keeps it apart
    limited = RedisStore.from_url(
        url, prefix=_prefix(), retention=RETENTION, max_events=KEPT_EVENTS
    )
    try:
        yield limited
    finally:
        await limited.close()


async def _settle(store: Store, status: RunStatus, run_id: str = "run-1") -> WriteOutcome:
    fence = await held(store, run_id)
    done = snapshot(run_id, status=status)
    return await store.write(done, events("last"), fence=fence, release=True)


@pytest.mark.parametrize("status", [SUCCESS, FAILED, CANCELED])
async def test_a_finished_run_is_forgotten_after_the_retention(
    limited_store: Store, status: RunStatus
) -> None:
    await _settle(limited_store, status)
    assert await limited_store.get("run-1") is not None  # kept until then

    await asyncio.sleep(RETENTION + 0.3)

    assert await limited_store.sweep_expired(time.time()) in (0, 1)
    assert await limited_store.get("run-1") is None
    with pytest.raises(RunNotFound):
        await limited_store.read_events("run-1", 0)
    assert (await limited_store.list_runs(RunFilter(), 10, "")).rows == []
    assert (await limited_store.list_runs(RunFilter(workflow_id="wf"), 10, "")).rows == []
    assert not await limited_store.delete("run-1")
    assert (await limited_store.create(snapshot("run-1"))).created  # the id is free again


async def test_unfinished_runs_are_kept(limited_store: Store) -> None:
    await _settle(limited_store, SUSPENDED, "suspended")
    await held(limited_store, "running")
    await create(limited_store, "pending")

    await asyncio.sleep(RETENTION + 0.3)

    assert await limited_store.sweep_expired(time.time()) == 0
    for run_id in ("suspended", "running", "pending"):
        assert await limited_store.get(run_id) is not None
    assert len((await limited_store.list_runs(RunFilter(), 10, "")).rows) == 3


async def test_a_write_after_finishing_keeps_the_run_again(limited_store: Store) -> None:
    outcome = await _settle(limited_store, SUCCESS)
    rerun = snapshot(status=RUNNING)  # e.g. time travel
    await limited_store.write(rerun, events("again"), expected_version=outcome.version)

    await asyncio.sleep(RETENTION + 0.3)

    assert await limited_store.sweep_expired(time.time()) == 0
    stored = await get(limited_store)
    assert stored.snapshot.status is RUNNING
    assert [row.run_id for row in (await limited_store.list_runs(RunFilter(), 10, "")).rows] == [
        "run-1"
    ]


async def test_the_log_keeps_the_latest_events(limited_store: Store) -> None:
    fence = await held(limited_store)
    for step in range(1, 9):
        outcome = await limited_store.write(
            snapshot(status=RUNNING), events(f"s{step}"), fence=fence
        )
    assert outcome.last_sequence == 8
    assert (await limited_store.head("run-1")).first_kept_sequence == 8 - KEPT_EVENTS + 1
    kept = await limited_store.read_events("run-1", 0)
    assert [e.sequence for e in kept] == [4, 5, 6, 7, 8]
    assert step_ids(kept) == ["s4", "s5", "s6", "s7", "s8"]
    assert [e.sequence for e in await limited_store.read_events("run-1", 6)] == [7, 8]
    assert (await get(limited_store)).last_sequence == 8


async def test_a_blocked_read_of_a_trimmed_log_wakes_for_new_events(limited_store: Store) -> None:
    fence = await held(limited_store)
    for step in range(1, 9):
        await limited_store.write(snapshot(status=RUNNING), events(f"s{step}"), fence=fence)
    # The log holds sequences 4..8: fewer events than the cursor counts.
    waiter = asyncio.create_task(limited_store.wait_events("run-1", 8, 10))
    await asyncio.sleep(0.2)
    assert not waiter.done()

    await limited_store.write(snapshot(status=RUNNING), events("s9"), fence=fence)

    found = await asyncio.wait_for(waiter, 5)
    assert [(e.sequence, data_of(e, StepStart).step_id) for e in found] == [(9, "s9")]


# -- Redis only ------------------------------------------------------------------------------


@pytest.fixture
async def redis_url(redis_server: str) -> AsyncIterator[str]:
    """The session server's URL, flushed before and after the test."""
    admin = Redis.from_url(redis_server)
    await admin.flushdb()
    try:
        yield redis_server
    finally:
        await admin.flushdb()
        await admin.aclose()


async def test_unreachable_redis_raises_store_unavailable_fast(unused_tcp_port: int) -> None:
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{unused_tcp_port}/0", socket_timeout=0.5, connect_timeout=0.5
    )
    calls = [
        store.get("run-1"),
        store.create(snapshot()),
        store.write(snapshot(), fence=1),
        store.wait_events("run-1", 0, 5),
        store.dequeue("c1", 1, 5),
        store.list_runs(RunFilter(), 10, ""),
        _first(store.cancel_requests()),
    ]
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="redis is unreachable"):
                await call
            assert time.monotonic() - started < 2
    finally:
        await store.close()


async def test_blocking_reads_outlast_a_short_socket_timeout(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=_prefix(), socket_timeout=0.2)
    try:
        await _blocking_reads_work(store)
    finally:
        await store.close()


async def test_store_from_a_client_blocks_on_a_pool_of_its_own(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.2)
    store = RedisStore(client, prefix=_prefix())
    try:
        await _blocking_reads_work(store)
    finally:
        await store.close()
    # The caller's client stays open.
    assert await client.ping()
    await client.aclose()


async def test_store_needs_a_decoding_client(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisStore(client)
    await client.aclose()


async def test_a_runs_keys_share_one_hash_slot(redis_url: str) -> None:
    keys = Keys("stepline")
    for run_id in TRICKY_IDS:
        run_key, events_key = keys.run(run_id), keys.events(run_id)
        assert key_slot(run_key.encode()) == key_slot(events_key.encode())
        for key in (run_key, events_key):
            assert key[key.index("{") + 1 : key.index("}")] == encode(run_id)
    assert len({keys.run(run_id) for run_id in TRICKY_IDS}) == len(TRICKY_IDS)
    assert len({keys.events(run_id) for run_id in TRICKY_IDS}) == len(TRICKY_IDS)
    with pytest.raises(ValueError, match="prefix"):
        Keys("team{a}")

    # The store writes exactly these keys.
    store = RedisStore.from_url(redis_url)
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        fence = await held(store, "a:{b}")
        await store.write(with_records("a:{b}"), events("x"), fence=fence)
        run_keys = {
            keys.run("a:{b}"),
            keys.events("a:{b}"),
            keys.steps("a:{b}"),
            keys.items("a:{b}", "each"),
        }
        assert len({key_slot(key.encode()) for key in run_keys}) == 1
        expected = run_keys | {keys.queue, keys.watchdog}
        assert expected | set(keys.indexes("wf", "")) == set(await admin.keys("stepline:*"))
        assert set(await admin.hkeys(keys.steps("a:{b}"))) == {"a", "each"}
        assert set(await admin.hkeys(keys.items("a:{b}", "each"))) == {"0", "1"}
        assert set(await admin.hkeys(keys.run("a:{b}"))) == set(RUN_HASH_FIELDS)
        entries = await admin.xrange(keys.events("a:{b}")) or []
        assert [entry_id for entry_id, _fields in entries] == ["0-1"]
    finally:
        await store.close()
        await admin.aclose()


async def test_list_skips_and_unindexes_runs_that_are_gone(redis_url: str) -> None:
    prefix = _prefix()
    store = RedisStore.from_url(redis_url, prefix=prefix)
    admin = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    try:
        for run_id in ("a", "b", "c"):
            await create(store, run_id)
        # As if a delete had died between removing the run and its index entries.
        await admin.delete(keys.run("b"))

        page = await store.list_runs(RunFilter(), 10, "")

        assert [row.run_id for row in page.rows] == ["c", "a"]
        assert await admin.zscore(keys.index_all, "b") is None
        assert await admin.zscore(keys.index_all, "a") is not None
    finally:
        await store.close()
        await admin.aclose()


RUN_HASH_FIELDS = [
    "snap", "status", "workflow_id", "resource_id", "created_at", "updated_at", "ver", "seq",
    "fence", "lease_owner", "lease_until", "cancel", "request_id", "layout", "ikeys",
]  # fmt: skip


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def _first(iterator: AsyncIterator[str]) -> str:
    return await anext(iterator)


async def _all_pages(store: Store, filter: RunFilter, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = ""
    for _page in range(1000):
        page = await store.list_runs(filter, limit, cursor)
        assert len(page.rows) <= limit
        seen += [row.run_id for row in page.rows]
        cursor = page.next_cursor
        if not cursor:
            return seen
    raise AssertionError("paging did not end")


async def _blocking_reads_work(store: Store) -> None:
    """Each read blocks for longer than the 0.2 s socket timeout without failing."""
    await create(store)
    for item in await store.dequeue("c1", 10, 0):
        await store.ack(item)

    assert await store.wait_events("run-1", 0, 0.6) == []
    assert await store.dequeue("c1", 1, 0.6) == []

    fence = (await store.acquire("run-1", "worker-1", 30) or pytest.fail("not acquired")).fence
    waiter = asyncio.create_task(store.wait_events("run-1", 0, 5))
    await asyncio.sleep(0.5)
    await store.write(snapshot(status=RUNNING), events("a"), fence=fence)
    assert step_ids(await asyncio.wait_for(waiter, 5)) == ["a"]


async def test_abandoned_queue_entries_are_queued_again(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=_prefix())
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        await create(store, "run-1")
        await create(store, "run-2")
        taken = await store.dequeue("dead-worker", 10, 0)
        assert len(taken) == 2
        await store.ack(taken[1])  # only the first one is left pending by the dead worker
        keys = Keys(store._keys.prefix)

        assert await store.reclaim_abandoned(min_idle=60) == 0  # not idle long enough
        assert await store.reclaim_abandoned(min_idle=0) == 1
        assert (await admin.xpending(keys.queue, keys.group))["pending"] == 0
        assert [item.run_id for item in await store.dequeue("live-worker", 10, 0)] == ["run-1"]
        assert await store.reclaim_abandoned(min_idle=0) == 1  # live-worker's, not acked
        again = await store.dequeue("live-worker", 10, 0)
        await store.ack(again[0])
        assert await store.reclaim_abandoned(min_idle=0) == 0
        assert await admin.xlen(keys.queue) == 0
    finally:
        await store.close()
        await admin.aclose()


async def test_a_deleted_run_leaves_no_keys_behind(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=_prefix())
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        fence = await held(store)
        await store.write(with_records(), events("a"), fence=fence)
        keys = Keys(store._keys.prefix)
        assert len(await admin.keys(f"{keys.run('run-1')}*")) == 4  # run, events, steps, items

        assert await store.delete("run-1")

        assert await admin.keys(f"{keys.run('run-1')}*") == []
    finally:
        await store.close()
        await admin.aclose()


async def test_a_run_of_the_first_layout_reads_and_is_rewritten_whole(redis_url: str) -> None:
    """A run written before records left the snapshot (steps inside `snap`, no `layout`)
    reads back whole; a full write moves its records out."""
    store = RedisStore.from_url(redis_url, prefix=_prefix())
    admin = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(store._keys.prefix)
    try:
        await create(store)
        old = snapshot(status=RUNNING, steps={"a": step(1)}, step_execution_path=["a"])
        await admin.hset(keys.run("run-1"), "snap", old.model_dump_json())
        await admin.hdel(keys.run("run-1"), "layout", "ikeys")
        await admin.delete(keys.steps("run-1"))
        lease = await store.acquire("run-1", "worker-1", 30)
        assert lease is not None and lease.run.snapshot == old

        await store.write(lease.run.snapshot, events("b"), fence=lease.fence)

        assert await admin.hget(keys.run("run-1"), "layout") == scripts.LAYOUT
        assert await admin.hkeys(keys.steps("run-1")) == ["a"]
        assert (await get(store)).snapshot == old
    finally:
        await store.close()
        await admin.aclose()


async def test_a_phase_1_run_with_nested_records_inline_reads_and_is_rewritten_whole(
    redis_url: str,
) -> None:
    """A run of layout 2 keeps its nested workflows' records inside `snap`: it reads back
    whole, asks for a full write (`records_apart`), and that write moves them out."""
    store = RedisStore.from_url(redis_url, prefix=_prefix())
    admin = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(store._keys.prefix)
    try:
        fence = await held(store)
        old = with_nested()
        blob = old.model_dump_json(exclude={"steps", "iterations"}, exclude_defaults=True)
        await store.write(snapshot(status=RUNNING), fence=fence)
        await admin.hset(keys.run("run-1"), mapping={"snap": blob, "layout": "2"})
        await admin.hset(keys.steps("run-1"), mapping={"a": step(1).model_dump_json()})
        await admin.hset(
            keys.steps("run-1"), "child", step(None, StepStatus.RUNNING).model_dump_json()
        )

        stored = await get(store)
        assert stored.snapshot == old
        assert not stored.records_apart

        await store.write(stored.snapshot, events("b"), fence=fence)

        assert await admin.hget(keys.run("run-1"), "layout") == scripts.LAYOUT
        assert "child.grand.g" in await admin.hkeys(keys.steps("run-1"))
        again = await get(store)
        assert again.records_apart and again.snapshot == old
    finally:
        await store.close()
        await admin.aclose()


async def test_expired_runs_leave_no_keys_behind(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=_prefix(), retention=RETENTION)
    admin = Redis.from_url(redis_url, decode_responses=True)
    try:
        await _settle(store, SUCCESS, "done")
        fence = await held(store, "records")
        await store.write(with_records("records", status=SUCCESS), fence=fence, release=True)
        await held(store, "running")
        await asyncio.sleep(RETENTION + 0.3)
        assert await store.sweep_expired(time.time()) == 2
        keys = Keys(store._keys.prefix)
        assert await admin.keys(f"{keys.run('records')}*") == []
        assert await admin.zrange(keys.index_all, 0, -1) == ["running"]
        assert await admin.zrange(keys.index_workflow("wf"), 0, -1) == ["running"]
        assert await admin.zcard(keys.expiring) == 0
        assert not await admin.exists(keys.run("done"), keys.events("done"))
    finally:
        await store.close()
        await admin.aclose()
