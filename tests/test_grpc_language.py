"""Loops, foreach, map, sleep, nested workflows, output validation, time travel and the graph,
through the real gRPC channel with the typed client, on both stores."""

from __future__ import annotations

import asyncio

import pytest

from stepline.client import (
    Client,
    EventType,
    FailedPrecondition,
    InvalidArgument,
    RunStatus,
    StepStatus,
)

# Imported fixtures are registered under their `name=`s: server, client.
from tests.grpc_harness import (  # noqa: F401
    client_fixture,
    collect,
    kinds,
    sequences,
    server_fixture,
)

BOUND = 10.0


async def test_loop_iterations_on_the_stream(client: Client) -> None:
    events = await collect(client.stream("count_until", {"value": 0}))
    starts = [e for e in events if e.type is EventType.STEP_START]
    assert [e.data["metadata"]["iteration_count"] for e in starts] == [1, 2, 3]
    assert events[-1].data["result"] == {"value": 3}
    failed = await client.start("exploding_loop", {"value": 0}, timeout=BOUND)
    assert failed.status is RunStatus.FAILED
    assert failed.error is not None and failed.error.name == "LoopConditionFailed"


async def test_foreach_progress_events_and_order(client: Client) -> None:
    events = await collect(client.stream("fanout", {"items": [3, 1, 2]}))
    progress = [e.data for e in events if e.type is EventType.STEP_PROGRESS]
    assert [p["completed_count"] for p in progress] == [1, 2, 3]
    assert sorted(p["current_index"] for p in progress) == [0, 1, 2]
    assert all(p["total_count"] == 3 for p in progress)
    assert events[-1].data["result"] == [{"value": 30}, {"value": 10}, {"value": 20}]
    assert sequences(events) == list(range(1, len(events) + 1))
    # The foreach's step-result repeats neither its input list (in its step-start) nor its
    # outputs (one per step-progress): the step's record has both.
    (each,) = [
        e for e in events if e.type is EventType.STEP_START and e.data["step_id"] != "map_fanout_1"
    ]
    (result,) = [e for e in events if e.type is EventType.STEP_RESULT and e.step_id == each.step_id]
    assert result.data["status"] is StepStatus.SUCCESS
    assert result.data.get("payload") is None and result.data.get("output") is None
    assert each.data["payload"] == [{"value": 3}, {"value": 1}, {"value": 2}]
    stored = (await client.get_result(events[0].run_id)).steps[each.data["step_id"]]
    assert stored.output == [{"value": 30}, {"value": 10}, {"value": 20}]


async def test_map_step_is_in_the_result(client: Client) -> None:
    result = await client.start("fanout", {"items": [7]}, timeout=BOUND)
    assert result.steps["map_fanout_1"].output == [{"value": 7}]


async def test_foreach_items_resumed_by_index_and_label(client: Client) -> None:
    run = await client.start("gated_fanout", {"items": [1, 2]}, timeout=BOUND)
    assert run.status is RunStatus.SUSPENDED
    half = await client.resume(run.run_id, {"approved": True}, for_each_index=0, timeout=BOUND)
    assert half.status is RunStatus.SUSPENDED
    done = await client.resume(run.run_id, {"approved": True}, label="item-2", timeout=BOUND)
    assert done.status is RunStatus.SUCCESS
    assert done.result == [{"value": 2}, {"value": 4}]


async def test_sleep_is_waiting_and_cancel_ends_it_at_once(client: Client) -> None:
    run = await client.start_async("long_nap", {"value": 1})
    stream = client.watch(run.run_id)
    seen = []
    async for event in stream:
        seen.append(event)
        if event.type is EventType.STEP_WAITING:
            break
    assert seen[-1].data["wake_at"] > seen[-1].data["started_at"]
    current = await client.get_result(run.run_id)
    assert current.status is RunStatus.WAITING
    canceled = await client.cancel(run.run_id)
    assert canceled.status is RunStatus.CANCELED
    rest = await collect(client.watch(run.run_id, after_sequence=seen[-1].sequence))
    assert kinds(rest) == ["step-result:sleep_long_nap_1", "workflow-canceled", "workflow-finish"]
    assert rest[0].data["status"] is StepStatus.CANCELED


async def test_short_sleep_passes_output_through(client: Client) -> None:
    result = await client.start("short_nap", {"value": 1}, timeout=BOUND)
    assert result.result == {"value": 4}
    assert result.steps["sleep_short_nap_1"].output == {"value": 2}


async def test_nested_workflow_events_suspend_and_resume_by_path(client: Client) -> None:
    events = await collect(client.stream("outer_flow", {"value": 1}))
    assert "step-start:inner_flow.add_one" in kinds(events)
    assert kinds(events)[-2:] == ["step-suspended:inner_flow", "workflow-finish"]
    run_id = events[0].run_id
    suspended = await client.get_result(run_id)
    assert [s.path for s in suspended.suspended] == [("inner_flow", "inner_gate")]
    done = await client.resume(
        run_id,
        {"approved": True},
        step=["inner_flow", "inner_gate"],
        include_state=True,
        timeout=BOUND,
    )
    assert done.status is RunStatus.SUCCESS
    assert done.result == {"value": 4}
    assert done.steps["inner_flow.inner_gate"].resume_payload == {"approved": True, "note": "none"}
    assert done.state == {"count": 101}


async def test_nested_failure_fails_the_parent(client: Client) -> None:
    result = await client.start("outer_failing", {"value": 1}, timeout=BOUND)
    assert result.status is RunStatus.FAILED
    assert result.error is not None and result.error.message == "fast_fail broke"
    assert result.steps["failing_inner.fast_fail"].error is not None


async def test_output_validation_names_the_field(client: Client) -> None:
    result = await client.start("bad_output", {"value": 1}, timeout=BOUND)
    assert result.status is RunStatus.FAILED
    assert result.error is not None and "output.value" in result.error.message


async def test_time_travel_over_grpc(client: Client) -> None:
    first = await client.start("sequence", {"value": 1}, timeout=BOUND)
    again = await client.time_travel(
        first.run_id, "double", input_data={"value": 10}, timeout=BOUND
    )
    assert again.status is RunStatus.SUCCESS and again.result == {"value": 20}
    assert again.run_id == first.run_id and again.last_sequence > first.last_sequence
    streamed = await collect(
        client.time_travel_stream(
            first.run_id, ["double"], context={"add_one": {"output": {"value": 7}}}
        )
    )
    assert kinds(streamed) == [
        "workflow-start",
        "step-start:double",
        "step-result:double",
        "workflow-finish",
    ]
    assert streamed[0].sequence == again.last_sequence + 1
    assert streamed[-1].data["result"] == {"value": 14}
    with pytest.raises(InvalidArgument) as info:
        await client.time_travel(first.run_id, "nope", timeout=BOUND)
    assert info.value.reason == "UNKNOWN_STEP"
    assert [v.field for v in info.value.violations] == ["step"]
    with pytest.raises(InvalidArgument) as bad:
        await client.time_travel(first.run_id, "double", input_data={"value": "x"}, timeout=BOUND)
    assert [v.field for v in bad.value.violations] == ["input_data.value"]
    after = await client.get_result(first.run_id)
    assert after.last_sequence == streamed[-1].sequence  # refusals wrote nothing


async def test_time_travel_refuses_a_running_run(client: Client) -> None:
    run = await client.start_async("cancellable", {"seconds": 5})
    async for event in client.watch(run.run_id):
        if event.type is EventType.STEP_START:
            break
    with pytest.raises(FailedPrecondition) as info:
        await client.time_travel(run.run_id, "wait_for_cancel", timeout=BOUND)
    assert info.value.reason == "RUN_IS_RUNNING"
    await client.cancel(run.run_id)


async def test_get_workflow_draws_every_node_kind(client: Client) -> None:
    fanout = await client.get_workflow("fanout")
    assert [entry["type"] for entry in fanout.graph] == ["mapping", "foreach"]
    assert fanout.graph[0]["id"] == "map_fanout_1"
    assert fanout.graph[1]["concurrency"] == 2
    loop = await client.get_workflow("count_until")
    assert loop.graph[0]["type"] == "loop" and loop.graph[0]["loop_type"] == "dountil"
    nap = await client.get_workflow("long_nap")
    assert [e["type"] for e in nap.graph] == ["step", "sleep", "step"]
    assert nap.graph[1]["seconds"] == 2
    outer = await client.get_workflow("outer_flow")
    nested = outer.graph[1]
    assert nested["type"] == "workflow" and nested["id"] == "inner_flow"
    assert [e["step"]["id"] for e in nested["graph"]] == ["add_one", "inner_gate"]


async def test_watch_from_a_cursor_sees_a_woken_sleep(client: Client) -> None:
    run = await client.start_async("long_nap", {"value": 2})
    events = await asyncio.wait_for(collect(client.watch(run.run_id)), BOUND)
    assert "step-waiting:sleep_long_nap_1" in kinds(events)
    assert events[-1].data["result"] == {"value": 6}
