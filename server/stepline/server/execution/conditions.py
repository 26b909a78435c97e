"""Conditions of branches and loops: what they see of the run, and how they are evaluated."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..model import StepStatus
from ..workflows import Condition, ConditionContext

if TYPE_CHECKING:
    from .walk import Execution

log = logging.getLogger(__name__)


def condition_context(ex: Execution, value: Any, iteration: int = 0) -> ConditionContext:
    """What a condition sees: the entry's input `value` and the run so far."""
    return ConditionContext(
        input=value,
        state=dict(ex.snap.state),
        request_context=ex.request_context,
        init_data=ex.snap.input,
        step_results={
            k: r.output for k, r in ex.snap.steps.items() if r.status is StepStatus.SUCCESS
        },
        iteration_count=iteration,
    )


async def evaluate(cond: Condition, ctx: ConditionContext) -> bool:
    """`cond`'s verdict, awaited when it is async; what it raises propagates."""
    result = cond(ctx)
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


async def holds(cond: Condition, ctx: ConditionContext) -> bool:
    """A raising branch condition counts as false."""
    try:
        return await evaluate(cond, ctx)
    except Exception:
        log.warning("branch condition raised; treating it as false", exc_info=True)
        return False


__all__ = ["condition_context", "evaluate", "holds"]
