"""Re-entering a settled run at a chosen step by time travel: what it re-executes and how it
rewinds the snapshot. (Which step a resume addresses is `resume_target.py`.)

Time travel re-executes a run from a step (its *target*) and every entry after it. The target
and its input are checked against the graph before anything is touched. The snapshot is then
rewritten so that the executor's ordinary walk does the rest: results before the target are
kept (or taken from the caller's context), the target's entry and every later one are cleared,
and the target's input is recorded where the walk picks it up. In a parallel or branch entry
only the target gets the new input: its siblings keep their results, or run again on their own
recorded input when they did not succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FailedPrecondition, FieldViolation, InvalidArgument
from .model import PendingResume, RunStatus, Snapshot, StepRecord, StepStatus
from .resume_target import resume_data
from .workflows import (
    BranchNode,
    ForeachNode,
    LoopNode,
    Node,
    ParallelNode,
    SleepNode,
    Step,
    Unit,
    Workflow,
    node_ids,
    node_units,
)

# ErrorInfo reasons of the refusals raised here.
UNKNOWN_STEP = "UNKNOWN_STEP"
SNAPSHOT_MISMATCH = "SNAPSHOT_MISMATCH"


@dataclass(frozen=True)
class TravelTarget:
    """Where a time travel re-enters the graph: the target's path (one segment per workflow
    level) and, when the caller gave one, its input checked against the graph (for a foreach,
    the list of its items)."""

    path: tuple[str, ...]
    input: Any = None
    has_input: bool = False


def travel_target(workflow: Workflow, path: Sequence[str], input_data: Any) -> TravelTarget:
    """Resolve a time travel's step path in the graph and check its input. Needs only the
    graph, so it runs before the run is looked at. Raises InvalidArgument: UNKNOWN_STEP (a
    violation on `step`), or violations under `input_data`."""
    wf = workflow
    for depth, segment in enumerate(path):
        found = wf.find(segment)
        if found is None:
            raise _unknown_step(f"workflow {wf.id!r} has no step {segment!r}")
        _, node, unit = found
        if depth < len(path) - 1:
            if not isinstance(unit, Workflow):
                raise _unknown_step(
                    f"{segment!r} is not a nested workflow of {wf.id!r}: "
                    f"it has no step {path[depth + 1]!r}"
                )
            wf = unit
            continue
        if input_data is None:
            return TravelTarget(tuple(path))
        data = _target_input(".".join(path), node, unit, input_data)
        return TravelTarget(tuple(path), data, has_input=True)
    raise _unknown_step("must name a step")  # an empty path: refused earlier by the caller


def _unknown_step(description: str) -> InvalidArgument:
    return InvalidArgument(
        "unknown time travel step", [FieldViolation("step", description)], reason=UNKNOWN_STEP
    )


def _target_input(dotted: str, node: Node, unit: Unit | None, data: Any) -> Any:
    """The time travel input of the target `unit` of `node`, validated and normalized."""
    violations: list[FieldViolation] = []
    value: Any = None
    if isinstance(node, SleepNode) or unit is None:
        violations.append(
            FieldViolation("input_data", "a sleep takes no input: it passes the previous output on")
        )
    elif isinstance(node, ForeachNode):
        if isinstance(data, list):
            schema = node.step.input_schema
            value = [
                schema.conform(item, f"input_data[{i}]", violations) for i, item in enumerate(data)
            ]
        else:
            violations.append(
                FieldViolation("input_data", "a foreach step takes the list of its items")
            )
    else:
        value = unit.input_schema.conform(data, "input_data", violations)
    if violations:
        raise InvalidArgument(f"invalid input data for step {dotted!r}", violations)
    return value


def rewind(
    workflow: Workflow,
    snap: Snapshot,
    target: TravelTarget,
    *,
    context: Mapping[str, StepRecord],
    resume: Any,
    original: Snapshot,
    depth: int = 0,
) -> None:
    """Rewrite `snap` (a copy of the stored snapshot; `original` is the stored one) so that
    executing it re-runs `target` and everything after it. `context` holds step results to
    use instead of the snapshot's, keyed by dotted step id; `resume` is resume data for a
    target recorded as suspended.

    Raises FailedPrecondition (SNAPSHOT_MISMATCH) when the snapshot no longer matches the
    graph, InvalidArgument for bad resume data."""
    prefix = "".join(f"{segment}." for segment in target.path[:depth])
    step_id = target.path[depth]
    found = workflow.find(step_id)
    if found is None:
        raise _unknown_step(f"workflow {workflow.id!r} has no step {step_id!r}")
    index, node, unit = found

    def refuse(message: str) -> FailedPrecondition:
        return FailedPrecondition.of_run(original, SNAPSHOT_MISMATCH, message)

    graph_ids = {uid for entry in workflow.nodes for uid in node_ids(entry)}
    strangers = sorted(k for k in snap.steps if k not in graph_ids)
    if strangers:
        raise refuse(f"the run recorded steps the workflow no longer has: {', '.join(strangers)}")
    for entry in workflow.nodes[:index]:
        if isinstance(entry, BranchNode | LoopNode | ForeachNode | SleepNode):
            continue  # re-executed (or re-chosen) if they have no result
        for uid in node_ids(entry):
            rec = context.get(prefix + uid) or snap.steps.get(uid)
            if rec is None or rec.status is not StepStatus.SUCCESS:
                raise refuse(
                    f"step {prefix + uid!r} before {prefix + step_id!r} has no "
                    "successful result in the snapshot or the context"
                )
            snap.steps[uid] = rec

    old_target = snap.steps.get(step_id)
    old_child = snap.children.get(step_id)
    old_position = snap.suspended_paths.get(step_id)
    kept, rerun = _siblings(node, step_id, snap, context, prefix)
    branches = _branches_after(node, step_id, snap.entry_state.get(str(index), {}))
    cleared = {uid for entry in workflow.nodes[index:] for uid in node_ids(entry)} - set(kept)
    for uid in cleared:
        snap.steps.pop(uid, None)
        snap.suspended_paths.pop(uid, None)
        snap.active_steps.pop(uid, None)
        snap.children.pop(uid, None)
        snap.iterations.pop(uid, None)
    snap.steps.update(kept)
    for uid, payload in rerun.items():
        snap.steps[uid] = StepRecord(status=StepStatus.RUNNING, payload=payload)
    snap.step_execution_path = [s for s in snap.step_execution_path if s not in cleared]
    snap.resume_labels = {k: v for k, v in snap.resume_labels.items() if v.step_id not in cleared}
    snap.entry_state = {k: v for k, v in snap.entry_state.items() if int(k) < index}
    if branches is not None:
        snap.entry_state[str(index)] = {"branches": branches}
    snap.pending_resume = None
    snap.status = RunStatus.RUNNING

    if depth < len(target.path) - 1:
        if not isinstance(unit, Workflow) or old_child is None or old_target is None:
            raise refuse(f"nested workflow {prefix + step_id!r} has not run in this run")
        rewind(
            unit,
            old_child,
            target,
            context=context,
            resume=resume,
            original=original,
            depth=depth + 1,
        )
        snap.children[step_id] = old_child
        snap.steps[step_id] = StepRecord(
            status=StepStatus.RUNNING, payload=old_target.payload, started_at=old_target.started_at
        )
        return
    if target.has_input:
        if isinstance(node, ParallelNode | BranchNode):
            # The target's own input: a running record is re-run on its payload.
            snap.steps[step_id] = StepRecord(status=StepStatus.RUNNING, payload=target.input)
        else:
            snap.entry_state[str(index)] = {"input": target.input}
    if (
        resume is not None
        and isinstance(unit, Step)
        and old_target is not None
        and old_target.status is StepStatus.SUSPENDED
    ):
        if target.has_input:
            old_target.payload = target.input  # the resumed step re-executes on its payload
        snap.steps[step_id] = old_target
        snap.suspended_paths[step_id] = old_position or [index]
        snap.pending_resume = PendingResume(
            step_id=step_id, path=[step_id], data=resume_data(unit, resume)
        )


def _siblings(
    node: Node,
    step_id: str,
    snap: Snapshot,
    context: Mapping[str, StepRecord],
    prefix: str,
) -> tuple[dict[str, StepRecord], dict[str, Any]]:
    """The other children of the target's parallel or branch entry: those kept as recorded
    (succeeded, in the context or the snapshot, or suspended), and the recorded input of
    those that run again (failed, canceled, interrupted). A child without a record runs on
    the entry's input if the entry runs it."""
    kept: dict[str, StepRecord] = {}
    rerun: dict[str, Any] = {}
    if not isinstance(node, ParallelNode | BranchNode):
        return kept, rerun
    for unit in node_units(node):
        if unit.id == step_id:
            continue
        given = context.get(prefix + unit.id)
        own = snap.steps.get(unit.id)
        if given is not None and given.status is StepStatus.SUCCESS:
            kept[unit.id] = given
        elif own is not None and own.status in (StepStatus.SUCCESS, StepStatus.SUSPENDED):
            kept[unit.id] = own
        elif own is not None:
            rerun[unit.id] = own.payload
    return kept, rerun


def _branches_after(node: Node, step_id: str, entry: Mapping[str, Any]) -> list[str] | None:
    """For a branch entry: the branches taken before, plus the target (in graph order).
    Conditions are not evaluated again: the target runs because the caller named it."""
    if not isinstance(node, BranchNode):
        return None
    taken = set(entry.get("branches") or ()) | {step_id}
    return [unit.id for unit in node.steps if unit.id in taken]
