"""What every part of an execution shares: where transitions are written (`Journal`), how a
part of the graph ended (`Kind`, `Outcome`), and how the endings of siblings combine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from ..model import ChangeSet, ErrorData, Event, RunStatus, Snapshot


class Journal(Protocol):
    """Where the executor records transitions: one atomic snapshot write + event append."""

    async def commit(
        self,
        snapshot: Snapshot,
        events: Sequence[Event],
        *,
        release: bool = False,
        wake_at: float | None = None,
        changes: ChangeSet | None = None,
    ) -> bool:
        """Persist; returns True when cancellation of the run has been requested.

        `wake_at` (with release) registers the durable timer of a WAITING run. `changes`
        names the records changed since the last commit (None: all of them); the journal
        takes them (and clears it) at once."""
        ...


class Kind(Enum):
    OK = "ok"
    SUSPENDED = "suspended"
    WAITING = "waiting"
    FAILED = "failed"
    BAILED = "bailed"
    CANCELED = "canceled"
    # A per_step pass stopped after its top-level entry (only `walk` of the run returns it).
    PAUSED = "paused"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    value: Any = None
    error: ErrorData | None = None
    wake_at: float | None = None


# When children of one entry end differently, the entry ends as the first of these.
_PRECEDENCE = (Kind.FAILED, Kind.CANCELED, Kind.BAILED, Kind.WAITING, Kind.SUSPENDED)


def combine(outcomes: Sequence[Outcome]) -> Outcome | None:
    """How an entry whose children ended as `outcomes` ends; None when all of them are OK."""
    for kind in _PRECEDENCE:
        matching = [o for o in outcomes if o.kind is kind]
        if matching:
            if kind is Kind.WAITING:
                return min(matching, key=lambda o: o.wake_at or 0.0)
            return matching[0]
    return None


def settled_status(kind: Kind) -> RunStatus:
    """The status a run (or a nested workflow's snapshot) ends with after `kind`."""
    return {
        Kind.OK: RunStatus.SUCCESS,
        Kind.BAILED: RunStatus.SUCCESS,
        Kind.FAILED: RunStatus.FAILED,
        Kind.SUSPENDED: RunStatus.SUSPENDED,
        Kind.CANCELED: RunStatus.CANCELED,
        Kind.PAUSED: RunStatus.PAUSED,
    }[kind]


__all__ = ["Journal", "Kind", "Outcome", "combine", "settled_status"]
