"""The run API's edges, through gRPC on both stores: what time travel does with its input
(nested workflows, sleeps, foreach, parallel and branch children, unknown steps), resume of one
foreach iteration, and the step records of a canceled run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from stepline.client import (
    Client,
    EventType,
    InvalidArgument,
    NotSuspended,
    RunEvent,
    RunResult,
    RunStatus,
    StepNotSuspended,
    StepStatus,
)
from stepline.server.api.values import to_value
from stepline.server.app import Server
from stepline.server.settings import Settings
from stepline.server.store import Store
from stepline.v1 import workflow_service_pb2 as pb
from tests import flows

# Imported fixtures are registered under their `name=`s: client, stub.
from tests.grpc_harness import (  # noqa: F401
    BOUND,
    Stub,
    client_fixture,
    collect,
    detail,
    kinds,
    status_of,
    stub_fixture,
    unpack,
    until,
)

# Steps a canceled run must no longer have.
OPEN = {StepStatus.RUNNING, StepStatus.WAITING, StepStatus.SUSPENDED}


@pytest.fixture(name="server")
async def server_fixture(store: Store) -> AsyncIterator[Server]:
    """A server running tests.flows and tests.run_api_flows over the test's store."""
    settings = Settings(host="127.0.0.1", port=0, workflows=["tests.flows", "tests.run_api_flows"])
    started = await Server.start(settings, store=store)
    try:
        yield started
    finally:
        await started.stop(grace=1)


async def recorded(client: Client, run_id: str) -> tuple[RunResult, list[RunEvent]]:
    """Everything a caller can see of a settled run: its result (with state) and its log."""
    result = await client.get_result(run_id, include_state=True)
    return result, await collect(client.watch(run_id))


# -- time travel: the input of the target ----------------------------------------------------------


async def test_time_travel_to_a_nested_workflow_runs_it_on_the_new_input(client: Client) -> None:
    first = await client.start("nested_chain", {"x": 4}, timeout=BOUND)
    assert first.result == {"wrapped": -25}
    again = await client.time_travel(first.run_id, "inner", input_data={"x": 2}, timeout=BOUND)
    assert again.status is RunStatus.SUCCESS and again.result == {"wrapped": -4}
    assert again.steps["inner"].payload == {"x": 2}
    assert again.steps["inner.square"].payload == {"x": 2}
    assert again.steps["prepare"] == first.steps["prepare"]
    assert flows.SEEN[first.run_id] == [("square", 5), ("square", 2)]


async def test_time_travel_to_a_nested_workflow_validates_its_input(client: Client) -> None:
    first = await client.start("nested_chain", {"x": 4}, timeout=BOUND)
    before = await recorded(client, first.run_id)
    with pytest.raises(InvalidArgument) as bad:
        await client.time_travel(first.run_id, "inner", input_data={"x": "junk"}, timeout=BOUND)
    assert [v.field for v in bad.value.violations] == ["input_data.x"]
    assert await recorded(client, first.run_id) == before


async def test_time_travel_to_a_sleep_refuses_input(client: Client, stub: Stub) -> None:
    first = await client.start("napping_chain", {"x": 1}, timeout=BOUND)
    before = await recorded(client, first.run_id)
    with pytest.raises(InvalidArgument) as bad:
        await client.time_travel(first.run_id, "nap", input_data={"x": 2}, timeout=BOUND)
    assert [v.field for v in bad.value.violations] == ["input_data"]
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await stub.TimeTravel(
            pb.TimeTravelRequest(run_id=first.run_id, step=["nap"], input_data=to_value(1))
        )
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [request] = unpack(status_of(raw.value), error_details_pb2.BadRequest)
    assert [v.field for v in request.field_violations] == ["input_data"]
    assert await recorded(client, first.run_id) == before

    again = await client.time_travel(first.run_id, "nap", timeout=BOUND)  # no input: fine
    assert again.status is RunStatus.SUCCESS and again.result == {"wrapped": 2}
    assert again.last_sequence > first.last_sequence


async def test_time_travel_to_a_foreach_takes_the_list(client: Client) -> None:
    first = await client.start("squares", {"items": [1, 2]}, timeout=BOUND)
    assert first.result == [{"x": 1}, {"x": 4}]
    items = [{"x": 3}, {"x": 4}, {"x": 5}]
    again = await client.time_travel(first.run_id, "square", input_data=items, timeout=BOUND)
    assert again.status is RunStatus.SUCCESS
    assert again.result == [{"x": 9}, {"x": 16}, {"x": 25}]
    assert again.steps["square"].payload == items
    assert again.steps["spread"] == first.steps["spread"]


async def test_a_refused_foreach_time_travel_leaves_the_run_as_it_was(client: Client) -> None:
    first = await client.start("squares", {"items": [1, 2]}, timeout=BOUND)
    before = await recorded(client, first.run_id)
    refusals: list[tuple[object, list[str]]] = [
        (3, ["input_data"]),
        ({"x": 3}, ["input_data"]),
        ([1, 2], ["input_data[0]", "input_data[1]"]),
        ([{"x": 1}, {"x": "a"}], ["input_data[1].x"]),
    ]
    for data, fields in refusals:
        with pytest.raises(InvalidArgument) as bad:
            await client.time_travel(first.run_id, "square", input_data=data, timeout=BOUND)
        assert [v.field for v in bad.value.violations] == fields, data
    assert await recorded(client, first.run_id) == before


async def test_time_travel_to_a_parallel_child_keeps_its_siblings(client: Client) -> None:
    first = await client.start("forked", {"x": 1}, timeout=BOUND)
    assert first.result == {"wrapped": 12 + 200}
    again = await client.time_travel(first.run_id, "left", input_data={"x": 5}, timeout=BOUND)
    assert again.status is RunStatus.SUCCESS and again.result == {"wrapped": 15 + 200}
    assert again.steps["left"].payload == {"x": 5}
    assert again.steps["right"] == first.steps["right"]  # kept, not run again
    assert flows.SEEN[first.run_id].count(("right", 2)) == 1
    assert ("right", 5) not in flows.SEEN[first.run_id]


async def test_time_travel_to_a_parallel_child_reruns_failed_siblings_on_their_input(
    client: Client,
) -> None:
    first = await client.start(
        "forked", {"x": 1}, request_context={"fail_right_once": True}, timeout=BOUND
    )
    assert first.status is RunStatus.FAILED
    assert first.steps["right"].status is StepStatus.FAILED
    again = await client.time_travel(first.run_id, "left", input_data={"x": 5}, timeout=BOUND)
    assert again.status is RunStatus.SUCCESS and again.result == {"wrapped": 15 + 200}
    assert again.steps["right"].status is StepStatus.SUCCESS
    assert again.steps["right"].payload == {"x": 2}  # its recorded input, not the new one
    assert ("right", 5) not in flows.SEEN[first.run_id]


async def test_time_travel_to_a_branch_keeps_the_branches_taken(client: Client) -> None:
    first = await client.start("branching", {"value": 20}, timeout=BOUND)
    assert first.result == {"saw": {"positive": {"value": 1}, "big": {"value": 100}}}
    again = await client.time_travel(
        first.run_id, "positive", input_data={"value": -5}, timeout=BOUND
    )
    assert again.status is RunStatus.SUCCESS and again.result == first.result
    assert again.steps["positive"].payload == {"value": -5}
    assert again.steps["big"] == first.steps["big"]
    assert "negative" not in again.steps


async def test_time_travel_to_an_unknown_step_is_an_invalid_argument(
    client: Client, stub: Stub
) -> None:
    first = await client.start("nested_chain", {"x": 1}, timeout=BOUND)
    before = await recorded(client, first.run_id)
    for step in ("nope", "inner.nope", "prepare.square", "nap"):
        with pytest.raises(InvalidArgument) as bad:
            await client.time_travel(first.run_id, step, timeout=BOUND)
        assert bad.value.reason == "UNKNOWN_STEP", step
        assert [v.field for v in bad.value.violations] == ["step"], step
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await stub.TimeTravel(pb.TimeTravelRequest(run_id=first.run_id, step=["inner", "nope"]))
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [request] = unpack(status_of(raw.value), error_details_pb2.BadRequest)
    assert [v.field for v in request.field_violations] == ["step"]
    assert "nope" in request.field_violations[0].description
    assert await recorded(client, first.run_id) == before


# -- resume of one foreach iteration ---------------------------------------------------------------


async def test_resume_of_an_iteration_that_is_not_suspended_is_refused(client: Client) -> None:
    run = await client.start("gated_fanout", {"items": [1, 2, 3]}, timeout=BOUND)
    assert run.status is RunStatus.SUSPENDED
    before = await recorded(client, run.run_id)
    for index in (7, 3, -1):
        with pytest.raises(StepNotSuspended) as info:
            await client.resume(run.run_id, {"approved": True}, for_each_index=index, timeout=BOUND)
        assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.reason == "ITERATION_NOT_SUSPENDED"
        assert info.value.suspended_indexes == [0, 1, 2]
        assert str(index) in info.value.message
    assert await recorded(client, run.run_id) == before

    half = await client.resume(run.run_id, {"approved": True}, for_each_index=1, timeout=BOUND)
    assert half.status is RunStatus.SUSPENDED
    with pytest.raises(StepNotSuspended) as again:
        await client.resume(run.run_id, {"approved": True}, for_each_index=1, timeout=BOUND)
    assert again.value.suspended_indexes == [0, 2]
    [failure] = detail(again.value, "PreconditionFailure")["violations"]
    assert failure["type"] == "ITERATION_NOT_SUSPENDED"
    assert "suspended iterations: 0, 2" in failure["description"]
    assert (await client.get_result(run.run_id)).last_sequence == half.last_sequence


async def test_resume_of_an_iteration_a_sequential_foreach_has_not_reached(client: Client) -> None:
    run = await client.start("held_in_turn", {"items": [1, 2, 3]}, timeout=BOUND)
    assert run.status is RunStatus.SUSPENDED
    with pytest.raises(StepNotSuspended) as info:
        await client.resume(run.run_id, {"approved": True}, for_each_index=2, timeout=BOUND)
    assert info.value.suspended_indexes == [0]
    assert await client.get_result(run.run_id) == run
    next_one = await client.resume(run.run_id, {"approved": True}, for_each_index=0, timeout=BOUND)
    assert next_one.status is RunStatus.SUSPENDED
    assert next_one.suspended[0].payload == {"1": {"item": 2}}


async def test_an_iteration_index_for_a_step_without_iterations_is_refused(
    client: Client,
) -> None:
    run = await client.start("approval", {}, timeout=BOUND)
    with pytest.raises(StepNotSuspended) as info:
        await client.resume(run.run_id, {"approved": True}, for_each_index=0, timeout=BOUND)
    assert info.value.reason == "ITERATION_NOT_SUSPENDED"
    assert info.value.suspended_indexes == []
    assert await client.get_result(run.run_id) == run


# -- a canceled run leaves no step open ------------------------------------------------------------


def assert_all_steps_closed(result: RunResult) -> None:
    assert result.status is RunStatus.CANCELED
    assert {path: s.status for path, s in result.steps.items() if s.status in OPEN} == {}


def canceled_steps(events: list[RunEvent]) -> list[str]:
    return [
        f"{e.type.value}:{e.step_id}"
        for e in events
        if e.type in (EventType.STEP_RESULT, EventType.STEP_PROGRESS)
        and (e.data.get("status") or e.data.get("iteration_status")) is StepStatus.CANCELED
    ]


async def cancel(client: Client, run_id: str) -> tuple[RunResult, list[RunEvent]]:
    """Cancel the run; its final result and its whole log."""
    canceled = await client.cancel(run_id)
    assert canceled.status is RunStatus.CANCELED and canceled.cancel_requested
    result = await client.get_result(run_id)
    assert_all_steps_closed(result)
    return result, await collect(client.watch(run_id))


async def wait_until_waiting(client: Client, run_id: str) -> None:
    """Until the run sleeps on its durable timer (no replica holds it)."""
    await until(client.watch(run_id), lambda e: e.type is EventType.STEP_WAITING)
    for _ in range(int(BOUND / 0.01)):
        if (await client.get_result(run_id)).status is RunStatus.WAITING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the run never became WAITING")


async def test_cancel_of_a_sleeping_run_cancels_the_sleep(client: Client) -> None:
    run = await client.start_async("long_nap", {"value": 1})
    await wait_until_waiting(client, run.run_id)
    result, events = await cancel(client, run.run_id)
    nap = result.steps["sleep_long_nap_1"]
    assert nap.status is StepStatus.CANCELED and nap.ended_at is not None
    assert kinds(events)[-3:] == [
        "step-result:sleep_long_nap_1",
        "workflow-canceled",
        "workflow-finish",
    ]
    assert events[-3].data["payload"] == {"value": 2}


async def test_cancel_of_a_suspended_run_cancels_the_suspended_step(client: Client) -> None:
    run = await client.start("approval", {}, timeout=BOUND)
    result, events = await cancel(client, run.run_id)
    assert result.steps["approve"].status is StepStatus.CANCELED
    assert result.suspended == ()
    assert kinds(events)[-3:] == ["step-result:approve", "workflow-canceled", "workflow-finish"]
    with pytest.raises(NotSuspended) as info:
        await client.resume(run.run_id, {"approved": True}, timeout=BOUND)
    assert info.value.suspended_steps == []


async def test_cancel_of_a_suspended_foreach_cancels_every_suspended_iteration(
    client: Client,
) -> None:
    run = await client.start("gated_fanout", {"items": [1, 2, 3]}, timeout=BOUND)
    result, events = await cancel(client, run.run_id)
    assert result.steps["item_gate"].status is StepStatus.CANCELED
    tail = events[run.last_sequence :]
    assert kinds(tail) == [
        "step-progress:item_gate",
        "step-progress:item_gate",
        "step-progress:item_gate",
        "step-result:item_gate",
        "workflow-canceled",
        "workflow-finish",
    ]
    assert [e.data["current_index"] for e in tail[:3]] == [0, 1, 2]
    assert {e.data["iteration_status"] for e in tail[:3]} == {StepStatus.CANCELED}


async def test_cancel_of_a_run_suspended_in_a_nested_workflow(client: Client) -> None:
    run = await client.start("outer_flow", {"value": 1}, timeout=BOUND)
    assert run.status is RunStatus.SUSPENDED
    result, events = await cancel(client, run.run_id)
    assert result.steps["inner_flow.inner_gate"].status is StepStatus.CANCELED
    assert result.steps["inner_flow"].status is StepStatus.CANCELED
    assert result.steps["inner_flow.add_one"].status is StepStatus.SUCCESS
    assert kinds(events[run.last_sequence :]) == [
        "step-result:inner_flow.inner_gate",
        "step-result:inner_flow",
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_cancel_of_a_sleep_in_a_nested_workflow(client: Client) -> None:
    run = await client.start_async("outer_nap", {"x": 1})
    await wait_until_waiting(client, run.run_id)
    result, events = await cancel(client, run.run_id)
    assert result.steps["long_inner_nap.inner_nap"].status is StepStatus.CANCELED
    assert result.steps["long_inner_nap"].status is StepStatus.CANCELED
    assert result.steps["long_inner_nap.prepare"].status is StepStatus.SUCCESS
    assert kinds(events)[-4:] == [
        "step-result:long_inner_nap.inner_nap",
        "step-result:long_inner_nap",
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_cancel_while_a_parallel_sibling_is_suspended(client: Client) -> None:
    run = await client.start_async("ask_or_stop", {"x": 1})
    seen: set[str] = set()

    def both_parked(event: RunEvent) -> bool:
        if event.type in (EventType.STEP_SUSPENDED, EventType.STEP_START):
            seen.add(f"{event.type.value}:{event.step_id}")
        return {"step-suspended:asker", "step-start:stubborn"} <= seen

    await until(client.watch(run.run_id), both_parked)
    result, events = await cancel(client, run.run_id)
    assert result.steps["asker"].status is StepStatus.CANCELED
    assert result.steps["stubborn"].status is StepStatus.CANCELED
    assert kinds(events)[-4:] == [
        "step-result:stubborn",
        "step-result:asker",
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_cancel_while_a_nested_parallel_sibling_sleeps(client: Client) -> None:
    run = await client.start_async("nap_or_stop", {"x": 1})
    seen: set[str] = set()

    def both_parked(event: RunEvent) -> bool:
        if event.type in (EventType.STEP_WAITING, EventType.STEP_START):
            seen.add(f"{event.type.value}:{event.step_id}")
        return {"step-waiting:long_inner_nap.inner_nap", "step-start:stubborn"} <= seen

    await until(client.watch(run.run_id), both_parked)
    result, events = await cancel(client, run.run_id)
    assert result.steps["long_inner_nap.inner_nap"].status is StepStatus.CANCELED
    assert result.steps["long_inner_nap"].status is StepStatus.CANCELED
    assert sorted(canceled_steps(events)) == [
        "step-result:long_inner_nap",
        "step-result:long_inner_nap.inner_nap",
        "step-result:stubborn",
    ]
    assert kinds(events)[-2:] == ["workflow-canceled", "workflow-finish"]


async def test_cancel_while_one_iteration_is_suspended_and_another_runs(client: Client) -> None:
    run = await client.start_async("hold_or_stop_each", {"items": [0, 1]})

    def suspended_item(event: RunEvent) -> bool:
        return (
            event.type is EventType.STEP_PROGRESS
            and event.data["iteration_status"] is StepStatus.SUSPENDED
        )

    await until(client.watch(run.run_id), suspended_item)
    for _ in range(int(BOUND / 0.01)):
        if ("stubborn", 1) in flows.SEEN[run.run_id]:
            break
        await asyncio.sleep(0.01)
    result, events = await cancel(client, run.run_id)
    assert result.steps["hold_or_stop"].status is StepStatus.CANCELED
    last_by_index = {
        e.data["current_index"]: e.data["iteration_status"]
        for e in events
        if e.type is EventType.STEP_PROGRESS
    }
    assert last_by_index == {0: StepStatus.CANCELED, 1: StepStatus.CANCELED}
    assert kinds(events)[-3:] == [
        "step-result:hold_or_stop",
        "workflow-canceled",
        "workflow-finish",
    ]
