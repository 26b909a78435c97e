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

from .errors import LeaseLost, RunNotFound, StoreUnavailable
from .executor import Execution, serialize_error
from .model import Event, EventType, RunStatus, Snapshot, now
from .store import Lease, Store, WorkItem
from .workflows import Registry

log = logging.getLogger(__name__)


class StoreJournal:
    """Writes an execution's transitions under its lease's fence, one at a time.

    Parallel steps of one run commit concurrently; the lock keeps their writes in order so
    a later snapshot never lands before an earlier one.
    """

    def __init__(self, store: Store, lease: Lease) -> None:
        self._store = store
        self._fence = lease.fence
        self._lock = asyncio.Lock()

    async def commit(
        self, snapshot: Snapshot, events: Sequence[Event], *, release: bool = False
    ) -> bool:
        async with self._lock:
            outcome = await self._store.write(snapshot, events, fence=self._fence, release=release)
        return outcome.cancel_requested


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
    ) -> None:
        if max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        self.store = store
        self.registry = registry
        self.owner = owner or default_owner()
        self.max_concurrent_runs = max_concurrent_runs
        self.lease_ttl = lease_ttl
        self.poll_block = poll_block
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel_events: dict[str, asyncio.Event] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._consume(), name="stepline-consume"),
            asyncio.create_task(self._listen_cancels(), name="stepline-cancels"),
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

    # -- one run ---------------------------------------------------------------------------
    async def _run(self, item: WorkItem) -> None:
        lease: Lease | None = None
        handed_back = False
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
        workflow = self.registry.get(snapshot.workflow_id)
        journal = StoreJournal(self.store, lease)
        if workflow is None:
            await _fail_unknown_workflow(journal, snapshot)
            return
        cancel = asyncio.Event()
        if lease.run.cancel_requested:
            cancel.set()
        self._cancel_events[lease.run_id] = cancel
        heartbeat = asyncio.create_task(self._heartbeat(lease, cancel))
        try:
            await Execution(workflow, snapshot, journal, cancel_event=cancel).run()
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
