"""The run operations of the Redis store: create, get, write, the lease (acquire, renew,
release), cancel, delete, and reading and waiting on a run's events.

A run is one hash (the snapshot JSON without its records, plus `ver`, `seq`, `fence`, lease,
`cancel`, `layout` and `ikeys` fields), a hash of step records, one hash of iteration records
per foreach, and one event stream whose entry ids are `0-<sequence>`, so a cursor is a stream
id. A finished run is compacted by housekeeping into its header fields and one deflated blob
(layout 4, `redis_compaction.py`); reads take it from there, and a write expands it first.
Every guarded change is one Lua script (`scripts.py`) over the run's keys, which writes
only the records the change names (or all of them, replacing what was there: a full write);
the global keys it touches on the side (watchdog, timers, indexes, `expiring`) are plain
commands in the same round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript
from redis.typing import KeyT, StreamIdT

from ..errors import LeaseLost, RunNotFound, StoreConflict
from ..events import Event, decode_event, encode_event
from ..model import RunStatus, Snapshot, SnapshotImage, assemble
from . import scripts
from .base import (
    CLAIM_GRACE,
    CreateOutcome,
    Hold,
    Lease,
    Renewal,
    RunHead,
    StoredRun,
    WriteOutcome,
)
from .compacted import Compacted, unpack
from .keys import decode
from .redis_compaction import RunCompaction, blob_bytes, pairs
from .redis_core import block_ms, reachable
from .redis_queue import queue_entry
from .resp import Arg

__all__ = ["RunOperations"]


# Attempts of a write that finds its run compacted (expanded in between; a second compaction
# can only come from a compaction that read the run before the expansion).
_WRITE_ATTEMPTS = 3


class RunOperations(RunCompaction):
    """`RedisStore`'s run operations."""

    async def create(
        self, snapshot: Snapshot, *, lease_owner: str = "", lease_ttl: float = 0.0
    ) -> CreateOutcome:
        """Record and index a new run in one round trip, then queue it (a second one) unless
        it is held for `lease_owner`; an existing id is returned untouched.

        The watchdog, the indexes and the queue are global keys, which Redis Cluster does not
        let one script touch together with the run's keys; so they are plain commands in the
        same pipeline. The watchdog deadline goes first: a crash right after the script still
        gets the run queued by `recover`. Index entries are added only-if-absent, so an id
        that already existed keeps its own; the rejected run's entries under other indexes
        are taken out again (the collision path only)."""
        run_id = snapshot.run_id
        now = time.time()
        held = bool(lease_owner)
        until = now + lease_ttl
        image = SnapshotImage.of(snapshot)
        item_keys, records = self._records(image)
        args = [
            image.json,
            snapshot.status.value,
            snapshot.workflow_id,
            snapshot.resource_id,
            repr(snapshot.created_at),
            repr(snapshot.updated_at),
            snapshot.request_id,
            lease_owner,
            repr(until),
            *records,
        ]
        indexes = self._keys.indexes(snapshot.workflow_id, snapshot.resource_id)
        commands: list[list[Arg]] = [
            ["ZADD", self._keys.watchdog, until if held else now + CLAIM_GRACE, run_id],
            self._scripted(self._create, [*self._run_keys(run_id), *item_keys], args),
        ]
        commands += [["ZADD", index, "NX", snapshot.created_at, run_id] for index in indexes]
        replies = await self._pipeline(commands)
        reply = replies[1]
        created = reply[0] == 1
        if created:
            # What the script stored, as it reads back (a JSON round trip), without a read.
            run = StoredRun(image.load(), 1, 0, cancel_requested=False, leased=held)
        else:
            run = _stored(reply[1], now)
        if created and not held:
            await self._pipeline([queue_entry(self._keys, run_id)])
        if not created:
            existing = run.snapshot
            own = self._keys.indexes(existing.workflow_id, existing.resource_id)
            stray = set(indexes) - set(own)
            if stray:
                await self._pipeline([["ZREM", index, run_id] for index in stray])
        lease = Lease(run_id=run_id, fence=1, run=run) if created and held else None
        return CreateOutcome(created=created, run=run, lease=lease)

    async def get(self, run_id: str) -> StoredRun | None:
        now = time.time()
        keys = [self._keys.run(run_id), self._keys.steps(run_id)]
        (reply,) = await self._pipeline([self._scripted(self._read, keys, [])])
        return None if reply[0][1] is None else _stored(reply, now)

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
        """Store the snapshot and append the events in one script (see `Store.write`).

        A timer (`wake_at`) lives in a global sorted set that the script can't touch under
        Redis Cluster, so it is added before the script, in the same pipeline: if the write
        then fails, the timer only queues a run that acquiring then ignores; a timer is never
        lost after a successful write."""
        if fence is not None and expected_version is None:
            guard = ["fence", str(fence)]
        elif fence is None and expected_version is not None:
            guard = ["version", str(expected_version)]
        else:
            raise ValueError("write needs exactly one guard: fence or expected_version")
        if hold is not None and expected_version is None:
            raise ValueError("only an unheld write (expected_version) can take the lease")
        image = SnapshotImage.of(snapshot)
        held_until = time.time() + hold.ttl if hold is not None else 0.0
        run_id = image.run_id
        settled = image.status.settled
        finished = image.status.finished
        item_keys, records = self._records(image)
        args: list[Arg] = [
            *guard,
            repr(time.time()),
            "1" if release else "0",
            "1" if settled else "0",
            image.json,
            image.status.value,
            repr(image.updated_at),
            image.request_id,
            self._retention_ms,
            self._max_events,
            "1" if finished else "0",
            hold.owner if hold is not None else "",
            repr(held_until),
            str(len(events)),
            # The sequence lives in the entry id, so it is left out of the entry.
            *(encode_event(event) for event in events),
            *records,
        ]

        commands: list[list[Arg]] = []
        if wake_at is not None:
            commands.append(["ZADD", self._keys.timers, wake_at, run_id])
        if hold is not None:
            commands.append(["ZADD", self._keys.watchdog, held_until, run_id])
        elif not settled and (expected_version is not None or release):
            # Nothing will hold the run after this write: watch it until something does.
            deadline = (wake_at or time.time()) + CLAIM_GRACE
            commands.append(["ZADD", self._keys.watchdog, deadline, run_id])
        if finished and self._retention:
            expires = time.time() + self._retention
            member = self._keys.expiring_member(run_id, image.workflow_id, image.resource_id)
            commands.append(["ZADD", self._keys.expiring, expires, member])
        if finished:
            commands.append(["ZADD", self._keys.compact, time.time(), run_id])
        keys = [*self._run_keys(run_id), *item_keys]
        commands.append(self._scripted(self._write, keys, args))
        if settled:
            # Nothing can be orphaned any more. (If the script refused a stale holder, the
            # live holder's next renewal puts the deadline back.)
            commands.append(["ZREM", self._keys.watchdog, run_id])
        for _attempt in range(_WRITE_ATTEMPTS):
            replies = await self._pipeline(commands)
            reply = replies[-2] if settled else replies[-1]
            if reply[0] != "compacted":
                break
            await self._expand_compacted(run_id)
        match reply[0]:
            case "ok":
                return WriteOutcome(
                    version=int(reply[1]),
                    last_sequence=int(reply[2]),
                    cancel_requested=reply[3] == "1",
                    fence=int(reply[4]) or None,
                )
            case "missing":
                raise RunNotFound(run_id)
            case "stale_fence":
                raise LeaseLost(f"fence {fence} of run {run_id!r} is stale")
            case "version_moved":
                raise StoreConflict(f"run {run_id!r} is no longer at version {expected_version}")
            case "leased":
                raise StoreConflict(f"run {run_id!r} is held by a lease")
            case "compacted":
                raise StoreConflict(f"run {run_id!r} was compacted again at each attempt")
        raise AssertionError(f"unexpected write reply {reply!r}")

    async def acquire(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        now = time.time()
        args = [owner, repr(now), repr(now + ttl)]
        keys = [self._keys.run(run_id), self._keys.steps(run_id)]
        reply = await self._watched(self._acquire, run_id, args, now + ttl, keys)
        if reply[0] == 0:
            return None
        return Lease(run_id=run_id, fence=int(reply[0]), run=_stored(reply[1], now))

    async def renew(self, run_id: str, fence: int, ttl: float) -> Renewal:
        until = time.time() + ttl
        renewed = await self._watched(self._renew, run_id, [str(fence), repr(until)], until)
        return Renewal(held=renewed > 0, cancel_requested=renewed == 2)

    async def _watched(
        self,
        script: AsyncScript,
        run_id: str,
        args: list[str],
        deadline: float,
        keys: list[str] | None = None,
    ) -> Any:
        """Run a lease script with the run's watchdog deadline set in the same round trip.

        The deadline is set even when the script refuses: `recover` checks the run hash
        before acting on a deadline, so a spare one costs a read, never a wrong re-queue."""
        commands: list[list[Arg]] = [
            ["ZADD", self._keys.watchdog, deadline, run_id],
            self._scripted(script, keys or [self._keys.run(run_id)], args),
        ]
        return (await self._pipeline(commands))[1]

    def _records(self, image: SnapshotImage) -> tuple[list[str], list[str]]:
        """The iteration hashes an image writes to, and its records as the scripts take
        them (see `store_records` in scripts.py)."""
        return self._record_args(
            image.run_id, image.full, image.foreach_steps, image.steps, image.items
        )

    async def release(self, run_id: str, fence: int) -> None:
        release = self._scripted(self._release, [self._keys.run(run_id)], [str(fence)])
        await self._pipeline([release])

    async def request_cancel(self, run_id: str) -> bool:
        args = [repr(time.time()), self._keys.cancel_channel, run_id]
        (flagged,) = await self._pipeline(
            [self._scripted(self._request_cancel, [self._keys.run(run_id)], args)]
        )
        return bool(flagged == 1)

    async def cancel_requests(self) -> AsyncIterator[str]:
        """Cancel requests from every replica, from the first iteration on (each iterator has
        its own subscription). Raises `StoreUnavailable` when the connection drops."""
        pubsub = self._blocking.pubsub(ignore_subscribe_messages=True)
        try:
            with reachable():
                await pubsub.subscribe(self._keys.cancel_channel)
            while True:
                with reachable():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message["type"] == "message":
                    yield str(message["data"])
        finally:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def delete(self, run_id: str) -> bool:
        (reply,) = await self._pipeline([self._scripted(self._delete, self._run_keys(run_id), [])])
        if reply[0] == 0:
            return False
        # A crash before this leaves index entries that list_runs skips and removes.
        await self._pipeline(
            [
                ["ZREM", key, run_id]
                for key in (
                    *self._keys.indexes(str(reply[1]), str(reply[2])),
                    self._keys.timers,
                    self._keys.watchdog,
                    self._keys.compact,
                )
            ]
        )
        return True

    async def read_events(self, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        replies = await self._pipeline(
            [
                ["MULTI"],
                ["EXISTS", self._keys.run(run_id)],
                ["XRANGE", self._keys.events(run_id), f"(0-{max(after, 0)}", "+", "COUNT", limit],
                ["GET", self._keys.blob(run_id)],
                ["EXEC"],
            ]
        )
        exists, entries, blob = replies[-1]
        if not exists:
            raise RunNotFound(run_id)
        if blob is not None:
            entries = _entries(unpack(blob_bytes(blob)), after, limit)
        return _raw_events(entries)

    # `timeout` is the Store interface's name for the bound.
    async def wait_events(self, run_id: str, after: int, timeout: float) -> list[Event]:
        # A compacted run's events come from its blob here, at once. Its stream is gone: an
        # XREAD on it waits for the events of a write after its expansion.
        events = await self.read_events(run_id, after)
        if events or timeout <= 0:
            return events
        # XREAD from an explicit id (not `$`) also returns what arrived since the read above.
        streams: dict[KeyT, StreamIdT] = {self._keys.events(run_id): f"0-{max(after, 0)}"}
        with reachable():
            async with asyncio.timeout(timeout + self._grace):
                reply = await self._blocking.xread(streams, count=1000, block=block_ms(timeout))
        streams_read = cast(list[tuple[str, Any]] | None, reply)
        return [event for _stream, entries in streams_read or [] for event in _events(entries)]

    async def head(self, run_id: str) -> RunHead:
        replies = await self._pipeline(
            [
                ["MULTI"],
                ["HMGET", self._keys.run(run_id), "status", "seq"],
                ["XRANGE", self._keys.events(run_id), "-", "+", "COUNT", 1],
                ["GET", self._keys.blob(run_id)],
                ["EXEC"],
            ]
        )
        (status, last), first, blob = replies[-1]
        if last is None:
            raise RunNotFound(run_id)
        if blob is not None:
            first_kept = unpack(blob_bytes(blob)).first
        else:
            first_kept = _sequence(first[0][0]) if first else int(last) + 1
        return RunHead(RunStatus(status), int(last), first_kept)


def _stored(reply: Sequence[Any], now: float) -> StoredRun:
    """A run from a `read_run` reply: its fields, step records and iteration records, or a
    compacted run's blob."""
    fields, steps, groups, blob = reply
    snap, version, sequence, cancel, owner, lease_until, layout, _ikeys = fields
    if blob is not None:
        run = unpack(blob_bytes(blob))
        snapshot = assemble(run.snap, run.steps, run.items)
    else:
        # A run of the first layout has no record hashes: its records are inside `snap`.
        items = {decode(groups[g]): pairs(groups[g + 1]) for g in range(0, len(groups), 2)}
        snapshot = assemble(snap, pairs(steps), {k: _indexed(v) for k, v in items.items()})
    return StoredRun(
        snapshot=snapshot,
        version=int(version),
        last_sequence=int(sequence),
        cancel_requested=cancel == "1",
        leased=bool(owner) and float(lease_until) >= now,
        records_apart=layout == scripts.LAYOUT,
    )


def _indexed(records: dict[str, str]) -> dict[int, str]:
    return {int(index): record for index, record in records.items()}


def _entries(run: Compacted, after: int, limit: int) -> list[tuple[str, list[str]]]:
    """A compacted run's events after `after`, at most `limit`, as XRANGE gives them."""
    start = max(after + 1, run.first)
    return [
        (f"0-{sequence}", [scripts.EVENT_FIELD, run.events[sequence - run.first]])
        for sequence in range(start, min(run.last, start + limit - 1) + 1)
    ]


def _raw_events(entries: Any) -> list[Event]:
    """Events from a raw XRANGE reply: [[entry id, [field, value]], ...]."""
    return [decode_event(fields[1], _sequence(entry_id)) for entry_id, fields in entries or []]


def _events(entries: Any) -> list[Event]:
    return [
        decode_event(fields[scripts.EVENT_FIELD], _sequence(entry_id))
        for entry_id, fields in entries or []
    ]


def _sequence(entry_id: str) -> int:
    return int(entry_id.removeprefix("0-"))
