"""How a run and a step stand: the statuses the snapshot records and events announce."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    # A per_step pass ran its one top-level step; a time travel continues the run.
    PAUSED = "paused"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def settled(self) -> bool:
        """Finished, suspended or paused: nothing runs until a caller acts."""
        return self in _FINISHED or self in _PARKED

    @property
    def active(self) -> bool:
        return self in (RunStatus.RUNNING, RunStatus.WAITING)


_FINISHED = frozenset({RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELED})
_PARKED = frozenset({RunStatus.SUSPENDED, RunStatus.PAUSED})


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SUSPENDED = "suspended"
    WAITING = "waiting"
    SKIPPED = "skipped"
    CANCELED = "canceled"


__all__ = ["RunStatus", "StepStatus"]
