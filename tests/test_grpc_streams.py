"""Event streams through the real gRPC channel, on both stores: Stream, ResumeStream and Watch
deliver the durable log in order, densely, and end where the contract says."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from stepline.client import (
    Client,
    EventType,
    InvalidArgument,
    RunError,
    RunEvent,
    RunNotFound,
    RunStatus,
    StepStatus,
    SuspendedStep,
    WorkflowNotFound,
)

# Imported fixtures are registered under their `name=`s: server, client, release_gates.
from tests.grpc_harness import (  # noqa: F401
    Gate,
    client_fixture,
    close,
    collect,
    is_finish,
    is_step_start,
    kinds,
    release_gates_fixture,
    sequences,
    server_fixture,
    settled,
    until,
)

RESUMED_APPROVAL = [
    "workflow-start",
    "step-start:approve",
    "step-result:approve",
    "step-start:record",
    "step-result:record",
    "workflow-finish",
]
SUSPENDED_APPROVAL = [
    "workflow-start",
    "step-start:approve",
    "step-suspended:approve",
    "workflow-finish",
]


def assert_dense(events: list[RunEvent], first: int = 1) -> None:
    assert sequences(events) == list(range(first, first + len(events)))
    assert len({e.run_id for e in events}) == 1


# -- Stream: one run from start to where it settles ----------------------------------------------


async def test_stream_of_a_successful_run(client: Client) -> None:
    events = await collect(client.stream("sequence", {"value": 1}))
    assert kinds(events) == [
        "workflow-start",
        "step-start:add_one",
        "step-result:add_one",
        "step-start:double",
        "step-result:double",
        "workflow-finish",
    ]
    assert_dense(events)
    start, finish = events[0], events[-1]
    assert start.data["workflow_id"] == "sequence" and start.data["reason"] == "start"
    assert events[1].data["payload"] == {"value": 1}
    assert events[2].data["status"] is StepStatus.SUCCESS
    assert events[2].data["output"] == {"value": 2}
    assert finish.data["status"] is RunStatus.SUCCESS and finish.data["result"] == {"value": 4}
    stored = await client.get_result(start.run_id)
    assert stored.status is RunStatus.SUCCESS and stored.last_sequence == finish.sequence


async def test_stream_of_a_failing_run(client: Client) -> None:
    events = await collect(client.stream("failing", {"value": 1}))
    assert kinds(events) == [
        "workflow-start",
        "step-start:raises_chained",
        "step-result:raises_chained",
        "workflow-finish",
    ]
    assert_dense(events)
    step_error, finish = events[2].data["error"], events[-1]
    assert events[2].data["status"] is StepStatus.FAILED
    assert isinstance(step_error, RunError) and step_error.name == "DetailedError"
    assert finish.data["status"] is RunStatus.FAILED
    assert finish.data["error"] == step_error
    assert "result" not in finish.data


async def test_stream_of_a_suspending_run_closes_at_the_suspension(client: Client) -> None:
    events = await collect(client.stream("approval", {"question": "ship?"}))
    assert kinds(events) == SUSPENDED_APPROVAL
    assert_dense(events)
    suspended, finish = events[-2], events[-1]
    assert suspended.data["suspend_payload"] == {"question": "ship?"}
    assert suspended.data["labels"] == ("approval",)
    assert finish.data["status"] is RunStatus.SUSPENDED
    assert finish.data["suspended"] == (
        SuspendedStep(path=("approve",), payload={"question": "ship?"}, labels=("approval",)),
    )
    stored = await client.get_result(finish.run_id)
    assert stored.status is RunStatus.SUSPENDED and stored.last_sequence == 4


async def test_stream_of_parallel_steps(client: Client) -> None:
    events = await collect(client.stream("parallel_ok", {"value": 2}))
    names = kinds(events)
    assert names[0] == "workflow-start"
    # Both children start before either reports; they report in completion order.
    assert sorted(names[1:3]) == ["step-start:slow_ok", "step-start:triple"]
    assert names[3:] == [
        "step-result:triple",
        "step-result:slow_ok",
        "step-start:join",
        "step-result:join",
        "workflow-finish",
    ]
    assert_dense(events)
    assert events[5].data["payload"] == {"slow_ok": {"value": 12}, "triple": {"value": 6}}
    assert events[-1].data["result"] == {"value": 18}


async def test_stream_of_a_canceled_run(client: Client) -> None:
    stream = client.stream("cancellable", {"seconds": 10})
    head = await until(stream, is_step_start("wait_for_cancel"))
    run_id = head[0].run_id
    canceling = asyncio.create_task(client.cancel(run_id))
    tail = await collect(stream)
    canceled = await asyncio.wait_for(canceling, 10)

    events = head + tail
    assert kinds(events) == [
        "workflow-start",
        "step-start:wait_for_cancel",
        "step-result:wait_for_cancel",
        "workflow-canceled",
        "workflow-finish",
    ]
    assert_dense(events)
    assert events[2].data["output"] == {"canceled": True}
    assert events[-1].data["status"] is RunStatus.CANCELED
    assert canceled.status is RunStatus.CANCELED and canceled.cancel_requested
    assert (await client.get_result(run_id)).status is RunStatus.CANCELED


async def test_stream_with_custom_output_events(client: Client) -> None:
    events = await collect(client.stream("stoppable", {"value": 1}))
    assert kinds(events)[:4] == [
        "workflow-start",
        "step-start:maybe_stop",
        "step-output:maybe_stop",
        "step-result:maybe_stop",
    ]
    assert events[2].data["output"] == {"progress": "checking"}
    assert_dense(events)


async def test_stream_refusals_are_typed_errors(client: Client) -> None:
    with pytest.raises(RunNotFound):
        await collect(client.resume_stream("ghost", {"approved": True}))
    with pytest.raises(InvalidArgument) as info:
        await collect(client.stream("sequence", {"value": "four"}))
    assert [v.field for v in info.value.violations] == ["input_data.value"]
    with pytest.raises(WorkflowNotFound):
        await collect(client.stream("no_such_workflow", {}))
    assert (await client.list_runs()).runs == ()


# -- ResumeStream and streams kept open across a resume ------------------------------------------


async def test_resume_stream_carries_the_continuation(client: Client) -> None:
    suspended = await client.start("approval", {"question": "ship?"})
    events = await collect(client.resume_stream(suspended.run_id, {"approved": True}))
    assert kinds(events) == RESUMED_APPROVAL
    assert_dense(events, first=suspended.last_sequence + 1)
    assert events[0].data["reason"] == "resume"
    assert events[1].data["resume_payload"] == {"approved": True, "note": "none"}
    assert events[-1].data["status"] is RunStatus.SUCCESS
    assert events[-1].data["result"] == {"approved": True, "note": "none", "question": "ship?"}


async def test_resume_stream_of_a_run_that_suspends_again(client: Client) -> None:
    suspended = await client.start("two_approvals", {})
    events = await collect(
        client.resume_stream(suspended.run_id, {"approved": True}, label="label-ask_b")
    )
    assert_dense(events, first=suspended.last_sequence + 1)
    assert kinds(events)[0] == "workflow-start" and events[0].data["reason"] == "resume"
    assert events[-1].data["status"] is RunStatus.SUSPENDED
    assert [s.path for s in events[-1].data["suspended"]] == [("ask_a",)]
    rest = await collect(client.resume_stream(suspended.run_id, {"approved": False}))
    assert_dense(rest, first=events[-1].sequence + 1)
    assert rest[-1].data["status"] is RunStatus.SUCCESS


async def test_watch_kept_open_across_a_resume(client: Client) -> None:
    suspended = await client.start("approval", {})
    watch = client.watch(suspended.run_id, keep_open_on_suspend=True)
    try:
        first_pass = await until(watch, is_finish)
        assert kinds(first_pass) == SUSPENDED_APPROVAL
        assert first_pass[-1].data["status"] is RunStatus.SUSPENDED
        # The watch is still open; the resume's events arrive on it.
        await client.resume_async(suspended.run_id, {"approved": True})
        second_pass = await collect(watch)
    finally:
        await close(watch)
    assert kinds(second_pass) == RESUMED_APPROVAL
    assert_dense(first_pass + second_pass)
    assert second_pass[-1].data["status"] is RunStatus.SUCCESS


async def test_stream_kept_open_across_a_resume(client: Client) -> None:
    stream = client.stream("approval", {}, keep_open_on_suspend=True)
    try:
        first_pass = await until(stream, is_finish)
        assert first_pass[-1].data["status"] is RunStatus.SUSPENDED
        resumed = await client.resume_async(first_pass[0].run_id, {"approved": True})
        assert resumed.after_sequence == first_pass[-1].sequence
        second_pass = await collect(stream)
    finally:
        await close(stream)
    assert kinds(first_pass + second_pass) == SUSPENDED_APPROVAL + RESUMED_APPROVAL
    assert_dense(first_pass + second_pass)


# -- Watch ---------------------------------------------------------------------------------------


async def test_watch_replays_a_finished_run(client: Client) -> None:
    run = await client.start("sequence", {"value": 1})
    streamed = await collect(client.stream("sequence", {"value": 1}))

    replay = await collect(client.watch(run.run_id))
    assert_dense(replay)
    assert replay[-1].sequence == run.last_sequence
    assert replay[-1].data["status"] is RunStatus.SUCCESS
    assert replay[-1].data["result"] == run.result
    # A replay is the same log a live stream delivers.
    assert kinds(replay) == kinds(streamed)

    middle = await collect(client.watch(run.run_id, after_sequence=3))
    assert sequences(middle) == [4, 5, 6]
    assert middle == replay[3:]


async def test_watch_from_the_end_of_a_finished_run_ends_at_once(client: Client) -> None:
    run = await client.start("sequence", {"value": 1})
    for cursor in (run.last_sequence, run.last_sequence + 5):
        assert await collect(client.watch(run.run_id, after_sequence=cursor), limit=3) == []


async def test_watch_reconnect_mid_run_has_no_gap_and_no_duplicate(
    client: Client, release_gates: Gate
) -> None:
    suspended = await client.start("approval", {})
    run_id = suspended.run_id
    hold = release_gates(run_id)  # the resumed step waits here: the run stays live
    await client.resume_async(run_id, {"approved": True})

    watch = client.watch(run_id)
    before = await until(watch, is_step_start("approve"))
    before += await until(watch, is_step_start("approve"))  # the resume pass's step-start
    await close(watch)  # the connection drops while the run is held mid-step
    assert sequences(before) == list(range(1, 7))
    assert (await client.get_result(run_id)).status is RunStatus.RUNNING

    hold.set()  # the run goes on while nobody watches
    after = await collect(client.watch(run_id, after_sequence=before[-1].sequence))

    events = before + after
    assert_dense(events)
    assert kinds(events) == SUSPENDED_APPROVAL + RESUMED_APPROVAL
    assert events[-1].data["status"] is RunStatus.SUCCESS
    assert (await settled(client, run_id)).last_sequence == events[-1].sequence


async def test_watch_joined_mid_run_tails_it_live(client: Client, release_gates: Gate) -> None:
    suspended = await client.start("approval", {})
    run_id = suspended.run_id
    hold = release_gates(run_id)
    resumed = await client.resume_async(run_id, {"approved": True})
    watch = client.watch(run_id, after_sequence=resumed.after_sequence)
    try:
        head = await until(watch, is_step_start("approve"))
        hold.set()
        tail = await collect(watch)
    finally:
        await close(watch)
    assert kinds(head + tail) == RESUMED_APPROVAL
    assert_dense(head + tail, first=resumed.after_sequence + 1)


async def test_watch_of_an_unknown_run(client: Client) -> None:
    with pytest.raises(RunNotFound) as info:
        await collect(client.watch("ghost"))
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert info.value.run_id == "ghost"


async def test_stream_events_match_the_event_types_enum(client: Client) -> None:
    events = await collect(client.stream("sequence", {"value": 1}))
    assert {e.type for e in events} == {
        EventType.WORKFLOW_START,
        EventType.STEP_START,
        EventType.STEP_RESULT,
        EventType.WORKFLOW_FINISH,
    }
    assert all(e.timestamp is not None for e in events)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
