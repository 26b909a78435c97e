"""A loop entry (dowhile / dountil): its step runs again on its own output until the
condition decides, with the iteration reached kept in the entry's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..workflows import LoopNode
from . import transitions
from .base import Kind, Outcome
from .conditions import condition_context, evaluate
from .failures import LoopConditionFailed, serialize_error

if TYPE_CHECKING:
    from .walk import Execution


async def run_loop(ex: Execution, index: int, node: LoopNode, value: Any) -> Outcome:
    """Iteration k (from 1) runs on the previous iteration's output; progress is kept in
    the entry state so a resumed or re-driven loop continues where it was."""
    entry = ex.snap.entry_state.setdefault(str(index), {})
    if entry.get("done"):
        return Outcome(Kind.OK, entry["output"])
    iteration = entry.get("iteration", 1)
    payload = entry.get("input", value) if iteration > 1 else value
    while True:
        if iteration > 1 and ex.cancel_event.is_set():
            return Outcome(Kind.CANCELED)
        outcome = await ex.run_unit(node.step, [index], payload, iteration=iteration)
        if outcome.kind is not Kind.OK:
            return outcome
        try:
            holds = await evaluate(node.condition, condition_context(ex, outcome.value, iteration))
        except Exception as err:
            error = serialize_error(
                LoopConditionFailed(
                    f"loop condition of step {node.step.id!r} raised on iteration "
                    f"{iteration}: {type(err).__name__}: {err}"
                )
            )
            return await transitions.fail_recorded(ex, node.step.id, error)
        if holds is node.until:
            entry.update(done=True, output=outcome.value)
            return Outcome(Kind.OK, outcome.value)
        iteration += 1
        entry.update(iteration=iteration, input=outcome.value)
        payload = outcome.value


__all__ = ["run_loop"]
