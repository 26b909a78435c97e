"""SPEC §3 through the real gRPC channel, on both stores: each refusal's status code and the
structured details a caller acts on (ErrorInfo, BadRequest, PreconditionFailure, ResourceInfo).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToJson, ParseDict

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from stepline.client import (
    Client,
    EventType,
    FailedPrecondition,
    InvalidArgument,
    MultipleSuspendedSteps,
    NotSuspended,
    RunAlreadyExists,
    RunNotFound,
    RunStatus,
    SteplineError,
    StepNotSuspended,
    StepStatus,
    WorkflowNotFound,
)
from stepline.server.app import Server
from stepline.v1 import run_pb2
from stepline.v1 import workflow_service_pb2 as pb

# Imported fixtures are registered under their `name=`s: server, client, stub.
from tests.grpc_harness import (  # noqa: F401
    BOUND,
    Stub,
    client_fixture,
    collect,
    detail,
    error_info,
    server_fixture,
    settled,
    status_of,
    stub_fixture,
    unpack,
)


def fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


# -- the wire itself carries google.rpc.Status details -------------------------------------------


async def test_raw_statuses_carry_rich_details(client: Client, stub: Stub) -> None:
    """Decoded by hand with grpc_status, no Stepline client code involved."""
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetWorkflow(pb.GetWorkflowRequest(workflow_id="nope"))
    status = status_of(missing.value)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    info = error_info(status)
    assert info.reason == "WORKFLOW_NOT_FOUND" and dict(info.metadata) == {"workflow_id": "nope"}
    [resource] = unpack(status, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("stepline.v1.Workflow", "nope")

    unknown = run_pb2.RunStatus.ValueType(99)  # a status number this server does not know
    with pytest.raises(grpc.aio.AioRpcError) as bad_enum:
        await stub.ListRuns(pb.ListRunsRequest(statuses=[run_pb2.RUN_STATUS_SUCCESS, unknown]))
    status = status_of(bad_enum.value)
    assert bad_enum.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(status).reason == "INVALID_ARGUMENT"
    [bad_request] = unpack(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["statuses[1]"]
    assert "99" in bad_request.field_violations[0].description

    finished = await client.start("sequence", {"value": 1})
    with pytest.raises(grpc.aio.AioRpcError) as not_suspended:
        await stub.Resume(pb.ResumeRequest(run_id=finished.run_id))
    status = status_of(not_suspended.value)
    assert not_suspended.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(status)
    assert info.reason == "RUN_NOT_SUSPENDED"
    assert dict(info.metadata) == {"run_id": finished.run_id, "status": "success"}
    [precondition] = unpack(status, error_details_pb2.PreconditionFailure)
    [violation] = precondition.violations
    assert violation.type == "RUN_NOT_SUSPENDED"
    assert violation.subject == f"run/{finished.run_id}"

    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await stub.StartAsync(
            pb.StartAsyncRequest(
                workflow_id="sequence",
                run_id=finished.run_id,
                input_data=ParseDict({"value": 1}, struct_pb2.Value()),
                request_id="x",
            )
        )
    status = status_of(exists.value)
    assert exists.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_info(status).reason == "RUN_ALREADY_EXISTS"
    [resource] = unpack(status, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == (
        "stepline.v1.Run",
        finished.run_id,
    )


# -- NOT_FOUND -----------------------------------------------------------------------------------


async def test_unknown_workflow(client: Client) -> None:
    for attempt in (
        client.start("no_such_workflow", {}),
        client.start_async("no_such_workflow", {}),
        client.get_workflow("no_such_workflow"),
    ):
        with pytest.raises(WorkflowNotFound) as info:
            await attempt
        error = info.value
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.reason == "WORKFLOW_NOT_FOUND"
        assert error.workflow_id == "no_such_workflow"
        resource = detail(error, "ResourceInfo")
        assert resource["resource_type"] == "stepline.v1.Workflow"
        assert resource["resource_name"] == "no_such_workflow"
    assert (await client.list_runs()).runs == ()  # nothing was recorded


async def test_unknown_run_on_every_run_rpc(client: Client) -> None:
    async def watch() -> None:
        await collect(client.watch("ghost"))

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "GetExecutionResult": lambda: client.get_result("ghost"),
        "GetExecutionResult(wait)": lambda: client.get_result("ghost", wait=5),
        "Cancel": lambda: client.cancel("ghost"),
        "Resume": lambda: client.resume("ghost", {"approved": True}),
        "ResumeAsync": lambda: client.resume_async("ghost", {"approved": True}),
        "ResumeStream": lambda: collect(client.resume_stream("ghost", {"approved": True})),
        "Watch": watch,
        "DeleteRun": lambda: client.delete_run("ghost"),
    }
    for name, call in calls.items():
        with pytest.raises(RunNotFound) as info:
            await call()
        error = info.value
        assert error.code is grpc.StatusCode.NOT_FOUND, name
        assert (error.reason, error.run_id) == ("RUN_NOT_FOUND", "ghost"), name
        resource = detail(error, "ResourceInfo")
        assert (resource["resource_type"], resource["resource_name"]) == (
            "stepline.v1.Run",
            "ghost",
        ), name


# -- INVALID_ARGUMENT ----------------------------------------------------------------------------


async def test_input_failing_its_schema_has_one_violation_per_problem(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.start("retrying", {"fail_times": "often", "non_retryable": "perhaps"})
    error = info.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert sorted(fields(error)) == ["input_data.fail_times", "input_data.non_retryable"]
    assert all(v.description for v in error.violations)
    assert detail(error, "BadRequest")["field_violations"]

    # Problems in different parts of one request are all reported at once.
    with pytest.raises(InvalidArgument) as info:
        await client.start_async(
            "stateful", {"value": "x"}, initial_state={"count": "many"}, trace_id="xyz"
        )
    assert sorted(fields(info.value)) == [
        "initial_state.count",
        "input_data.value",
        "tracing_options.trace_id",
    ]
    assert (await client.list_runs()).runs == ()  # a refused start records nothing


async def test_bad_initial_state(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.start("stateful", {"value": 1}, initial_state={"count": "many"})
    assert fields(info.value) == ["initial_state.count"]


@pytest.mark.parametrize("trace_id", ["xyz", "a" * 33, "12-34"])
async def test_bad_trace_id(client: Client, trace_id: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.start("sequence", {"value": 1}, trace_id=trace_id)
    assert fields(info.value) == ["tracing_options.trace_id"]


async def test_short_trace_id_is_accepted_and_left_padded(client: Client) -> None:
    result = await client.start("sequence", {"value": 1}, trace_id="abc")
    assert result.status is RunStatus.SUCCESS
    assert result.trace_id == "0" * 29 + "abc"
    assert (await client.get_result(result.run_id)).trace_id == result.trace_id
    full = await client.start("sequence", {"value": 1}, trace_id="AB" * 16)
    assert full.trace_id == "ab" * 16


async def test_missing_ids_and_empty_step_segment_name_their_fields(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.start("", {"value": 1})
    assert fields(info.value) == ["workflow_id"]

    suspended = await client.start("approval", {})
    with pytest.raises(InvalidArgument) as info:
        await client.resume(suspended.run_id, {"approved": True}, step=[""])
    assert fields(info.value) == ["step[0]"]
    with pytest.raises(InvalidArgument) as info:
        await client.resume("", {"approved": True})
    assert fields(info.value) == ["run_id"]
    still = await client.get_result(suspended.run_id)
    assert still.status is RunStatus.SUSPENDED
    assert still.last_sequence == suspended.last_sequence


@pytest.mark.parametrize("page_size", [-1, 1001])
async def test_page_size_out_of_range(client: Client, page_size: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.list_runs(page_size=page_size)
    assert fields(info.value) == ["page_size"]


async def test_page_size_bounds_are_accepted(client: Client) -> None:
    await client.start("sequence", {"value": 1})
    assert len((await client.list_runs(page_size=1000)).runs) == 1
    assert len((await client.list_runs(page_size=0)).runs) == 1  # 0 = the default


async def test_tampered_page_token(client: Client) -> None:
    for value in range(3):
        await client.start("sequence", {"value": value})
    first = await client.list_runs(page_size=2)
    token = first.next_page_token
    assert token
    forged_shape = base64.urlsafe_b64encode(json.dumps({"after": 1}).encode()).decode()
    for tampered in (token[:-4] + "AAAA", token[: len(token) // 2], "not a token!", forged_shape):
        with pytest.raises(InvalidArgument) as info:
            await client.list_runs(page_size=2, page_token=tampered)
        assert fields(info.value) == ["page_token"], tampered
    # The genuine token still works.
    assert len((await client.list_runs(page_size=2, page_token=token)).runs) == 1


# -- INVALID_ARGUMENT messages name the field ----------------------------------------------------


async def test_invalid_argument_messages_name_the_first_violation(client: Client) -> None:
    """Most clients show only the status message: it names the first field and its problem,
    and counts the others, whatever part of the service refused the request."""
    with pytest.raises(InvalidArgument) as info:
        await client.start_async("sequence", {"value": 1}, trace_id="a" * 33)
    assert info.value.message == (
        "invalid start request for workflow 'sequence': "
        "tracing_options.trace_id: must be 1 to 32 hexadecimal characters"
    )

    with pytest.raises(InvalidArgument) as info:
        await client.start("sequence", {"value": "seven"})
    message = info.value.message
    assert message.startswith("invalid start request for workflow 'sequence': input_data.value: ")
    assert info.value.violations[0].description in message and "more)" not in message

    with pytest.raises(InvalidArgument) as info:
        await client.start_async(
            "stateful", {"value": "x"}, initial_state={"count": "many"}, trace_id="xyz"
        )
    first = info.value.violations[0]
    assert len(info.value.violations) == 3
    assert info.value.message.endswith(f"{first.field}: {first.description} (and 2 more)")

    suspended = await client.start("approval", {"question": "ship?"})
    with pytest.raises(InvalidArgument) as info:
        await client.resume(suspended.run_id, {"approved": "maybe"})
    assert info.value.message.startswith(
        "invalid resume data for step 'approve': resume_data.approved: "
    )

    finished = await client.start("sequence", {"value": 1})
    with pytest.raises(InvalidArgument) as info:
        await client.time_travel(finished.run_id, "double", input_data={"value": "x"})
    assert ": input_data.value: " in info.value.message

    with pytest.raises(InvalidArgument) as info:
        await client.start("", {"value": 1})
    assert info.value.message == "invalid request: workflow_id: is required"

    with pytest.raises(InvalidArgument) as info:
        await client.list_runs(page_size=-1, page_token="not a token!")
    assert info.value.message == "invalid request: page_size: must be between 0 and 1000"
    with pytest.raises(InvalidArgument) as info:
        await client.list_runs(page_token="not a token!")
    assert info.value.message == (
        "invalid page token: page_token: not a token returned by a previous list call"
    )


async def test_invalid_argument_message_counts_every_violation(stub: Stub) -> None:
    """The BadRequest keeps the first ten; the message still counts all of them."""
    bad = {"items": ["x"] * 40}
    request = pb.StartAsyncRequest(
        workflow_id="fanout", input_data=ParseDict(bad, struct_pb2.Value())
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.StartAsync(request)
    status = status_of(info.value)
    [bad_request] = unpack(status, error_details_pb2.BadRequest)
    assert 0 < len(bad_request.field_violations) < 40
    first = bad_request.field_violations[0]
    assert status.message.endswith(f"{first.field}: {first.description} (and 39 more)")
    assert info.value.details() == status.message


def _length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` holding `payload`, encoded by hand."""
    size, length = bytearray(), len(payload)
    while True:
        byte, length = length & 0x7F, length >> 7
        size.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([number << 3 | 2]) + bytes(size) + payload


def _deep_list(levels: int) -> bytes:
    """A google.protobuf.Value: a list in a list ... `levels` deep, around a string (the
    protobuf runtime refuses to build one deeper than it parses)."""
    value = _length_delimited(3, b"bottom")  # Value.string_value
    for _ in range(levels):
        value = _length_delimited(6, _length_delimited(1, value))  # list_value.values
    return value


async def test_deep_nesting_has_its_own_reason(client: Client, server: Server) -> None:
    nested: Any = "bottom"
    for _ in range(40):
        nested = [nested]
    with pytest.raises(InvalidArgument) as info:
        await client.start_async("sequence", {"value": 1, "deep": nested})
    error = info.value
    assert error.reason == "VALUE_TOO_DEEP"
    [violation] = error.violations
    assert violation.field == "input_data.deep" + "[0]" * 31
    assert error.message.endswith(f"{violation.field}: {violation.description}")
    assert "nested too deeply" in violation.description

    # Deeper than the protobuf runtime parses: valid protobuf all the same, and the same reason.
    request = pb.StartAsyncRequest(workflow_id="sequence").SerializeToString()
    request += _length_delimited(4, _deep_list(200))  # input_data
    channel = grpc.aio.insecure_channel(server.target)
    try:
        start_async = channel.unary_unary("/stepline.v1.WorkflowService/StartAsync")
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await start_async(request, timeout=BOUND)
    finally:
        await channel.close()
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = status_of(raw.value)
    assert error_info(status).reason == "VALUE_TOO_DEEP"
    [bad_request] = unpack(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["input_data"]
    assert "nested too deeply" in bad_request.field_violations[0].description
    assert status.message.startswith("malformed stepline.v1.StartAsyncRequest: input_data: ")
    assert (await client.list_runs()).runs == ()  # nothing was recorded


# -- ALREADY_EXISTS and idempotent starts ---------------------------------------------------------


async def test_run_id_reused_by_another_request_already_exists(client: Client) -> None:
    first = await client.start_async("sequence", {"value": 1}, run_id="order-1", request_id="a")
    assert (first.run_id, first.created) == ("order-1", True)

    attempts = [
        client.start_async("sequence", {"value": 1}, run_id="order-1", request_id="b"),
        client.start_async("sequence", {"value": 1}, run_id="order-1"),
        # The same idempotency key for another workflow is a different request.
        client.start_async("approval", {}, run_id="order-1", request_id="a"),
        client.start("sequence", {"value": 9}, run_id="order-1", request_id="b"),
    ]
    for attempt in attempts:
        with pytest.raises(RunAlreadyExists) as info:
            await attempt
        error = info.value
        assert error.code is grpc.StatusCode.ALREADY_EXISTS
        assert error.reason == "RUN_ALREADY_EXISTS"
        assert error.existing_run_id == "order-1"
        assert error.metadata["workflow_id"] == "sequence"
        assert detail(error, "ResourceInfo")["resource_name"] == "order-1"

    done = await settled(client, "order-1")
    assert done.status is RunStatus.SUCCESS and done.input == {"value": 1}


async def test_retried_start_returns_the_same_run_and_runs_it_once(client: Client) -> None:
    first = await client.start_async("sequence", {"value": 1}, run_id="r-1", request_id="req-1")
    again = await client.start_async("sequence", {"value": 1}, run_id="r-1", request_id="req-1")
    assert first.created and not again.created
    assert again.run_id == first.run_id == "r-1"

    blocking = await client.start("sequence", {"value": 1}, run_id="r-1", request_id="req-1")
    assert blocking == await client.get_result("r-1")
    assert blocking.status is RunStatus.SUCCESS and blocking.result == {"value": 4}

    events = await collect(client.watch("r-1"))
    assert [e.type for e in events].count(EventType.WORKFLOW_START) == 1
    assert [e.step_id for e in events if e.type is EventType.STEP_START] == ["add_one", "double"]
    assert [run.run_id for run in (await client.list_runs()).runs] == ["r-1"]


async def test_request_id_alone_makes_a_retried_start_return_the_same_run(
    client: Client,
) -> None:
    first = await client.start_async("sequence", {"value": 1}, request_id="req-alone")
    again = await client.start_async("sequence", {"value": 1}, request_id="req-alone")
    assert first.created and not again.created
    assert again.run_id == first.run_id

    # Start and Stream retried with the key answer that run too, and start nothing.
    blocking = await client.start("sequence", {"value": 1}, request_id="req-alone")
    assert blocking.run_id == first.run_id
    assert blocking.status is RunStatus.SUCCESS and blocking.result == {"value": 4}
    streamed = await collect(client.stream("sequence", {"value": 1}, request_id="req-alone"))
    assert {e.run_id for e in streamed} == {first.run_id}
    assert [e.type for e in streamed].count(EventType.WORKFLOW_START) == 1

    # The first start wins: a retry whose input differs gets the first run, unchanged (as a
    # retry with the same run_id and request_id does).
    other_input = await client.start("sequence", {"value": 50}, request_id="req-alone")
    assert other_input == blocking and other_input.input == {"value": 1}

    # The key is per workflow, and another key is another start.
    elsewhere = await client.start_async("approval", {}, request_id="req-alone")
    fresh = await client.start_async("sequence", {"value": 1}, request_id="req-other")
    assert elsewhere.created and fresh.created
    assert len({first.run_id, elsewhere.run_id, fresh.run_id}) == 3
    listed = sorted(run.run_id for run in (await client.list_runs()).runs)
    assert listed == sorted([first.run_id, elsewhere.run_id, fresh.run_id])

    # Deduplication lasts as long as the run is kept: once it is gone the key is free again.
    await client.delete_run(first.run_id)
    restarted = await client.start_async("sequence", {"value": 2}, request_id="req-alone")
    assert restarted.created
    assert (await settled(client, restarted.run_id)).result == {"value": 6}


async def test_racing_starts_with_one_request_id_make_one_run(
    server: Server, client: Client
) -> None:
    """Two replicas on one store, ten identical starts at once, spread over both."""
    second = await Server.start(server.settings, store=server.store)  # on port 0 too
    other = await Client.connect(second.target)
    try:
        starts = [
            (client if index % 2 else other).start_async(
                "sequence", {"value": 3}, request_id="req-race"
            )
            for index in range(10)
        ]
        answers = await asyncio.gather(*starts)
        assert len({answer.run_id for answer in answers}) == 1
        assert sum(answer.created for answer in answers) == 1
        [run] = (await client.list_runs()).runs
        assert (await settled(client, run.run_id)).result == {"value": 8}
        events = await collect(client.watch(run.run_id))
        assert [e.type for e in events].count(EventType.WORKFLOW_START) == 1
    finally:
        await other.close()
        await second.stop(grace=1)  # closes the shared store: last


# -- FAILED_PRECONDITION and resume data ---------------------------------------------------------


async def test_resume_of_a_finished_run(client: Client) -> None:
    finished = await client.start("sequence", {"value": 1})
    with pytest.raises(NotSuspended) as info:
        await client.resume(finished.run_id, {"approved": True})
    error = info.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "RUN_NOT_SUSPENDED"
    assert (error.run_id, error.run_status) == (finished.run_id, "success")
    assert error.suspended_steps == []
    [violation] = detail(error, "PreconditionFailure")["violations"]
    assert violation["type"] == "RUN_NOT_SUSPENDED"
    assert violation["subject"] == f"run/{finished.run_id}"
    assert await client.get_result(finished.run_id) == finished


async def test_resume_naming_a_step_that_is_not_suspended(client: Client) -> None:
    suspended = await client.start("approval", {})
    for step in ("record", "no_such_step", ["approve", "inner"]):
        with pytest.raises(StepNotSuspended) as info:
            await client.resume(suspended.run_id, {"approved": True}, step=step)
        error = info.value
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "STEP_NOT_SUSPENDED"
        assert error.run_status == "suspended"
        assert error.suspended_steps == ["approve"]
        [violation] = detail(error, "PreconditionFailure")["violations"]
        assert violation["type"] == "STEP_NOT_SUSPENDED" and "approve" in violation["description"]
    with pytest.raises(FailedPrecondition) as unknown_label:
        await client.resume(suspended.run_id, {"approved": True}, label="no-such-label")
    assert unknown_label.value.suspended_steps == ["approve"]
    assert await client.get_result(suspended.run_id) == suspended


async def test_several_suspended_and_none_named(client: Client) -> None:
    suspended = await client.start("two_approvals", {})
    assert suspended.status is RunStatus.SUSPENDED
    with pytest.raises(MultipleSuspendedSteps) as info:
        await client.resume(suspended.run_id, {"approved": True})
    error = info.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "MULTIPLE_SUSPENDED_STEPS"
    assert error.suspended_steps == ["ask_a", "ask_b"]
    [violation] = detail(error, "PreconditionFailure")["violations"]
    assert "ask_a" in violation["description"] and "ask_b" in violation["description"]

    # Naming one works, and the other is then the only one left.
    half = await client.resume(suspended.run_id, {"approved": True}, step="ask_b")
    assert half.status is RunStatus.SUSPENDED
    assert [s.path for s in half.suspended] == [("ask_a",)]
    done = await client.resume(suspended.run_id, {"approved": False})
    assert done.status is RunStatus.SUCCESS


async def test_resume_data_failing_its_schema(client: Client) -> None:
    suspended = await client.start("approval", {"question": "ship?"})
    for data in ({"approved": "maybe"}, None):
        with pytest.raises(InvalidArgument) as info:
            await client.resume(suspended.run_id, data)
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.reason == "INVALID_RESUME_DATA"
        assert fields(info.value) == ["resume_data.approved"]
        still = await client.get_result(suspended.run_id)
        assert still.status is RunStatus.SUSPENDED
        assert still.last_sequence == suspended.last_sequence

    done = await client.resume(suspended.run_id, {"approved": False, "note": "later"})
    assert done.status is RunStatus.SUCCESS
    assert done.result == {"approved": False, "note": "later", "question": "ship?"}


# -- UNIMPLEMENTED -------------------------------------------------------------------------------


async def test_restart_of_finished_and_inactive_runs(client: Client) -> None:
    run = await client.start("sequence", {"value": 1})
    assert await client.restart(run.run_id) == run  # returned as stored, not executed
    parked = await client.start("approval", {})
    with pytest.raises(FailedPrecondition) as info:
        await client.restart(parked.run_id)
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "RUN_NOT_ACTIVE"
    assert await client.get_result(parked.run_id) == parked  # nothing changed


async def test_time_travel_refusals_carry_their_details(client: Client, stub: Stub) -> None:
    run = await client.start("sequence", {"value": 1})
    with pytest.raises(grpc.aio.AioRpcError) as travel:
        await stub.TimeTravel(pb.TimeTravelRequest(run_id=run.run_id, step=["nope"]))
    # A step the graph does not have is a bad argument, whatever the run's state.
    assert travel.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = status_of(travel.value)
    assert error_info(status).reason == "UNKNOWN_STEP"
    [unknown] = unpack(status, error_details_pb2.BadRequest)
    assert [v.field for v in unknown.field_violations] == ["step"]
    assert unpack(status, error_details_pb2.PreconditionFailure) == []

    call = stub.TimeTravelStream(pb.TimeTravelStreamRequest(run_id=run.run_id, step=[""]))
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await anext(aiter(call))
    assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [bad] = unpack(status_of(malformed.value), error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["step[0]"]

    held = await client.start_async("cancellable", {"seconds": 10})
    async for event in client.watch(held.run_id):
        if event.type is EventType.STEP_START:
            break
    with pytest.raises(grpc.aio.AioRpcError) as running:
        await stub.TimeTravel(pb.TimeTravelRequest(run_id=held.run_id, step=["wait_for_cancel"]))
    assert running.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    [failure] = unpack(status_of(running.value), error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("RUN_IS_RUNNING", f"run/{held.run_id}")
    ]
    await client.cancel(held.run_id)
    assert await client.get_result(run.run_id) == run  # nothing changed


# -- a failing step is a result, not an RPC error ------------------------------------------------


async def test_failing_step_is_a_failed_run_not_an_rpc_error(client: Client, stub: Stub) -> None:
    result = await client.start("failing", {"value": 1})
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.name, result.error.message) == ("DetailedError", "could not price order")
    assert result.error.details["details"] == {"order": 7}
    assert result.error.details["cause"]["name"] == "KeyError"
    step = result.steps["raises_chained"]
    assert step.status is StepStatus.FAILED and step.error == result.error
    assert result.result is None

    raw_result = await stub.GetExecutionResult(
        pb.GetExecutionResultRequest(run_id=result.run_id, include_state=True)
    )
    raw_events = [response async for response in stub.Watch(pb.WatchRequest(run_id=result.run_id))]
    assert len(raw_events) == result.last_sequence
    wire = MessageToJson(raw_result) + "".join(MessageToJson(e) for e in raw_events)
    assert "could not price order" in wire
    assert "Traceback" not in wire and 'File "' not in wire


async def test_typed_errors_share_one_root(client: Client) -> None:
    """Callers can catch every refusal as SteplineError and read code and reason."""
    with pytest.raises(SteplineError) as info:
        await client.get_result("ghost", timeout=BOUND)
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert str(info.value).startswith("RUN_NOT_FOUND:")
