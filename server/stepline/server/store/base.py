"""The one storage interface. `MemoryStore` and `RedisStore` implement it and pass the same
conformance suite (tests/test_store_conformance.py).

Ownership rules the interface enforces:
- A run that is PENDING or SUSPENDED (or orphaned) has no holder; it changes only through
  `write(..., expected_version=...)`, a compare-and-set on the stored version.
- A worker holds a run under a lease taken with `acquire`, which bumps the fencing counter.
  Its writes carry that fence; a write with a stale fence raises `LeaseLost`.
- Every write stores the snapshot and appends its events in one atomic step; events get
  dense sequence numbers from 1. No other way exists to append an event. A write of a
  `SnapshotImage` made with a change set stores only the step records and foreach iterations
  it names over those stored; any other write is full and replaces them all.
- A run may also be created already held (`create(..., lease_owner=...)`): the replica
  that accepted it executes it at once, without a trip through the queue.
- Cancel of a held run only raises a flag (`request_cancel`); the holder sees it in the
  result of its next write and through `cancel_requests()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..model import Event, RunStatus, Snapshot, SnapshotImage

# How long a queued (or claimed) run may wait for a worker before `recover` queues it again.
# A queue entry is only lost in a crash, so this is long: a backlog just waits.
CLAIM_GRACE = 30.0


@dataclass(frozen=True)
class StoredRun:
    """A snapshot with the store-level fields that live beside it."""

    snapshot: Snapshot
    version: int
    last_sequence: int
    cancel_requested: bool
    # True while a live lease holds the run.
    leased: bool
    # False for a run stored by the first layout, whose records are inside its snapshot
    # JSON: a write to it must be a full one, or its records would be lost.
    records_apart: bool = True


@dataclass(frozen=True)
class RunHead:
    status: RunStatus
    last_sequence: int
    # The lowest sequence still stored: 1 unless the log was trimmed (a store made with
    # `max_events` keeps only that many of a run's latest events); last + 1 when empty.
    first_kept_sequence: int


@dataclass(frozen=True)
class CreateOutcome:
    created: bool
    # The stored run: the new one, or the one that already had this run id.
    run: StoredRun
    # The new run's lease when it was created held (`lease_owner`); else None.
    lease: Lease | None = None


@dataclass(frozen=True)
class WriteOutcome:
    version: int
    last_sequence: int
    cancel_requested: bool
    # The lease's fence when the write took it (`hold`); else None.
    fence: int | None = None


@dataclass(frozen=True)
class Hold:
    """Who takes a run's lease with an unheld write, and for how long."""

    owner: str
    ttl: float


@dataclass(frozen=True)
class Lease:
    run_id: str
    fence: int
    run: StoredRun


@dataclass(frozen=True)
class Renewal:
    """What renewing a lease found."""

    # False: the fence is stale (another holder took the run, or it was deleted).
    held: bool
    # The run's cancel flag: a holder that missed the notification learns of it here.
    cancel_requested: bool = False


@dataclass(frozen=True)
class WorkItem:
    """A queued request to execute a run. `token` is store-specific (e.g. a stream entry id)."""

    run_id: str
    token: str


@dataclass(frozen=True)
class RunFilter:
    workflow_id: str = ""
    resource_id: str = ""
    statuses: frozenset[RunStatus] = field(default_factory=frozenset)
    created_after: float | None = None
    created_before: float | None = None


@dataclass(frozen=True)
class RunRow:
    run_id: str
    workflow_id: str
    resource_id: str
    status: RunStatus
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Page:
    rows: list[RunRow]
    # Opaque cursor for the next page; empty when there is none.
    next_cursor: str


class Store(Protocol):
    """Where runs live. Every method raises `StoreUnavailable` when the backend is down."""

    @property
    def durable(self) -> bool:
        """False for the in-process store."""
        ...

    async def create(
        self, snapshot: Snapshot, *, lease_owner: str = "", lease_ttl: float = 0.0
    ) -> CreateOutcome:
        """Record a new PENDING run, atomically with respect to other creates of the same run
        id. If the id exists, nothing is written and the existing run is returned with
        `created=False`.

        Without `lease_owner` the run is queued for any worker. With it, the run is created
        held by that owner for `lease_ttl` seconds (fence 1, returned as `lease`) and is not
        queued: the caller executes it, and the watchdog recovers it if the caller dies."""
        ...

    async def get(self, run_id: str) -> StoredRun | None: ...

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
        """Store `snapshot` and append `events`, as one atomic step. A Snapshot, or a full
        image, replaces every stored record; a partial image (`SnapshotImage.of` with a
        change set) writes its records over the stored ones.

        `wake_at` registers a durable timer: at that time `fire_timers` queues the run again
        (a WAITING run handed back by its holder).

        Exactly one guard applies: `fence` (holder write; `LeaseLost` if stale) or
        `expected_version` (unheld compare-and-set; `StoreConflict` if the version moved or a
        live lease holds the run). `release=True` also ends the holder's lease.
        `hold` (only with `expected_version`) takes the lease in the same step, as `acquire`
        would, and the outcome carries its fence: a claim that its replica executes at once.
        Raises `RunNotFound` if the run was deleted."""
        ...

    async def acquire(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease on a PENDING/RUNNING/WAITING run that no live lease holds.
        Returns None when the run is settled, missing or held."""
        ...

    async def renew(self, run_id: str, fence: int, ttl: float) -> Renewal:
        """Extend a lease (not when the fence is stale), and report the cancel flag."""
        ...

    async def release(self, run_id: str, fence: int) -> None:
        """End a lease without writing (hand the run back)."""
        ...

    async def request_cancel(self, run_id: str) -> bool:
        """Flag a held run for cancellation and notify its holder.
        Returns False (and changes nothing) when no live lease holds the run."""
        ...

    def cancel_requests(self) -> AsyncIterator[str]:
        """Run ids whose cancellation was requested, as they are requested (any replica)."""
        ...

    async def enqueue(self, run_id: str) -> None:
        """Queue a run for execution (after a resume claim, or to re-drive it)."""
        ...

    async def fire_timers(self, now: float, limit: int = 100) -> float | None:
        """Queue every run whose timer is due (at most `limit`) and drop those timers.
        Returns the earliest remaining wake-up time, or None. Safe to call from every replica
        at once (a run may be queued twice; acquiring it is what counts)."""
        ...

    async def recover(self, now: float, *, grace: float, limit: int = 100) -> list[str]:
        """Queue again every run that should be moving but that nothing holds: an expired
        lease (its replica died or stalled), or a start or resume claim whose queue entry was
        lost. Returns their ids. Every replica runs this continuously; running it twice at
        once only queues a run twice (acquiring it is what counts).

        The store keeps the bookkeeping itself (a watchdog deadline per unsettled run), so
        this costs one read when nothing is wrong."""
        ...

    async def dequeue(self, consumer: str, count: int, block: float) -> list[WorkItem]:
        """Take up to `count` queued items, waiting up to `block` seconds for the first."""
        ...

    async def ack(self, item: WorkItem) -> None: ...

    async def queue_depth(self) -> int:
        """How many queued items no worker has taken yet (a gauge, and the health probe)."""
        ...

    async def read_events(self, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        """Events with sequence > after, in order. Raises `RunNotFound` for an unknown run."""
        ...

    async def wait_events(self, run_id: str, after: int, timeout: float) -> list[Event]:
        """Like read_events, but blocks (no polling) up to `timeout` seconds until at least
        one event exists after `after`; returns [] on timeout."""
        ...

    async def head(self, run_id: str) -> RunHead:
        """What a watch needs of a run, without reading its snapshot: its status, last
        sequence and lowest sequence still stored. Raises RunNotFound."""
        ...

    async def list_runs(self, filter: RunFilter, limit: int, cursor: str) -> Page:
        """Runs newest first (by created_at, then run id), filtered, paged by `cursor`."""
        ...

    async def delete(self, run_id: str) -> bool:
        """Remove the run's snapshot, events and index entries. False if it did not exist."""
        ...

    async def sweep_expired(self, now: float, limit: int = 100) -> int:
        """Forget finished runs whose retention ran out (a store made with a retention keeps
        a finished run that long after its last write; any later write, e.g. time travel,
        keeps it again). Their snapshot and events are gone from the moment they expire;
        this takes them out of listings and bookkeeping. Returns how many it cleaned up."""
        ...

    async def compact_finished(self, finished_before: float, limit: int = 100) -> int:
        """Store runs that finished before `finished_before` (at most `limit`) in less room,
        unchanged for every reader; a later write to one gets it back as it was. Returns how
        many finished runs it dealt with (compacted, or left as they are for good: a full
        batch means more may wait). Safe to call from every replica at once."""
        ...

    async def reclaim_abandoned(self, min_idle: float, limit: int = 100) -> int:
        """Queue again the runs of queue entries a worker took at least `min_idle` seconds
        ago and never acknowledged (it died or stalled before acquiring them), and drop
        those entries. Returns how many it queued again."""
        ...

    async def close(self) -> None: ...
