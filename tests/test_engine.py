"""Engine behaviour through RunService + Worker, on both stores (no gRPC)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from stepline.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    WorkflowNotFound,
)
from stepline.server.events import (
    Event,
    EventType,
    StepOutput,
    WorkflowFinish,
    WorkflowStart,
    encode_event,
)
from stepline.server.execution import Execution
from stepline.server.model import RunStatus, Snapshot, SnapshotImage, StepStatus
from stepline.server.runs import ResumeParams, RunService, StartParams
from stepline.server.store import MemoryStore, Store, WriteOutcome
from stepline.server.worker import Worker
from tests import flows
from tests.engine_harness import Engine, data_of, kinds, registry


# -- data flow -------------------------------------------------------------------------------
async def test_sequential_data_flow_and_steps_map(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == {"value": 4}
    assert snap.input == {"value": 1}
    assert snap.steps["add_one"].payload == {"value": 1}
    assert snap.steps["add_one"].output == {"value": 2}
    assert snap.steps["double"].payload == {"value": 2}
    assert snap.steps["double"].attempts == 1
    assert snap.step_execution_path == ["add_one", "double"]
    assert flows.SEEN[snap.run_id] == [("double", {"value": 2}, {"value": 1})]
    assert [e.sequence for e in await engine.events(snap.run_id)] == list(range(1, 7))


async def test_parallel_output_keyed_by_step_id(engine: Engine) -> None:
    run = await engine.run("parallel_ok", {"value": 2})
    assert run.snapshot.status is RunStatus.SUCCESS
    assert run.snapshot.steps["join"].payload == {"slow_ok": {"value": 12}, "triple": {"value": 6}}
    assert run.snapshot.result == {"value": 18}


async def test_parallel_waits_for_all_children_when_one_fails(engine: Engine) -> None:
    run = await engine.run("parallel_fail", {"value": 1})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert snap.error is not None and snap.error.message == "fast_fail broke"
    assert snap.steps["fast_fail"].status is StepStatus.FAILED
    assert snap.steps["slow_ok"].status is StepStatus.SUCCESS
    assert snap.steps["slow_ok"].output == {"value": 11}


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        (5, ["positive"]),
        (50, ["big", "positive"]),
        (0, []),
    ],
)
async def test_branch_runs_every_true_condition(
    engine: Engine, value: int, taken: list[str]
) -> None:
    run = await engine.run("branching", {"value": value})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    ran = sorted(k for k in snap.steps if k != "summary")
    assert ran == taken  # the raising condition counted as false
    expected = {"positive": {"value": 1}, "big": {"value": 100}}
    assert snap.result == {"saw": {k: expected[k] for k in taken}}


# -- retries and errors ----------------------------------------------------------------------
async def test_retries_count_delay_and_backoff(engine: Engine) -> None:
    run = await engine.run("retrying", {"fail_times": 2})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == {"retry_count": 2}
    assert snap.steps["flaky"].attempts == 3
    seen = flows.SEEN[snap.run_id]
    assert [count for count, _ in seen] == [0, 1, 2]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # delay 0.05, backoff 2


async def test_retries_exhausted_fail_the_run(engine: Engine) -> None:
    run = await engine.run("retrying", {"fail_times": 10})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert snap.steps["flaky"].attempts == 4  # attempts = retries + 1
    assert snap.error is not None and snap.error.name == "ConnectionError"
    assert snap.error.message == "attempt 3 failed"


async def test_non_retryable_error_is_not_retried(engine: Engine) -> None:
    run = await engine.run("retrying", {"fail_times": 0, "non_retryable": True})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert len(flows.SEEN[snap.run_id]) == 1
    assert snap.error is not None
    assert snap.error.name == "NonRetryableError"
    assert snap.error.details == {"details": {"code": 42}}


async def test_error_serialization_has_cause_and_no_stack(engine: Engine) -> None:
    run = await engine.run("failing", {"value": 1})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    error = snap.error
    assert error is not None
    assert (error.message, error.name) == ("could not price order", "DetailedError")
    assert isinstance(error.details, dict)
    assert error.details["details"] == {"order": 7}
    cause = error.details["cause"]
    assert isinstance(cause, dict) and cause["name"] == "KeyError"
    stored = str([encode_event(e) for e in await engine.events(snap.run_id)])
    assert "Traceback" not in stored and 'File "' not in stored
    assert snap.steps["raises_chained"].error == error


async def test_output_is_validated_against_the_output_schema(engine: Engine) -> None:
    run = await engine.run("bad_output", {"value": 1})
    error = run.snapshot.error
    assert run.snapshot.status is RunStatus.FAILED
    assert error is not None and error.name == "StepOutputInvalid"
    assert "output.value" in error.message


# -- validation at start ---------------------------------------------------------------------
async def test_start_validates_input_with_one_violation_per_problem(engine: Engine) -> None:
    with pytest.raises(InvalidArgument) as info:
        await engine.service.start(StartParams("approval", {"question": 5}, trace_id="not-hex"))
    fields = sorted(v.field for v in info.value.violations)
    assert fields == ["input_data.question", "tracing_options.trace_id"]
    with pytest.raises(WorkflowNotFound):
        await engine.service.start(StartParams("nope", {}))


async def test_start_same_run_id_is_idempotent_per_request_id(engine: Engine) -> None:
    first = await engine.service.start(
        StartParams("sequence", {"value": 1}, run_id="r-1", request_id="req-1")
    )
    again = await engine.service.start(
        StartParams("sequence", {"value": 1}, run_id="r-1", request_id="req-1")
    )
    assert first.created and not again.created and again.run_id == "r-1"
    with pytest.raises(RunAlreadyExists) as info:
        await engine.service.start(
            StartParams("sequence", {"value": 1}, run_id="r-1", request_id="req-2")
        )
    assert info.value.run_id == "r-1"
    run = await engine.service.wait("r-1", timeout=10)
    starts = [e for e in await engine.events("r-1") if e.type is EventType.WORKFLOW_START]
    assert run.snapshot.status is RunStatus.SUCCESS and len(starts) == 1


# -- suspend / resume ------------------------------------------------------------------------
async def test_suspend_records_payload_and_stops(engine: Engine) -> None:
    run = await engine.run("approval", {"question": "ship it?"})
    snap = run.snapshot
    assert snap.status is RunStatus.SUSPENDED
    rec = snap.steps["approve"]
    assert rec.status is StepStatus.SUSPENDED
    assert rec.suspend_payload == {"question": "ship it?"}
    assert rec.suspend_labels == ["approval"]
    assert "record" not in snap.steps
    assert kinds(await engine.events(snap.run_id))[-2:] == [
        "step-suspended:approve",
        "workflow-finish",
    ]


@pytest.mark.parametrize("how", ["step", "label", "auto"])
async def test_resume_by_step_label_or_auto(engine: Engine, how: str) -> None:
    run = await engine.run("approval", {"question": "q"})
    targets: dict[str, dict[str, Any]] = {
        "step": {"step": ("approve",)},
        "label": {"label": "approval"},
        "auto": {},
    }
    target = targets[how]
    done = await engine.resume(run.snapshot.run_id, resume_data={"approved": True}, **target)
    snap = done.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == {"approved": True, "note": "none", "question": "q"}
    assert snap.steps["approve"].resume_payload == {"approved": True, "note": "none"}
    assert flows.SEEN[snap.run_id][0] == (
        "approve",
        {"question": "q"},
        {"approved": True, "note": "none"},
    )
    assert snap.suspended_paths == {} and snap.resume_labels == {}


async def test_resume_errors(engine: Engine) -> None:
    multi = await engine.run("two_approvals", {})
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.resume(ResumeParams(multi.snapshot.run_id))
    assert info.value.reason == "MULTIPLE_SUSPENDED_STEPS"
    assert info.value.suspended_steps == ["ask_a", "ask_b"]

    single = await engine.run("approval", {})
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.resume(ResumeParams(single.snapshot.run_id, step=("record",)))
    assert info.value.reason == "STEP_NOT_SUSPENDED"
    assert info.value.suspended_steps == ["approve"]

    finished = await engine.run("sequence", {"value": 1})
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.resume(ResumeParams(finished.snapshot.run_id))
    assert info.value.reason == "RUN_NOT_SUSPENDED"

    with pytest.raises(RunNotFound):
        await engine.service.resume(ResumeParams("no-such-run"))


async def test_resume_data_failing_its_schema_keeps_the_run_suspended(engine: Engine) -> None:
    run = await engine.run("approval", {})
    run_id = run.snapshot.run_id
    with pytest.raises(InvalidArgument) as info:
        await engine.service.resume(ResumeParams(run_id, resume_data={"approved": "maybe"}))
    assert [v.field for v in info.value.violations] == ["resume_data.approved"]
    still = await engine.service.get(run_id)
    assert still.snapshot.status is RunStatus.SUSPENDED
    assert still.last_sequence == run.last_sequence
    done = await engine.resume(run_id, resume_data={"approved": False, "note": "later"})
    assert done.snapshot.status is RunStatus.SUCCESS
    assert isinstance(done.snapshot.result, dict) and done.snapshot.result["note"] == "later"


async def test_two_parallel_suspended_steps_resumed_one_at_a_time(engine: Engine) -> None:
    run = await engine.run("two_approvals", {})
    run_id = run.snapshot.run_id
    assert sorted(run.snapshot.suspended_paths) == ["ask_a", "ask_b"]
    half = await engine.resume(run_id, step=("ask_b",), resume_data={"approved": True})
    assert half.snapshot.status is RunStatus.SUSPENDED
    assert list(half.snapshot.suspended_paths) == ["ask_a"]
    assert half.snapshot.steps["ask_b"].status is StepStatus.SUCCESS
    done = await engine.resume(run_id, label="label-ask_a", resume_data={"approved": False})
    assert done.snapshot.status is RunStatus.SUCCESS
    assert done.snapshot.result == {
        "ask_a": {"approved": False, "note": "none"},
        "ask_b": {"approved": True, "note": "none"},
    }


async def test_concurrent_resumes_exactly_one_proceeds(engine: Engine) -> None:
    run = await engine.run("approval", {})
    run_id = run.snapshot.run_id
    hold = flows.gate(run_id)  # the resumed step waits here, so the run stays RUNNING

    async def attempt() -> str:
        try:
            await engine.service.resume(ResumeParams(run_id, resume_data={"approved": True}))
        except ResumeAlreadyClaimed:
            return "aborted"
        return "claimed"

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    hold.set()
    done = await engine.service.wait(run_id, after_sequence=run.last_sequence, timeout=10)
    assert sorted(results) == ["aborted"] * 19 + ["claimed"]
    assert done.snapshot.status is RunStatus.SUCCESS
    assert [s for s in flows.SEEN[run_id] if s[0] == "record"] == [("record", True)]
    starts = [e for e in await engine.events(run_id) if e.type is EventType.WORKFLOW_START]
    assert len(starts) == 2


async def test_state_and_request_context_survive_suspend_and_resume(engine: Engine) -> None:
    run = await engine.run(
        "stateful", {"value": 3}, initial_state={"count": 10}, request_context={"tenant": "acme"}
    )
    snap = run.snapshot
    assert snap.status is RunStatus.SUSPENDED
    assert snap.state == {"count": 13}
    assert snap.steps["report"].suspend_payload == {"count": 13}
    done = await engine.resume(snap.run_id, resume_data={"ok": 1}, request_context={"user": "bob"})
    assert done.snapshot.result == {
        "state": {"count": 13},
        "context": {"tenant": "acme", "seen_by": "count_up", "user": "bob"},
        "resume": {"ok": 1},
    }


async def test_invalid_initial_state_is_rejected(engine: Engine) -> None:
    with pytest.raises(InvalidArgument) as info:
        await engine.service.start(
            StartParams("stateful", {"value": 1}, initial_state={"count": "many"})
        )
    assert [v.field for v in info.value.violations] == ["initial_state.count"]


# -- bail, abort, cancel, custom events -------------------------------------------------------
async def test_bail_ends_the_run_with_success(engine: Engine) -> None:
    run = await engine.run("stoppable", {"value": 7, "bail": True})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS
    assert snap.result == {"bailed_with": 7}
    assert "after_stop" not in snap.steps and flows.SEEN[snap.run_id] == []


async def test_abort_cancels_the_run_after_the_step(engine: Engine) -> None:
    run = await engine.run("stoppable", {"abort": True})
    snap = run.snapshot
    assert snap.status is RunStatus.CANCELED
    assert snap.steps["maybe_stop"].status is StepStatus.SUCCESS
    assert "after_stop" not in snap.steps
    assert kinds(await engine.events(snap.run_id))[-3:] == [
        "step-result:maybe_stop",
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_write_emits_custom_output_events(engine: Engine) -> None:
    run = await engine.run("stoppable", {})
    events = await engine.events(run.snapshot.run_id)
    outputs = [e for e in events if e.type is EventType.STEP_OUTPUT]
    assert [(data_of(e, StepOutput).step_id, data_of(e, StepOutput).output) for e in outputs] == [
        ("maybe_stop", {"progress": "checking"})
    ]
    assert kinds(events)[:4] == [
        "workflow-start",
        "step-start:maybe_stop",
        "step-output:maybe_stop",
        "step-result:maybe_stop",
    ]


async def test_cancel_during_a_step(engine: Engine) -> None:
    started = await engine.service.start(StartParams("cancellable", {"seconds": 10}))
    run_id = started.run_id
    for _ in range(200):
        if flows.SEEN[run_id]:
            break
        await asyncio.sleep(0.01)
    canceled = await engine.service.cancel(run_id)
    assert canceled.cancel_requested and canceled.status is RunStatus.CANCELED
    snap = (await engine.service.get(run_id)).snapshot
    assert snap.status is RunStatus.CANCELED
    assert snap.steps["wait_for_cancel"].output == {"canceled": True}
    assert "never_after_cancel" not in snap.steps
    assert kinds(await engine.events(run_id))[-2:] == ["workflow-canceled", "workflow-finish"]
    again = await engine.service.cancel(run_id)
    assert again.status is RunStatus.CANCELED


async def test_cancel_before_start_runs_no_step(store: Store) -> None:
    service = RunService(store, registry())
    started = await service.start(StartParams("sequence", {"value": 1}))
    canceled = await service.cancel(started.run_id)
    assert canceled.status is RunStatus.CANCELED
    worker = Worker(store, registry(), poll_block=0.1)
    await worker.start()
    await asyncio.sleep(0.3)  # give the worker the chance to (wrongly) execute it
    await worker.stop(grace=1.0)
    snap = (await service.get(started.run_id)).snapshot
    assert snap.status is RunStatus.CANCELED and snap.steps == {}
    assert kinds(await store.read_events(started.run_id, 0)) == [
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_cancel_after_finish_changes_nothing(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    canceled = await engine.service.cancel(run.snapshot.run_id)
    assert canceled.status is RunStatus.SUCCESS and not canceled.cancel_requested
    after = await engine.service.get(run.snapshot.run_id)
    assert after.snapshot.status is RunStatus.SUCCESS
    assert after.last_sequence == run.last_sequence


async def test_cancel_of_a_suspended_run_then_resume_is_refused(engine: Engine) -> None:
    run = await engine.run("approval", {})
    assert (await engine.service.cancel(run.snapshot.run_id)).status is RunStatus.CANCELED
    with pytest.raises(FailedPrecondition) as info:
        await engine.service.resume(ResumeParams(run.snapshot.run_id))
    assert info.value.reason == "RUN_NOT_SUSPENDED"


# -- watch -----------------------------------------------------------------------------------
async def collect(engine: Engine, run_id: str, **kw: Any) -> list[Event]:
    async def go() -> list[Event]:
        return [e async for e in engine.service.watch(run_id, **kw)]

    return await asyncio.wait_for(go(), 10)


async def test_watch_from_the_end_of_a_suspended_run_ends(engine: Engine) -> None:
    run = await engine.run("approval", {})
    assert run.snapshot.status is RunStatus.SUSPENDED
    # Settled: nothing more comes until someone resumes it (a reconnect after the suspended
    # finish must not hang).
    assert await collect(engine, run.snapshot.run_id, after_sequence=run.last_sequence) == []


async def test_watch_replays_a_finished_run_including_finish(engine: Engine) -> None:
    run = await engine.run("sequence", {"value": 1})
    events = await collect(engine, run.snapshot.run_id)
    assert [e.sequence for e in events] == list(range(1, run.last_sequence + 1))
    assert events[-1].is_finish and data_of(events[-1], WorkflowFinish).status == "success"
    middle = await collect(engine, run.snapshot.run_id, after_sequence=3)
    assert [e.sequence for e in middle] == list(range(4, run.last_sequence + 1))


async def test_watch_tails_a_live_run_across_suspend_and_resume(engine: Engine) -> None:
    run = await engine.run("approval", {})
    run_id = run.snapshot.run_id
    until_suspend = await collect(engine, run_id)
    assert data_of(until_suspend[-1], WorkflowFinish).status == "suspended"

    async def follow() -> list[Event]:
        # A suspended run is settled: following it into its resume takes keep_open.
        return await collect(
            engine, run_id, after_sequence=run.last_sequence, keep_open_on_suspend=True
        )

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await engine.service.resume(ResumeParams(run_id, resume_data={"approved": True}))
    tail = await task
    assert tail[0].sequence == run.last_sequence + 1
    assert (
        tail[0].type is EventType.WORKFLOW_START
        and data_of(tail[0], WorkflowStart).reason == "resume"
    )
    assert data_of(tail[-1], WorkflowFinish).status == "success"


async def test_watchers_of_one_run_share_the_blocking_reads(engine: Engine) -> None:
    run = await engine.run("approval", {})
    run_id = run.snapshot.run_id
    reads = 0
    wait_events = engine.store.wait_events

    async def counted(run_id: str, after: int, timeout: float) -> list[Event]:
        nonlocal reads
        reads += 1
        return await wait_events(run_id, after, timeout)

    engine.store.wait_events = counted  # type: ignore[method-assign]
    watchers = [
        asyncio.create_task(
            collect(engine, run_id, after_sequence=run.last_sequence, keep_open_on_suspend=True)
        )
        for _ in range(300)
    ]
    await asyncio.sleep(0.2)  # every watcher is waiting for the next event
    await engine.service.resume(ResumeParams(run_id, resume_data={"approved": True}))
    tails = await asyncio.gather(*watchers)

    first = [e.sequence for e in tails[0]]
    assert (
        first[0] == run.last_sequence + 1
        and data_of(tails[0][-1], WorkflowFinish).status == "success"
    )
    assert all([e.sequence for e in tail] == first for tail in tails)
    # One read per cursor the watchers pass through, not one per watcher.
    assert reads <= 3 * len(first)


async def test_an_engine_error_fails_the_run_instead_of_recovering_it_for_ever(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Execution) -> Any:
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(Execution, "walk", broken)
    run = await engine.run("sequence", {"value": 1})
    assert run.snapshot.status is RunStatus.FAILED
    assert run.snapshot.error is not None and run.snapshot.error.name == "EngineError"
    assert "bug" not in run.snapshot.error.message  # internals stay in the server log
    assert not run.leased
    events = await engine.events(run.snapshot.run_id)
    assert events[-1].is_finish and data_of(events[-1], WorkflowFinish).status == "failed"


class _Imaging(MemoryStore):
    """A memory store that keeps every image the executor's journal writes."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[SnapshotImage] = []

    async def write(
        self,
        snapshot: Snapshot | SnapshotImage,
        events: Sequence[Event] = (),
        **guard: Any,
    ) -> WriteOutcome:
        if isinstance(snapshot, SnapshotImage):
            self.images.append(snapshot)
        return await super().write(snapshot, events, **guard)


async def test_a_transition_writes_only_the_records_it_changed() -> None:
    """After the pass's first (full) write, each write carries the step records and foreach
    iterations its transitions changed, whatever the run has done before; the run reads
    back whole, and a resume (a full write) continues it."""
    store = _Imaging()
    reg = registry()
    worker = Worker(store, reg, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    try:
        engine = Engine(RunService(store, reg, runner=worker), worker, store)
        items = list(range(1, 13))
        done = await engine.run("fanout", {"items": items})
        assert done.snapshot.status is RunStatus.SUCCESS
        assert done.snapshot.result == [{"value": 10 * v} for v in items]
        first, *rest = store.images
        assert first.full
        assert rest and not any(image.full for image in rest)
        # The map step and the foreach step, each opened and settled; one write may fold an
        # open into a settle (group commit), never more.
        assert all(len(image.steps) <= 2 for image in rest)
        assert all(len(image.items.get("tracked", {})) <= 2 for image in rest)
        assert sum(len(image.items.get("tracked", {})) for image in rest) == len(items)
        assert sorted(done.snapshot.iterations["tracked"]) == list(range(len(items)))

        store.images.clear()
        gated = await engine.run("gated_fanout", {"items": [1, 2]})
        assert gated.snapshot.status is RunStatus.SUSPENDED
        resumed = await engine.resume(
            gated.snapshot.run_id, label="item-1", resume_data={"approved": True}
        )
        assert resumed.snapshot.status is RunStatus.SUSPENDED
        final = await engine.resume(
            gated.snapshot.run_id, label="item-2", resume_data={"approved": True}
        )
        assert final.snapshot.status is RunStatus.SUCCESS
        assert final.snapshot.result == [{"value": 2}, {"value": 4}]
    finally:
        await worker.stop(grace=1.0)
