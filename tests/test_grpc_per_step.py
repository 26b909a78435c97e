"""`per_step`, the step debugger, through gRPC on both stores: a pass runs one top-level step
and the run is PAUSED; TimeTravel{step: next, per_step} continues it one step at a time."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from stepline.client import Client, EventType, FailedPrecondition, RunResult, RunStatus, StepStatus
from stepline.server.app import Server

# Imported fixtures are registered under their `name=`s: server, client.
from tests.grpc_harness import (  # noqa: F401
    client_fixture,
    close,
    collect,
    kinds,
    server_fixture,
    settled,
    until,
)

PAUSED_END = ["workflow-paused", "workflow-finish"]


def assert_paused(run: RunResult, *, done: list[str]) -> None:
    """Paused after the steps `done` (in order), each a success; no result, no error."""
    assert run.status is RunStatus.PAUSED
    assert run.result is None and run.error is None and run.suspended == ()
    assert list(run.step_execution_path) == done
    assert {step_id: s.status for step_id, s in run.steps.items()} == dict.fromkeys(
        done, StepStatus.SUCCESS
    )


async def test_start_per_step_runs_one_step_and_pauses(client: Client) -> None:
    paused = await client.start("sequence", {"value": 1}, per_step=True)

    assert_paused(paused, done=["add_one"])
    assert paused.steps["add_one"].output == {"value": 2}
    events = await collect(client.watch(paused.run_id))
    assert kinds(events) == [
        "workflow-start",
        "step-start:add_one",
        "step-result:add_one",
        *PAUSED_END,
    ]
    assert events[-1].data["status"] is RunStatus.PAUSED
    assert "result" not in events[-1].data
    assert await client.get_result(paused.run_id) == paused
    listed = await client.list_runs(workflow_id="sequence", statuses=[RunStatus.PAUSED])
    assert [run.run_id for run in listed.runs] == [paused.run_id]

    # The last step finishes the run as usual.
    done = await client.time_travel(paused.run_id, "double", per_step=True)
    assert done.status is RunStatus.SUCCESS and done.result == {"value": 4}
    assert list(done.step_execution_path) == ["add_one", "double"]


async def test_stepping_through_parallel_and_nested_entries(client: Client) -> None:
    """A parallel block and a nested workflow are each one top-level step; a step that
    suspends settles the run SUSPENDED, and a per_step resume pauses after its entry."""
    parallel = await client.start("parallel_ok", {"value": 1}, per_step=True)
    assert_paused(parallel, done=["slow_ok", "triple"])
    joined = await client.time_travel(parallel.run_id, "join", per_step=True)
    assert joined.status is RunStatus.SUCCESS and joined.result == {"value": 14}

    first = await client.start("outer_flow", {"value": 1}, per_step=True)
    assert_paused(first, done=["count_up"])

    suspended = await client.time_travel(first.run_id, "inner_flow", per_step=True)
    assert suspended.status is RunStatus.SUSPENDED
    assert [s.path for s in suspended.suspended] == [("inner_flow", "inner_gate")]

    resumed = await client.resume(first.run_id, {"approved": True}, per_step=True)
    assert resumed.status is RunStatus.PAUSED and resumed.result is None
    assert resumed.steps["inner_flow"].status is StepStatus.SUCCESS
    assert "double" not in resumed.steps

    with pytest.raises(FailedPrecondition) as refused:
        await client.resume(first.run_id, {"approved": True})
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "RUN_NOT_SUSPENDED"
    assert "not suspended" in str(refused.value)
    assert await client.get_result(first.run_id) == resumed  # the refusal changed nothing

    done = await client.time_travel(first.run_id, "double", per_step=True)
    assert done.status is RunStatus.SUCCESS and done.result == {"value": 4}
    reasons = [
        e.data["reason"]
        for e in await collect(client.watch(first.run_id))
        if e.type is EventType.WORKFLOW_START
    ]
    assert reasons == ["start", "time_travel", "resume", "time_travel"]


async def test_start_async_and_stream_take_per_step(client: Client) -> None:
    started = await client.start_async("sequence", {"value": 5}, per_step=True)
    assert_paused(await settled(client, started.run_id), done=["add_one"])

    events = await collect(client.stream("sequence", {"value": 5}, per_step=True))
    assert kinds(events)[-3:] == ["step-result:add_one", *PAUSED_END]

    traveled = await collect(client.time_travel_stream(events[-1].run_id, "double", per_step=True))
    assert traveled[0].data["reason"] == "time_travel"
    assert traveled[-1].data["status"] is RunStatus.SUCCESS
    assert traveled[-1].data["result"] == {"value": 12}


async def test_a_paused_run_can_be_canceled(client: Client) -> None:
    paused = await client.start("sequence", {"value": 1}, per_step=True)

    canceled = await client.cancel(paused.run_id)

    assert canceled.status is RunStatus.CANCELED and canceled.cancel_requested
    after = await client.get_result(paused.run_id)
    assert after.status is RunStatus.CANCELED
    assert after.steps["add_one"].status is StepStatus.SUCCESS
    with pytest.raises(FailedPrecondition):
        await client.resume(paused.run_id, {})


async def test_a_paused_run_is_parked_not_recovered(client: Client, server: Server) -> None:
    paused = await client.start("sequence", {"value": 1}, per_step=True)
    assert paused.status is RunStatus.PAUSED
    stored = await server.store.get(paused.run_id)
    assert stored is not None and not stored.leased

    # Several recovery rounds and a timer pass go by; nothing picks the run up.
    await asyncio.sleep(1.5)

    assert await client.get_result(paused.run_id) == paused
    assert await server.store.acquire(paused.run_id, "another-replica", 5.0) is None


async def test_a_watch_kept_open_follows_the_run_from_step_to_step(client: Client) -> None:
    paused = await client.start("parallel_ok", {"value": 2}, per_step=True)
    events = client.watch(paused.run_id, keep_open_on_suspend=True)
    try:
        first = await until(events, lambda e: e.is_finish)
        assert first[-1].data["status"] is RunStatus.PAUSED

        await client.time_travel(paused.run_id, "join", per_step=True)

        rest = await collect(events)  # ends by itself once the run finishes
    finally:
        await close(events)
    assert kinds(rest) == [
        "workflow-start",
        "step-start:join",
        "step-result:join",
        "workflow-finish",
    ]
    assert rest[-1].data["status"] is RunStatus.SUCCESS
    assert [e.sequence for e in first + rest] == list(range(1, len(first) + len(rest) + 1))
