"""Listing runs in the Redis store: sorted sets index runs by created_at (all runs, per
workflow, per resource); a page scans the most specific one newest first and reads the rows
from the run hashes. Entries whose run is gone are dropped as they are met.
"""

from __future__ import annotations

import math

from ..model import RunStatus
from .base import Page, RunFilter, RunRow
from .paging import decode_cursor, encode_cursor, matches
from .redis_core import RedisCore
from .resp import Arg

__all__ = ["RunListing"]

_ROW_FIELDS = ("workflow_id", "resource_id", "status", "created_at", "updated_at")


class RunListing(RedisCore):
    """`RedisStore`'s `list_runs`."""

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


def _score(value: float) -> Arg:
    """A sorted-set bound as Redis spells it."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return value
