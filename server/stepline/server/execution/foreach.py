"""A foreach entry: one run of its step per element of the list it receives, at most
`concurrency` in flight, each iteration's end kept in the entry's state (`items`) so that a
resumed or re-driven foreach runs only the iterations still open, and the step settled from
all of them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cancellation import cancel_iterations
from ..model import ErrorData, ResumeLabel, StepRecord, StepStatus
from ..workflows import ForeachNode, Step
from . import transitions
from .attempt import Attempt, run_attempts
from .base import Kind, Outcome
from .failures import ForeachInputInvalid, serialize_error

if TYPE_CHECKING:
    from .walk import Execution


_ENDED = ("success", "failed")


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
    entry = snap.entry_state.setdefault(str(index), {})
    items: list[dict[str, Any] | None] = entry.setdefault("items", [None] * len(value))

    def targeted(i: int) -> bool:
        item = items[i]
        return (
            resume is not None
            and item is not None
            and item["status"] == "suspended"
            and resume.for_each_index in (None, i)
        )

    todo = [
        i
        for i, item in enumerate(items)
        if item is None or item["status"] == "running" or targeted(i)
    ]
    resume_for = {i: (resume.data if resume else None) for i in todo if targeted(i)}
    # Iterations that ended (success or failure): counted once here, then kept up to date, so
    # an iteration's progress report costs the same at item 10 and at item 100,000.
    ended = _Tally(sum(1 for it in items if it is not None and it["status"] in _ENDED))
    stop = asyncio.Event()
    window = asyncio.Semaphore(node.concurrency)

    async def one(i: int) -> None:
        try:
            prev = items[i] or {}
            items[i] = {"status": "running"}
            attempt = await run_attempts(
                ex,
                step,
                value[i],
                resume_for.get(i),
                prev.get("suspend_payload") if i in resume_for else None,
            )
            await _item_done(ex, step, items, i, attempt, ended)
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
    return await _foreach_outcome(ex, step, [index], rec, items)


async def _item_done(
    ex: Execution,
    step: Step[Any, Any],
    items: list[dict[str, Any] | None],
    i: int,
    attempt: Attempt,
    ended: _Tally,
) -> None:
    status = {
        Kind.OK: "success",
        Kind.BAILED: "success",
        Kind.FAILED: "failed",
        Kind.SUSPENDED: "suspended",
    }.get(attempt.kind, "canceled")
    item: dict[str, Any] = {"status": status}
    if attempt.kind in (Kind.OK, Kind.BAILED):
        item["output"] = attempt.value
        ex.snap.state.update(attempt.state_update)
    elif attempt.kind is Kind.FAILED and attempt.error is not None:
        item["error"] = attempt.error.model_dump()
    elif attempt.suspend is not None:
        item["suspend_payload"] = attempt.suspend.payload
        item["labels"] = attempt.suspend.labels
    items[i] = item
    if status in _ENDED:  # only open iterations run, so each ends once
        ended.count += 1
    await transitions.report_iteration(
        ex,
        step.id,
        index=i,
        status=status,
        output=item.get("output"),
        completed=ended.count,
        total=len(items),
    )


async def _foreach_outcome(
    ex: Execution,
    step: Step[Any, Any],
    position: list[int],
    rec: StepRecord,
    items: list[dict[str, Any] | None],
) -> Outcome:
    rec.attempts = 1
    failed = [it for it in items if it is not None and it["status"] == "failed"]
    if failed:
        rec.error = ErrorData.model_validate(failed[0]["error"])
        return await transitions.settle(
            ex, step.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=rec.error)
        )
    if ex.cancel_event.is_set() and any(it is None or it["status"] != "success" for it in items):
        closed = cancel_iterations(step.id, items)
        if closed:
            await ex.commit(closed)
        return await transitions.settle(
            ex, step.id, rec, StepStatus.CANCELED, None, Outcome(Kind.CANCELED)
        )
    suspended = {
        i: it for i, it in enumerate(items) if it is not None and it["status"] == "suspended"
    }
    if suspended or any(it is None for it in items):
        labels = [label for it in suspended.values() for label in it.get("labels", [])]
        targets = {
            label: ResumeLabel(step_id=step.id, for_each_index=i)
            for i, it in suspended.items()
            for label in it.get("labels", [])
        }
        payload = {str(i): it.get("suspend_payload") for i, it in suspended.items()}
        return await transitions.suspend(ex, step.id, position, rec, payload, labels, targets)
    outputs = [it["output"] for it in items if it is not None]
    return await transitions.settle(
        ex, step.id, rec, StepStatus.SUCCESS, outputs, Outcome(Kind.OK, outputs)
    )


__all__ = ["run_foreach"]
