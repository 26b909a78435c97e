"""The Redis store: one hash and one stream per run, Lua scripts for every guarded change.

Layout (names in `keys.py`): the run hash holds the snapshot JSON and the store fields (`ver`,
`seq`, `fence`, lease, `cancel`); the run's event stream has entry ids `0-<sequence>`, so a
cursor is a stream id; sorted sets index runs by created_at; a stream with one consumer group
is the work queue; a pub/sub channel carries cancel requests.

Every guarded change is one Lua script (`scripts.py`). Commands go over one auto-pipelining
connection (`resp.py`): whatever the replica sends in one event-loop iteration leaves in one
write, and a command unanswered within the socket timeout fails fast. The blocking reads
(XREAD/XREADGROUP BLOCK, pub/sub) use a redis-py pool without a socket timeout, bounded
instead by an asyncio timeout of the block plus a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.typing import KeyT, StreamIdT

from ..errors import LeaseLost, RunNotFound, StoreConflict, StoreUnavailable
from ..model import Event, RunStatus, Snapshot, SnapshotImage
from . import scripts
from .base import (
    CLAIM_GRACE,
    CreateOutcome,
    Lease,
    Page,
    Renewal,
    RunFilter,
    RunRow,
    StoredRun,
    WorkItem,
    WriteOutcome,
)
from .keys import Keys
from .paging import decode_cursor, encode_cursor, matches
from .resp import Arg, Pipelined

__all__ = ["RedisStore"]


_ROW_FIELDS = ("workflow_id", "resource_id", "status", "created_at", "updated_at")
_DEFAULT_GRACE = 5.0
# Blocking reads in flight at once (each holds a connection): one per worker, one per pub/sub
# listener, and one per run being waited on or watched here (watchers of one run share it).
_BLOCKING_CONNECTIONS = 5000
# A queue consumer (replica) name idle this long and holding nothing is dropped.
_CONSUMER_IDLE_MS = 3_600_000
# Watchdog entries `recover` reads per round trip.
_RECOVER_PAGE = 200

# A retried script whose reply was lost would apply its write twice.
_NO_RETRY = Retry(NoBackoff(), 0)


class RedisStore:
    """A `Store` on Redis (single node, or Cluster-compatible key layout)."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "stepline",
        blocking_client: Redis | None = None,
        retention: float | None = None,
        max_events: int | None = None,
    ) -> None:
        """Use `client` (which must decode responses; the caller keeps ownership of it).

        `blocking_client` serves BLOCK reads and pub/sub and should have no socket timeout;
        when omitted, one is made from `client`'s settings and closed by `close()`.
        `retention`: seconds a finished run is kept (None: forever); `max_events`: events kept
        per run, the oldest trimmed beyond it (None: all)."""
        options = client.connection_pool.connection_kwargs
        if not options.get("decode_responses"):
            raise ValueError("RedisStore needs a client created with decode_responses=True")
        self._keys = Keys(prefix)
        self._retention_ms = "0" if not retention else str(max(1, round(retention * 1000)))
        self._retention = retention
        self._max_events = str(max_events or 0)
        self._redis = client
        self._owned: list[Redis] = []
        if blocking_client is None:
            blocking_client = _without_socket_timeout(client)
            self._owned.append(blocking_client)
        self._blocking = blocking_client
        socket_timeout = options.get("socket_timeout")
        self._grace = float(socket_timeout) if socket_timeout else _DEFAULT_GRACE
        self._create = client.register_script(scripts.CREATE)
        self._write = client.register_script(scripts.WRITE)
        self._drop_fired = client.register_script(scripts.DROP_FIRED_TIMERS)
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)
        self._request_cancel = client.register_script(scripts.REQUEST_CANCEL)
        self._delete = client.register_script(scripts.DELETE)
        self._scripts = [
            self._create,
            self._write,
            self._drop_fired,
            self._acquire,
            self._renew,
            self._release,
            self._request_cancel,
            self._delete,
        ]
        # The short commands of the run path go through one pipelining connection.
        self._fast = Pipelined.like(client, command_timeout=self._grace)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "stepline",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retention: float | None = None,
        max_events: int | None = None,
    ) -> RedisStore:
        """Connect to `url` (e.g. `redis://127.0.0.1:6379/0`); `close()` closes the clients.

        `socket_timeout` bounds every command (and is the grace added to a blocking read),
        so an unreachable Redis raises `StoreUnavailable` within about that long."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": connect_timeout,
            "retry": _NO_RETRY,
        }
        client = Redis.from_url(url, socket_timeout=socket_timeout, **options)
        blocking = Redis.from_url(
            url, socket_timeout=None, max_connections=_BLOCKING_CONNECTIONS, **options
        )
        store = cls(
            client,
            prefix=prefix,
            blocking_client=blocking,
            retention=retention,
            max_events=max_events,
        )
        store._owned += [client, blocking]
        return store

    @property
    def durable(self) -> bool:
        return True

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
        args = [
            SnapshotImage.of(snapshot).json,
            snapshot.status.value,
            snapshot.workflow_id,
            snapshot.resource_id,
            repr(snapshot.created_at),
            repr(snapshot.updated_at),
            snapshot.request_id,
            lease_owner,
            repr(until),
        ]
        indexes = self._keys.indexes(snapshot.workflow_id, snapshot.resource_id)
        commands: list[list[Arg]] = [
            ["ZADD", self._keys.watchdog, until if held else now + CLAIM_GRACE, run_id],
            self._scripted(self._create, self._run_keys(run_id), args),
        ]
        commands += [["ZADD", index, "NX", snapshot.created_at, run_id] for index in indexes]
        replies = await self._pipeline(commands)
        reply = replies[1]
        created = reply[0] == 1
        run = _stored(reply[1:], now)
        if created and not held:
            await self.enqueue(run_id)
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
        (fields,) = await self._pipeline([["HMGET", self._keys.run(run_id), *scripts.RUN_FIELDS]])
        return None if fields[0] is None else _stored(fields, now)

    async def write(
        self,
        snapshot: Snapshot | SnapshotImage,
        events: Sequence[Event] = (),
        *,
        fence: int | None = None,
        expected_version: int | None = None,
        release: bool = False,
        wake_at: float | None = None,
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
        image = SnapshotImage.of(snapshot)
        run_id = image.run_id
        settled = image.status.settled
        finished = image.status.finished
        args = [
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
            # The sequence lives in the entry id, so it is left out of the entry.
            *(
                event.model_dump_json(exclude={"sequence"}, exclude_defaults=True)
                for event in events
            ),
        ]

        commands: list[list[Arg]] = []
        if wake_at is not None:
            commands.append(["ZADD", self._keys.timers, wake_at, run_id])
        if not settled and (expected_version is not None or release):
            # Nothing will hold the run after this write: watch it until something does.
            deadline = (wake_at or time.time()) + CLAIM_GRACE
            commands.append(["ZADD", self._keys.watchdog, deadline, run_id])
        if finished and self._retention:
            expires = time.time() + self._retention
            member = self._keys.expiring_member(run_id, image.workflow_id, image.resource_id)
            commands.append(["ZADD", self._keys.expiring, expires, member])
        commands.append(self._scripted(self._write, self._run_keys(run_id), args))
        if settled:
            # Nothing can be orphaned any more. (If the script refused a stale holder, the
            # live holder's next renewal puts the deadline back.)
            commands.append(["ZREM", self._keys.watchdog, run_id])
        replies = await self._pipeline(commands)
        reply = replies[-2] if settled else replies[-1]
        match reply[0]:
            case "ok":
                return WriteOutcome(
                    version=int(reply[1]),
                    last_sequence=int(reply[2]),
                    cancel_requested=reply[3] == "1",
                )
            case "missing":
                raise RunNotFound(run_id)
            case "stale_fence":
                raise LeaseLost(f"fence {fence} of run {run_id!r} is stale")
            case "version_moved":
                raise StoreConflict(f"run {run_id!r} is no longer at version {expected_version}")
            case "leased":
                raise StoreConflict(f"run {run_id!r} is held by a lease")
        raise AssertionError(f"unexpected write reply {reply!r}")

    async def acquire(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        now = time.time()
        args = [owner, repr(now), repr(now + ttl)]
        reply = await self._watched(self._acquire, run_id, args, now + ttl)
        if reply[0] == 0:
            return None
        return Lease(run_id=run_id, fence=int(reply[0]), run=_stored(reply[1:], now))

    async def renew(self, run_id: str, fence: int, ttl: float) -> Renewal:
        until = time.time() + ttl
        renewed = await self._watched(self._renew, run_id, [str(fence), repr(until)], until)
        return Renewal(held=renewed > 0, cancel_requested=renewed == 2)

    async def _watched(
        self, script: AsyncScript, run_id: str, args: list[str], deadline: float
    ) -> Any:
        """Run a lease script with the run's watchdog deadline set in the same round trip.

        The deadline is set even when the script refuses: `recover` checks the run hash
        before acting on a deadline, so a spare one costs a read, never a wrong re-queue."""
        commands: list[list[Arg]] = [
            ["ZADD", self._keys.watchdog, deadline, run_id],
            self._scripted(script, [self._keys.run(run_id)], args),
        ]
        return (await self._pipeline(commands))[1]

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
            with _reachable():
                await pubsub.subscribe(self._keys.cancel_channel)
            while True:
                with _reachable():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message["type"] == "message":
                    yield str(message["data"])
        finally:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def enqueue(self, run_id: str) -> None:
        await self._pipeline([["XADD", self._keys.queue, "*", "run_id", run_id]])

    async def fire_timers(self, now: float, limit: int = 100) -> float | None:
        """Queue due runs first, then drop their timers: a crash in between queues a run
        twice, never loses it."""
        timers = self._keys.timers
        (due,) = await self._pipeline([["ZRANGEBYSCORE", timers, "-inf", now, "LIMIT", 0, limit]])
        if due:
            await self._pipeline([["XADD", self._keys.queue, "*", "run_id", r] for r in due])
            drop = self._scripted(self._drop_fired, [timers], [repr(now), *due])
            await self._pipeline([drop])
        (upcoming,) = await self._pipeline([["ZRANGE", timers, 0, 0, "WITHSCORES"]])
        return float(upcoming[1]) if upcoming else None

    async def recover(self, now: float, *, grace: float, limit: int = 100) -> list[str]:
        """Examine up to `limit` due watchdog entries, a page at a time: each one examined
        is dropped or moved to a later deadline, so the next page holds new ones."""
        orphans: list[str] = []
        examined = 0
        while examined < limit:
            batch = min(_RECOVER_PAGE, limit - examined)
            found, page = await self._recover_page(now, grace, batch)
            orphans += found
            examined += page
            if page < batch:
                break
        return orphans

    async def _recover_page(self, now: float, grace: float, batch: int) -> tuple[list[str], int]:
        watchdog = self._keys.watchdog
        (due,) = await self._pipeline([["ZRANGEBYSCORE", watchdog, "-inf", now, "LIMIT", 0, batch]])
        if not due:
            return [], 0
        reads: list[list[Arg]] = []
        for run_id in due:
            reads.append(["HMGET", self._keys.run(run_id), "status", "lease_owner", "lease_until"])
            reads.append(["ZSCORE", self._keys.timers, run_id])
        replies = await self._pipeline(reads)
        orphans: list[str] = []
        changes: list[list[Arg]] = []
        for i, run_id in enumerate(due):
            (status, owner, until), timer = replies[2 * i], replies[2 * i + 1]
            if status is None or RunStatus(status).settled:
                changes.append(["ZREM", watchdog, run_id])
            elif owner and float(until) >= now:
                changes.append(["ZADD", watchdog, float(until), run_id])
            elif timer is not None and float(timer) > now:
                changes.append(["ZADD", watchdog, float(timer) + grace, run_id])
            else:
                orphans.append(run_id)
                changes.append(["XADD", self._keys.queue, "*", "run_id", run_id])
                changes.append(["ZADD", watchdog, now + grace, run_id])
        await self._pipeline(changes)
        return orphans, len(due)

    async def dequeue(self, consumer: str, count: int, block: float) -> list[WorkItem]:
        """XREADGROUP of new entries; `block` <= 0 reads without waiting."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with _reachable():
            try:
                reply = await self._read_group(consumer, count, block)
            except redis_errors.ResponseError as err:
                if not str(err).startswith("NOGROUP"):
                    raise
                await self._create_group()
                reply = await self._read_group(consumer, count, block)
        return [
            WorkItem(run_id=str(fields["run_id"]), token=str(entry_id))
            for _stream, entries in reply or []
            for entry_id, fields in entries
            if fields is not None
        ]

    async def queue_depth(self) -> int:
        """Entries in the queue stream minus those delivered and not yet acked (taken items
        are deleted when acked, so the stream holds only waiting and in-progress ones)."""
        with _reachable():
            length, pending = await self._fast.pipeline(
                [["XLEN", self._keys.queue], ["XPENDING", self._keys.queue, self._keys.group]]
            )
            if isinstance(length, Exception):
                raise length
        taken = 0 if isinstance(pending, Exception) else int(pending[0])  # no group yet
        return max(0, int(length) - taken)

    async def ack(self, item: WorkItem) -> None:
        await self._pipeline(
            [
                ["XACK", self._keys.queue, self._keys.group, item.token],
                ["XDEL", self._keys.queue, item.token],
            ]
        )

    async def read_events(self, run_id: str, after: int, limit: int = 1000) -> list[Event]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        replies = await self._pipeline(
            [
                ["MULTI"],
                ["EXISTS", self._keys.run(run_id)],
                ["XRANGE", self._keys.events(run_id), f"(0-{max(after, 0)}", "+", "COUNT", limit],
                ["EXEC"],
            ]
        )
        exists, entries = replies[-1]
        if not exists:
            raise RunNotFound(run_id)
        return _raw_events(entries)

    # `timeout` is the Store interface's name for the bound.
    async def wait_events(self, run_id: str, after: int, timeout: float) -> list[Event]:
        events = await self.read_events(run_id, after)
        if events or timeout <= 0:
            return events
        # XREAD from an explicit id (not `$`) also returns what arrived since the read above.
        streams: dict[KeyT, StreamIdT] = {self._keys.events(run_id): f"0-{max(after, 0)}"}
        with _reachable():
            async with asyncio.timeout(timeout + self._grace):
                reply = await self._blocking.xread(streams, count=1000, block=_block_ms(timeout))
        streams_read = cast(list[tuple[str, Any]] | None, reply)
        return [event for _stream, entries in streams_read or [] for event in _events(entries)]

    async def first_kept_sequence(self, run_id: str) -> int:
        replies = await self._pipeline(
            [
                ["MULTI"],
                ["HGET", self._keys.run(run_id), "seq"],
                ["XRANGE", self._keys.events(run_id), "-", "+", "COUNT", 1],
                ["EXEC"],
            ]
        )
        last, first = replies[-1]
        if last is None:
            raise RunNotFound(run_id)
        return _sequence(first[0][0]) if first else int(last) + 1

    async def list_runs(self, filter: RunFilter, limit: int, cursor: str) -> Page:
        """Scan the most specific index newest first, filtering the rest on the run hashes."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        position = decode_cursor(cursor)
        if filter.workflow_id:
            index = self._keys.index_workflow(filter.workflow_id)
        elif filter.resource_id:
            index = self._keys.index_resource(filter.resource_id)
        else:
            index = self._keys.index_all
        high = math.inf if filter.created_before is None else filter.created_before
        if position is not None:
            high = min(high, position[0])
        low = -math.inf if filter.created_after is None else filter.created_after
        batch = max(limit, 100)
        # Entries are read as (score <= high) from `offset`; offset counts the entries at
        # exactly `high` already seen, so each step resumes where the last one stopped.
        offset = 0
        rows: list[RunRow] = []
        while True:
            (flat,) = await self._pipeline(
                [
                    [
                        "ZREVRANGEBYSCORE",
                        index,
                        _score(high),
                        _score(low),
                        "WITHSCORES",
                        "LIMIT",
                        offset,
                        batch,
                    ]
                ]
            )
            entries = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
            candidates = [
                entry for entry in entries if position is None or (entry[1], entry[0]) < position
            ]
            found = await self._rows(index, candidates)
            for i, row in enumerate(found):
                if not matches(row, filter):
                    continue
                rows.append(row)
                if len(rows) == limit:
                    # Unread entries may all fail the filter: the next page can be empty.
                    more = len(entries) == batch or i < len(found) - 1
                    return Page(rows=rows, next_cursor=encode_cursor(row) if more else "")
            if len(entries) < batch:
                return Page(rows=rows, next_cursor="")
            last_score = entries[-1][1]
            if last_score == high:
                offset += len(entries)
            else:
                high = last_score
                offset = sum(1 for _run_id, score in entries if score == last_score)

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
                )
            ]
        )
        return True

    async def sweep_expired(self, now: float, limit: int = 100) -> int:
        """Take runs whose keys expired out of the indexes and the watchdog. A run still
        there was written since (time travel) and is left alone."""
        (members,) = await self._pipeline(
            [["ZRANGEBYSCORE", self._keys.expiring, "-inf", now, "LIMIT", 0, limit]]
        )
        if not members:
            return 0
        runs = [self._keys.parse_expiring_member(member) for member in members]
        exists = await self._pipeline([["EXISTS", self._keys.run(run_id)] for run_id, _, _ in runs])
        commands: list[list[Arg]] = [["ZREM", self._keys.expiring, *members]]
        gone = 0
        for (run_id, workflow_id, resource_id), present in zip(runs, exists, strict=True):
            if present:
                continue
            gone += 1
            for key in (
                *self._keys.indexes(workflow_id, resource_id),
                self._keys.watchdog,
                self._keys.timers,
            ):
                commands.append(["ZREM", key, run_id])
        await self._pipeline(commands)
        return gone

    async def reclaim_abandoned(self, min_idle: float, limit: int = 100) -> int:
        """Queue again the runs of entries taken at least `min_idle` seconds ago and never
        acknowledged (their consumer died before acquiring the run), then drop those
        entries. A run queued twice is harmless: acquiring it is what counts."""
        command: list[Arg] = [
            "XAUTOCLAIM",
            self._keys.queue,
            self._keys.group,
            "stepline-housekeeping",
            max(0, round(min_idle * 1000)),
            "0-0",
            "COUNT",
            limit,
        ]
        try:
            (reply,) = await self._pipeline([command])
        except redis_errors.ResponseError as err:
            if str(err).startswith("NOGROUP"):
                return 0
            raise
        await self._forget_idle_consumers()
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        # Fields come as [name, value, ...]; the one field is run_id.
        requeue = [["XADD", self._keys.queue, "*", "run_id", fields[1]] for _, fields in entries]
        await self._pipeline(
            [
                *requeue,
                ["XACK", self._keys.queue, self._keys.group, *ids],
                ["XDEL", self._keys.queue, *ids],
            ]
        )
        return len(entries)

    async def _forget_idle_consumers(self) -> None:
        """Every replica is a consumer of its own name; a replica that died leaves its
        name in the group. Drop names idle for an hour that hold nothing."""
        (consumers,) = await self._pipeline(
            [["XINFO", "CONSUMERS", self._keys.queue, self._keys.group]]
        )
        gone: list[list[Arg]] = []
        for flat in consumers:
            info = dict(zip(flat[::2], flat[1::2], strict=True))
            if int(info["pending"]) == 0 and int(info["idle"]) > _CONSUMER_IDLE_MS:
                gone.append(
                    ["XGROUP", "DELCONSUMER", self._keys.queue, self._keys.group, info["name"]]
                )
        if gone:
            await self._pipeline(gone)

    async def close(self) -> None:
        """Close the clients this store created (not a client passed in)."""
        await self._fast.close()
        for client in self._owned:
            await client.aclose()

    def _run_keys(self, run_id: str) -> list[str]:
        return [self._keys.run(run_id), self._keys.events(run_id)]

    @staticmethod
    def _scripted(script: AsyncScript, keys: list[str], args: list[str]) -> list[Arg]:
        """A script call by its digest alone (see `_pipeline`)."""
        return ["EVALSHA", script.sha, len(keys), *keys, *args]

    async def _pipeline(self, commands: list[list[Arg]]) -> list[Any]:
        """Send `commands` in one round trip on the pipelining connection; their replies.

        Scripts go by digest (`_scripted`); only when Redis has lost them (a restart, SCRIPT
        FLUSH) are they loaded and the commands sent again. That is safe because a script
        answered NOSCRIPT did not run, and the plain commands sent beside scripts may run
        twice (watchdog deadlines, only-if-absent index entries, a timer)."""
        for attempt in range(2):
            with _reachable():
                replies = await self._fast.pipeline(commands)
            missing = any(isinstance(reply, redis_errors.NoScriptError) for reply in replies)
            if missing and attempt == 0:
                await self._pipeline(
                    [["SCRIPT", "LOAD", cast(str, script.script)] for script in self._scripts]
                )
                continue
            with _reachable():
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
            return replies
        raise AssertionError("unreachable")

    async def _read_group(self, consumer: str, count: int, block: float) -> Any:
        async with asyncio.timeout(max(block, 0.0) + self._grace):
            return await self._blocking.xreadgroup(
                self._keys.group,
                consumer,
                {self._keys.queue: ">"},
                count=count,
                block=_block_ms(block),
            )

    async def _create_group(self) -> None:
        # From id 0, so runs queued before the group existed are delivered too.
        try:
            await self._pipeline(
                [["XGROUP", "CREATE", self._keys.queue, self._keys.group, "0", "MKSTREAM"]]
            )
        except redis_errors.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise

    async def _rows(self, index: str, candidates: list[tuple[str, float]]) -> list[RunRow]:
        """The rows of these index entries, in order; entries whose run is gone are dropped
        from the index."""
        if not candidates:
            return []
        replies = await self._pipeline(
            [["HMGET", self._keys.run(run_id), *_ROW_FIELDS] for run_id, _score in candidates]
        )
        rows: list[RunRow] = []
        gone: list[str] = []
        for (run_id, _score), (workflow_id, resource_id, status, created, updated) in zip(
            candidates, replies, strict=True
        ):
            if workflow_id is None:
                gone.append(run_id)
                continue
            rows.append(
                RunRow(
                    run_id=run_id,
                    workflow_id=workflow_id,
                    resource_id=resource_id,
                    status=RunStatus(status),
                    created_at=float(created),
                    updated_at=float(updated),
                )
            )
        if gone:
            await self._pipeline([["ZREM", index, *gone]])
        return rows


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Turn a lost connection, an unanswered command, a Redis that refuses writes (a
    read-only replica after failover, out of memory) or one still loading its dataset (after
    a restart) into `StoreUnavailable`."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError) as err:
        raise StoreUnavailable(f"redis is unreachable: {err or type(err).__name__}") from err
    except (redis_errors.ReadOnlyError, redis_errors.OutOfMemoryError) as err:
        raise StoreUnavailable(f"redis refused the command: {err}") from err
    except redis_errors.ResponseError as err:
        # The pipelining connection hands `-LOADING` back as a plain ResponseError.
        if str(err).startswith("LOADING"):
            raise StoreUnavailable(f"redis is not ready: {err}") from err
        raise


def _stored(fields: Sequence[Any], now: float) -> StoredRun:
    snap, version, sequence, cancel, owner, lease_until = fields
    return StoredRun(
        snapshot=Snapshot.model_validate_json(snap),
        version=int(version),
        last_sequence=int(sequence),
        cancel_requested=cancel == "1",
        leased=bool(owner) and float(lease_until) >= now,
    )


def _raw_events(entries: Any) -> list[Event]:
    """Events from a raw XRANGE reply: [[entry id, [field, value]], ...]."""
    return [
        Event.model_validate_json(fields[1]).model_copy(update={"sequence": _sequence(entry_id)})
        for entry_id, fields in entries or []
    ]


def _events(entries: Any) -> list[Event]:
    return [
        Event.model_validate_json(fields[scripts.EVENT_FIELD]).model_copy(
            update={"sequence": _sequence(entry_id)}
        )
        for entry_id, fields in entries or []
    ]


def _sequence(entry_id: str) -> int:
    return int(entry_id.removeprefix("0-"))


def _score(value: float) -> Arg:
    """A sorted-set bound as Redis spells it."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return value


def _block_ms(seconds: float) -> int | None:
    """XREAD's BLOCK argument: None (do not block) for <= 0, since BLOCK 0 waits forever."""
    if seconds <= 0:
        return None
    return max(1, math.ceil(seconds * 1000))


def _without_socket_timeout(client: Redis) -> Redis:
    pool = client.connection_pool
    options = {**pool.connection_kwargs, "socket_timeout": None}
    return Redis.from_pool(
        ConnectionPool(
            connection_class=pool.connection_class,
            max_connections=_BLOCKING_CONNECTIONS,
            **options,
        )
    )
