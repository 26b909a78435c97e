"""Loops, foreach, map, sleep, nested workflows and time travel, on both stores."""

from __future__ import annotations

import asyncio
import time

import pytest

from stepline.server.errors import FailedPrecondition, InvalidArgument
from stepline.server.events import EventType, StepProgress, StepStart, WorkflowStart
from stepline.server.model import RunStatus, StepRecord, StepStatus
from stepline.server.runs import ResumeParams, StartParams, TimeTravelParams
from stepline.server.store import StoredRun
from tests import flows
from tests.engine_harness import Engine, data_of, kinds


async def travel(engine: Engine, params: TimeTravelParams) -> StoredRun:
    traveled = await engine.service.time_travel(params)
    return await engine.service.wait(
        params.run_id, after_sequence=traveled.after_sequence, timeout=10
    )


# -- loops -------------------------------------------------------------------------------------
async def test_dountil_feeds_each_iteration_its_own_output(engine: Engine) -> None:
    flows.SEEN["conditions"].clear()
    run = await engine.run("count_until", {"value": 0})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == {"value": 3}
    assert [s[1] for s in flows.SEEN[snap.run_id]] == [0, 1, 2]
    assert flows.SEEN["conditions"] == [1, 2, 3]
    assert snap.steps["increment"].metadata == {"iteration_count": 3}
    starts = [e for e in await engine.events(snap.run_id) if e.type is EventType.STEP_START]
    metadata = [data_of(e, StepStart).metadata for e in starts]
    assert metadata == [{"iteration_count": 1}, {"iteration_count": 2}, {"iteration_count": 3}]


async def test_dowhile_runs_at_least_once(engine: Engine) -> None:
    run = await engine.run("count_while", {"value": 5})
    assert run.snapshot.result == {"value": 6}
    assert len(flows.SEEN[run.snapshot.run_id]) == 1


async def test_raising_loop_condition_fails_the_run(engine: Engine) -> None:
    run = await engine.run("exploding_loop", {"value": 0})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert snap.error is not None and snap.error.name == "LoopConditionFailed"
    assert "ZeroDivisionError: bad condition" in snap.error.message
    assert snap.steps["increment"].status is StepStatus.FAILED


async def test_loop_step_suspends_each_iteration_and_resumes_with_its_input(
    engine: Engine,
) -> None:
    run = await engine.run("suspending_loop", {"value": 0})
    run_id = run.snapshot.run_id
    assert run.snapshot.steps["loop_gate"].suspend_payload == {"at": 0}
    second = await engine.resume(run_id, resume_data={"n": 1})
    assert second.snapshot.status is RunStatus.SUSPENDED
    assert second.snapshot.steps["loop_gate"].suspend_payload == {"at": 1}
    assert second.snapshot.steps["loop_gate"].metadata == {"iteration_count": 2}
    done = await engine.resume(run_id, label="loop", resume_data={"n": 2})
    assert done.snapshot.status is RunStatus.SUCCESS
    assert done.snapshot.result == {"value": 2}
    assert flows.SEEN[run_id] == [("loop_gate", 0, {"n": 1}), ("loop_gate", 1, {"n": 2})]


# -- foreach and map ---------------------------------------------------------------------------
async def test_foreach_keeps_order_and_never_exceeds_concurrency(engine: Engine) -> None:
    run = await engine.run("fanout", {"items": [5, 1, 4, 2, 3, 6]})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == [{"value": v * 10} for v in [5, 1, 4, 2, 3, 6]]
    assert flows.PEAK[snap.run_id] == 2
    progress = [
        e.data for e in await engine.events(snap.run_id) if isinstance(e.data, StepProgress)
    ]
    assert [p.completed_count for p in progress] == [1, 2, 3, 4, 5, 6]
    assert {p.current_index for p in progress} == set(range(6))
    assert all(p.total_count == 6 and p.iteration_status == "success" for p in progress)


async def test_map_is_a_recorded_step_with_a_deterministic_id(engine: Engine) -> None:
    run = await engine.run("fanout", {"items": [1]})
    snap = run.snapshot
    assert snap.steps["map_fanout_1"].output == [{"value": 1}]
    assert snap.step_execution_path[0] == "map_fanout_1"
    assert ("map", {"items": [1]}) in flows.SEEN[snap.run_id]


async def test_foreach_of_empty_list_and_of_a_non_list(engine: Engine) -> None:
    empty = await engine.run("fanout", {"items": []})
    assert empty.snapshot.status is RunStatus.SUCCESS and empty.snapshot.result == []
    bad = await engine.run("not_a_list", {"value": 1})
    assert bad.snapshot.status is RunStatus.FAILED
    assert bad.snapshot.error is not None
    assert "needs a list as input, got dict" in bad.snapshot.error.message


async def test_failed_item_stops_new_items_and_fails_the_step(engine: Engine) -> None:
    run = await engine.run("fanout", {"items": [1, 13, 2, 3, 4, 5, 6, 7]})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert snap.error is not None and snap.error.message == "13 is unlucky"
    started = [s[1] for s in flows.SEEN[snap.run_id] if s[0] == "tracked"]
    assert len(started) < 8  # items after the failure were never started


async def test_foreach_items_resume_one_at_a_time_then_all(engine: Engine) -> None:
    run = await engine.run("gated_fanout", {"items": [1, 2, 3]})
    run_id = run.snapshot.run_id
    assert run.snapshot.status is RunStatus.SUSPENDED
    assert run.snapshot.steps["item_gate"].suspend_payload == {
        "0": {"item": 1},
        "1": {"item": 2},
        "2": {"item": 3},
    }
    one = await engine.resume(run_id, for_each_index=1, resume_data={"approved": True})
    assert one.snapshot.status is RunStatus.SUSPENDED
    assert one.snapshot.steps["item_gate"].suspend_payload == {"0": {"item": 1}, "2": {"item": 3}}
    labelled = await engine.resume(run_id, label="item-3", resume_data={"approved": False})
    assert labelled.snapshot.status is RunStatus.SUSPENDED
    done = await engine.resume(run_id, resume_data={"approved": True})
    assert done.snapshot.status is RunStatus.SUCCESS
    assert done.snapshot.result == [{"value": 2}, {"value": 4}, {"value": -3}]


# -- sleep -------------------------------------------------------------------------------------
async def test_short_sleep_passes_the_output_through(engine: Engine) -> None:
    started = time.monotonic()
    run = await engine.run("short_nap", {"value": 1})
    assert time.monotonic() - started >= 0.2
    snap = run.snapshot
    assert snap.result == {"value": 4}
    assert snap.steps["sleep_short_nap_1"].output == {"value": 2}
    assert kinds(await engine.events(snap.run_id))[3:5] == [
        "step-waiting:sleep_short_nap_1",
        "step-result:sleep_short_nap_1",
    ]


async def test_long_sleep_waits_on_a_durable_timer_without_holding_a_slot(
    engine: Engine,
) -> None:
    started = await engine.service.start(StartParams("long_nap", {"value": 1}))
    run_id = started.run_id
    for _ in range(100):
        stored = await engine.service.get(run_id)
        if stored.snapshot.status is RunStatus.WAITING:
            break
        await asyncio.sleep(0.05)
    assert stored.snapshot.status is RunStatus.WAITING
    assert not stored.leased  # the write that handed the run to its timer released it
    for _ in range(100):  # and the pass's task ends right after that write
        if engine.worker.active_runs == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.worker.active_runs == 0
    wake_at = stored.snapshot.steps["sleep_long_nap_1"].metadata["wake_at"]
    done = await engine.service.wait(run_id, timeout=10)
    assert done.snapshot.status is RunStatus.SUCCESS and done.snapshot.result == {"value": 4}
    assert done.snapshot.steps["sleep_long_nap_1"].ended_at >= wake_at


async def test_cancel_during_a_sleep_is_immediate(engine: Engine) -> None:
    started = await engine.service.start(StartParams("long_nap", {"value": 1}))
    for _ in range(100):
        if (await engine.service.get(started.run_id)).snapshot.status is RunStatus.WAITING:
            break
        await asyncio.sleep(0.05)
    canceled = await engine.service.cancel(started.run_id)
    assert canceled.status is RunStatus.CANCELED
    await asyncio.sleep(2.2)  # past the wake-up time: the timer must not revive the run
    snap = (await engine.service.get(started.run_id)).snapshot
    assert snap.status is RunStatus.CANCELED and "double" not in snap.steps


async def test_sleep_until_a_past_time_continues_at_once(engine: Engine) -> None:
    run = await engine.run("past_nap", {"value": 1})
    assert run.snapshot.result == {"value": 2}


# -- nested workflows --------------------------------------------------------------------------
async def test_nested_suspend_resume_by_path_and_state_flow(engine: Engine) -> None:
    run = await engine.run("outer_flow", {"value": 1}, initial_state={"count": 0})
    snap = run.snapshot
    assert snap.status is RunStatus.SUSPENDED
    leaves = snap.suspended_leaves()
    assert [leaf.path for leaf in leaves] == [["inner_flow", "inner_gate"]]
    assert leaves[0].payload == {"value": 2}
    events = kinds(await engine.events(snap.run_id))
    assert "step-start:inner_flow.add_one" in events
    assert "step-suspended:inner_flow.inner_gate" in events
    done = await engine.resume(
        snap.run_id, step=("inner_flow", "inner_gate"), resume_data={"approved": True}
    )
    final = done.snapshot
    assert final.status is RunStatus.SUCCESS
    assert final.result == {"value": 4}
    assert final.state == {"count": 101}  # 1 from count_up, 100 set inside the child
    flat = final.flat_steps()
    assert flat["inner_flow.inner_gate"].status is StepStatus.SUCCESS
    assert flat["inner_flow"].output == {"value": 2}


async def test_nested_resume_by_label_and_auto(engine: Engine) -> None:
    by_label = await engine.run("outer_flow", {"value": 1})
    done = await engine.resume(
        by_label.snapshot.run_id, label="inner-approval", resume_data={"approved": False}
    )
    assert done.snapshot.result == {"value": 0}
    auto = await engine.run("outer_flow", {"value": 1})
    done = await engine.resume(auto.snapshot.run_id, resume_data={"approved": True})
    assert done.snapshot.status is RunStatus.SUCCESS
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.resume(ResumeParams(auto.snapshot.run_id))
    assert info.value.reason == "RUN_NOT_SUSPENDED"


async def test_failure_inside_a_nested_workflow_fails_the_parent_step(engine: Engine) -> None:
    run = await engine.run("outer_failing", {"value": 1})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert snap.error is not None and snap.error.message == "fast_fail broke"
    assert snap.steps["failing_inner"].status is StepStatus.FAILED
    assert snap.steps["failing_inner"].error == snap.error


async def test_cancel_reaches_into_a_nested_workflow(engine: Engine) -> None:
    started = await engine.service.start(StartParams("outer_cancellable", {"seconds": 10}))
    for _ in range(200):
        if flows.SEEN[started.run_id]:
            break
        await asyncio.sleep(0.01)
    canceled = await engine.service.cancel(started.run_id)
    assert canceled.status is RunStatus.CANCELED
    snap = (await engine.service.get(started.run_id)).snapshot
    assert snap.flat_steps()["inner_waits.wait_for_cancel"].output == {"canceled": True}
    assert "never_after_cancel" not in snap.steps


async def test_abort_inside_a_nested_workflow_cancels_the_parent(engine: Engine) -> None:
    run = await engine.run("outer_aborted", {"abort": True})
    assert run.snapshot.status is RunStatus.CANCELED
    assert "after_stop" not in run.snapshot.steps


# -- time travel -------------------------------------------------------------------------------
async def test_time_travel_reexecutes_from_a_step_with_new_input(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    run_id = run.snapshot.run_id
    again = await travel(engine, TimeTravelParams(run_id, ("double",), input_data={"value": 10}))
    snap = again.snapshot
    assert snap.status is RunStatus.SUCCESS and snap.result == {"value": 20}
    assert snap.steps["add_one"].output == {"value": 2}  # kept from the first pass
    events = await engine.events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert data_of(events[run.last_sequence], WorkflowStart).reason == "time_travel"
    assert kinds(events[run.last_sequence :]) == [
        "workflow-start",
        "step-start:double",
        "step-result:double",
        "workflow-finish",
    ]


async def test_time_travel_with_caller_context(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    context = {
        "add_one": StepRecord(status=StepStatus.SUCCESS, payload={"value": 1}, output={"value": 50})
    }
    again = await travel(
        engine, TimeTravelParams(run.snapshot.run_id, ("double",), context=context)
    )
    assert again.snapshot.result == {"value": 100}


async def test_time_travel_refusals_leave_the_snapshot_untouched(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    run_id = run.snapshot.run_id
    with pytest.raises(InvalidArgument) as unknown:
        await engine.service.time_travel(TimeTravelParams(run_id, ("nope",)))
    assert unknown.value.reason == "UNKNOWN_STEP"
    assert [v.field for v in unknown.value.violations] == ["step"]
    with pytest.raises(InvalidArgument) as bad:
        await engine.service.time_travel(
            TimeTravelParams(run_id, ("double",), input_data={"value": "x"})
        )
    assert [v.field for v in bad.value.violations] == ["input_data.value"]
    # A snapshot recording a step the graph no longer has.
    stored = await engine.service.get(run_id)
    drifted = stored.snapshot.model_copy(deep=True)
    drifted.steps["ghost"] = StepRecord(status=StepStatus.SUCCESS)
    await engine.store.write(drifted, expected_version=stored.version)
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.time_travel(TimeTravelParams(run_id, ("double",)))
    assert info.value.reason == "SNAPSHOT_MISMATCH"
    after = await engine.service.get(run_id)
    assert after.version == stored.version + 1 and after.last_sequence == run.last_sequence

    held = await engine.service.start(StartParams("cancellable", {"seconds": 5}))
    for _ in range(200):
        if flows.SEEN[held.run_id]:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.time_travel(TimeTravelParams(held.run_id, ("wait_for_cancel",)))
    assert info.value.reason == "RUN_IS_RUNNING"
    await engine.service.cancel(held.run_id)


async def test_time_travel_into_a_nested_workflow(engine: Engine) -> None:
    run = await engine.run("outer_flow", {"value": 1})
    done = await engine.resume(run.snapshot.run_id, resume_data={"approved": True})
    assert done.snapshot.result == {"value": 4}
    again = await travel(
        engine,
        TimeTravelParams(
            run.snapshot.run_id, ("inner_flow.inner_gate",), resume_data={"approved": False}
        ),
    )
    # inner_gate re-runs without resume data (it was not suspended), so it suspends again.
    assert again.snapshot.status is RunStatus.SUSPENDED
    assert again.snapshot.steps["count_up"].status is StepStatus.SUCCESS
    final = await engine.resume(run.snapshot.run_id, resume_data={"approved": False})
    assert final.snapshot.result == {"value": 0}
