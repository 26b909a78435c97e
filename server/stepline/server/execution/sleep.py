"""A sleep entry: a short one is waited out in place, a longer one hands the run back to a
durable timer and is found done on the pass that timer starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model import StepStatus, now
from ..workflows import SleepNode
from . import transitions
from .base import Kind, Outcome

if TYPE_CHECKING:
    from .walk import Execution

# Sleeps this short are waited out in place; longer ones hand the run back to a durable timer.
INLINE_SLEEP = 1.0


async def run_sleep(ex: Execution, index: int, node: SleepNode, value: Any) -> Outcome:
    """Pass `value` on once the sleep is over; WAITING (with its wake time) until then."""
    rec = ex.snap.steps.get(node.id)
    if rec is not None and rec.status is StepStatus.SUCCESS:
        return Outcome(Kind.OK, rec.output)
    if rec is None or rec.status is not StepStatus.WAITING:
        started = now()
        wake_at = node.until if node.until is not None else started + (node.seconds or 0.0)
        rec = await transitions.begin_wait(
            ex, node.id, [index], value, started=started, wake_at=wake_at
        )
    wake_at = float(rec.metadata["wake_at"])
    remaining = wake_at - now()
    if remaining > INLINE_SLEEP:
        return Outcome(Kind.WAITING, wake_at=wake_at)
    if remaining > 0 and await ex.cancelled_within(remaining):
        return Outcome(Kind.CANCELED)
    return await transitions.end_wait(ex, node.id, rec)


__all__ = ["INLINE_SLEEP", "run_sleep"]
