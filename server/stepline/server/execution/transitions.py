"""How a run's records move, and the one place that builds the events announcing it.

Each transition changes the snapshot and commits it together with its events: the run starts
or finishes or hands itself to a timer; a step opens, settles, suspends, waits out a sleep or
fails after the fact; a foreach iteration ends; a step writes output. `recorded` is the read
side: what the records already decide, so that a replayed pass opens only what still has to
run. (What a cancel closes is announced by `cancellation`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from ..cancellation import close_open_steps
from ..events import (
    Event,
    StepData,
    StepOutput,
    StepProgress,
    StepResult,
    StepStart,
    StepSuspended,
    StepWaiting,
    Suspension,
    WorkflowCanceled,
    WorkflowPaused,
    WorkflowStart,
)
from ..model import (
    ErrorData,
    PendingResume,
    ResumeLabel,
    RunStatus,
    Snapshot,
    StepRecord,
    StepStatus,
    now,
)
from .attempt import Attempt
from .base import Kind, Outcome, settled_status

if TYPE_CHECKING:
    from .walk import Execution


# -- the run -------------------------------------------------------------------------------
async def start(ex: Execution, reason: str) -> None:
    """Announce a pass: "start" for a new run, "restart" for one continued after a crash."""
    await ex.commit([Event(data=WorkflowStart(workflow_id=ex.workflow_id, reason=reason))])


async def hand_to_timer(ex: Execution, wake_at: float) -> Snapshot:
    """Release a run that sleeps until `wake_at` to the durable timer."""
    ex.snap.status = RunStatus.WAITING
    ex.snap.wake_at = wake_at
    await ex.commit([], release=True, wake_at=wake_at)
    return ex.snap


async def finish(ex: Execution, outcome: Outcome) -> Snapshot:
    """End the pass as `outcome` says, releasing the run."""
    snap = ex.snap
    status = settled_status(outcome.kind)
    snap.status = status
    snap.active_steps.clear()
    snap.pending_resume = None
    snap.pause_after = None  # a per_step request covers one pass
    events: list[Event] = []
    if status is RunStatus.SUCCESS:
        snap.result = outcome.value
        data = snap.finish_data(result=outcome.value)
    elif status is RunStatus.FAILED:
        snap.error = outcome.error
        data = snap.finish_data(error=outcome.error.as_event() if outcome.error else None)
    elif status is RunStatus.SUSPENDED:
        snap.resumed_since_suspend = False
        suspended = tuple(
            Suspension(path=tuple(leaf.path), payload=leaf.payload, labels=tuple(leaf.labels))
            for leaf in snap.suspended_leaves()
        )
        data = snap.finish_data(suspended=suspended)
    elif status is RunStatus.PAUSED:
        # Not suspended: a resume is refused as such, not as a lost race.
        snap.resumed_since_suspend = False
        events.append(Event(data=WorkflowPaused()))
        data = snap.finish_data()
    else:
        # No step of a canceled run stays running, waiting or suspended (every record may
        # change, iterations of an older layout included: write them all).
        ex.changes.full = True
        events.extend(close_open_steps(snap, ex.workflow))
        events.append(Event(data=WorkflowCanceled()))
        data = snap.finish_data()
    events.append(Event(data=data))
    await ex.commit(events, release=True)
    return snap


# -- a step --------------------------------------------------------------------------------
def recorded(
    ex: Execution, unit_id: str, prior: StepRecord | None
) -> tuple[Outcome | None, PendingResume | None]:
    """What the snapshot already decides for a step: its recorded outcome when it needs no
    execution (succeeded; failed, when a pass died before recording the run's end;
    suspended and not the resume target), else the pending resume that targets it (or
    None for a fresh or re-driven run). Time travel clears the records it re-runs."""
    if prior is None:
        return None, None
    if prior.status is StepStatus.SUCCESS:
        return Outcome(Kind.OK, prior.output), None
    if prior.status is StepStatus.FAILED:
        return Outcome(Kind.FAILED, error=prior.error), None
    if prior.status is StepStatus.SUSPENDED:
        pending = ex.snap.pending_resume
        if pending is None or pending.step_id != unit_id:
            return Outcome(Kind.SUSPENDED), None
        return None, pending
    return None, None


async def open_step(
    ex: Execution,
    unit_id: str,
    position: list[int],
    payload: Any,
    prior: StepRecord | None,
    resume: PendingResume | None,
    metadata: dict[str, Any],
) -> StepRecord:
    """Record the step as running and emit its step-start."""
    snap = ex.snap
    started = now()
    rec = StepRecord(
        status=StepStatus.RUNNING, payload=payload, started_at=started, metadata=metadata
    )
    if resume is not None:
        rec.resume_payload, rec.resumed_at = resume.data, started
    elif prior is not None and prior.resume_payload is not None:
        # Re-driving a resume pass that was interrupted: keep what it was resumed with.
        rec.resume_payload, rec.resumed_at = prior.resume_payload, prior.resumed_at
    if prior is not None:
        rec.suspend_payload = prior.suspend_payload
        rec.suspend_labels = list(prior.suspend_labels)
    snap.steps[unit_id] = rec
    snap.active_steps[unit_id] = position
    if resume is not None:
        snap.suspended_paths.pop(unit_id, None)
        snap.resume_labels = {k: v for k, v in snap.resume_labels.items() if v.step_id != unit_id}
        snap.pending_resume = None
    if unit_id not in snap.step_execution_path:
        snap.step_execution_path.append(unit_id)
    start = StepStart(
        step_id=unit_id,
        payload=payload,
        started_at=started,
        resume_payload=UNSET if rec.resume_payload is None else rec.resume_payload,
        metadata=metadata if metadata else UNSET,
    )
    await ex.commit([Event(data=start)])
    return rec


async def write_output(ex: Execution, step_id: str, data: Any) -> None:
    """A step's ctx.write(), already checked to be plain JSON."""
    await ex.commit([Event(data=StepOutput(step_id=step_id, output=data))])


async def close(
    ex: Execution, unit_id: str, position: list[int], rec: StepRecord, attempt: Attempt
) -> Outcome:
    """Record how the step ended and emit its result (or suspension)."""
    rec.attempts = attempt.attempts
    if attempt.kind is Kind.SUSPENDED and attempt.suspend is not None:
        return await suspend(
            ex, unit_id, position, rec, attempt.suspend.payload, attempt.suspend.labels
        )
    if attempt.kind is Kind.OK:
        ex.snap.state.update(attempt.state_update)
        return await settle(
            ex, unit_id, rec, StepStatus.SUCCESS, attempt.value, Outcome(Kind.OK, attempt.value)
        )
    if attempt.kind is Kind.BAILED:
        return await settle(
            ex, unit_id, rec, StepStatus.SUCCESS, attempt.value, Outcome(Kind.BAILED, attempt.value)
        )
    if attempt.kind is Kind.FAILED:
        rec.error = attempt.error
        return await settle(
            ex, unit_id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=attempt.error)
        )
    return await settle(ex, unit_id, rec, StepStatus.CANCELED, None, Outcome(Kind.CANCELED))


async def settle(
    ex: Execution,
    unit_id: str,
    rec: StepRecord,
    status: StepStatus,
    output: Any,
    outcome: Outcome,
    *,
    values: bool = True,
) -> Outcome:
    """Record the step's end as `status` (with `output`, or its `rec.error`), emit its
    step-result, and hand back `outcome`. Without `values` (a foreach, whose input list is
    in its step-start and each output in a step-progress) the event carries neither the
    payload nor the output: the step's record holds both."""
    rec.status, rec.ended_at, rec.output = status, now(), output
    ex.snap.active_steps.pop(unit_id, None)
    await ex.commit([_result_event(unit_id, rec, values=values)])
    return outcome


def _result_event(
    step_id: str, rec: StepRecord, *, values: bool = True, attempts: int | None = None
) -> Event:
    """The step-result of a step whose record `rec` now holds its end: status, times and
    attempts, the payload and (on success) the output unless `values` is off, the error."""
    result = StepResult(
        step_id=step_id,
        status=rec.status,
        started_at=rec.started_at,
        ended_at=rec.ended_at,
        attempts=rec.attempts if attempts is None else attempts,
        payload=rec.payload if values else UNSET,
        output=rec.output if values and rec.status is StepStatus.SUCCESS else UNSET,
        error=UNSET if rec.error is None else rec.error.as_event(),
    )
    return Event(data=result)


async def suspend(
    ex: Execution,
    unit_id: str,
    position: list[int],
    rec: StepRecord,
    payload: Any,
    labels: list[str],
    label_targets: dict[str, ResumeLabel] | None = None,
) -> Outcome:
    """Record the step as suspended with `payload`, resumable by `labels` (each naming this
    step unless `label_targets` says which step or iteration it resumes)."""
    snap = ex.snap
    rec.status, rec.suspended_at = StepStatus.SUSPENDED, now()
    rec.suspend_payload, rec.suspend_labels = payload, labels
    rec.resume_payload = rec.resumed_at = None
    snap.active_steps.pop(unit_id, None)
    snap.suspended_paths[unit_id] = position
    targets = label_targets or {label: ResumeLabel(step_id=unit_id) for label in labels}
    snap.resume_labels.update(targets)
    suspended = StepSuspended(
        step_id=unit_id,
        payload=rec.payload,
        suspend_payload=payload,
        labels=tuple(labels),
        suspended_at=rec.suspended_at,
    )
    await ex.commit([Event(data=suspended)])
    return Outcome(Kind.SUSPENDED)


async def fail_recorded(ex: Execution, step_id: str, error: ErrorData) -> Outcome:
    """Fail a step whose own execution succeeded (e.g. its loop condition raised)."""
    rec = ex.snap.steps[step_id]
    rec.status, rec.error = StepStatus.FAILED, error
    await ex.commit([_result_event(step_id, rec)])
    return Outcome(Kind.FAILED, error=error)


async def report_iteration(
    ex: Execution,
    step_id: str,
    *,
    index: int,
    status: StepStatus,
    output: Any,
    completed: int,
    total: int,
) -> None:
    """Announce that iteration `index` of a foreach ended as `status` (with `output` when
    "success"); the iteration's record is the foreach's own, already updated."""
    progress = StepProgress(
        step_id=step_id,
        completed_count=completed,
        total_count=total,
        current_index=index,
        iteration_status=status,
        iteration_output=output if status is StepStatus.SUCCESS else UNSET,
    )
    await ex.commit([Event(data=progress)])


# -- a sleep -------------------------------------------------------------------------------
async def begin_wait(
    ex: Execution,
    step_id: str,
    position: list[int],
    payload: Any,
    *,
    started: float,
    wake_at: float,
) -> StepRecord:
    """Record a sleep as waiting until `wake_at` and emit its step-waiting."""
    snap = ex.snap
    rec = StepRecord(
        status=StepStatus.WAITING,
        payload=payload,
        started_at=started,
        metadata={"wake_at": wake_at},
    )
    snap.steps[step_id] = rec
    snap.active_steps[step_id] = position
    if step_id not in snap.step_execution_path:
        snap.step_execution_path.append(step_id)
    waiting = StepWaiting(step_id=step_id, payload=payload, started_at=started, wake_at=wake_at)
    await ex.commit([Event(data=waiting)])
    return rec


async def end_wait(ex: Execution, step_id: str, rec: StepRecord) -> Outcome:
    """Record a sleep as done, passing its input on, and emit its step-result."""
    rec.status, rec.output, rec.ended_at = StepStatus.SUCCESS, rec.payload, now()
    ex.snap.active_steps.pop(step_id, None)
    await ex.commit([_result_event(step_id, rec, attempts=1)])  # a sleep is one attempt
    return Outcome(Kind.OK, rec.output)


# -- nested workflows ----------------------------------------------------------------------
def with_step_prefix(events: Sequence[Event], prefix: str) -> list[Event]:
    """A nested workflow's events as the parent's log holds them: step ids prefixed."""
    return [_prefixed(e, prefix) for e in events]


def _prefixed(event: Event, prefix: str) -> Event:
    data = event.data
    if not isinstance(data, StepData):
        return event
    named = msgspec.structs.replace(data, step_id=prefix + data.step_id)
    return Event(data=named, sequence=event.sequence, timestamp=event.timestamp)


__all__ = [
    "begin_wait",
    "close",
    "end_wait",
    "fail_recorded",
    "finish",
    "hand_to_timer",
    "open_step",
    "recorded",
    "report_iteration",
    "settle",
    "start",
    "suspend",
    "with_step_prefix",
    "write_output",
]
