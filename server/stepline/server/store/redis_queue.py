"""The work queue of the Redis store: a stream with one consumer group, each replica a
consumer of its own name. An entry names a run (`queue_entry`); taking it is not owning the run
(acquiring the lease is), so a run queued twice is harmless. An entry is acknowledged and
deleted once its run is acquired, so the stream holds only waiting and in-progress entries.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis import exceptions as redis_errors

from .base import WorkItem
from .keys import Keys
from .redis_core import RedisCore, block_ms, reachable
from .resp import Arg

__all__ = ["WorkQueue", "queue_entry"]

# A queue consumer (replica) name idle this long and holding nothing is dropped.
_CONSUMER_IDLE_MS = 3_600_000


def queue_entry(keys: Keys, run_id: str) -> list[Arg]:
    """The command that queues `run_id` (the entry's one field is `run_id`)."""
    return ["XADD", keys.queue, "*", "run_id", run_id]


class WorkQueue(RedisCore):
    """`RedisStore`'s queue: enqueue, dequeue, ack, depth, and reclaiming abandoned entries."""

    async def enqueue(self, run_id: str) -> None:
        await self._pipeline([queue_entry(self._keys, run_id)])

    async def dequeue(self, consumer: str, count: int, block: float) -> list[WorkItem]:
        """XREADGROUP of new entries; `block` <= 0 reads without waiting."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with reachable():
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
        with reachable():
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
        requeue = [queue_entry(self._keys, fields[1]) for _, fields in entries]
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

    async def _read_group(self, consumer: str, count: int, block: float) -> Any:
        async with asyncio.timeout(max(block, 0.0) + self._grace):
            return await self._blocking.xreadgroup(
                self._keys.group,
                consumer,
                {self._keys.queue: ">"},
                count=count,
                block=block_ms(block),
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
