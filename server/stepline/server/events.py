"""A run's log entries: one typed payload per event type, the event that carries it, and the
codec a store keeps them in.

An event is its payload (`data`), the sequence the store gave it (dense, from 1) and when it
happened. Its type is its payload's: `Event(data=StepStart(...)).type is EventType.STEP_START`,
so a reader narrows with `match event.data: case StepStart(): ...`.

Stored, an event is the JSON every release wrote: `{"type": ..., "data": {...}, "timestamp":
...}`, without the sequence (a store keeps it beside the entry) and without `data` when the
payload has no fields. In `data`, the keys an event always has are always written (`null`
included) and the optional ones (`UNSET` here) only when set. Decoding reads the type first,
then the payload as that type; keys it does not know are skipped, so a log written by a later
release still reads.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias, Union

import msgspec
from msgspec import UNSET, Struct, UnsetType

from .jsonvalue import JSON
from .status import RunStatus, StepStatus


class EventType(StrEnum):
    WORKFLOW_START = "workflow-start"
    STEP_START = "step-start"
    STEP_OUTPUT = "step-output"
    STEP_PROGRESS = "step-progress"
    STEP_RESULT = "step-result"
    STEP_SUSPENDED = "step-suspended"
    STEP_WAITING = "step-waiting"
    WORKFLOW_CANCELED = "workflow-canceled"
    WORKFLOW_FINISH = "workflow-finish"
    WORKFLOW_PAUSED = "workflow-paused"


class EventError(Struct, frozen=True, kw_only=True):
    """A failure as events carry it (a step's, or the run's): never a stack trace."""

    message: str
    name: str = "Error"
    details: JSON = None


class Suspension(Struct, frozen=True, kw_only=True):
    """A suspended step in a workflow-finish: its path (nested workflows expanded), the
    payload it suspended with and the labels that resume it."""

    path: tuple[str, ...]
    payload: JSON = None
    labels: tuple[str, ...] = ()


# -- the payloads (field order is the order of the keys in the stored JSON) -----------------
class WorkflowStart(Struct, frozen=True, kw_only=True):
    type: ClassVar[EventType] = EventType.WORKFLOW_START

    workflow_id: str
    # "start" | "resume" | "restart" | "time_travel"
    reason: str = ""


class StepStart(Struct, frozen=True, kw_only=True):
    type: ClassVar[EventType] = EventType.STEP_START

    step_id: str
    payload: JSON = None
    started_at: float | None = None
    resume_payload: JSON | UnsetType = UNSET
    metadata: dict[str, JSON] | UnsetType = UNSET


class StepOutput(Struct, frozen=True, kw_only=True):
    """What a step's ctx.write() wrote."""

    type: ClassVar[EventType] = EventType.STEP_OUTPUT

    step_id: str
    output: JSON = None


class StepProgress(Struct, frozen=True, kw_only=True):
    """A foreach iteration ended (or was canceled)."""

    type: ClassVar[EventType] = EventType.STEP_PROGRESS

    step_id: str
    completed_count: int = 0
    total_count: int = 0
    current_index: int = 0
    iteration_status: StepStatus
    iteration_output: JSON | UnsetType = UNSET


class StepResult(Struct, frozen=True, kw_only=True):
    """A step ended: success, failed or canceled. A foreach's carries neither its input list
    nor its outputs (its step-start and step-progress events and its record do)."""

    type: ClassVar[EventType] = EventType.STEP_RESULT

    step_id: str
    status: StepStatus
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    payload: JSON | UnsetType = UNSET
    output: JSON | UnsetType = UNSET
    error: EventError | UnsetType = UNSET


class StepSuspended(Struct, frozen=True, kw_only=True):
    type: ClassVar[EventType] = EventType.STEP_SUSPENDED

    step_id: str
    payload: JSON = None
    suspend_payload: JSON = None
    labels: tuple[str, ...] = ()
    suspended_at: float | None = None


class StepWaiting(Struct, frozen=True, kw_only=True):
    """A sleep began; the durable timer wakes the run at `wake_at`."""

    type: ClassVar[EventType] = EventType.STEP_WAITING

    step_id: str
    payload: JSON = None
    started_at: float | None = None
    wake_at: float | None = None


class WorkflowCanceled(Struct, frozen=True, kw_only=True):
    type: ClassVar[EventType] = EventType.WORKFLOW_CANCELED


class WorkflowPaused(Struct, frozen=True, kw_only=True):
    type: ClassVar[EventType] = EventType.WORKFLOW_PAUSED


class WorkflowFinish(Struct, frozen=True, kw_only=True):
    """A pass ended: the run's status and, as it says, its result, error or suspended steps;
    the state when the run's output options ask for it."""

    type: ClassVar[EventType] = EventType.WORKFLOW_FINISH

    status: RunStatus
    state: dict[str, JSON] | UnsetType = UNSET
    result: JSON | UnsetType = UNSET
    error: EventError | UnsetType | None = UNSET
    suspended: tuple[Suspension, ...] | UnsetType = UNSET


EventData: TypeAlias = (
    WorkflowStart
    | StepStart
    | StepOutput
    | StepProgress
    | StepResult
    | StepSuspended
    | StepWaiting
    | WorkflowCanceled
    | WorkflowPaused
    | WorkflowFinish
)
# The payloads of a step's events: each names its step (`step_id`).
StepData: TypeAlias = (
    StepStart | StepOutput | StepProgress | StepResult | StepSuspended | StepWaiting
)
# Every payload type, by the event type it carries.
PAYLOADS: dict[EventType, type[EventData]] = {
    cls.type: cls
    for cls in (
        WorkflowStart,
        StepStart,
        StepOutput,
        StepProgress,
        StepResult,
        StepSuspended,
        StepWaiting,
        WorkflowCanceled,
        WorkflowPaused,
        WorkflowFinish,
    )
}


class Event(Struct, frozen=True, kw_only=True):
    """One entry of a run's log. `sequence` is assigned by the store (dense, from 1)."""

    data: EventData
    sequence: int = 0
    timestamp: float = msgspec.field(default_factory=time.time)

    @property
    def type(self) -> EventType:
        return self.data.type

    @property
    def is_finish(self) -> bool:
        return isinstance(self.data, WorkflowFinish)

    def with_sequence(self, sequence: int) -> Event:
        return Event(data=self.data, sequence=sequence, timestamp=self.timestamp)


# -- the stored form -----------------------------------------------------------------------
# Payloads without fields: stored without `data`, read back as these instances.
_EMPTY: dict[type[EventData], EventData] = {
    WorkflowCanceled: WorkflowCanceled(),
    WorkflowPaused: WorkflowPaused(),
}


def _stored_form(cls: type[EventData]) -> type[Struct]:
    """The stored form of an event whose payload is a `cls`, tagged with its type."""
    empty = _EMPTY.get(cls)
    data = ("data", cls) if empty is None else ("data", cls, empty)
    return msgspec.defstruct(
        f"Stored{cls.__name__}",
        [data, ("timestamp", float)],
        tag_field="type",
        tag=cls.type.value,
        kw_only=True,
        omit_defaults=empty is not None,
    )


_FORMS = {cls: _stored_form(cls) for cls in PAYLOADS.values()}
_ENCODER = msgspec.json.Encoder()
# One pass: the tag (`type`) picks the form, so `data` decodes straight into its payload type.
_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[tuple(_FORMS.values())])  # noqa: UP007


def encode_event(event: Event) -> bytes:
    """The JSON a store keeps for `event`. Raises TypeError for a value JSON cannot hold."""
    form, timestamp = _FORMS[type(event.data)], event.timestamp
    if type(event.data) in _EMPTY:
        return _ENCODER.encode(form(timestamp=timestamp))
    return _ENCODER.encode(form(data=event.data, timestamp=timestamp))


def decode_event(stored: bytes | str, sequence: int) -> Event:
    """The event a store kept as `stored` (see `encode_event`), numbered `sequence`.
    Raises msgspec.DecodeError (a ValueError) when it is not one."""
    form = _DECODER.decode(stored)
    return Event(data=form.data, sequence=sequence, timestamp=form.timestamp)


def copy_event(event: Event) -> Event:
    """`event` through its stored form: nothing shared with it, tuples become lists."""
    return decode_event(encode_event(event), event.sequence)


__all__ = [
    "PAYLOADS",
    "Event",
    "EventData",
    "EventError",
    "EventType",
    "StepData",
    "StepOutput",
    "StepProgress",
    "StepResult",
    "StepStart",
    "StepSuspended",
    "StepWaiting",
    "Suspension",
    "WorkflowCanceled",
    "WorkflowFinish",
    "WorkflowPaused",
    "WorkflowStart",
    "copy_event",
    "decode_event",
    "encode_event",
]
