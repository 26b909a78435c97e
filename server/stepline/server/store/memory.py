"""The in-process store: the Redis store's semantics in a dict, for tests and single-process use.

Every method finishes its reads and writes before its first `await`, which makes each one as
atomic as a Lua script is in Redis. A run is kept as Redis keeps it: the snapshot's JSON
without its records, and the JSON of each step record and foreach iteration apart, so a write
carrying a change set stores only those records and a full write replaces them all. Events go
in through a JSON round trip too (a tuple comes back a list; what JSON cannot hold fails here
too), and everything comes out freshly parsed, so no caller can change stored state through a
shared object.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..errors import LeaseLost, RunNotFound, StoreConflict
from ..events import Event, copy_event
from ..model import RunStatus, Snapshot, SnapshotImage, assemble
from .base import (
    CLAIM_GRACE,
    CreateOutcome,
    Hold,
    Lease,
    Page,
    Renewal,
    RunFilter,
    RunHead,
    RunRow,
    StoredRun,
    WorkItem,
    WriteOutcome,
)
from .paging import decode_cursor, encode_cursor, matches

__all__ = ["MemoryStore"]


@dataclass
class _Run:
    # The snapshot's JSON without its records, and its status and last change.
    blob: str
    status: RunStatus
    updated_at: float
    # Fixed at create: they place the run in listings, like the Redis indexes.
    workflow_id: str
    resource_id: str
    created_at: float
    version: int = 1
    events: list[Event] = field(default_factory=list)
    fence: int = 0
    lease_owner: str = ""
    lease_until: float = 0.0
    cancel: bool = False
    # Events dropped from the front of the log (the per-run cap): `events[0]` has sequence
    # `trimmed + 1`.
    trimmed: int = 0
    # When a finished run is forgotten (None: kept).
    expires_at: float | None = None
    # Step id -> StepRecord JSON; foreach step id -> index -> IterationRecord JSON.
    steps: dict[str, str] = field(default_factory=dict)
    items: dict[str, dict[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, image: SnapshotImage, created_at: float) -> _Run:
        run = cls(
            blob=image.json,
            status=image.status,
            updated_at=image.updated_at,
            workflow_id=image.workflow_id,
            resource_id=image.resource_id,
            created_at=created_at,
        )
        run.store(image)
        return run

    def store(self, image: SnapshotImage) -> None:
        """Take the image's JSON and records: over the records kept (partial), or instead
        of them (full). Iterations of a foreach the image no longer lists are dropped."""
        self.blob, self.status, self.updated_at = image.json, image.status, image.updated_at
        if image.full:
            self.steps, self.items = {}, {}
        self.steps.update(image.steps)
        listed = set(image.foreach_steps)
        self.items = {step_id: kept for step_id, kept in self.items.items() if step_id in listed}
        for step_id, kept in image.items.items():
            self.items.setdefault(step_id, {}).update(kept)

    @property
    def snapshot(self) -> Snapshot:
        return assemble(self.blob, self.steps, self.items)

    @property
    def last_sequence(self) -> int:
        return self.trimmed + len(self.events)

    def leased(self, now: float) -> bool:
        return bool(self.lease_owner) and self.lease_until >= now

    def end_lease(self) -> None:
        self.lease_owner = ""
        self.lease_until = 0.0

    def stored(self, now: float) -> StoredRun:
        return StoredRun(
            snapshot=self.snapshot,
            version=self.version,
            last_sequence=self.last_sequence,
            cancel_requested=self.cancel,
            leased=self.leased(now),
        )

    def row(self, run_id: str) -> RunRow:
        return RunRow(
            run_id=run_id,
            workflow_id=self.workflow_id,
            resource_id=self.resource_id,
            status=self.status,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class MemoryStore:
    """A `Store` that lives in this process and this event loop; nothing is durable."""

    def __init__(self, *, retention: float | None = None, max_events: int | None = None) -> None:
        """`retention`: seconds a finished run is kept (None: forever); `max_events`: events
        kept per run, the oldest dropped beyond it (None: all)."""
        self._retention = retention
        self._max_events = max_events
        self._runs: dict[str, _Run] = {}
        # Notified whenever events are appended; event-log readers wait on it.
        self._appended = asyncio.Condition()
        self._queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self._tokens = itertools.count(1)
        self._cancel_listeners: set[asyncio.Queue[str]] = set()
        self._timers: dict[str, float] = {}
        # In one process nothing is orphaned by a crash, but a hand-back at shutdown or a
        # stalled holder is, so the memory store keeps the same watchdog as Redis.
        self._watchdog: dict[str, float] = {}

    @property
    def durable(self) -> bool:
        return False

    async def create(
        self, snapshot: Snapshot, *, lease_owner: str = "", lease_ttl: float = 0.0
    ) -> CreateOutcome:
        """Record a new run and queue it (or hold it for `lease_owner`); an existing id is
        returned untouched."""
        now = time.time()
        existing = self._live(snapshot.run_id)
        if existing is not None:
            return CreateOutcome(created=False, run=existing.stored(now))
        run = _Run.of(SnapshotImage.of(snapshot), snapshot.created_at)
        self._runs[snapshot.run_id] = run
        if lease_owner:
            run.fence, run.lease_owner, run.lease_until = 1, lease_owner, now + lease_ttl
            self._watchdog[snapshot.run_id] = run.lease_until
            stored = run.stored(now)
            lease = Lease(run_id=snapshot.run_id, fence=1, run=stored)
            return CreateOutcome(created=True, run=stored, lease=lease)
        self._enqueue(snapshot.run_id)
        self._watchdog[snapshot.run_id] = now + CLAIM_GRACE
        return CreateOutcome(created=True, run=run.stored(now))

    async def get(self, run_id: str) -> StoredRun | None:
        run = self._live(run_id)
        return None if run is None else run.stored(time.time())

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
        """Store the snapshot and append the events under exactly one guard (see `Store`)."""
        if (fence is None) == (expected_version is None):
            raise ValueError("write needs exactly one guard: fence or expected_version")
        if hold is not None and expected_version is None:
            raise ValueError("only an unheld write (expected_version) can take the lease")
        # Before any check, so that a value JSON cannot hold fails with nothing changed.
        image = SnapshotImage.of(snapshot)
        stored_events = [copy_event(event) for event in events]
        run = self._live(image.run_id)
        if run is None:
            raise RunNotFound(image.run_id)
        if fence is not None:
            # A released lease keeps its fence number, so the owner must be checked too.
            if run.fence != fence or not run.lease_owner:
                raise LeaseLost(f"fence {fence} of run {image.run_id!r} is stale")
        else:
            if run.version != expected_version:
                raise StoreConflict(
                    f"run {image.run_id!r} is at version {run.version}, not {expected_version}"
                )
            if run.leased(time.time()):
                raise StoreConflict(f"run {image.run_id!r} is held by a lease")
            # An expired holder must not write over this unheld change when it wakes up.
            run.end_lease()
        cancel_requested = run.cancel
        run.store(image)
        for event in stored_events:
            run.events.append(event.with_sequence(run.last_sequence + 1))
        if self._max_events is not None and len(run.events) > self._max_events:
            dropped = len(run.events) - self._max_events
            del run.events[:dropped]
            run.trimmed += dropped
        finished = image.status.finished
        run.expires_at = time.time() + self._retention if finished and self._retention else None
        run.version += 1
        if release:
            run.end_lease()
        taken: int | None = None
        if hold is not None:
            run.fence += 1
            run.lease_owner, run.lease_until = hold.owner, time.time() + hold.ttl
            taken = run.fence
        if image.status.settled:
            # A cancel request targets the execution in progress; once settled it is moot.
            run.cancel = False
        if wake_at is not None:
            self._timers[image.run_id] = wake_at
        if hold is not None:
            self._watchdog[image.run_id] = run.lease_until
        elif not image.status.settled and (expected_version is not None or release):
            self._watchdog[image.run_id] = (wake_at or time.time()) + CLAIM_GRACE
        elif image.status.settled:
            self._watchdog.pop(image.run_id, None)
        outcome = WriteOutcome(
            version=run.version,
            last_sequence=run.last_sequence,
            cancel_requested=cancel_requested,
            fence=taken,
        )
        if events:
            async with self._appended:
                self._appended.notify_all()
        return outcome

    async def acquire(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        """Lease a PENDING/RUNNING/WAITING run that no live lease holds; bumps the fence."""
        now = time.time()
        run = self._live(run_id)
        if run is None or not _acquirable(run.status) or run.leased(now):
            return None
        run.fence += 1
        run.lease_owner = owner
        run.lease_until = now + ttl
        self._watchdog[run_id] = run.lease_until
        return Lease(run_id=run_id, fence=run.fence, run=run.stored(now))

    async def renew(self, run_id: str, fence: int, ttl: float) -> Renewal:
        run = self._live(run_id)
        if run is None or run.fence != fence or not run.lease_owner:
            return Renewal(held=False)
        run.lease_until = time.time() + ttl
        self._watchdog[run_id] = run.lease_until
        return Renewal(held=True, cancel_requested=run.cancel)

    async def release(self, run_id: str, fence: int) -> None:
        run = self._live(run_id)
        if run is not None and run.fence == fence:
            run.end_lease()

    async def request_cancel(self, run_id: str) -> bool:
        run = self._live(run_id)
        if run is None or not run.leased(time.time()):
            return False
        run.cancel = True
        for listener in self._cancel_listeners:
            listener.put_nowait(run_id)
        return True

    async def cancel_requests(self) -> AsyncIterator[str]:
        """Every id passed to a successful `request_cancel` from the first iteration on."""
        listener: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.add(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            self._cancel_listeners.discard(listener)

    async def enqueue(self, run_id: str) -> None:
        self._enqueue(run_id)

    async def fire_timers(self, now: float, limit: int = 100) -> float | None:
        due = sorted((at, run_id) for run_id, at in self._timers.items() if at <= now)[:limit]
        for _, run_id in due:
            del self._timers[run_id]
            self._enqueue(run_id)
        return min(self._timers.values(), default=None)

    async def recover(self, now: float, *, grace: float, limit: int = 100) -> list[str]:
        orphans: list[str] = []
        for run_id, deadline in sorted(self._watchdog.items(), key=lambda kv: kv[1])[:limit]:
            if deadline > now:
                break
            run = self._live(run_id)
            if run is None or run.status.settled:
                del self._watchdog[run_id]
            elif run.leased(now):
                self._watchdog[run_id] = run.lease_until
            elif self._timers.get(run_id, now) > now:
                self._watchdog[run_id] = self._timers[run_id] + grace
            else:
                orphans.append(run_id)
                self._enqueue(run_id)
                self._watchdog[run_id] = now + grace
        return orphans

    async def dequeue(self, consumer: str, count: int, block: float) -> list[WorkItem]:
        """Take up to `count` items; wait up to `block` seconds (0: not at all) for the first."""
        if count < 1:
            raise ValueError("count must be at least 1")
        items: list[WorkItem] = []
        if self._queue.empty() and block > 0:
            try:
                async with asyncio.timeout(block):
                    items.append(await self._queue.get())
            except TimeoutError:
                return []
        while len(items) < count and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def queue_depth(self) -> int:
        return self._queue.qsize()

    async def ack(self, item: WorkItem) -> None:
        """Nothing to do: as with the Redis queue, a taken item is never handed out again."""

    async def read_events(self, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        run = self._live(run_id)
        if run is None:
            raise RunNotFound(run_id)
        # Sequence n sits at index n - 1 - trimmed.
        start = max(after - run.trimmed, 0)
        return [copy_event(event) for event in run.events[start : start + limit]]

    # `timeout` is the Store interface's name for the bound.
    async def wait_events(self, run_id: str, after: int, timeout: float) -> list[Event]:
        events = await self.read_events(run_id, after)
        if events or timeout <= 0:
            return events
        try:
            async with asyncio.timeout(timeout), self._appended:
                await self._appended.wait_for(lambda: self._has_events_after(run_id, after))
        except TimeoutError:
            return []
        return await self.read_events(run_id, after)

    async def head(self, run_id: str) -> RunHead:
        run = self._live(run_id)
        if run is None:
            raise RunNotFound(run_id)
        # "last + 1" of an empty log is 1 as well.
        return RunHead(run.status, run.last_sequence, run.trimmed + 1)

    async def list_runs(self, filter: RunFilter, limit: int, cursor: str) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        position = decode_cursor(cursor)
        await self.sweep_expired(time.time(), limit=len(self._runs))
        rows = sorted(
            (row for run_id, run in self._runs.items() if matches(row := run.row(run_id), filter)),
            key=lambda row: (row.created_at, row.run_id),
            reverse=True,
        )
        if position is not None:
            rows = [row for row in rows if (row.created_at, row.run_id) < position]
        page = rows[:limit]
        return Page(rows=page, next_cursor=encode_cursor(page[-1]) if len(rows) > limit else "")

    async def delete(self, run_id: str) -> bool:
        if self._live(run_id) is None:
            return False
        self._timers.pop(run_id, None)
        self._watchdog.pop(run_id, None)
        return self._runs.pop(run_id, None) is not None

    async def sweep_expired(self, now: float, limit: int = 100) -> int:
        expired = [
            run_id
            for run_id, run in self._runs.items()
            if run.expires_at is not None and run.expires_at <= now
        ][:limit]
        for run_id in expired:
            self._live(run_id)  # drops it
        return len(expired)

    async def compact_finished(self, finished_before: float, limit: int = 100) -> int:
        """Nothing to do: a run in memory is kept as its objects."""
        return 0

    async def reclaim_abandoned(self, min_idle: float, limit: int = 100) -> int:
        """Nothing to do: a taken item leaves the in-process queue at once, and nothing
        else takes items from it."""
        return 0

    async def close(self) -> None:
        """Nothing to release; stored runs stay readable."""

    def _live(self, run_id: str) -> _Run | None:
        """The run, unless it is gone or expired (then it is dropped now)."""
        run = self._runs.get(run_id)
        if run is not None and run.expires_at is not None and run.expires_at <= time.time():
            self._timers.pop(run_id, None)
            self._watchdog.pop(run_id, None)
            del self._runs[run_id]
            return None
        return run

    def _enqueue(self, run_id: str) -> None:
        self._queue.put_nowait(WorkItem(run_id=run_id, token=str(next(self._tokens))))

    def _has_events_after(self, run_id: str, after: int) -> bool:
        run = self._live(run_id)
        # Sequences, not list positions: a trimmed log holds fewer events than it numbers.
        return run is not None and run.last_sequence > after


def _acquirable(status: RunStatus) -> bool:
    return status is RunStatus.PENDING or status.active
