"""Proto ⇄ engine conversion: requests become engine parameters, engine records become messages.

Results are projections of the snapshot: only the fields the contract names are copied, so
internal bookkeeping (pending resumes, entry state, active steps, versions...) can't leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from msgspec import UNSET, UnsetType

from stepline.v1 import event_pb2, run_pb2, workflow_pb2
from stepline.v1 import workflow_service_pb2 as service_pb2

from ..events import (
    Event,
    EventError,
    StepOutput,
    StepProgress,
    StepResult,
    StepStart,
    StepSuspended,
    StepWaiting,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowPaused,
    WorkflowStart,
)
from ..jsonvalue import JSON
from ..model import ErrorData, RunStatus, StepRecord, StepStatus
from ..runs import RestartParams, ResumeParams, StartParams, TimeTravelParams
from ..store import RunFilter, RunRow, StoredRun
from .values import (
    RequestDecoder,
    from_timestamp,
    to_list_value,
    to_struct,
    to_timestamp,
    to_value,
)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

# -- enums ---------------------------------------------------------------------------------------

RUN_STATUS_TO_PROTO: dict[RunStatus, run_pb2.RunStatus.ValueType] = {
    RunStatus.PENDING: run_pb2.RUN_STATUS_PENDING,
    RunStatus.RUNNING: run_pb2.RUN_STATUS_RUNNING,
    RunStatus.WAITING: run_pb2.RUN_STATUS_WAITING,
    RunStatus.SUSPENDED: run_pb2.RUN_STATUS_SUSPENDED,
    RunStatus.SUCCESS: run_pb2.RUN_STATUS_SUCCESS,
    RunStatus.FAILED: run_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELED: run_pb2.RUN_STATUS_CANCELED,
    RunStatus.PAUSED: run_pb2.RUN_STATUS_PAUSED,
}
RUN_STATUS_FROM_PROTO = {number: status for status, number in RUN_STATUS_TO_PROTO.items()}

STEP_STATUS_TO_PROTO: dict[StepStatus, run_pb2.StepStatus.ValueType] = {
    StepStatus.RUNNING: run_pb2.STEP_STATUS_RUNNING,
    StepStatus.SUCCESS: run_pb2.STEP_STATUS_SUCCESS,
    StepStatus.FAILED: run_pb2.STEP_STATUS_FAILED,
    StepStatus.SUSPENDED: run_pb2.STEP_STATUS_SUSPENDED,
    StepStatus.WAITING: run_pb2.STEP_STATUS_WAITING,
    StepStatus.SKIPPED: run_pb2.STEP_STATUS_SKIPPED,
    StepStatus.CANCELED: run_pb2.STEP_STATUS_CANCELED,
}
STEP_STATUS_FROM_PROTO = {number: status for status, number in STEP_STATUS_TO_PROTO.items()}

START_REASON_TO_PROTO: dict[str, event_pb2.StartReason.ValueType] = {
    "start": event_pb2.START_REASON_START,
    "resume": event_pb2.START_REASON_RESUME,
    "restart": event_pb2.START_REASON_RESTART,
    "time_travel": event_pb2.START_REASON_TIME_TRAVEL,
}


def run_status(status: object) -> run_pb2.RunStatus.ValueType:
    """A status (enum or its JSON string from event data); UNSPECIFIED when unrecognised."""
    try:
        return RUN_STATUS_TO_PROTO[RunStatus(str(status))]
    except ValueError:
        return run_pb2.RUN_STATUS_UNSPECIFIED


def step_status(status: object) -> run_pb2.StepStatus.ValueType:
    """A step status (enum or its JSON string); UNSPECIFIED when unrecognised."""
    try:
        return STEP_STATUS_TO_PROTO[StepStatus(str(status))]
    except ValueError:
        return run_pb2.STEP_STATUS_UNSPECIFIED


# -- results -------------------------------------------------------------------------------------


def _optional_value(data: Any) -> Any:
    """A Value for `data`, or None (field left unset) when there is nothing to send."""
    return None if data is None else to_value(data)


def run_error(error: ErrorData | EventError | None) -> run_pb2.RunError | None:
    """An engine error (a record's, or as an event carries it) as a RunError."""
    if error is None:
        return None
    return run_pb2.RunError(
        message=error.message, name=error.name, details=_optional_value(error.details)
    )


def step_result(record: StepRecord) -> run_pb2.StepResult:
    return run_pb2.StepResult(
        status=step_status(record.status),
        payload=_optional_value(record.payload),
        output=_optional_value(record.output),
        error=run_error(record.error),
        suspend_payload=_optional_value(record.suspend_payload),
        resume_payload=_optional_value(record.resume_payload),
        started_at=to_timestamp(record.started_at),
        ended_at=to_timestamp(record.ended_at),
        suspended_at=to_timestamp(record.suspended_at),
        resumed_at=to_timestamp(record.resumed_at),
        attempts=record.attempts,
        suspend_labels=record.suspend_labels,
        metadata=to_struct(record.metadata) if record.metadata else None,
    )


def run_result(run: StoredRun, *, include_state: bool = False) -> run_pb2.RunResult:
    """Project a stored run onto the public RunResult; the state is included when the
    caller asks for it or the run remembers that an earlier request did."""
    snapshot = run.snapshot
    include_state = include_state or snapshot.output_options.include_state
    suspended: list[run_pb2.SuspendedStep] = []
    if snapshot.status is RunStatus.SUSPENDED:
        suspended = [
            run_pb2.SuspendedStep(
                path=leaf.path, payload=to_value(leaf.payload), labels=leaf.labels
            )
            for leaf in snapshot.suspended_leaves()
        ]
    return run_pb2.RunResult(
        run_id=snapshot.run_id,
        workflow_id=snapshot.workflow_id,
        resource_id=snapshot.resource_id,
        status=run_status(snapshot.status),
        input=to_value(snapshot.input),
        result=to_value(snapshot.result) if snapshot.status is RunStatus.SUCCESS else None,
        error=run_error(snapshot.error) if snapshot.status is RunStatus.FAILED else None,
        steps={step_id: step_result(record) for step_id, record in snapshot.flat_steps().items()},
        suspended=suspended,
        state=to_struct(snapshot.state) if include_state else None,
        step_execution_path=snapshot.step_execution_path,
        trace_id=snapshot.trace_id,
        created_at=to_timestamp(snapshot.created_at),
        updated_at=to_timestamp(snapshot.updated_at),
        last_sequence=run.last_sequence,
    )


def run_summary(row: RunRow) -> run_pb2.RunSummary:
    return run_pb2.RunSummary(
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        resource_id=row.resource_id,
        status=run_status(row.status),
        created_at=to_timestamp(row.created_at),
        updated_at=to_timestamp(row.updated_at),
    )


def _optional_struct(data: Mapping[str, Any] | None) -> Any:
    return None if data is None else to_struct(data)


def workflow_info(description: Mapping[str, Any]) -> workflow_pb2.WorkflowInfo:
    """`Workflow.describe()` as a WorkflowInfo."""
    steps = [
        workflow_pb2.StepInfo(
            id=step["id"],
            description=step.get("description") or "",
            input_schema=_optional_struct(step.get("input_schema")),
            output_schema=_optional_struct(step.get("output_schema")),
            resume_schema=_optional_struct(step.get("resume_schema")),
            suspend_schema=_optional_struct(step.get("suspend_schema")),
            state_schema=_optional_struct(step.get("state_schema")),
            retries=step.get("retries", -1),
        )
        for step in description.get("steps", [])
    ]
    return workflow_pb2.WorkflowInfo(
        id=description["id"],
        description=description.get("description") or "",
        input_schema=_optional_struct(description.get("input_schema")),
        output_schema=_optional_struct(description.get("output_schema")),
        state_schema=_optional_struct(description.get("state_schema")),
        steps=steps,
        graph=to_list_value(description.get("graph", [])),
    )


# -- events --------------------------------------------------------------------------------------


def run_event(run_id: str, event: Event) -> event_pb2.RunEvent:
    """One log entry as a RunEvent: a key the payload leaves out stays unset."""
    message = event_pb2.RunEvent(
        run_id=run_id, sequence=event.sequence, timestamp=to_timestamp(event.timestamp)
    )
    match event.data:
        case WorkflowStart() as start:
            message.workflow_start.CopyFrom(
                event_pb2.WorkflowStartEvent(
                    workflow_id=start.workflow_id,
                    reason=START_REASON_TO_PROTO.get(
                        start.reason, event_pb2.START_REASON_UNSPECIFIED
                    ),
                )
            )
        case StepStart() as step:
            message.step_start.CopyFrom(
                event_pb2.StepStartEvent(
                    step_id=step.step_id,
                    payload=to_value(step.payload),
                    started_at=to_timestamp(step.started_at),
                    resume_payload=_set_value(step.resume_payload),
                    metadata=None if step.metadata is UNSET else to_struct(step.metadata),
                )
            )
        case StepOutput() as output:
            message.step_output.CopyFrom(
                event_pb2.StepOutputEvent(step_id=output.step_id, output=to_value(output.output))
            )
        case StepProgress() as progress:
            message.step_progress.CopyFrom(
                event_pb2.StepProgressEvent(
                    step_id=progress.step_id,
                    completed_count=progress.completed_count,
                    total_count=progress.total_count,
                    current_index=progress.current_index,
                    iteration_status=step_status(progress.iteration_status),
                    iteration_output=_set_value(progress.iteration_output),
                )
            )
        case StepResult() as result:
            message.step_result.CopyFrom(
                event_pb2.StepResultEvent(
                    step_id=result.step_id,
                    status=step_status(result.status),
                    payload=_set_value(result.payload),
                    output=_set_value(result.output),
                    error=run_error(result.error or None),
                    started_at=to_timestamp(result.started_at),
                    ended_at=to_timestamp(result.ended_at),
                    attempts=result.attempts,
                )
            )
        case StepSuspended() as suspended:
            message.step_suspended.CopyFrom(
                event_pb2.StepSuspendedEvent(
                    step_id=suspended.step_id,
                    payload=to_value(suspended.payload),
                    suspend_payload=to_value(suspended.suspend_payload),
                    labels=suspended.labels,
                    suspended_at=to_timestamp(suspended.suspended_at),
                )
            )
        case StepWaiting() as waiting:
            message.step_waiting.CopyFrom(
                event_pb2.StepWaitingEvent(
                    step_id=waiting.step_id,
                    payload=to_value(waiting.payload),
                    started_at=to_timestamp(waiting.started_at),
                    wake_at=to_timestamp(waiting.wake_at),
                )
            )
        case WorkflowCanceled():
            message.workflow_canceled.SetInParent()
        case WorkflowPaused():
            message.workflow_paused.SetInParent()
        case WorkflowFinish() as finish:
            message.workflow_finish.CopyFrom(
                event_pb2.WorkflowFinishEvent(
                    status=run_status(finish.status),
                    result=_set_value(finish.result),
                    error=run_error(finish.error or None),
                    suspended=[
                        run_pb2.SuspendedStep(
                            path=entry.path, payload=to_value(entry.payload), labels=entry.labels
                        )
                        for entry in finish.suspended or ()
                    ],
                    state=None if finish.state is UNSET else to_struct(finish.state),
                )
            )
    return message


def _set_value(data: JSON | UnsetType) -> Any:
    """A Value for `data`, or None (field left unset) when the payload left it out."""
    return None if data is UNSET else to_value(data)


# -- requests ------------------------------------------------------------------------------------

StartRequest: TypeAlias = (
    service_pb2.StartAsyncRequest | service_pb2.StartRequest | service_pb2.StreamRequest
)
ResumeRequest: TypeAlias = (
    service_pb2.ResumeRequest | service_pb2.ResumeAsyncRequest | service_pb2.ResumeStreamRequest
)


def require_id(value: str, field: str) -> str:
    """A non-empty identifier field, or InvalidArgument naming it."""
    decoder = RequestDecoder()
    decoder.required(value, field)
    decoder.check()
    return value


def start_params(request: StartRequest) -> StartParams:
    decoder = RequestDecoder()
    decoder.required(request.workflow_id, "workflow_id")
    input_data = decoder.optional_value(request, "input_data")
    initial_state = decoder.optional_struct(request, "initial_state")
    request_context = decoder.struct(request.request_context, "request_context")
    trace_metadata = decoder.struct(request.tracing_options.metadata, "tracing_options.metadata")
    decoder.check()
    return StartParams(
        workflow_id=request.workflow_id,
        input_data=input_data,
        run_id=request.run_id,
        resource_id=request.resource_id,
        initial_state=initial_state,
        request_context=request_context,
        trace_id=request.tracing_options.trace_id,
        trace_metadata=trace_metadata,
        request_id=request.request_id,
        include_state=request.output_options.include_state,
        per_step=request.per_step,
    )


def resume_params(request: ResumeRequest) -> ResumeParams:
    decoder = RequestDecoder()
    decoder.required(request.run_id, "run_id")
    step = decoder.step_path(request.step)
    resume_data = decoder.optional_value(request, "resume_data")
    request_context = decoder.optional_struct(request, "request_context")
    decoder.check()
    return ResumeParams(
        run_id=request.run_id,
        step=step,
        label=request.label,
        resume_data=resume_data,
        request_context=request_context,
        for_each_index=(request.for_each_index if request.HasField("for_each_index") else None),
        include_state=request.output_options.include_state,
        per_step=request.per_step,
    )


@dataclass(frozen=True)
class RunQuery:
    """A decoded ListRuns request."""

    filter: RunFilter
    page_size: int
    page_token: str


def run_query(request: service_pb2.ListRunsRequest) -> RunQuery:
    decoder = RequestDecoder()
    statuses: set[RunStatus] = set()
    for index, number in enumerate(request.statuses):
        status = RUN_STATUS_FROM_PROTO.get(number)
        if status is None:
            decoder.fail(f"statuses[{index}]", f"{number} is not a known run status")
        else:
            statuses.add(status)
    page_size = request.page_size or DEFAULT_PAGE_SIZE
    if not 0 < page_size <= MAX_PAGE_SIZE:
        decoder.fail("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    decoder.check()
    return RunQuery(
        filter=RunFilter(
            workflow_id=request.workflow_id,
            resource_id=request.resource_id,
            statuses=frozenset(statuses),
            created_after=(
                from_timestamp(request.created_after) if request.HasField("created_after") else None
            ),
            created_before=(
                from_timestamp(request.created_before)
                if request.HasField("created_before")
                else None
            ),
        ),
        page_size=page_size,
        page_token=request.page_token,
    )


def wait_timeout(request: service_pb2.GetExecutionResultRequest) -> float:
    """The requested wait in seconds (0 = answer at once)."""
    decoder = RequestDecoder()
    decoder.required(request.run_id, "run_id")
    seconds = decoder.duration(request.wait_timeout, "wait_timeout")
    decoder.check()
    return seconds


def watch_cursor(request: service_pb2.WatchRequest) -> int:
    """The validated `after_sequence` of a Watch request."""
    decoder = RequestDecoder()
    decoder.required(request.run_id, "run_id")
    if request.after_sequence < 0:
        decoder.fail("after_sequence", "must not be negative")
    decoder.check()
    return request.after_sequence


def time_travel_params(
    request: service_pb2.TimeTravelRequest | service_pb2.TimeTravelStreamRequest,
) -> TimeTravelParams:
    """A decoded TimeTravel request; `context` entries become step records."""
    decoder = RequestDecoder()
    decoder.required(request.run_id, "run_id")
    if not request.step:
        decoder.fail("step", "must name the step to re-execute from")
    step = decoder.step_path(request.step)
    context: dict[str, StepRecord] = {}
    for step_id, result in request.context.items():
        field = f"context[{step_id!r}]"
        status = STEP_STATUS_FROM_PROTO.get(result.status)
        if status is None:
            decoder.fail(f"{field}.status", "must be a known step status")
            continue
        context[step_id] = StepRecord(
            status=status,
            payload=decoder.value(result.payload, f"{field}.payload"),
            output=decoder.value(result.output, f"{field}.output"),
        )

    params = TimeTravelParams(
        run_id=request.run_id,
        step=step,
        input_data=decoder.optional_value(request, "input_data"),
        initial_state=decoder.optional_struct(request, "initial_state"),
        resume_data=decoder.optional_value(request, "resume_data"),
        context=context,
        request_context=decoder.optional_struct(request, "request_context"),
        include_state=request.output_options.include_state,
        per_step=request.per_step,
    )
    decoder.check()
    return params


def restart_params(request: service_pb2.RestartRequest) -> RestartParams:
    decoder = RequestDecoder()
    decoder.required(request.run_id, "run_id")
    request_context = decoder.struct(request.request_context, "request_context")
    trace_metadata = decoder.struct(request.tracing_options.metadata, "tracing_options.metadata")
    decoder.check()
    return RestartParams(
        run_id=request.run_id,
        request_context=request_context,
        trace_id=request.tracing_options.trace_id,
        trace_metadata=trace_metadata,
        include_state=request.output_options.include_state,
    )
