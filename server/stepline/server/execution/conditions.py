"""Conditions of branches and loops: what they see of the run, and how they are evaluated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..model import StepRecord, StepStatus
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
        step_results=SuccessfulOutputs(ex.snap.steps),
        iteration_count=iteration,
    )


class SuccessfulOutputs(Mapping[str, Any]):
    """The outputs of the run's successful steps by step id: a read-only view of the step
    records, so a condition costs what it reads, not a copy of every record (a loop that
    checks its condition after each of 10,000 iterations stays linear)."""

    def __init__(self, records: Mapping[str, StepRecord]) -> None:
        self._records = records

    def __getitem__(self, step_id: str) -> Any:
        rec = self._records[step_id]
        if rec.status is not StepStatus.SUCCESS:
            raise KeyError(step_id)
        return rec.output

    def __iter__(self) -> Iterator[str]:
        return (k for k, r in self._records.items() if r.status is StepStatus.SUCCESS)

    def __len__(self) -> int:
        return sum(1 for r in self._records.values() if r.status is StepStatus.SUCCESS)


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
