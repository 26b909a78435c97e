"""Closing what a canceled run leaves open. Once a run is CANCELED no step of it is RUNNING,
WAITING or SUSPENDED, and no foreach iteration is running or suspended: nested workflows
included, each is recorded CANCELED and announced on the log (a step-result, or a
step-progress for an iteration) so that a stream consumer sees it end.
"""

from __future__ import annotations

from .events import Event, StepProgress, StepResult
from .model import IterationRecord, RunStatus, Snapshot, StepStatus, now
from .workflows import ForeachNode, Workflow

OPEN_STEPS = frozenset({StepStatus.RUNNING, StepStatus.WAITING, StepStatus.SUSPENDED})
_OPEN_ITERATIONS = frozenset({StepStatus.RUNNING, StepStatus.SUSPENDED})
_DONE_ITERATIONS = frozenset({StepStatus.SUCCESS, StepStatus.FAILED})


def cancel_iterations(step_id: str, items: dict[int, IterationRecord], total: int) -> list[Event]:
    """Mark a foreach's running and suspended iterations canceled (in place); the
    step-progress events that say so, in index order. `total`: the foreach's item count."""
    events: list[Event] = []
    # Canceling an iteration does not end it as counted (success or failure).
    done = sum(1 for it in items.values() if it.status in _DONE_ITERATIONS)
    for i in sorted(items):
        if items[i].status not in _OPEN_ITERATIONS:
            continue
        items[i] = IterationRecord(status=StepStatus.CANCELED)
        progress = StepProgress(
            step_id=step_id,
            completed_count=done,
            total_count=total,
            current_index=i,
            iteration_status=StepStatus.CANCELED,
        )
        events.append(Event(data=progress))
    return events


def close_open_steps(snap: Snapshot, workflow: Workflow | None) -> list[Event]:
    """Record every step and iteration `snap` left open as CANCELED, in nested workflows too,
    and clear what only a live or suspended run has (active and suspended steps, resume
    labels, a pending resume, a timer). `workflow` (None when it is not registered) locates
    the foreach iterations. Returns the events to append before workflow-canceled: a nested
    workflow's steps before the step that runs it, a foreach's iterations before its step."""
    return _close(snap, workflow, "", now())


def _close(snap: Snapshot, workflow: Workflow | None, prefix: str, at: float) -> list[Event]:
    events: list[Event] = []
    for step_id, rec in snap.steps.items():
        found = workflow.find(step_id) if workflow is not None else None
        child = snap.children.get(step_id)
        if child is not None:
            nested = found[2] if found is not None and isinstance(found[2], Workflow) else None
            events.extend(_close(child, nested, f"{prefix}{step_id}.", at))
            if not child.status.finished:
                child.status = RunStatus.CANCELED
        if found is not None and isinstance(found[1], ForeachNode):
            snap.adopt_legacy_items(step_id, found[0])
            items = snap.iterations.get(step_id)
            if items:
                total = len(rec.payload) if isinstance(rec.payload, list) else len(items)
                events.extend(cancel_iterations(prefix + step_id, items, total))
        if rec.status not in OPEN_STEPS:
            continue
        rec.status, rec.ended_at = StepStatus.CANCELED, at
        result = StepResult(
            step_id=prefix + step_id,
            status=StepStatus.CANCELED,
            started_at=rec.started_at,
            ended_at=at,
            attempts=rec.attempts,
            payload=rec.payload,
        )
        events.append(Event(data=result))
    snap.active_steps.clear()
    snap.suspended_paths.clear()
    snap.resume_labels.clear()
    snap.pending_resume = None
    snap.wake_at = None
    return events
