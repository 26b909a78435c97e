"""Timers and recovery in the Redis store: the sorted sets that bring a run back when nothing
else will, and the housekeeping that reads them.

- `timers`: WAITING runs scored by wake-up time; `fire_timers` queues the due ones.
- `watchdog`: unsettled runs scored by when something must have happened to them (lease
  expiry, a claim's grace); `recover` queues the ones nothing holds past that time.
- `expiring`: finished runs scored by when their keys expire; `sweep_expired` takes the gone
  ones out of the indexes.
"""

from __future__ import annotations

from ..model import RunStatus
from .redis_core import RedisCore
from .redis_queue import queue_entry
from .resp import Arg

__all__ = ["TimersAndRecovery"]

# Watchdog entries `recover` reads per round trip.
_RECOVER_PAGE = 200


class TimersAndRecovery(RedisCore):
    """`RedisStore`'s timers, orphan recovery and expiry sweep."""

    async def fire_timers(self, now: float, limit: int = 100) -> float | None:
        """Queue due runs first, then drop their timers: a crash in between queues a run
        twice, never loses it."""
        timers = self._keys.timers
        (due,) = await self._pipeline([["ZRANGEBYSCORE", timers, "-inf", now, "LIMIT", 0, limit]])
        if due:
            await self._pipeline([queue_entry(self._keys, r) for r in due])
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
                changes.append(queue_entry(self._keys, run_id))
                changes.append(["ZADD", watchdog, now + grace, run_id])
        await self._pipeline(changes)
        return orphans, len(due)

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
