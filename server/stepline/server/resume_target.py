"""Which suspended step a resume addresses, and the data it takes.

A resume names its step by resume label, by path (segments may be dotted: "child.inner"), or
not at all when exactly one step is suspended; a path ending at a nested workflow means that
workflow's one suspended leaf. A `for_each_index` must name a suspended iteration of a foreach.
The resume data is checked against the step's resume schema. Every refusal here happens
before the run is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FailedPrecondition, FieldViolation, InvalidArgument
from .model import Snapshot, StepStatus
from .schema import SchemaViolation
from .workflows import ForeachNode, Node, Step, Workflow

__all__ = [
    "ITERATION_NOT_SUSPENDED",
    "ResumeTarget",
    "check_iteration",
    "resume_data",
    "resume_target",
    "split_path",
    "suspended_iterations",
]

# ErrorInfo reason of a resume naming an iteration that is not suspended.
ITERATION_NOT_SUSPENDED = "ITERATION_NOT_SUSPENDED"


@dataclass(frozen=True)
class ResumeTarget:
    """A resume's step: its full path (one segment per workflow level), the foreach
    iteration it names, and its resume data, checked and normalized."""

    path: tuple[str, ...]
    for_each_index: int | None
    data: Any


def resume_target(
    workflow: Workflow,
    snap: Snapshot,
    *,
    step: Sequence[str],
    label: str,
    for_each_index: int | None,
    data: Any,
) -> ResumeTarget:
    """Resolve and check what a resume of `snap` addresses. Raises FailedPrecondition,
    InvalidArgument."""
    path, index, unit = _suspended_step(workflow, snap, step, label, for_each_index)
    if index is not None:
        check_iteration(workflow, snap, path, index)
    return ResumeTarget(tuple(path), index, resume_data(unit, data))


def split_path(segments: Sequence[str], field_name: str) -> list[str]:
    """A step path from a request's segments, dotted ones split. Raises InvalidArgument (on
    `field_name`) for an empty path or segment."""
    path = [seg for part in segments for seg in part.split(".")]
    if not path or any(not seg for seg in path):
        raise InvalidArgument(
            "invalid step path", [FieldViolation(field_name, "must be a non-empty step path")]
        )
    return path


def resume_data(step: Step[Any, Any], data: Any) -> Any:
    """`data` checked against the step's resume schema (defaults applied). Raises
    InvalidArgument (INVALID_RESUME_DATA)."""
    if step.resume_schema is None:
        return data
    try:
        return step.resume_schema.normalize(data if data is not None else {}, path="resume_data")
    except SchemaViolation as err:
        raise InvalidArgument(
            f"invalid resume data for step {step.id!r}",
            err.violations,
            reason="INVALID_RESUME_DATA",
        ) from None


def suspended_iterations(snap: Snapshot, index: int, node: Node) -> list[int]:
    """The suspended iterations of the foreach at entry `index` of `snap`'s graph ([] for an
    entry that is not a foreach)."""
    if not isinstance(node, ForeachNode):
        return []
    snap.adopt_legacy_items(node.step.id, index)
    items = snap.iterations.get(node.step.id, {})
    return sorted(i for i, item in items.items() if item.status is StepStatus.SUSPENDED)


def check_iteration(workflow: Workflow, snap: Snapshot, path: Sequence[str], index: int) -> None:
    """Refuse a resume whose `for_each_index` names no suspended iteration of the step at
    `path` (a suspended step, as the resume's target was found). Raises FailedPrecondition
    (ITERATION_NOT_SUSPENDED) listing the suspended iterations."""
    level, wf = snap, workflow
    for segment in path[:-1]:
        found = wf.find(segment)
        child = level.children.get(segment)
        if found is None or not isinstance(found[2], Workflow) or child is None:
            break
        level, wf = child, found[2]
    found = wf.find(path[-1])
    suspended = suspended_iterations(level, found[0], found[1]) if found is not None else []
    if index in suspended:
        return
    dotted = ".".join(path)
    if found is not None and isinstance(found[1], ForeachNode):
        listed = ", ".join(str(i) for i in suspended) or "none"
        message = (
            f"iteration {index} of foreach step {dotted!r} is not suspended; "
            f"suspended iterations: {listed}"
        )
    else:
        message = f"step {dotted!r} is not a foreach: for_each_index {index} names no iteration"
    raise FailedPrecondition.of_run(
        snap, ITERATION_NOT_SUSPENDED, message, suspended_indexes=suspended
    )


def _leaf_names(snap: Snapshot) -> list[str]:
    return sorted(".".join(leaf.path) for leaf in snap.suspended_leaves())


def _suspended_step(
    workflow: Workflow,
    snap: Snapshot,
    step: Sequence[str],
    label: str,
    for_each_index: int | None,
) -> tuple[list[str], int | None, Step[Any, Any]]:
    """Which suspended step a resume addresses (by label, by path, or the only one), checked
    level by level into nested workflows. Returns its full path, foreach index and step."""
    index = for_each_index
    if label:
        labeled = snap.resume_labels.get(label)
        if labeled is None:
            raise FailedPrecondition.of_run(
                snap,
                "UNKNOWN_RESUME_LABEL",
                f"no suspended step has the resume label {label!r}",
            )
        path = list(labeled.path) or [labeled.step_id]
        index = labeled.for_each_index if index is None else index
    elif step:
        path = split_path(step, "step")
    else:
        leaves = _leaf_names(snap)
        if not leaves:
            raise FailedPrecondition.of_run(
                snap, "NO_SUSPENDED_STEPS", "the run has no suspended steps"
            )
        if len(leaves) > 1:
            raise FailedPrecondition.of_run(
                snap,
                "MULTIPLE_SUSPENDED_STEPS",
                f"several steps are suspended ({', '.join(leaves)}); name one with `step`",
            )
        path = leaves[0].split(".")

    def not_suspended() -> FailedPrecondition:
        return FailedPrecondition.of_run(
            snap,
            "STEP_NOT_SUSPENDED",
            f"step {'.'.join(path)!r} is not suspended; suspended steps: "
            f"{', '.join(_leaf_names(snap)) or 'none'}",
        )

    level, wf, depth = snap, workflow, 0
    while depth < len(path):
        segment = path[depth]
        found = wf.find(segment)
        if segment not in level.suspended_paths or found is None or found[2] is None:
            raise not_suspended()
        unit = found[2]
        if isinstance(unit, Step):
            if depth != len(path) - 1:
                raise not_suspended()
            return path, index, unit
        child = level.children.get(segment)
        if child is None:
            raise not_suspended()
        if depth == len(path) - 1:  # a path ending at a nested workflow: its one leaf
            inner = child.suspended_leaves()
            if len(inner) != 1:
                raise FailedPrecondition.of_run(
                    snap,
                    "MULTIPLE_SUSPENDED_STEPS",
                    f"several steps inside {segment!r} are suspended; name one with `step`",
                )
            path = [*path, *inner[0].path]
        level, wf, depth = child, unit, depth + 1
    raise not_suspended()
