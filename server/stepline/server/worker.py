"""Takes queued runs from the store, holds each under a fenced lease, and executes it.

Per-replica concurrency is bounded: the worker only takes as many items as it has free
slots, so a full replica leaves work for the others. On shutdown it stops taking work,
gives in-flight runs a grace period, then hands the rest back (lease released, run
re-queued) — it never marks them canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from . import logs
from .errors import LeaseLost, RunNotFound, StoreUnavailable
from .execution import Execution, serialize_error
from .model import (
    ChangeSet,
    ErrorData,
    Event,
    RunStatus,
    Snapshot,
    SnapshotImage,
    now,
)
from .store import Lease, Store, StoredRun, WorkItem
from .store.base import CLAIM_GRACE
from .workflows import Registry

log = logging.getLogger(__name__)


class PassObserver(Protocol):
    """Follows one execution pass of a run (one lease): what it commits, then its end.

    Called synchronously in the run's task, in commit order; it must not block, and what it
    raises is logged and ignored. Telemetry (spans, metrics, logs) is built on this.
    """

    def committed(self, snapshot: Snapshot, events: Sequence[Event]) -> None:
        """A transition was committed (its store write may still be on its way; if that
        fails, the pass ends with the error). `snapshot` is live: read it now, don't keep
        it."""
        ...

    def ended(self, snapshot: Snapshot, error: BaseException | None) -> None:
        """The pass is over: settled, handed to a timer, or cut short by `error`
        (CancelledError when the run was handed back at shutdown)."""
        ...


class RunObserver(Protocol):
    def pass_started(self, snapshot: Snapshot) -> PassObserver:
        """A worker took the run under a lease and is about to execute it."""
        ...


# Watchdog entries one recovery round examines at most (a backlog is worked off in pages).
RECOVER_LIMIT = 5000
# Seconds between two rounds of expiry and queue clean-up, and the most runs one round
# forgets (a full round is followed by another at once).
HOUSEKEEPING_INTERVAL = 5.0
HOUSEKEEPING_BATCH = 500
# After a pass's first write, how long what it commits may wait to be written with what it
# commits next (the pass's end is written at once, whatever is waiting).
COALESCE = 0.001
# Seconds after its finish that a run is compacted (`Store.compact_finished`): by then the
# watchers that were following it have read its last events.
COMPACT_AFTER = 1.0


class StoreJournal:
    """Writes an execution's transitions under its lease's fence: group commit.

    Each commit takes an image of the snapshot at once: its JSON without records, and the
    JSON of the records the commit's change set names (all of them on the pass's first
    commit). Images waiting for one write are merged, later records over earlier ones, so
    the order of transitions in the store is always the commit order.

    The end of a pass (release, or a hand-over to a timer) is durable before `commit`
    returns, together with everything committed before it, in one store write. Every other
    transition is written behind the execution: the pass's first commit starts a write at
    the next turn of the event loop (watchers see the run start at once); later ones are
    written at most `coalesce` seconds after they happen, together, and never while another
    write is in flight (what is committed meanwhile goes in the next one). So a pass of fast
    steps costs two writes (its start, its end) rather than one per step, a long step's
    start and result reach watchers within about a millisecond, and a busy store gets
    fewer, larger writes. A crash
    before a step's result is written means the step runs again, which at-least-once
    allows; a fenced-out holder still cannot write. A write that fails behind the
    execution (lost lease, store down) ends the pass through `on_write_behind_failure`, and
    fails the next commit.
    """

    def __init__(
        self,
        store: Store,
        lease: Lease,
        *,
        observers: Sequence[PassObserver] = (),
        on_write_behind_failure: Callable[[BaseException], None] | None = None,
        coalesce: float = COALESCE,
    ) -> None:
        self._store = store
        self._run_id = lease.run_id
        self._fence = lease.fence
        self._observers = observers
        self._on_write_behind_failure = on_write_behind_failure
        self._coalesce = coalesce
        # The first write behind goes at once, later ones after `coalesce` (see above).
        self._started = False
        # One write at a time, so a later image never lands before an earlier one.
        self._lock = asyncio.Lock()
        # What is committed and not yet written (later images merged into it).
        self._image: SnapshotImage | None = None
        self._events: list[Event] = []
        self._release = False
        self._wake_at: float | None = None
        self._behind: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._cancel_requested = lease.run.cancel_requested
        # The last stored version and sequence (what a waiter on this replica is told).
        self.version = lease.run.version
        self.last_sequence = lease.run.last_sequence

    async def commit(
        self,
        snapshot: Snapshot,
        events: Sequence[Event],
        *,
        release: bool = False,
        wake_at: float | None = None,
        changes: ChangeSet | None = None,
    ) -> bool:
        if self._failure is not None:
            raise self._failure
        image = SnapshotImage.of(snapshot, changes)
        self._image = image if self._image is None else self._image.merged(image)
        self._events.extend(events)
        self._release = self._release or release
        if wake_at is not None:
            self._wake_at = wake_at
        for observer in self._observers:
            try:
                observer.committed(snapshot, events)
            except Exception:
                log.exception("run observer %r failed", observer)
        if release or wake_at is not None:
            await self._flush()
        elif self._behind is None or self._behind.done():
            delay = self._coalesce if self._started else 0.0
            self._started = True
            self._behind = asyncio.create_task(self._write_behind(delay))
        return self._cancel_requested

    async def _write_behind(self, delay: float) -> None:
        """After `delay`, write what is committed until nothing is left. If a write fails,
        the next commit raises; but the pass may not commit again for a long while (a step
        waiting for a webhook), so the owner is told at once and ends the pass (the run is
        then re-driven from what is stored)."""
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            while self._image is not None:
                await self._flush()
                if self._image is not None:  # committed while that write was in flight
                    await asyncio.sleep(self._coalesce)
        except Exception as err:
            if self._on_write_behind_failure is not None:
                self._on_write_behind_failure(err)

    async def _flush(self) -> None:
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            image, events, release, wake_at = (
                self._image,
                self._events,
                self._release,
                self._wake_at,
            )
            if image is None:
                return  # an earlier flush already wrote everything committed so far
            self._image, self._events, self._release, self._wake_at = None, [], False, None
            try:
                outcome = await self._store.write(
                    image, events, fence=self._fence, release=release, wake_at=wake_at
                )
            except BaseException as err:
                self._failure = err
                raise
            self._cancel_requested = outcome.cancel_requested
            self.version, self.last_sequence = outcome.version, outcome.last_sequence

    def end(self, snapshot: Snapshot, error: BaseException | None) -> None:
        """The pass is over: drop what was not written (a pass that ends normally has
        written everything) and tell the observers."""
        if self._behind is not None and not self._behind.done():
            self._behind.cancel()
        for observer in self._observers:
            try:
                observer.ended(snapshot, error)
            except Exception:
                log.exception("run observer %r failed", observer)


def default_owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        owner: str | None = None,
        max_concurrent_runs: int = 64,
        lease_ttl: float = 5.0,
        poll_block: float = 1.0,
        observers: Sequence[RunObserver] = (),
    ) -> None:
        if max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        self.store = store
        self.registry = registry
        self.owner = owner or default_owner()
        self.max_concurrent_runs = max_concurrent_runs
        self.lease_ttl = lease_ttl
        self.poll_block = poll_block
        self.observers = observers
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # Set when this replica hands a run to a timer, so the timer loop looks again now.
        self._timer_set = asyncio.Event()
        # Slots promised to runs this replica is about to create or claim held (`reserve`).
        self._reserved = 0
        # Runs executing here -> what their pass ended with, for waiters on this replica.
        self._passes: dict[str, asyncio.Future[StoredRun | None]] = {}

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    @property
    def held_leases(self) -> int:
        """Runs this replica is executing under a lease right now."""
        return len(self._cancel_events)

    def _free_slots(self) -> int:
        return self.max_concurrent_runs - len(self._tasks) - self._reserved

    # -- local execution (the `LocalRunner` that RunService uses) ----------------------------
    def reserve(self) -> bool:
        """Promise a slot to a run about to be created or claimed held by this replica.
        False when the replica is full or draining: the run then goes through the queue."""
        if self._stopping.is_set() or self._free_slots() <= 0:
            return False
        self._reserved += 1
        return True

    def unreserve(self) -> None:
        """Give back a reserved slot that was not used."""
        self._reserved -= 1
        self._slot_freed.set()

    def execute(self, lease: Lease) -> None:
        """Execute a run this replica already holds, in a reserved slot."""
        self._reserved -= 1
        self._passes[lease.run_id] = asyncio.get_running_loop().create_future()
        self._spawn(self._run(None, lease), lease.run_id)

    def pass_of(self, run_id: str) -> asyncio.Future[StoredRun | None] | None:
        """While the run executes here: a future of the stored run once its pass ends with a
        finish event (success, failure, cancel, suspension), or of None when it ended
        otherwise (handed to a timer, lease lost, store down)."""
        return self._passes.get(run_id)

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._consume(), name="stepline-consume"),
            asyncio.create_task(self._listen_cancels(), name="stepline-cancels"),
            asyncio.create_task(self._fire_timers(), name="stepline-timers"),
            asyncio.create_task(self._recover(), name="stepline-recovery"),
            asyncio.create_task(self._housekeeping(), name="stepline-housekeeping"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Drain: take no more work, let in-flight runs finish within `grace`, hand back
        the rest."""
        self._stopping.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- loops -----------------------------------------------------------------------------
    async def _consume(self) -> None:
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                items = await self.store.dequeue(self.owner, free, self.poll_block)
            except StoreUnavailable:
                log.warning("store unavailable while taking work; retrying")
                await asyncio.sleep(1.0)
                continue
            # Local starts may have taken slots while the read was blocked: what no longer
            # fits goes back to the queue for another replica (or this one, later).
            fits = max(0, self._free_slots())
            for item in items[:fits]:
                self._spawn(self._run(item), item.run_id)
            for item in items[fits:]:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.enqueue(item.run_id)
                    await self.store.ack(item)

    def _spawn(self, run: Coroutine[Any, Any, None], run_id: str) -> None:
        task = asyncio.create_task(run, name=f"stepline-run-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def _listen_cancels(self) -> None:
        while not self._stopping.is_set():
            try:
                async for run_id in self.store.cancel_requests():
                    event = self._cancel_events.get(run_id)
                    if event is not None:
                        event.set()
            except StoreUnavailable:
                await asyncio.sleep(1.0)

    async def _fire_timers(self) -> None:
        """Queue sleeping runs whose timers are due. Timers live in the store, so any replica
        wakes any run; the loop sleeps until the next known timer, and at most a second so
        timers set by other replicas are seen."""
        while not self._stopping.is_set():
            try:
                upcoming = await self.store.fire_timers(now())
            except StoreUnavailable:
                upcoming = None
            delay = 1.0 if upcoming is None else min(1.0, max(0.0, upcoming - now()))
            self._timer_set.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_set.wait(), delay)

    async def _recover(self) -> None:
        """Queue runs that nothing holds any more (a replica died or stalled past its lease,
        or a claim's queue entry was lost). Runs at start-up and then continuously, on every
        replica; any replica may then take them."""
        interval = min(1.0, self.lease_ttl / 2)
        while not self._stopping.is_set():
            try:
                orphans = await self.store.recover(now(), grace=CLAIM_GRACE, limit=RECOVER_LIMIT)
            except StoreUnavailable:
                orphans = []
            for run_id in orphans:
                log.warning("recovering run %s: nothing held it past its deadline", run_id)
            await asyncio.sleep(interval)

    async def _housekeeping(self) -> None:
        """Forget expired runs, compact finished ones, and queue again the runs whose queue
        entry a dead worker took, on every replica (each step is safe to run twice)."""
        while not self._stopping.is_set():
            compacted = await self._compact()
            try:
                # A backlog goes a batch per round, between other work.
                swept = await self.store.sweep_expired(now(), limit=HOUSEKEEPING_BATCH)
                # A live worker acquires what it takes within milliseconds: an entry taken
                # a lease's time ago and never acknowledged belongs to a dead or stalled one.
                requeued = await self.store.reclaim_abandoned(min_idle=self.lease_ttl)
                if requeued:
                    log.warning("queued %d run(s) again: their worker took them and died", requeued)
            except StoreUnavailable:
                swept = 0
            if swept < HOUSEKEEPING_BATCH and compacted < HOUSEKEEPING_BATCH:
                await asyncio.sleep(min(HOUSEKEEPING_INTERVAL, self.lease_ttl))

    async def _compact(self) -> int:
        """One batch of `compact_finished`. Compaction only saves room: whatever goes wrong
        with it is logged and leaves the rest of housekeeping going."""
        try:
            return await self.store.compact_finished(
                now() - COMPACT_AFTER, limit=HOUSEKEEPING_BATCH
            )
        except StoreUnavailable:
            return 0
        except Exception:
            log.exception("compacting finished runs failed")
            return 0

    # -- one run ---------------------------------------------------------------------------
    async def _run(self, item: WorkItem | None, lease: Lease | None = None) -> None:
        """Execute a queued run (`item`: acquire its lease first) or a held one (`lease`)."""
        run_id = item.run_id if item is not None else lease.run_id if lease is not None else ""
        handed_back = False
        # This task's pass, once it holds the run (`execute` made it for a held one). Only
        # its own: a spare queue entry taken while another task runs the run leaves that
        # task's pass alone.
        own = self._passes.get(run_id) if lease is not None else None
        logs.bind_run(run_id)  # this task's log lines are about this run
        try:
            if item is not None:
                lease = await self.store.acquire(run_id, self.owner, self.lease_ttl)
                if lease is not None:
                    # Held here from now on: a wait (or a Restart) on this replica follows
                    # the pass, from before the pass begins.
                    own = self._passes[run_id] = asyncio.get_running_loop().create_future()
                # The queue entry has done its job: from here the lease and the watchdog
                # account for the run. (If acquiring failed for want of a store, the entry
                # stays pending and housekeeping queues the run again.)
                await self.store.ack(item)
                if lease is None:
                    return  # settled, deleted, or held by someone else
            assert lease is not None
            await self._execute(lease)
        except asyncio.CancelledError:
            handed_back = lease is not None
            raise
        except LeaseLost:
            log.warning("lost the lease on run %s; another replica continues it", run_id)
        except RunNotFound:
            log.info("run %s was deleted while executing", run_id)
        except StoreUnavailable:
            # The lease expires and the run is picked up again once the store is back.
            log.warning("store unavailable while executing run %s", run_id)
        except Exception:
            log.exception("engine error while executing run %s", run_id)
            if lease is not None:
                # A bug, not a step's failure (those are the run's own): re-running would
                # meet it again, so the run fails now instead of being recovered for ever.
                await self._fail_on_engine_error(lease)
        finally:
            if own is not None:  # ended before (or without) its pass
                if self._passes.get(run_id) is own:
                    del self._passes[run_id]
                if not own.done():
                    own.set_result(None)
            if handed_back and lease is not None:
                await self._hand_back(lease)

    async def _fail_on_engine_error(self, lease: Lease) -> None:
        with contextlib.suppress(StoreUnavailable, RunNotFound, LeaseLost):
            stored = await self.store.get(lease.run_id)
            if stored is None or stored.snapshot.status.settled:
                return
            snapshot = stored.snapshot
            error = ErrorData(
                message="the server failed while executing this run; see its log",
                name="EngineError",
            )
            snapshot.status, snapshot.error, snapshot.updated_at = RunStatus.FAILED, error, now()
            snapshot.active_steps.clear()
            snapshot.pending_resume = None
            finish = Event(data=snapshot.finish_data(error=error.as_event()))
            await self.store.write(snapshot, [finish], fence=lease.fence, release=True)

    async def _hand_back(self, lease: Lease) -> None:
        with contextlib.suppress(StoreUnavailable, RunNotFound, LeaseLost):
            await self.store.release(lease.run_id, lease.fence)
            await self.store.enqueue(lease.run_id)

    async def _execute(self, lease: Lease) -> None:
        snapshot = lease.run.snapshot
        logs.bind_run(lease.run_id, snapshot.workflow_id)
        task = asyncio.current_task()

        def abandon(err: BaseException) -> None:
            if isinstance(err, LeaseLost):
                log.warning("lost the lease on run %s; another replica continues it", lease.run_id)
            else:
                log.warning("a write of run %s failed (%s); handing it back", lease.run_id, err)
            if task is not None:
                task.cancel()  # the pass ends as at shutdown: the run is handed back

        journal = StoreJournal(
            self.store,
            lease,
            observers=self._pass_observers(snapshot),
            on_write_behind_failure=abandon,
        )
        ended = self._passes.get(lease.run_id)
        if ended is None or ended.done():
            ended = self._passes[lease.run_id] = asyncio.get_running_loop().create_future()
        error: BaseException | None = None
        outcome: StoredRun | None = None
        try:
            final = await self._execute_pass(lease, journal)
            if final is not None and final.status.settled:
                outcome = StoredRun(
                    snapshot=final,
                    version=journal.version,
                    last_sequence=journal.last_sequence,
                    cancel_requested=False,
                    leased=False,
                )
        except BaseException as err:
            error = err
            raise
        finally:
            if self._passes.get(lease.run_id) is ended:
                del self._passes[lease.run_id]
            if not ended.done():
                ended.set_result(outcome)
            journal.end(snapshot, error)

    def _pass_observers(self, snapshot: Snapshot) -> list[PassObserver]:
        passes: list[PassObserver] = []
        for observer in self.observers:
            try:
                passes.append(observer.pass_started(snapshot))
            except Exception:
                log.exception("run observer %r failed", observer)
        return passes

    async def _execute_pass(self, lease: Lease, journal: StoreJournal) -> Snapshot | None:
        """Returns the snapshot the pass ended with (None: an unregistered workflow)."""
        snapshot = lease.run.snapshot
        workflow = self.registry.get(snapshot.workflow_id)
        if workflow is None:
            await _fail_unknown_workflow(journal, snapshot)
            return None
        cancel = asyncio.Event()
        if lease.run.cancel_requested:
            cancel.set()
        self._cancel_events[lease.run_id] = cancel
        heartbeat = asyncio.create_task(self._heartbeat(lease, cancel))
        try:
            final = await Execution(workflow, snapshot, journal, cancel_event=cancel).run()
            if final.status is RunStatus.WAITING:
                self._timer_set.set()
            return final
        finally:
            heartbeat.cancel()
            self._cancel_events.pop(lease.run_id, None)
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, lease: Lease, cancel: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                renewal = await self.store.renew(lease.run_id, lease.fence, self.lease_ttl)
                if not renewal.held:
                    log.warning("lease on run %s was taken over", lease.run_id)
                    return
                if renewal.cancel_requested:
                    # Also when the cancel's notification was missed (pub/sub reconnecting).
                    cancel.set()
            except StoreUnavailable:
                log.warning("could not renew the lease on run %s", lease.run_id)


async def _fail_unknown_workflow(journal: StoreJournal, snapshot: Snapshot) -> None:
    error = serialize_error(
        LookupError(f"workflow {snapshot.workflow_id!r} is not registered on this server")
    )
    snapshot.status, snapshot.error, snapshot.updated_at = RunStatus.FAILED, error, now()
    await journal.commit(
        snapshot,
        [Event(data=snapshot.finish_data(error=error.as_event()))],
        release=True,
    )
