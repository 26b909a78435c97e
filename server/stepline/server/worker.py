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
from collections.abc import Sequence
from typing import Protocol

from . import logs
from .errors import LeaseLost, RunNotFound, StoreUnavailable
from .executor import Execution, serialize_error
from .model import Event, EventType, RunStatus, Snapshot, now
from .store import Lease, Store, WorkItem
from .store.base import CLAIM_GRACE
from .workflows import Registry

log = logging.getLogger(__name__)


class PassObserver(Protocol):
    """Follows one execution pass of a run (one lease): what it commits, then its end.

    Called synchronously in the run's task, in commit order; it must not block, and what it
    raises is logged and ignored. Telemetry (spans, metrics, logs) is built on this.
    """

    def committed(self, snapshot: Snapshot, events: Sequence[Event]) -> None:
        """A transition was stored. `snapshot` is live: read it now, don't keep it."""
        ...

    def ended(self, snapshot: Snapshot, error: BaseException | None) -> None:
        """The pass is over: settled, handed to a timer, or cut short by `error`
        (CancelledError when the run was handed back at shutdown)."""
        ...


class RunObserver(Protocol):
    def pass_started(self, snapshot: Snapshot) -> PassObserver:
        """A worker took the run under a lease and is about to execute it."""
        ...


class StoreJournal:
    """Writes an execution's transitions under its lease's fence, one at a time.

    Parallel steps of one run commit concurrently; the lock keeps their writes in order so
    a later snapshot never lands before an earlier one.
    """

    def __init__(
        self, store: Store, lease: Lease, *, observers: Sequence[PassObserver] = ()
    ) -> None:
        self._store = store
        self._fence = lease.fence
        self._lock = asyncio.Lock()
        self._observers = observers

    async def commit(
        self,
        snapshot: Snapshot,
        events: Sequence[Event],
        *,
        release: bool = False,
        wake_at: float | None = None,
    ) -> bool:
        async with self._lock:
            outcome = await self._store.write(
                snapshot, events, fence=self._fence, release=release, wake_at=wake_at
            )
            for observer in self._observers:
                try:
                    observer.committed(snapshot, events)
                except Exception:
                    log.exception("run observer %r failed", observer)
        return outcome.cancel_requested

    def end(self, snapshot: Snapshot, error: BaseException | None) -> None:
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

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    @property
    def held_leases(self) -> int:
        """Runs this replica is executing under a lease right now."""
        return len(self._cancel_events)

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._consume(), name="stepline-consume"),
            asyncio.create_task(self._listen_cancels(), name="stepline-cancels"),
            asyncio.create_task(self._fire_timers(), name="stepline-timers"),
            asyncio.create_task(self._recover(), name="stepline-recovery"),
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
            free = self.max_concurrent_runs - len(self._tasks)
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
            for item in items:
                task = asyncio.create_task(self._run(item), name=f"stepline-run-{item.run_id}")
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
                orphans = await self.store.recover(now(), grace=CLAIM_GRACE)
            except StoreUnavailable:
                orphans = []
            for run_id in orphans:
                log.warning("recovering run %s: nothing held it past its deadline", run_id)
            await asyncio.sleep(interval)

    # -- one run ---------------------------------------------------------------------------
    async def _run(self, item: WorkItem) -> None:
        lease: Lease | None = None
        handed_back = False
        logs.bind_run(item.run_id)  # this task's log lines are about this run
        try:
            lease = await self.store.acquire(item.run_id, self.owner, self.lease_ttl)
            if lease is None:
                return  # settled, deleted, or held by someone else
            await self._execute(lease)
        except asyncio.CancelledError:
            handed_back = lease is not None
            raise
        except LeaseLost:
            log.warning("lost the lease on run %s; another replica continues it", item.run_id)
        except RunNotFound:
            log.info("run %s was deleted while executing", item.run_id)
        except StoreUnavailable:
            # The lease expires and the run is picked up again once the store is back.
            log.warning("store unavailable while executing run %s", item.run_id)
        except Exception:
            log.exception("engine error while executing run %s", item.run_id)
        finally:
            await self._finish_item(item, lease if handed_back else None)

    async def _finish_item(self, item: WorkItem, hand_back: Lease | None) -> None:
        with contextlib.suppress(StoreUnavailable, RunNotFound, LeaseLost):
            if hand_back is not None:
                await self.store.release(hand_back.run_id, hand_back.fence)
                await self.store.enqueue(hand_back.run_id)
            await self.store.ack(item)

    async def _execute(self, lease: Lease) -> None:
        snapshot = lease.run.snapshot
        logs.bind_run(lease.run_id, snapshot.workflow_id)
        journal = StoreJournal(self.store, lease, observers=self._passes(snapshot))
        error: BaseException | None = None
        try:
            await self._execute_pass(lease, journal)
        except BaseException as err:
            error = err
            raise
        finally:
            journal.end(snapshot, error)

    def _passes(self, snapshot: Snapshot) -> list[PassObserver]:
        passes: list[PassObserver] = []
        for observer in self.observers:
            try:
                passes.append(observer.pass_started(snapshot))
            except Exception:
                log.exception("run observer %r failed", observer)
        return passes

    async def _execute_pass(self, lease: Lease, journal: StoreJournal) -> None:
        snapshot = lease.run.snapshot
        workflow = self.registry.get(snapshot.workflow_id)
        if workflow is None:
            await _fail_unknown_workflow(journal, snapshot)
            return
        cancel = asyncio.Event()
        if lease.run.cancel_requested:
            cancel.set()
        self._cancel_events[lease.run_id] = cancel
        heartbeat = asyncio.create_task(self._heartbeat(lease, cancel))
        try:
            final = await Execution(workflow, snapshot, journal, cancel_event=cancel).run()
            if final.status is RunStatus.WAITING:
                self._timer_set.set()
        finally:
            heartbeat.cancel()
            self._cancel_events.pop(lease.run_id, None)
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, lease: Lease, cancel: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                if not await self.store.renew(lease.run_id, lease.fence, self.lease_ttl):
                    log.warning("lease on run %s was taken over", lease.run_id)
                    return
            except StoreUnavailable:
                log.warning("could not renew the lease on run %s", lease.run_id)


async def _fail_unknown_workflow(journal: StoreJournal, snapshot: Snapshot) -> None:
    error = serialize_error(
        LookupError(f"workflow {snapshot.workflow_id!r} is not registered on this server")
    )
    snapshot.status, snapshot.error, snapshot.updated_at = RunStatus.FAILED, error, now()
    await journal.commit(
        snapshot,
        [
            Event(
                type=EventType.WORKFLOW_FINISH,
                data={"status": RunStatus.FAILED.value, "error": error.model_dump()},
            )
        ],
        release=True,
    )
