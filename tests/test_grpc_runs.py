"""Runs through the real gRPC channel, on both stores: results, waits, claims, listing,
workflow descriptions and the blocking client."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime
from typing import Any

import grpc
import pytest

from stepline.client import (
    Client,
    EventType,
    ResumeAlreadyClaimed,
    RunNotFound,
    RunResult,
    RunStatus,
    StepStatus,
    SyncClient,
)
from stepline.server.app import Server
from stepline.server.workflows import Workflow
from tests import flows

# Imported fixtures are registered under their `name=`s: server, client, release_gates.
from tests.grpc_harness import (  # noqa: F401
    BOUND,
    Gate,
    client_fixture,
    close,
    collect,
    is_step_start,
    kinds,
    release_gates_fixture,
    server_fixture,
    settled,
    until,
)

# -- results -------------------------------------------------------------------------------------


async def test_start_returns_the_stored_result(client: Client) -> None:
    result = await client.start("sequence", {"value": 1}, resource_id="tenant-1")
    assert result.status is RunStatus.SUCCESS
    assert result.workflow_id == "sequence" and result.resource_id == "tenant-1"
    assert result.input == {"value": 1}
    assert result.result == {"value": 4}
    assert result.error is None and result.suspended == () and result.state is None
    assert result.step_execution_path == ("add_one", "double")
    assert set(result.steps) == {"add_one", "double"}
    add_one, double = result.steps["add_one"], result.steps["double"]
    assert (add_one.status, add_one.payload, add_one.output) == (
        StepStatus.SUCCESS,
        {"value": 1},
        {"value": 2},
    )
    assert (double.payload, double.output, double.attempts) == ({"value": 2}, {"value": 4}, 1)
    for step in (add_one, double):
        assert step.started_at is not None and step.ended_at is not None
        assert step.started_at <= step.ended_at
    assert add_one.ended_at is not None and double.started_at is not None
    assert add_one.ended_at <= double.started_at
    assert result.last_sequence == 6
    assert result.created_at is not None and result.updated_at is not None
    assert result.created_at <= result.updated_at
    assert result.trace_id == ""

    assert await client.get_result(result.run_id) == result


async def test_include_state_on_and_off(client: Client) -> None:
    with_state = await client.start(
        "stateful", {"value": 3}, initial_state={"count": 10}, include_state=True
    )
    assert with_state.status is RunStatus.SUSPENDED
    assert with_state.state == {"count": 13}
    assert await client.get_result(with_state.run_id, include_state=True) == with_state
    # The run remembers that its start asked for the state.
    assert await client.get_result(with_state.run_id) == with_state

    plain = await client.start("stateful", {"value": 1})
    assert plain.state is None
    asked = await client.get_result(plain.run_id, include_state=True)
    assert asked.state == {"count": 1}
    assert await client.get_result(plain.run_id) == dataclasses.replace(asked, state=None)

    resumed = await client.resume(with_state.run_id, {"ok": True}, include_state=True)
    assert resumed.status is RunStatus.SUCCESS and resumed.state == {"count": 13}
    assert resumed.result is not None and resumed.result["resume"] == {"ok": True}
    assert await client.get_result(with_state.run_id, include_state=True) == resumed


async def test_start_async_returns_once_the_run_is_recorded(client: Client) -> None:
    started = [await client.start_async("sequence", {"value": n}) for n in range(5)]
    # Asked at once, every run already exists (whatever it is doing).
    first_looks = [await client.get_result(s.run_id) for s in started]
    for s, look in zip(started, first_looks, strict=True):
        assert s.created and s.status is RunStatus.PENDING
        assert look.run_id == s.run_id and look.status is not RunStatus.UNSPECIFIED
    for n, s in enumerate(started):
        done = await client.get_result(s.run_id, wait=BOUND)
        assert done.status is RunStatus.SUCCESS
        assert done.result == {"value": (n + 1) * 2}


async def test_bounded_wait_on_a_held_run_answers_running(client: Client) -> None:
    started = await client.start_async("cancellable", {"seconds": 10})
    watch = client.watch(started.run_id)
    await until(watch, is_step_start("wait_for_cancel"))
    await close(watch)

    began = time.monotonic()
    running = await client.get_result(started.run_id, wait=0.3)
    assert running.status is RunStatus.RUNNING
    assert running.steps["wait_for_cancel"].status is StepStatus.RUNNING
    # A wait longer than the call's deadline is cut short by the server and still answers.
    still = await client.get_result(started.run_id, wait=30, timeout=1.0)
    assert still.status is RunStatus.RUNNING
    assert 0.3 <= time.monotonic() - began < 3

    canceled = await client.cancel(started.run_id)
    assert canceled.status is RunStatus.CANCELED and canceled.cancel_requested
    final = await client.get_result(started.run_id)
    assert final.status is RunStatus.CANCELED
    assert "never_after_cancel" not in final.steps
    assert flows.SEEN[started.run_id] == ["waiting"]


async def test_cancel_is_idempotent_and_leaves_finished_runs_alone(client: Client) -> None:
    done = await client.start("sequence", {"value": 1})
    untouched = await client.cancel(done.run_id)
    assert untouched.status is RunStatus.SUCCESS and not untouched.cancel_requested
    assert await client.get_result(done.run_id) == done

    suspended = await client.start("approval", {})
    first = await client.cancel(suspended.run_id)
    second = await client.cancel(suspended.run_id)
    assert first.status is second.status is RunStatus.CANCELED
    assert second.cancel_requested
    events = await collect(client.watch(suspended.run_id))
    assert kinds(events)[-2:] == ["workflow-canceled", "workflow-finish"]
    assert [e.type for e in events].count(EventType.WORKFLOW_CANCELED) == 1


# -- claims --------------------------------------------------------------------------------------


async def test_concurrent_resumes_exactly_one_wins(client: Client, release_gates: Gate) -> None:
    suspended = await client.start("approval", {"question": "race?"})
    run_id = suspended.run_id
    hold = release_gates(run_id)  # the resumed step waits here: the run stays RUNNING

    attempts = [
        asyncio.create_task(client.resume(run_id, {"approved": True, "note": f"n{i}"}))
        for i in range(20)
    ]

    async def losers_refused() -> None:
        while sum(task.done() for task in attempts) < 19:
            await asyncio.wait(
                [task for task in attempts if not task.done()],
                return_when=asyncio.FIRST_COMPLETED,
            )

    try:
        await asyncio.wait_for(losers_refused(), BOUND)
        losers = [task for task in attempts if task.done()]
        [winner] = [task for task in attempts if not task.done()]
        for task in losers:
            error = task.exception()
            assert isinstance(error, ResumeAlreadyClaimed), error
            assert error.code is grpc.StatusCode.ABORTED
            assert error.reason == "RESUME_ALREADY_CLAIMED"
            assert error.metadata["run_id"] == run_id
        assert (await client.get_result(run_id)).status is RunStatus.RUNNING
    finally:
        hold.set()
    result = await asyncio.wait_for(winner, BOUND)

    assert result.status is RunStatus.SUCCESS
    won = attempts.index(winner)
    assert result.result == {"approved": True, "note": f"n{won}", "question": "race?"}
    seen = flows.SEEN[run_id]
    assert [entry for entry in seen if entry[0] == "record"] == [("record", True)]
    assert [entry[0] for entry in seen] == ["approve", "record"]
    events = await collect(client.watch(run_id))
    assert [e.type for e in events].count(EventType.WORKFLOW_START) == 2


# -- listing and deleting ------------------------------------------------------------------------


def ids(runs: tuple[RunResult, ...] | list[RunResult]) -> list[str]:
    return [run.run_id for run in runs]


def midpoint(earlier: datetime | None, later: datetime | None) -> datetime:
    assert earlier is not None and later is not None and earlier < later
    return earlier + (later - earlier) / 2


async def test_list_runs_filters_newest_first(client: Client) -> None:
    ok = await client.start("sequence", {"value": 1}, resource_id="tenant-1")
    failed = await client.start("failing", {"value": 1}, resource_id="tenant-1")
    waiting = await client.start("approval", {}, resource_id="tenant-2")
    canceled = await client.start("approval", {}, resource_id="tenant-2")
    await client.cancel(canceled.run_id)
    later = await client.start("sequence", {"value": 2})
    newest_first = [later, canceled, waiting, failed, ok]

    everything = await client.list_runs()
    assert [r.run_id for r in everything.runs] == ids(newest_first)
    assert everything.next_page_token == ""
    summary = everything.runs[-1]
    assert (summary.workflow_id, summary.resource_id, summary.status) == (
        "sequence",
        "tenant-1",
        RunStatus.SUCCESS,
    )
    assert summary.created_at == ok.created_at

    async def listed(**filters: Any) -> list[str]:
        page = await client.list_runs(**filters)
        return [r.run_id for r in page.runs]

    assert await listed(workflow_id="approval") == ids([canceled, waiting])
    assert await listed(workflow_id="sequence") == ids([later, ok])
    assert await listed(resource_id="tenant-1") == ids([failed, ok])
    assert await listed(statuses=[RunStatus.FAILED, RunStatus.SUSPENDED]) == ids([waiting, failed])
    assert await listed(statuses=["canceled"]) == ids([canceled])
    assert await listed(workflow_id="approval", statuses=[RunStatus.SUSPENDED]) == ids([waiting])
    assert await listed(resource_id="tenant-2", statuses=[RunStatus.SUCCESS]) == []
    assert await listed(workflow_id="no_such_workflow") == []

    after = midpoint(ok.created_at, failed.created_at)
    before = midpoint(canceled.created_at, later.created_at)
    assert await listed(created_after=after) == ids([later, canceled, waiting, failed])
    assert await listed(created_before=before) == ids([canceled, waiting, failed, ok])
    assert await listed(created_after=after, created_before=before) == ids(
        [canceled, waiting, failed]
    )
    assert await listed(created_after=after, created_before=before, workflow_id="failing") == ids(
        [failed]
    )


async def test_list_runs_pages_visit_each_run_once(client: Client) -> None:
    runs = [await client.start("sequence", {"value": n}) for n in range(5)]
    visited: list[str] = []
    sizes: list[int] = []
    token = ""
    for _ in range(10):
        page = await client.list_runs(page_size=2, page_token=token)
        visited += [r.run_id for r in page.runs]
        sizes.append(len(page.runs))
        token = page.next_page_token
        if not token:
            break
    assert visited == ids(runs[::-1])
    assert sizes == [2, 2, 1]

    # A run started while paging shows up on a fresh listing, not in the middle of this one.
    first = await client.list_runs(page_size=2)
    newer = await client.start("sequence", {"value": 9})
    rest = await client.list_runs(page_size=10, page_token=first.next_page_token)
    assert [r.run_id for r in rest.runs] == ids(runs[2::-1])
    assert (await client.list_runs(page_size=1)).runs[0].run_id == newer.run_id


async def test_delete_run(client: Client) -> None:
    keep = await client.start("sequence", {"value": 1})
    gone = await client.start("sequence", {"value": 2})
    await client.delete_run(gone.run_id)

    with pytest.raises(RunNotFound) as info:
        await client.get_result(gone.run_id)
    assert info.value.run_id == gone.run_id
    assert [r.run_id for r in (await client.list_runs()).runs] == [keep.run_id]
    assert [r.run_id for r in (await client.list_runs(workflow_id="sequence")).runs] == [
        keep.run_id
    ]
    with pytest.raises(RunNotFound):
        await collect(client.watch(gone.run_id))
    with pytest.raises(RunNotFound):
        await client.delete_run(gone.run_id)
    assert await client.get_result(keep.run_id) == keep

    # The id is free again.
    reused = await client.start("sequence", {"value": 3}, run_id=gone.run_id)
    assert reused.result == {"value": 8} and reused.last_sequence == 6


# -- workflows -----------------------------------------------------------------------------------


async def test_list_workflows_serves_every_committed_flow(client: Client) -> None:
    expected = {v.id for v in vars(flows).values() if isinstance(v, Workflow) and v.committed}
    listed = await client.list_workflows()
    assert {w.id for w in listed} == expected
    assert {"sequence", "approval", "parallel_ok", "branching", "cancellable"} <= expected
    for info in listed:
        assert info.input_schema is not None and info.output_schema is not None
        assert info.steps and info.graph
        assert info == await client.get_workflow(info.id)


async def test_get_workflow_schemas_and_graph(client: Client) -> None:
    sequence = await client.get_workflow("sequence")
    assert sequence.input_schema is not None
    assert sequence.input_schema["type"] == "object"
    assert sequence.input_schema["properties"]["value"]["type"] == "integer"
    assert sequence.input_schema["required"] == ["value"]
    assert sequence.output_schema is not None
    assert sequence.output_schema["properties"]["value"]["type"] == "integer"
    assert sequence.state_schema is None
    assert [s.id for s in sequence.steps] == ["add_one", "double"]
    assert all(s.resume_schema is None and s.retries is None for s in sequence.steps)
    assert [entry["type"] for entry in sequence.graph] == ["step", "step"]
    assert [entry["step"]["id"] for entry in sequence.graph] == ["add_one", "double"]

    approval = await client.get_workflow("approval")
    steps = {s.id: s for s in approval.steps}
    resume = steps["approve"].resume_schema
    assert resume is not None
    assert resume["properties"]["approved"]["type"] == "boolean"
    assert resume["required"] == ["approved"]
    assert steps["approve"].suspend_schema is not None
    assert steps["record"].resume_schema is None
    assert [entry["step"]["can_suspend"] for entry in approval.graph] == [True, False]

    parallel = await client.get_workflow("parallel_ok")
    assert [entry["type"] for entry in parallel.graph] == ["parallel", "step"]
    assert [child["step"]["id"] for child in parallel.graph[0]["steps"]] == ["slow_ok", "triple"]

    branching = await client.get_workflow("branching")
    assert [entry["type"] for entry in branching.graph] == ["conditional", "step"]
    conditional = branching.graph[0]
    branch_ids = ["positive", "big", "negative", "exploded"]
    assert [child["step"]["id"] for child in conditional["steps"]] == branch_ids
    assert [c["id"] for c in conditional["conditions"]] == [f"{b}-condition" for b in branch_ids]

    stateful = await client.get_workflow("stateful")
    assert stateful.state_schema is not None
    assert stateful.state_schema["properties"]["count"]["type"] == "integer"
    failing = await client.get_workflow("failing")
    assert [s.retries for s in failing.steps] == [0]


# -- the blocking client -------------------------------------------------------------------------


def sync_round_trip(target: str) -> tuple[RunResult, RunResult, list[str], RunNotFound]:
    with SyncClient.connect(target) as blocking:
        suspended = blocking.start("approval", {"question": "sync?"}, timeout=BOUND)
        done = blocking.resume(suspended.run_id, {"approved": True}, timeout=BOUND)
        events = kinds(blocking.watch(suspended.run_id))
        try:
            blocking.get_result("ghost", timeout=BOUND)
        except RunNotFound as error:
            return suspended, done, events, error
        raise AssertionError("get_result of an unknown run did not raise")


async def test_sync_client_round_trip_and_typed_error(server: Server, client: Client) -> None:
    # The server runs on this loop; the blocking client must block another thread.
    suspended, done, events, error = await asyncio.wait_for(
        asyncio.to_thread(sync_round_trip, server.target), BOUND
    )
    assert suspended.status is RunStatus.SUSPENDED
    assert [s.path for s in suspended.suspended] == [("approve",)]
    assert done.status is RunStatus.SUCCESS
    assert done.result == {"approved": True, "note": "none", "question": "sync?"}
    assert await client.get_result(done.run_id) == done
    assert events == [
        "workflow-start",
        "step-start:approve",
        "step-suspended:approve",
        "workflow-finish",
        "workflow-start",
        "step-start:approve",
        "step-result:approve",
        "step-start:record",
        "step-result:record",
        "workflow-finish",
    ]
    assert error.code is grpc.StatusCode.NOT_FOUND and error.run_id == "ghost"
