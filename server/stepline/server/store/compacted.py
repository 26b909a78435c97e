"""The blob of a compacted run (layout 4): everything a finished run keeps besides its header
fields, in one deflated string key (`<run key>:z`).

It holds the snapshot JSON without records, the step records, the iteration records of each
foreach, and the event log as the stream held it: each entry's JSON (without its sequence)
and the sequence of the first one kept, the others following densely. Strings are taken from
the run's keys and given back byte for byte, so compacting and expanding parse nothing.

Inside the deflate stream the parts are netstrings (`<length>:<bytes>`), in this order: the
format, the snapshot, the first kept sequence, the step count and per step its id and record,
the foreach count and per foreach its step id, its record count and per record its index and
record, the event count and the events. Deflate starts from a preset dictionary of the
engine's JSON vocabulary (event types and keys, record and snapshot keys), which takes a
3-step run's blob from about 460 to 340 bytes. The dictionary belongs to the format: a blob
names it by its checksum, and changing it means a new format.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Compacted", "CorruptBlob", "pack", "unpack"]

_FORMAT = b"1"
# zlib's default trade-off: level 9 gains a few bytes for a run like a 3-step chain.
_LEVEL = 6
# Deflate's preset dictionary of format 1 (never to change: see above). The most frequent
# strings come last, where matches are nearest.
_DICTIONARY = (
    b'{"type":"workflow-canceled","data":{}}{"type":"workflow-paused","data":{}}'
    b'{"type":"step-waiting","data":{"step_id":"","payload":,"started_at":1,"wake_at":1'
    b'{"type":"step-suspended","data":{"step_id":"","payload":,"suspend_payload":,"labels":["'
    b'"suspended_at":1'
    b'{"type":"step-progress","data":{"step_id":"","completed_count":,"total_count":,'
    b'"current_index":,"iteration_status":"success","iteration_output":'
    b'{"type":"step-output","data":{"step_id":"","output":'
    b'"status":"failed","error":{"message":"","name":"'
    b'{"run_id":"","workflow_id":"","status":"success","resource_id":"","request_id":"",'
    b'"input":,"state":{},"step_execution_path":["'
    b'"result":,"created_at":1,"updated_at":1'
    b'{"status":"success","payload":,"output":,"started_at":1,"ended_at":1,"attempts":1}'
    b'{"type":"workflow-start","data":{"workflow_id":"","reason":"start"},"timestamp":1'
    b'{"type":"step-start","data":{"step_id":"","payload":,"started_at":1},"timestamp":1'
    b'{"type":"step-result","data":{"step_id":"","status":"success","started_at":1,'
    b'"ended_at":1,"attempts":1,"payload":,"output":},"timestamp":1'
    b'{"type":"workflow-finish","data":{"status":"success","result":},"timestamp":1'
)


class CorruptBlob(ValueError):
    """A compacted run's blob that does not read back (never written by `pack`)."""


@dataclass(frozen=True)
class Compacted:
    # The snapshot's JSON without step records and iterations.
    snap: str
    # Step id -> StepRecord JSON.
    steps: dict[str, str]
    # Foreach step id -> iteration index -> IterationRecord JSON.
    items: dict[str, dict[int, str]]
    # The sequence of `events[0]` (of the next event when the log is empty).
    first: int
    # The stream entries' JSON, in order; their sequences are dense from `first`.
    events: list[str]

    @property
    def last(self) -> int:
        return self.first + len(self.events) - 1


def pack(run: Compacted) -> bytes:
    parts: list[str] = [run.snap, str(run.first), str(len(run.steps))]
    for step_id, record in run.steps.items():
        parts += [step_id, record]
    parts.append(str(len(run.items)))
    for step_id, kept in run.items.items():
        parts += [step_id, str(len(kept))]
        for index, record in kept.items():
            parts += [str(index), record]
    parts.append(str(len(run.events)))
    parts += run.events
    raw = [_FORMAT] + [part.encode() for part in parts]
    deflate = zlib.compressobj(_LEVEL, zdict=_DICTIONARY)
    body = b"".join(b"%d:%s" % (len(part), part) for part in raw)
    return deflate.compress(body) + deflate.flush()


def unpack(blob: bytes) -> Compacted:
    try:
        inflate = zlib.decompressobj(zdict=_DICTIONARY)
        raw = inflate.decompress(blob) + inflate.flush()
        if not inflate.eof:
            raise ValueError("truncated blob")
        parts = _netstrings(raw)
        if next(parts) != _FORMAT.decode():
            raise CorruptBlob("unknown compacted run format")
        snap, first = next(parts), int(next(parts))
        steps = {next(parts): next(parts) for _ in range(int(next(parts)))}
        items: dict[str, dict[int, str]] = {}
        for _ in range(int(next(parts))):
            step_id = next(parts)
            items[step_id] = {int(next(parts)): next(parts) for _ in range(int(next(parts)))}
        events = [next(parts) for _ in range(int(next(parts)))]
    except (zlib.error, ValueError, StopIteration, UnicodeDecodeError) as err:
        raise CorruptBlob(f"a compacted run does not read back: {err}") from err
    return Compacted(snap=snap, steps=steps, items=items, first=first, events=events)


def _netstrings(raw: bytes) -> Iterator[str]:
    at = 0
    while at < len(raw):
        colon = raw.index(b":", at)
        end = colon + 1 + int(raw[at:colon])
        if end > len(raw):
            raise ValueError("truncated part")
        yield raw[colon + 1 : end].decode()
        at = end
