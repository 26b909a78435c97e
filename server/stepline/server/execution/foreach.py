"""A foreach entry: one run of its step per element of the list it receives, at most
`concurrency` in flight, each iteration's end kept as a record of its own
(`Snapshot.iterations`) so that a resumed or re-driven foreach runs only the iterations still
open, and the step settled from all of them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cancellation import cancel_iterations
from ..model import IterationRecord, ResumeLabel, StepRecord, StepStatus
from ..workflows import ForeachNode, Step
from . import transitions
from .attempt import Attempt, run_attempts
from .base import Kind, Outcome
from .failures import ForeachInputInvalid, serialize_error

if TYPE_CHECKING:
    from .walk import Execution


_ENDED = (StepStatus.SUCCESS, StepStatus.FAILED)
_STATUS = {
    Kind.OK: StepStatus.SUCCESS,
    Kind.BAILED: StepStatus.SUCCESS,
    Kind.FAILED: StepStatus.FAILED,
    Kind.SUSPENDED: StepStatus.SUSPENDED,
}


@dataclass
class _Tally:
    count: int


async def run_foreach(ex: Execution, index: int, node: ForeachNode, value: Any) -> Outcome:
    """One step per list element, at most `concurrency` in flight (a sliding window)."""
    step = node.step
    snap = ex.snap
    prior = snap.steps.get(step.id)
    done, resume = transitions.recorded(ex, step.id, prior)
    if done is not None:
        return done
    if prior is not None:
        value = prior.payload
    rec = await transitions.open_step(ex, step.id, [index], value, prior, resume, {})
    if not isinstance(value, list):
        error = serialize_error(
            ForeachInputInvalid(
                f"foreach step {step.id!r} needs a list as input, got {type(value).__name__}"
            )
        )
        rec.error = error
        return await transitions.settle(
            ex, step.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=error)
        )
    if snap.adopt_legacy_items(step.id, index):
        ex.changes.full = True
    items = snap.iterations.setdefault(step.id, {})
    total = len(value)

    def targeted(i: int) -> bool:
        item = items.get(i)
        return (
            resume is not None
            and item is not None
            and item.status is StepStatus.SUSPENDED
            and resume.for_each_index in (None, i)
        )

    todo = [
        i
        for i in range(total)
        if (item := items.get(i)) is None or item.status is StepStatus.RUNNING or targeted(i)
    ]
    resume_for = {i: (resume.data if resume else None) for i in todo if targeted(i)}
    # Iterations that ended (success or failure): counted once here, then kept up to date, so
    # an iteration's progress report costs the same at item 10 and at item 100,000.
    ended = _Tally(sum(1 for it in items.values() if it.status in _ENDED))
    stop = asyncio.Event()
    window = asyncio.Semaphore(node.concurrency)

    async def one(i: int) -> None:
        try:
            prev = items.get(i)
            items[i] = IterationRecord(status=StepStatus.RUNNING)
            attempt = await run_attempts(
                ex,
                step,
                value[i],
                resume_for.get(i),
                prev.suspend_payload if prev is not None and i in resume_for else None,
            )
            await _item_done(ex, step, items, total, i, attempt, ended)
            if attempt.kind is Kind.FAILED or (
                attempt.kind is Kind.SUSPENDED and node.concurrency == 1
            ):
                stop.set()  # no new items; in-flight ones finish
        finally:
            window.release()

    tasks: list[asyncio.Task[None]] = []
    for i in todo:
        await window.acquire()
        if stop.is_set() or ex.cancel_event.is_set():
            window.release()
            break
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return await _foreach_outcome(ex, step, [index], rec, items, total)


async def _item_done(
    ex: Execution,
    step: Step[Any, Any],
    items: dict[int, IterationRecord],
    total: int,
    i: int,
    attempt: Attempt,
    ended: _Tally,
) -> None:
    item = IterationRecord(status=_STATUS.get(attempt.kind, StepStatus.CANCELED))
    if attempt.kind in (Kind.OK, Kind.BAILED):
        item.output = attempt.value
        ex.snap.state.update(attempt.state_update)
    elif attempt.kind is Kind.FAILED and attempt.error is not None:
        item.error = attempt.error
    elif attempt.suspend is not None:
        item.suspend_payload = attempt.suspend.payload
        item.labels = attempt.suspend.labels
    items[i] = item
    if item.status in _ENDED:  # only open iterations run, so each ends once
        ended.count += 1
    await transitions.report_iteration(
        ex,
        step.id,
        index=i,
        status=item.status,
        output=item.output,
        completed=ended.count,
        total=total,
    )


async def _foreach_outcome(
    ex: Execution,
    step: Step[Any, Any],
    position: list[int],
    rec: StepRecord,
    items: dict[int, IterationRecord],
    total: int,
) -> Outcome:
    rec.attempts = 1
    ordered = sorted(items.items())
    failed = [it for _, it in ordered if it.status is StepStatus.FAILED]
    if failed:
        rec.error = failed[0].error
        return await transitions.settle(
            ex,
            step.id,
            rec,
            StepStatus.FAILED,
            None,
            Outcome(Kind.FAILED, error=rec.error),
            values=False,
        )
    complete = len(items) == total and all(it.status is StepStatus.SUCCESS for _, it in ordered)
    if ex.cancel_event.is_set() and not complete:
        closed = cancel_iterations(step.id, items, total)
        if closed:
            await ex.commit(closed)
        return await transitions.settle(
            ex, step.id, rec, StepStatus.CANCELED, None, Outcome(Kind.CANCELED), values=False
        )
    suspended = {i: it for i, it in ordered if it.status is StepStatus.SUSPENDED}
    if suspended or len(items) < total:
        labels = [label for it in suspended.values() for label in it.labels]
        targets = {
            label: ResumeLabel(step_id=step.id, for_each_index=i)
            for i, it in suspended.items()
            for label in it.labels
        }
        payload = {str(i): it.suspend_payload for i, it in suspended.items()}
        return await transitions.suspend(ex, step.id, position, rec, payload, labels, targets)
    outputs = [it.output for _, it in ordered]
    return await transitions.settle(
        ex, step.id, rec, StepStatus.SUCCESS, outputs, Outcome(Kind.OK, outputs), values=False
    )


__all__ = ["run_foreach"]
