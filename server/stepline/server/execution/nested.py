"""A nested workflow used as a step: it runs as a child execution over a child snapshot kept
inside the parent's (`Snapshot.children`), so one atomic write still covers the whole run, and
its events reach the parent's log with step ids prefixed `child.`. The child's ending settles,
suspends or parks the step that stands for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..model import (
    ChangeSet,
    Event,
    PendingResume,
    ResumeLabel,
    RunStatus,
    Snapshot,
    StepRecord,
    StepStatus,
)
from ..schema import SchemaViolation
from ..workflows import Workflow
from . import transitions
from .base import Kind, Outcome, settled_status
from .failures import StepInputInvalid, serialize_error, violations

if TYPE_CHECKING:
    from .walk import Execution


class ChildJournal:
    """A nested workflow's transitions are the parent's: prefix the ids, write the parent.
    What the child's change set marks becomes the parent's, prefixed likewise, since the
    parent keeps the nested workflow's records as its own ("child.step")."""

    def __init__(self, parent: Execution, step_id: str) -> None:
        self._parent = parent
        self._prefix = f"{step_id}."

    async def commit(
        self,
        snapshot: Snapshot,
        events: Sequence[Event],
        *,
        release: bool = False,
        wake_at: float | None = None,
        changes: ChangeSet | None = None,
    ) -> bool:
        if changes is not None:
            self._parent.changes.adopt(changes, self._prefix)
        await self._parent.commit(transitions.with_step_prefix(events, self._prefix))
        return False  # the shared cancel event already carries the parent's flag


async def run_child(
    ex: Execution,
    child_wf: Workflow,
    position: list[int],
    rec: StepRecord,
    resume: PendingResume | None,
) -> Outcome:
    """Walk `child_wf` from its snapshot (made from the step's payload on first entry)."""
    snap = ex.snap
    child = snap.children.get(child_wf.id)
    if child is None:
        try:
            data = child_wf.input_schema.normalize(rec.payload, path="input")
        except SchemaViolation as err:
            rec.error = serialize_error(
                StepInputInvalid(violations("Nested workflow input validation failed:", err))
            )
            return await transitions.settle(
                ex, child_wf.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=rec.error)
            )
        child = Snapshot(
            run_id=snap.run_id,
            workflow_id=child_wf.id,
            input=data,
            state=dict(snap.state),
            request_context=snap.request_context,
            resource_id=snap.resource_id,
            trace_id=snap.trace_id,
        )
        snap.children[child_wf.id] = child
    if resume is not None and len(resume.path) > 1:
        child.pending_resume = PendingResume(
            step_id=resume.path[1],
            path=resume.path[1:],
            data=resume.data,
            for_each_index=resume.for_each_index,
        )
    child.status = RunStatus.RUNNING
    child.request_context = snap.request_context
    outcome = await ex.spawn(child_wf, child, ChildJournal(ex, child_wf.id)).walk()
    waiting = outcome.kind is Kind.WAITING
    child.status = RunStatus.WAITING if waiting else settled_status(outcome.kind)
    if outcome.kind in (Kind.OK, Kind.BAILED):
        snap.state.update(child.state)  # state flows back out
        child.result = outcome.value
        return await transitions.settle(
            ex, child_wf.id, rec, StepStatus.SUCCESS, outcome.value, Outcome(Kind.OK, outcome.value)
        )
    if outcome.kind is Kind.FAILED:
        child.error = rec.error = outcome.error
        return await transitions.settle(ex, child_wf.id, rec, StepStatus.FAILED, None, outcome)
    if outcome.kind is Kind.SUSPENDED:
        leaves = child.suspended_leaves()
        labels = [label for leaf in leaves for label in leaf.labels]
        targets = {
            label: ResumeLabel(
                step_id=child_wf.id,
                for_each_index=target.for_each_index,
                path=[child_wf.id, *(target.path or [target.step_id])],
            )
            for label, target in child.resume_labels.items()
        }
        payload = (
            leaves[0].payload
            if len(leaves) == 1
            else {".".join(leaf.path): leaf.payload for leaf in leaves}
        )
        return await transitions.suspend(ex, child_wf.id, position, rec, payload, labels, targets)
    if outcome.kind is Kind.WAITING:
        rec.status = StepStatus.WAITING
        ex.changes.step(child_wf.id)  # written by the commit that hands the run to its timer
        return outcome
    return await transitions.settle(ex, child_wf.id, rec, StepStatus.CANCELED, None, outcome)


__all__ = ["ChildJournal", "run_child"]
