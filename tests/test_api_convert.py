"""The gRPC adapter's conversions and error table, without a server.

Where a message crosses to the client, the client's decoding is checked too, so the two
codecs can't drift apart.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import grpc
import msgspec
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from stepline.client import _wire as client_wire
from stepline.client import models
from stepline.server.api import convert
from stepline.server.api.errors import (
    DOMAIN,
    INTERNAL_MESSAGE,
    MAX_FIELD_VIOLATIONS,
    STORE_UNAVAILABLE_MESSAGE,
    status_code,
    to_status,
)
from stepline.server.api.values import RequestDecoder, from_timestamp, to_timestamp, to_value
from stepline.server.errors import (
    CursorExpired,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    SteplineError,
    StoreUnavailable,
    Unimplemented,
    WorkflowNotFound,
)
from stepline.server.events import PAYLOADS, Event, EventType, StepResult, WorkflowStart
from stepline.server.model import (
    ErrorData,
    PendingResume,
    ResumeLabel,
    RunStatus,
    Snapshot,
    StepRecord,
    StepStatus,
)
from stepline.server.store import RunRow, StoredRun
from stepline.v1 import event_pb2, run_pb2
from stepline.v1 import workflow_service_pb2 as pb
from stepline_examples.flows import greet

T0 = 1_700_000_000.123456

# -- JSON values ---------------------------------------------------------------------------------

JSON_SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**53,
    1.5,
    -0.25,
    "",
    "héllo ✓",
    [],
    {},
    [1, "two", None, [3.5, {"x": []}]],
    {"a": {"b": {"c": [1, 2, {"d": None}]}}, "empty": {}, "list": []},
]


@pytest.mark.parametrize("data", JSON_SAMPLES)
def test_json_round_trips_through_server_and_client_codecs(data: Any) -> None:
    assert RequestDecoder().value(to_value(data), "x") == data
    assert client_wire.from_value(to_value(data)) == data
    assert RequestDecoder().value(client_wire.to_value(data), "x") == data


def test_empty_containers_are_set_values() -> None:
    assert to_value({}).WhichOneof("kind") == "struct_value"
    assert to_value([]).WhichOneof("kind") == "list_value"


def test_integral_floats_decode_as_int_only_within_exact_range() -> None:
    decoded = RequestDecoder().value(to_value([3.0, -2.0, 2.0**53, 2.0**53 + 2, 0.5]), "x")
    assert decoded == [3, -2, 2**53, 2.0**53 + 2, 0.5]
    assert [type(v) for v in decoded] == [int, int, int, float, float]


def test_unset_value_decodes_as_none() -> None:
    assert RequestDecoder().value(struct_pb2.Value(), "x") is None


def test_non_json_value_is_refused_on_encode() -> None:
    with pytest.raises(TypeError):
        to_value({"when": datetime.now(UTC)})


def _number(n: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=n)


def test_nan_in_request_is_rejected_with_its_field_path() -> None:
    data = to_value({"items": [1, 2, None]})
    data.struct_value.fields["items"].list_value.values[2].CopyFrom(_number(math.nan))
    request = pb.StartAsyncRequest(workflow_id="wf", input_data=data)
    with pytest.raises(InvalidArgument) as caught:
        convert.start_params(request)
    assert caught.value.violations == [
        FieldViolation("input_data.items[2]", caught.value.violations[0].description)
    ]
    assert "NaN" in caught.value.violations[0].description


def test_every_non_finite_number_is_reported_at_once() -> None:
    context = struct_pb2.Struct()
    context.fields["limit"].CopyFrom(_number(math.inf))
    context.fields["odd key"].CopyFrom(_number(-math.inf))
    request = pb.StartRequest(workflow_id="", input_data=_number(math.nan), request_context=context)
    with pytest.raises(InvalidArgument) as caught:
        convert.start_params(request)
    fields = sorted(v.field for v in caught.value.violations)
    assert fields == sorted(
        ["workflow_id", "input_data", "request_context.limit", 'request_context["odd key"]']
    )


# -- timestamps and enums ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, T0, 1.999999999, 1e9 + 0.5, 4_102_444_800.000001])
def test_timestamps_round_trip_exactly(seconds: float) -> None:
    timestamp = to_timestamp(seconds)
    assert timestamp is not None
    assert from_timestamp(timestamp) == seconds
    assert 0 <= timestamp.nanos < 1_000_000_000


def test_unset_timestamp_is_none_both_ways() -> None:
    assert to_timestamp(None) is None
    assert not run_pb2.RunSummary(created_at=to_timestamp(None)).HasField("created_at")


def test_client_reads_timestamps_as_aware_utc() -> None:
    timestamp = to_timestamp(T0)
    assert timestamp is not None
    moment = client_wire.to_datetime(timestamp)
    assert moment.tzinfo is UTC
    assert moment.timestamp() == pytest.approx(T0, abs=1e-6)


def test_status_enums_map_both_ways_and_match_the_client() -> None:
    assert set(convert.RUN_STATUS_TO_PROTO) == set(RunStatus)
    assert set(convert.STEP_STATUS_TO_PROTO) == set(StepStatus)
    for status, number in convert.RUN_STATUS_TO_PROTO.items():
        assert convert.RUN_STATUS_FROM_PROTO[number] is status
        assert models.RunStatus._from_proto(number) == status.value
        assert models.RunStatus(status.value)._to_proto() == number
    for step_status, step_number in convert.STEP_STATUS_TO_PROTO.items():
        assert convert.STEP_STATUS_FROM_PROTO[step_number] is step_status
        assert models.StepStatus._from_proto(step_number) == step_status.value


def test_unknown_status_in_list_request_names_the_index() -> None:
    unknown = run_pb2.RunStatus.ValueType(99)
    request = pb.ListRunsRequest(
        statuses=[run_pb2.RUN_STATUS_SUCCESS, unknown, run_pb2.RUN_STATUS_UNSPECIFIED]
    )
    with pytest.raises(InvalidArgument) as caught:
        convert.run_query(request)
    assert [v.field for v in caught.value.violations] == ["statuses[1]", "statuses[2]"]


# -- requests ------------------------------------------------------------------------------------


def test_start_params_decode_every_field() -> None:
    request = pb.StartRequest(
        workflow_id="wf",
        run_id="r1",
        resource_id="res",
        input_data=to_value({"n": 1}),
        initial_state=struct_pb2.Struct(fields={"count": _number(0)}),
        request_context=struct_pb2.Struct(fields={"user": struct_pb2.Value(string_value="u")}),
        tracing_options=run_pb2.TracingOptions(
            trace_id="abc", metadata=struct_pb2.Struct(fields={"k": _number(2)})
        ),
        request_id="req",
    )
    params = convert.start_params(request)
    assert params.workflow_id == "wf"
    assert params.run_id == "r1"
    assert params.resource_id == "res"
    assert params.input_data == {"n": 1}
    assert params.initial_state == {"count": 0}
    assert params.request_context == {"user": "u"}
    assert params.trace_id == "abc"
    assert params.trace_metadata == {"k": 2}
    assert params.request_id == "req"


def test_start_params_leave_unset_fields_empty() -> None:
    params = convert.start_params(pb.StreamRequest(workflow_id="wf"))
    assert params.input_data is None
    assert params.initial_state is None
    assert params.request_context == {}
    assert params.trace_metadata == {}


def test_resume_params_decode_path_and_optional_fields() -> None:
    request = pb.ResumeRequest(
        run_id="r1",
        step=["child", "approve"],
        label="ok",
        resume_data=to_value({"approved": True}),
        for_each_index=0,
    )
    params = convert.resume_params(request)
    assert params.step == ("child", "approve")
    assert params.label == "ok"
    assert params.resume_data == {"approved": True}
    assert params.request_context is None
    assert params.for_each_index == 0
    assert convert.resume_params(pb.ResumeAsyncRequest(run_id="r1")).for_each_index is None


def test_resume_params_name_missing_run_id_and_empty_step_segment() -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.resume_params(pb.ResumeStreamRequest(step=["a", "", "c"]))
    assert [v.field for v in caught.value.violations] == ["run_id", "step[1]"]


@pytest.mark.parametrize(("page_size", "expected"), [(0, 100), (1, 1), (1000, 1000)])
def test_page_size_defaults_and_bounds(page_size: int, expected: int) -> None:
    assert convert.run_query(pb.ListRunsRequest(page_size=page_size)).page_size == expected


@pytest.mark.parametrize("page_size", [-1, 1001])
def test_page_size_out_of_range_is_invalid(page_size: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.run_query(pb.ListRunsRequest(page_size=page_size))
    assert [v.field for v in caught.value.violations] == ["page_size"]


def test_run_query_builds_the_filter() -> None:
    request = pb.ListRunsRequest(
        workflow_id="wf",
        resource_id="res",
        statuses=[run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELED],
        created_after=timestamp_pb2.Timestamp(seconds=100, nanos=500_000_000),
        page_token="tok",
    )
    query = convert.run_query(request)
    assert query.filter.workflow_id == "wf"
    assert query.filter.resource_id == "res"
    assert query.filter.statuses == frozenset({RunStatus.FAILED, RunStatus.CANCELED})
    assert query.filter.created_after == 100.5
    assert query.filter.created_before is None
    assert query.page_token == "tok"


def test_wait_timeout_and_watch_cursor_validation() -> None:
    request = pb.GetExecutionResultRequest(
        run_id="r", wait_timeout=duration_pb2.Duration(seconds=2, nanos=500_000_000)
    )
    assert convert.wait_timeout(request) == 2.5
    assert convert.wait_timeout(pb.GetExecutionResultRequest(run_id="r")) == 0.0
    with pytest.raises(InvalidArgument) as caught:
        convert.wait_timeout(
            pb.GetExecutionResultRequest(wait_timeout=duration_pb2.Duration(seconds=-1))
        )
    assert [v.field for v in caught.value.violations] == ["run_id", "wait_timeout"]
    with pytest.raises(InvalidArgument) as caught:
        convert.watch_cursor(pb.WatchRequest(run_id="r", after_sequence=-1))
    assert [v.field for v in caught.value.violations] == ["after_sequence"]


# -- results -------------------------------------------------------------------------------------

SECRET = "internal-bookkeeping-must-not-leak"


def _snapshot(status: RunStatus, **overrides: Any) -> Snapshot:
    steps = {
        "fetch": StepRecord(
            status=StepStatus.SUCCESS,
            payload={"id": 1},
            output={"body": "ok"},
            started_at=T0,
            ended_at=T0 + 1,
            attempts=2,
            metadata={"iteration_count": 3},
        ),
        "approve": StepRecord(
            status=StepStatus.SUSPENDED,
            payload={"body": "ok"},
            suspend_payload={"ask": "manager"},
            suspend_labels=["approval"],
            started_at=T0 + 1,
            suspended_at=T0 + 2,
        ),
    }
    fields: dict[str, Any] = {
        "run_id": "r1",
        "workflow_id": "wf",
        "status": status,
        "resource_id": "res",
        "request_id": SECRET,
        "input": {"id": 1},
        "state": {"count": 2},
        "request_context": {"token": SECRET},
        "trace_id": "0" * 31 + "f",
        "trace_metadata": {"note": SECRET},
        "steps": steps,
        "step_execution_path": ["fetch", "approve"],
        "active_steps": {"fetch": [0]},
        "suspended_paths": {"approve": [1]},
        "resume_labels": {"approval": ResumeLabel(step_id="approve")},
        "pending_resume": PendingResume(step_id="approve", path=["approve"], data=SECRET),
        "resumed_since_suspend": True,
        "entry_state": {"0": {"taken": SECRET}},
        "result": {"done": True},
        "error": ErrorData(message="boom", name="ValueError", details={"code": 7}),
        "created_at": T0,
        "updated_at": T0 + 5,
    }
    fields.update(overrides)
    return Snapshot(**fields)


def _stored(snapshot: Snapshot) -> StoredRun:
    return StoredRun(
        snapshot=snapshot, version=42, last_sequence=9, cancel_requested=True, leased=True
    )


def test_run_result_projects_the_public_fields() -> None:
    result = convert.run_result(_stored(_snapshot(RunStatus.SUSPENDED)))
    assert result.run_id == "r1"
    assert result.workflow_id == "wf"
    assert result.resource_id == "res"
    assert result.status == run_pb2.RUN_STATUS_SUSPENDED
    assert result.trace_id == "0" * 31 + "f"
    assert list(result.step_execution_path) == ["fetch", "approve"]
    assert result.last_sequence == 9
    assert from_timestamp(result.created_at) == T0
    assert from_timestamp(result.updated_at) == T0 + 5
    fetch = result.steps["fetch"]
    assert fetch.status == run_pb2.STEP_STATUS_SUCCESS
    assert fetch.attempts == 2
    assert from_timestamp(fetch.ended_at) == T0 + 1
    assert not fetch.HasField("suspended_at")
    assert not fetch.HasField("error")
    [suspended] = result.suspended
    assert list(suspended.path) == ["approve"]
    assert list(suspended.labels) == ["approval"]
    assert RequestDecoder().value(suspended.payload, "x") == {"ask": "manager"}


def test_run_result_sets_result_error_and_state_only_when_they_apply() -> None:
    suspended = convert.run_result(_stored(_snapshot(RunStatus.SUSPENDED)))
    assert not suspended.HasField("result")
    assert not suspended.HasField("error")
    assert not suspended.HasField("state")

    success = convert.run_result(_stored(_snapshot(RunStatus.SUCCESS)), include_state=True)
    assert RequestDecoder().value(success.result, "x") == {"done": True}
    assert not success.HasField("error")
    assert list(success.suspended) == []
    assert RequestDecoder().struct(success.state, "x") == {"count": 2}

    failed = convert.run_result(_stored(_snapshot(RunStatus.FAILED)))
    assert not failed.HasField("result")
    assert failed.error.message == "boom"
    assert failed.error.name == "ValueError"
    assert RequestDecoder().value(failed.error.details, "x") == {"code": 7}


@pytest.mark.parametrize("status", list(RunStatus))
def test_internal_snapshot_fields_never_reach_the_wire(status: RunStatus) -> None:
    result = convert.run_result(_stored(_snapshot(status)), include_state=True)
    assert SECRET.encode() not in result.SerializeToString()
    names = {field.name for field in run_pb2.RunResult.DESCRIPTOR.fields}
    for internal in (
        "pending_resume",
        "entry_state",
        "active_steps",
        "resumed_since_suspend",
        "request_id",
        "version",
        "suspended_paths",
        "resume_labels",
        "cancel_requested",
        "leased",
    ):
        assert internal not in names


def test_client_decodes_the_projection() -> None:
    message = convert.run_result(_stored(_snapshot(RunStatus.SUSPENDED)), include_state=True)
    result = models.RunResult._from_proto(message)
    assert result.status is models.RunStatus.SUSPENDED
    assert result.input == {"id": 1}
    assert result.result is None
    assert result.state == {"count": 2}
    assert result.suspended == (
        models.SuspendedStep(path=("approve",), payload={"ask": "manager"}, labels=("approval",)),
    )
    assert result.steps["fetch"].output == {"body": "ok"}
    assert result.steps["fetch"].metadata == {"iteration_count": 3}
    assert result.steps["approve"].suspend_labels == ("approval",)
    assert result.created_at == datetime.fromtimestamp(T0, UTC)
    assert result.last_sequence == 9


def test_run_summary() -> None:
    row = RunRow("r1", "wf", "res", RunStatus.WAITING, T0, T0 + 1)
    summary = models.RunSummary._from_proto(convert.run_summary(row))
    assert summary == models.RunSummary(
        run_id="r1",
        workflow_id="wf",
        status=models.RunStatus.WAITING,
        resource_id="res",
        created_at=datetime.fromtimestamp(T0, UTC),
        updated_at=datetime.fromtimestamp(T0 + 1, UTC),
    )


def test_workflow_info_from_describe() -> None:
    description = greet.describe()
    message = convert.workflow_info(description)
    info = models.WorkflowInfo._from_proto(message)
    assert info.id == "greet"
    assert info.description == description["description"]
    assert info.input_schema == description["input_schema"]
    assert info.state_schema is None
    assert [s.id for s in info.steps] == [s["id"] for s in description["steps"]]
    assert info.steps[0].resume_schema is None
    assert info.steps[0].retries is None
    assert info.graph == description["graph"]


# -- events --------------------------------------------------------------------------------------

EVENTS: list[tuple[EventType, dict[str, Any], dict[str, Any]]] = [
    (
        EventType.WORKFLOW_START,
        {"workflow_id": "wf", "reason": "time_travel"},
        {"workflow_id": "wf", "reason": "time_travel"},
    ),
    (
        EventType.STEP_START,
        {"step_id": "a", "payload": {"x": 1}, "started_at": T0, "resume_payload": None},
        {"step_id": "a", "payload": {"x": 1}, "resume_payload": None},
    ),
    (
        EventType.STEP_OUTPUT,
        {"step_id": "a", "output": ["chunk", 2]},
        {"step_id": "a", "output": ["chunk", 2]},
    ),
    (
        EventType.STEP_PROGRESS,
        {
            "step_id": "each",
            "completed_count": 2,
            "total_count": 5,
            "current_index": 3,
            "iteration_status": "success",
            "iteration_output": {"v": 9},
        },
        {
            "step_id": "each",
            "completed_count": 2,
            "total_count": 5,
            "current_index": 3,
            "iteration_status": models.StepStatus.SUCCESS,
            "iteration_output": {"v": 9},
        },
    ),
    (
        EventType.STEP_RESULT,
        {
            "step_id": "a",
            "status": "failed",
            "payload": {},
            "error": {"message": "bad", "name": "KeyError", "details": None},
            "started_at": T0,
            "ended_at": T0 + 1,
            "attempts": 3,
        },
        {
            "step_id": "a",
            "status": models.StepStatus.FAILED,
            "payload": {},
            "error": models.RunError(message="bad", name="KeyError"),
            "attempts": 3,
        },
    ),
    (
        EventType.STEP_SUSPENDED,
        {
            "step_id": "ask",
            "payload": 1,
            "suspend_payload": {"q": "?"},
            "labels": ["l1", "l2"],
            "suspended_at": T0,
        },
        {"step_id": "ask", "payload": 1, "suspend_payload": {"q": "?"}, "labels": ("l1", "l2")},
    ),
    (
        EventType.STEP_WAITING,
        {"step_id": "nap", "payload": None, "started_at": T0, "wake_at": T0 + 60},
        {"step_id": "nap", "payload": None},
    ),
    (EventType.WORKFLOW_CANCELED, {}, {}),
    (
        EventType.WORKFLOW_FINISH,
        {
            "status": "suspended",
            "suspended": [{"path": ["ask"], "payload": {"q": "?"}, "labels": ["l1"]}],
        },
        {
            "status": models.RunStatus.SUSPENDED,
            "suspended": (models.SuspendedStep(path=("ask",), payload={"q": "?"}, labels=("l1",)),),
        },
    ),
    (
        EventType.WORKFLOW_FINISH,
        {"status": "success", "result": {"ok": True}},
        {"status": models.RunStatus.SUCCESS, "result": {"ok": True}, "suspended": ()},
    ),
]


@pytest.mark.parametrize(("event_type", "data", "expected"), EVENTS)
def test_events_convert_to_their_oneof_and_back(
    event_type: EventType, data: dict[str, Any], expected: dict[str, Any]
) -> None:
    # As a store reads it: the payload decoded from its JSON by the event's type.
    event = Event(data=msgspec.convert(data, PAYLOADS[event_type]), sequence=4, timestamp=T0)
    message = convert.run_event("r1", event)
    assert message.WhichOneof("payload") == event_type.value.replace("-", "_")
    decoded = models.RunEvent._from_proto(message)
    assert decoded.run_id == "r1"
    assert decoded.sequence == 4
    assert decoded.type == event_type.value
    assert decoded.timestamp == datetime.fromtimestamp(T0, UTC)
    times = {k: v for k, v in data.items() if k.endswith("_at")}
    for key, seconds in times.items():
        assert decoded.data[key] == datetime.fromtimestamp(seconds, UTC)
    assert {k: v for k, v in decoded.data.items() if k not in times} == expected


def test_optional_event_fields_stay_unset() -> None:
    event = Event(data=StepResult(step_id="a", status=StepStatus.SUCCESS))
    message = convert.run_event("r1", event)
    assert not message.step_result.HasField("output")
    assert not message.step_result.HasField("error")
    decoded = models.RunEvent._from_proto(message)
    assert "output" not in decoded.data
    assert decoded.step_id == "a"
    assert not decoded.is_finish


def test_start_reason_enum() -> None:
    for reason, number in convert.START_REASON_TO_PROTO.items():
        event = Event(data=WorkflowStart(workflow_id="w", reason=reason))
        assert convert.run_event("r", event).workflow_start.reason == number
    unknown = Event(data=WorkflowStart(workflow_id="w"))
    assert convert.run_event("r", unknown).workflow_start.reason == (
        event_pb2.START_REASON_UNSPECIFIED
    )


# -- error mapping -------------------------------------------------------------------------------


def _unpack(status: Any, cls: Any) -> list[Any]:
    found = []
    for detail in status.details:
        message = cls()
        if detail.Unpack(message):
            found.append(message)
    return found


def _info(status: Any) -> Any:
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert info.domain == DOMAIN
    return info


ERRORS: list[tuple[SteplineError, Any, str]] = [
    (WorkflowNotFound("wf"), grpc.StatusCode.NOT_FOUND, "WORKFLOW_NOT_FOUND"),
    (RunNotFound("r1"), grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND"),
    (
        InvalidArgument("bad", [FieldViolation("input_data.x", "required")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    ),
    (RunAlreadyExists("r1", "wf"), grpc.StatusCode.ALREADY_EXISTS, "RUN_ALREADY_EXISTS"),
    (
        FailedPrecondition(
            "no", reason="RUN_IS_RUNNING", run_id="r1", status="running", suspended_steps=()
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_IS_RUNNING",
    ),
    (ResumeAlreadyClaimed("r1"), grpc.StatusCode.ABORTED, "RESUME_ALREADY_CLAIMED"),
    (CursorExpired("r1", 3, 10), grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED"),
    (Unimplemented("later"), grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED"),
    (StoreUnavailable("redis down"), grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
]


@pytest.mark.parametrize(("error", "code", "reason"), ERRORS)
def test_every_engine_error_maps_to_its_code_with_error_info(
    error: SteplineError, code: Any, reason: str
) -> None:
    assert status_code(error) is code
    status = to_status(error)
    assert isinstance(status, status_pb2.Status)
    assert status.code == code.value[0]
    # A store's own words (addresses, driver errors) stay in the server's log.
    shown = STORE_UNAVAILABLE_MESSAGE if isinstance(error, StoreUnavailable) else error.message
    if isinstance(error, InvalidArgument):
        shown += ": input_data.x: required"  # the first violation, for clients that show no details
    assert status.message == shown
    assert _info(status).reason == reason


def test_invalid_argument_carries_bad_request() -> None:
    error = InvalidArgument(
        "bad",
        [FieldViolation("input_data.items[2]", "not finite"), FieldViolation("run_id", "x")],
    )
    [bad_request] = _unpack(to_status(error), error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("input_data.items[2]", "not finite"),
        ("run_id", "x"),
    ]


def test_failed_precondition_carries_suspended_steps() -> None:
    error = FailedPrecondition(
        "which one?",
        reason="MULTIPLE_SUSPENDED_STEPS",
        run_id="r1",
        status="suspended",
        suspended_steps=["a", "b.c"],
    )
    status = to_status(error)
    info = _info(status)
    assert dict(info.metadata) == {
        "run_id": "r1",
        "status": "suspended",
        "suspended_steps": "a,b.c",
    }
    [failure] = _unpack(status, error_details_pb2.PreconditionFailure)
    [violation] = failure.violations
    assert violation.type == "MULTIPLE_SUSPENDED_STEPS"
    assert violation.subject == "run/r1"
    assert "suspended" in violation.description
    assert "a, b.c" in violation.description


@pytest.mark.parametrize(
    ("error", "resource_type", "name"),
    [
        (RunNotFound("r1"), "stepline.v1.Run", "r1"),
        (WorkflowNotFound("wf"), "stepline.v1.Workflow", "wf"),
        (RunAlreadyExists("r9", "wf"), "stepline.v1.Run", "r9"),
    ],
)
def test_not_found_and_already_exists_carry_resource_info(
    error: SteplineError, resource_type: str, name: str
) -> None:
    status = to_status(error)
    [resource] = _unpack(status, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == (resource_type, name)
    if isinstance(error, RunAlreadyExists):
        assert _info(status).metadata["run_id"] == "r9"


def test_unavailable_carries_retry_info() -> None:
    [retry] = _unpack(to_status(StoreUnavailable("down")), error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 1


def test_unexpected_errors_become_a_bare_internal() -> None:
    status = to_status(KeyError("secret-table-name"))
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert status.message == INTERNAL_MESSAGE
    assert _info(status).reason == "INTERNAL"
    assert b"secret-table-name" not in status.SerializeToString()


def test_huge_violation_lists_are_capped_to_fit_a_trailer() -> None:
    violations = [FieldViolation(f"input_data.items[{i}]", "x" * 5000) for i in range(500)]
    status = to_status(InvalidArgument("many problems", violations))
    [bad_request] = _unpack(status, error_details_pb2.BadRequest)
    assert len(bad_request.field_violations) == MAX_FIELD_VIOLATIONS
    assert _info(status).metadata["omitted_violations"] == str(500 - MAX_FIELD_VIOLATIONS)
    assert len(status.SerializeToString()) < 4 * 1024
    # The message names the first (clipped) and still counts every other one.
    assert status.message.startswith("many problems: input_data.items[0]: xxx")
    assert status.message.endswith("… (and 499 more)")
