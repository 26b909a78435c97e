"""Compacting finished runs in the Redis store, and expanding them again.

A finished run's last write puts it in the `compact` sorted set (score: when it finished).
Housekeeping (`compact_finished`, on every replica) reads the runs that finished a while ago
and folds each one's snapshot, records and event log into one deflated blob (`compacted.py`)
under `<run key>:z`, leaving the header hash with its small fields only: layout 4. It is not
done by the finishing write itself: the stream must get the run's last events for the
watchers blocked on it, and Lua has no zlib.

A write to a compacted run (time travel) is refused by WRITE with 'compacted'; the caller
expands the run back to the current layout (`_expand_compacted`) and writes again. Both COMPACT and
EXPAND are guarded by the run's version, so a run that changed meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import scripts
from .compacted import Compacted, pack, unpack
from .keys import decode, encode
from .redis_core import RedisCore
from .resp import Arg

__all__ = ["RunCompaction", "blob_bytes", "pairs"]

# Runs read per round trip.
_PAGE = 100
# A run with more stream entries and records than this stays as it is: a reader of a
# compacted run inflates all of it.
_MOST_ENTRIES = 2000


class RunCompaction(RedisCore):
    """`RedisStore`'s compaction of finished runs."""

    async def compact_finished(self, finished_before: float, limit: int = 100) -> int:
        """Compact up to `limit` runs that finished before `finished_before`; returns how many
        it took from the `compact` set. Runs that are no longer finished, at another version,
        or too big, only leave it."""
        compact = self._keys.compact
        (members,) = await self._pipeline(
            [["ZRANGEBYSCORE", compact, "-inf", finished_before, "LIMIT", 0, limit]]
        )
        for start in range(0, len(members), _PAGE):
            page: list[str] = members[start : start + _PAGE]
            reads = await self._pipeline(
                [
                    self._scripted(self._compact_read, self._run_keys(run_id), [_MOST_ENTRIES])
                    for run_id in page
                ]
            )
            commands: list[list[Arg]] = []
            for run_id, reply in zip(page, reads, strict=True):
                found = _compacted(reply[1], reply[2]) if reply[0] == 1 else None
                if found is None:
                    continue
                version, blob = found
                keys = [*self._run_keys(run_id), self._keys.blob(run_id)]
                commands.append(self._scripted(self._compact, keys, [version, blob]))
            # An entry is dropped only if still due: a run finished again meanwhile (time
            # travel) keeps its new one.
            drop = self._scripted(self._drop_fired, [compact], [repr(finished_before), *page])
            await self._pipeline([*commands, drop])
        return len(members)

    async def _expand_compacted(self, run_id: str) -> None:
        """Put a compacted run back in the current layout (see EXPAND), unless it changed
        meanwhile."""
        replies = await self._pipeline(
            [
                ["MULTI"],
                ["HGET", self._keys.run(run_id), "ver"],
                ["GET", self._keys.blob(run_id)],
                ["EXEC"],
            ]
        )
        version, blob = replies[-1]
        if version is None or blob is None:
            return
        run = unpack(blob_bytes(blob))
        item_keys, records = self._record_args(run_id, True, tuple(run.items), run.steps, run.items)
        args = [version, run.snap, str(run.first), str(len(run.events)), *run.events, *records]
        keys = [*self._run_keys(run_id), self._keys.blob(run_id), *item_keys]
        await self._pipeline([self._scripted(self._expand, keys, args)])

    def _record_args(
        self,
        run_id: str,
        full: bool,
        foreach_steps: Sequence[str],
        steps: Mapping[str, str],
        items: Mapping[str, Mapping[int, str]],
    ) -> tuple[list[str], list[str]]:
        """The iteration hashes a write of these records touches, and the records as the
        scripts take them (see `store_records` in scripts.py)."""
        args = [
            "1" if full else "0",
            " ".join(encode(step_id) for step_id in foreach_steps),
            str(len(steps)),
        ]
        for step_id, record in steps.items():
            args += [step_id, record]
        keys: list[str] = []
        args.append(str(len(items)))
        for step_id, kept in items.items():
            keys.append(self._keys.items(run_id, step_id))
            args.append(str(len(kept)))
            for index, record in kept.items():
                args += [str(index), record]
        return keys, args


def _compacted(run: Sequence[Any], entries: Sequence[Any]) -> tuple[str, bytes] | None:
    """The version and blob of a run read by COMPACT_READ, or None when its log is not as
    every write leaves it (one field per entry, dense sequences up to the run's)."""
    fields, steps, groups, _blob = run
    snap, version, sequence = fields[0], fields[1], int(fields[2])
    events: list[str] = []
    first = sequence + 1 - len(entries)
    for i, (entry_id, entry) in enumerate(entries):
        if entry_id != f"0-{first + i}" or len(entry) != 2 or entry[0] != scripts.EVENT_FIELD:
            return None
        events.append(entry[1])
    items = {
        decode(groups[g]): {int(i): r for i, r in pairs(groups[g + 1]).items()}
        for g in range(0, len(groups), 2)
    }
    try:
        kept = Compacted(snap=snap, steps=pairs(steps), items=items, first=first, events=events)
        blob = pack(kept)
    except UnicodeEncodeError:
        return None  # bytes that are not UTF-8 (never written by the store): left as they are
    return version, blob


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A HGETALL reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def blob_bytes(blob: str) -> bytes:
    """A blob as Redis holds it, from the pipelining connection's reply (see resp.py)."""
    return blob.encode("utf-8", "surrogateescape")
