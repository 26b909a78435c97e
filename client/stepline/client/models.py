"""What the client returns: plain frozen dataclasses and string enums, no protobuf types.

User data (inputs, outputs, payloads, state) is plain JSON (`dict`, `list`, `str`, numbers,
`bool`, `None`); times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from google.protobuf.message import Message

from stepline.v1 import event_pb2, run_pb2, workflow_pb2
from stepline.v1 import workflow_service_pb2 as service_pb2

from ._wire import from_list_value, from_struct, from_value, to_datetime


class RunStatus(StrEnum):
    """The lifecycle status of a run. `UNSPECIFIED` stands for a status this client
    does not know (a newer server)."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    # Stopped after one top-level step (per_step); a time travel continues it.
    PAUSED = "paused"

    @property
    def finished(self) -> bool:
        """Success, failed or canceled: the run will not change again."""
        return self in (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELED)

    @property
    def settled(self) -> bool:
        """Finished, suspended or paused: nothing runs until a caller acts."""
        return self.finished or self in (RunStatus.SUSPENDED, RunStatus.PAUSED)

    @classmethod
    def _from_proto(cls, number: int) -> RunStatus:
        return _RUN_STATUSES.get(number, cls.UNSPECIFIED)

    def _to_proto(self) -> run_pb2.RunStatus.ValueType:
        return run_pb2.RunStatus.Value(f"RUN_STATUS_{self.name}")


class StepStatus(StrEnum):
    """The status of one step. `UNSPECIFIED` stands for a status this client does not know."""

    UNSPECIFIED = "unspecified"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SUSPENDED = "suspended"
    WAITING = "waiting"
    SKIPPED = "skipped"
    CANCELED = "canceled"

    @classmethod
    def _from_proto(cls, number: int) -> StepStatus:
        return _STEP_STATUSES.get(number, cls.UNSPECIFIED)

    def _to_proto(self) -> run_pb2.StepStatus.ValueType:
        return run_pb2.StepStatus.Value(f"STEP_STATUS_{self.name}")


_RUN_STATUSES: dict[int, RunStatus] = {
    run_pb2.RunStatus.Value(f"RUN_STATUS_{s.name}"): s for s in RunStatus
}
_STEP_STATUSES: dict[int, StepStatus] = {
    run_pb2.StepStatus.Value(f"STEP_STATUS_{s.name}"): s for s in StepStatus
}


class EventType(StrEnum):
    """The kind of a RunEvent, named as in Mastra."""

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


def _time(message: Message, name: str) -> datetime | None:
    return to_datetime(getattr(message, name)) if message.HasField(name) else None


def _json(message: Message, name: str) -> Any:
    return from_value(getattr(message, name)) if message.HasField(name) else None


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field; `field` is a JSON path such as `input_data.items[2]`."""

    field: str
    description: str


@dataclass(frozen=True)
class RunError:
    """A step or run failure: `name` is the error's type name; never a stack trace."""

    message: str
    name: str = ""
    details: Any = None

    @classmethod
    def _from_proto(cls, message: run_pb2.RunError) -> RunError:
        return cls(message=message.message, name=message.name, details=_json(message, "details"))


def _error(message: Message, name: str) -> RunError | None:
    return RunError._from_proto(getattr(message, name)) if message.HasField(name) else None


@dataclass(frozen=True)
class StepResult:
    """The recorded result of one step; `payload` is the input the step received."""

    status: StepStatus
    payload: Any = None
    output: Any = None
    error: RunError | None = None
    suspend_payload: Any = None
    resume_payload: Any = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    suspended_at: datetime | None = None
    resumed_at: datetime | None = None
    attempts: int = 0
    suspend_labels: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from_proto(cls, message: run_pb2.StepResult) -> StepResult:
        return cls(
            status=StepStatus._from_proto(message.status),
            payload=_json(message, "payload"),
            output=_json(message, "output"),
            error=_error(message, "error"),
            suspend_payload=_json(message, "suspend_payload"),
            resume_payload=_json(message, "resume_payload"),
            started_at=_time(message, "started_at"),
            ended_at=_time(message, "ended_at"),
            suspended_at=_time(message, "suspended_at"),
            resumed_at=_time(message, "resumed_at"),
            attempts=message.attempts,
            suspend_labels=tuple(message.suspend_labels),
            metadata=from_struct(message.metadata),
        )


@dataclass(frozen=True)
class SuspendedStep:
    """A suspended step: its path (one segment per nesting level), payload and labels."""

    path: tuple[str, ...]
    payload: Any = None
    labels: tuple[str, ...] = ()

    @property
    def step_id(self) -> str:
        """The path joined with dots, as step ids of nested workflows are written."""
        return ".".join(self.path)

    @classmethod
    def _from_proto(cls, message: run_pb2.SuspendedStep) -> SuspendedStep:
        return cls(
            path=tuple(message.path),
            payload=_json(message, "payload"),
            labels=tuple(message.labels),
        )


@dataclass(frozen=True)
class RunResult:
    """A run's state: status, result or error, every step's result, and what is suspended.

    `result` is set on success, `error` on failure, `suspended` while suspended, and `state`
    only when it was asked for (`include_state=True`, now or by an earlier request of the
    run). A PAUSED run (per_step) has neither result nor error.
    """

    run_id: str
    workflow_id: str
    status: RunStatus
    resource_id: str = ""
    input: Any = None
    result: Any = None
    error: RunError | None = None
    steps: dict[str, StepResult] = field(default_factory=dict)
    suspended: tuple[SuspendedStep, ...] = ()
    state: dict[str, Any] | None = None
    step_execution_path: tuple[str, ...] = ()
    trace_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Resume a Watch from here to see only what happens next.
    last_sequence: int = 0

    @classmethod
    def _from_proto(cls, message: run_pb2.RunResult) -> RunResult:
        return cls(
            run_id=message.run_id,
            workflow_id=message.workflow_id,
            status=RunStatus._from_proto(message.status),
            resource_id=message.resource_id,
            input=_json(message, "input"),
            result=_json(message, "result"),
            error=_error(message, "error"),
            steps={key: StepResult._from_proto(step) for key, step in message.steps.items()},
            suspended=tuple(SuspendedStep._from_proto(s) for s in message.suspended),
            state=from_struct(message.state) if message.HasField("state") else None,
            step_execution_path=tuple(message.step_execution_path),
            trace_id=message.trace_id,
            created_at=_time(message, "created_at"),
            updated_at=_time(message, "updated_at"),
            last_sequence=message.last_sequence,
        )


@dataclass(frozen=True)
class RunSummary:
    """A run as listed by `list_runs`."""

    run_id: str
    workflow_id: str
    status: RunStatus
    resource_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def _from_proto(cls, message: run_pb2.RunSummary) -> RunSummary:
        return cls(
            run_id=message.run_id,
            workflow_id=message.workflow_id,
            status=RunStatus._from_proto(message.status),
            resource_id=message.resource_id,
            created_at=_time(message, "created_at"),
            updated_at=_time(message, "updated_at"),
        )


@dataclass(frozen=True)
class RunPage:
    """One page of `list_runs`; pass `next_page_token` back for the next ("" = last page)."""

    runs: tuple[RunSummary, ...]
    next_page_token: str = ""

    @classmethod
    def _from_proto(cls, message: service_pb2.ListRunsResponse) -> RunPage:
        return cls(
            runs=tuple(RunSummary._from_proto(r) for r in message.runs),
            next_page_token=message.next_page_token,
        )


@dataclass(frozen=True)
class RunEvent:
    """One entry of a run's event log.

    `data` holds the event's payload under the same keys as the server's log:

    - workflow-start: workflow_id, reason ("start" | "resume" | "restart" | "time_travel")
    - step-start: step_id, payload, started_at, resume_payload?, metadata?
    - step-output: step_id, output
    - step-progress: step_id, completed_count, total_count, current_index,
      iteration_status, iteration_output?
    - step-result: step_id, status, payload?, output? | error?, started_at, ended_at,
      attempts (a foreach's has neither payload nor output: its step-start has the input
      list, each step-progress one output, and the step's result both)
    - step-suspended: step_id, payload, suspend_payload, labels, suspended_at
    - step-waiting: step_id, payload, started_at, wake_at
    - workflow-canceled: (empty)
    - workflow-paused: (empty); a per_step pass stopped, workflow-finish (paused) follows
    - workflow-finish: status, result? | error?, suspended, state? (when the run
      remembers include_state)

    A key marked `?` is present only when the server set it. Values are JSON, except that
    times are datetimes, statuses are RunStatus/StepStatus, `error` is a RunError and
    `suspended` is a tuple of SuspendedStep.
    """

    run_id: str
    sequence: int
    timestamp: datetime
    type: EventType
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def step_id(self) -> str | None:
        """The step the event is about, or None for workflow-level events."""
        step_id = self.data.get("step_id")
        return step_id if isinstance(step_id, str) else None

    @property
    def is_finish(self) -> bool:
        """True for workflow-finish, the last event of an execution pass."""
        return self.type is EventType.WORKFLOW_FINISH

    @classmethod
    def _from_proto(cls, message: event_pb2.RunEvent) -> RunEvent:
        kind = message.WhichOneof("payload")
        if kind is None:
            raise ValueError(f"event {message.sequence} of run {message.run_id!r} has no payload")
        return cls(
            run_id=message.run_id,
            sequence=message.sequence,
            timestamp=to_datetime(message.timestamp),
            type=EventType(kind.replace("_", "-")),
            data=_payload_data(getattr(message, kind)),
        )


def _payload_data(payload: Message) -> dict[str, Any]:
    """An event payload message as a dict keyed by its field names."""
    data: dict[str, Any] = {}
    for descriptor in payload.DESCRIPTOR.fields:
        raw = getattr(payload, descriptor.name)
        if descriptor.is_repeated:
            data[descriptor.name] = tuple(_field_value(descriptor, item) for item in raw)
        elif descriptor.message_type is None or payload.HasField(descriptor.name):
            data[descriptor.name] = _field_value(descriptor, raw)
    return data


def _field_value(descriptor: Any, raw: Any) -> Any:
    # `descriptor` is a FieldDescriptor (pure-Python or upb; the stubs type them apart).
    if descriptor.enum_type is not None:
        enum_name = descriptor.enum_type.full_name
        if enum_name == "stepline.v1.RunStatus":
            return RunStatus._from_proto(raw)
        if enum_name == "stepline.v1.StepStatus":
            return StepStatus._from_proto(raw)
        if enum_name == "stepline.v1.StartReason":
            return _START_REASONS.get(raw, "")
        return raw
    message_name = descriptor.message_type.full_name if descriptor.message_type else ""
    if message_name == "google.protobuf.Value":
        return from_value(raw)
    if message_name == "google.protobuf.Struct":
        return from_struct(raw)
    if message_name == "google.protobuf.ListValue":
        return from_list_value(raw)
    if message_name == "google.protobuf.Timestamp":
        return to_datetime(raw)
    if message_name == "stepline.v1.RunError":
        return RunError._from_proto(raw)
    if message_name == "stepline.v1.SuspendedStep":
        return SuspendedStep._from_proto(raw)
    return raw


_START_REASONS = {
    event_pb2.START_REASON_START: "start",
    event_pb2.START_REASON_RESUME: "resume",
    event_pb2.START_REASON_RESTART: "restart",
    event_pb2.START_REASON_TIME_TRAVEL: "time_travel",
}


@dataclass(frozen=True)
class StartedRun:
    """What `start_async` returns; `created` is False when the start was a retry."""

    run_id: str
    created: bool
    status: RunStatus

    @classmethod
    def _from_proto(cls, message: service_pb2.StartAsyncResponse) -> StartedRun:
        return cls(message.run_id, message.created, RunStatus._from_proto(message.status))


@dataclass(frozen=True)
class ResumedRun:
    """What `resume_async` returns; the continuation's events follow `after_sequence`."""

    run_id: str
    status: RunStatus
    after_sequence: int

    @classmethod
    def _from_proto(cls, message: service_pb2.ResumeAsyncResponse) -> ResumedRun:
        return cls(message.run_id, RunStatus._from_proto(message.status), message.after_sequence)


@dataclass(frozen=True)
class CancelResult:
    """The run's status after a cancel request, and whether cancellation was requested."""

    status: RunStatus
    cancel_requested: bool

    @classmethod
    def _from_proto(cls, message: service_pb2.CancelResponse) -> CancelResult:
        return cls(RunStatus._from_proto(message.status), message.cancel_requested)


def _schema(message: Message, name: str) -> dict[str, Any] | None:
    return from_struct(getattr(message, name)) if message.HasField(name) else None


@dataclass(frozen=True)
class StepInfo:
    """A declared step: JSON Schemas (None when absent) and its retry count
    (None when the workflow's default applies)."""

    id: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    resume_schema: dict[str, Any] | None = None
    suspend_schema: dict[str, Any] | None = None
    state_schema: dict[str, Any] | None = None
    retries: int | None = None

    @classmethod
    def _from_proto(cls, message: workflow_pb2.StepInfo) -> StepInfo:
        return cls(
            id=message.id,
            description=message.description,
            input_schema=_schema(message, "input_schema"),
            output_schema=_schema(message, "output_schema"),
            resume_schema=_schema(message, "resume_schema"),
            suspend_schema=_schema(message, "suspend_schema"),
            state_schema=_schema(message, "state_schema"),
            retries=message.retries if message.retries >= 0 else None,
        )


@dataclass(frozen=True)
class WorkflowInfo:
    """A registered workflow: JSON Schemas, its steps, and the step graph as JSON."""

    id: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    state_schema: dict[str, Any] | None = None
    steps: tuple[StepInfo, ...] = ()
    graph: list[Any] = field(default_factory=list)

    @classmethod
    def _from_proto(cls, message: workflow_pb2.WorkflowInfo) -> WorkflowInfo:
        return cls(
            id=message.id,
            description=message.description,
            input_schema=_schema(message, "input_schema"),
            output_schema=_schema(message, "output_schema"),
            state_schema=_schema(message, "state_schema"),
            steps=tuple(StepInfo._from_proto(s) for s in message.steps),
            graph=from_list_value(message.graph),
        )
