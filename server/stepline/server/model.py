"""The run's persisted shapes: statuses, step records, the snapshot and events.

The snapshot is the single source of truth for a run; every result and list entry is a
projection of it. Times are float seconds since the epoch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET, UnsetType
from pydantic import BaseModel, ConfigDict, Field

from .events import (
    Event,
    EventError,
    EventType,
    StepData,
    StepOutput,
    StepProgress,
    Suspension,
    WorkflowFinish,
)
from .jsonvalue import JSON
from .status import RunStatus, StepStatus


def now() -> float:
    return time.time()


class ErrorData(BaseModel):
    """A serialized failure: never a stack trace."""

    model_config = ConfigDict(frozen=True)

    message: str
    name: str = "Error"
    details: JSON = None

    def as_event(self) -> EventError:
        """The error as events carry it."""
        return EventError(message=self.message, name=self.name, details=self.details)


class StepRecord(BaseModel):
    status: StepStatus
    payload: JSON = None
    output: JSON = None
    error: ErrorData | None = None
    suspend_payload: JSON = None
    resume_payload: JSON = None
    suspend_labels: list[str] = Field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    suspended_at: float | None = None
    resumed_at: float | None = None
    attempts: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class IterationRecord(BaseModel):
    """One foreach iteration: running, or how it ended (its output, error or suspension)."""

    status: StepStatus
    output: JSON = None
    error: ErrorData | None = None
    suspend_payload: JSON = None
    labels: list[str] = Field(default_factory=list)


class ResumeLabel(BaseModel):
    step_id: str
    for_each_index: int | None = None
    # Full path when the labelled step is inside a nested workflow, e.g. ["child", "inner"].
    path: list[str] = Field(default_factory=list)


class SuspendedLeaf(BaseModel):
    """A suspended step as callers address it: its path, payload and labels."""

    path: list[str]
    payload: JSON = None
    labels: list[str] = Field(default_factory=list)


class OutputOptions(BaseModel):
    """What the run's results and finish events carry beyond the defaults. Requests only
    switch options on (a request that asks for the state makes the run remember it)."""

    include_state: bool = False


class PendingResume(BaseModel):
    """Written by a resume claim; consumed by the executor on the resume pass."""

    step_id: str
    path: list[str]
    data: JSON = None
    for_each_index: int | None = None


class Snapshot(BaseModel):
    run_id: str
    workflow_id: str
    status: RunStatus = RunStatus.PENDING
    resource_id: str = ""
    request_id: str = ""
    input: JSON = None
    state: dict[str, JSON] = Field(default_factory=dict)
    request_context: dict[str, Any] = Field(default_factory=dict)
    trace_id: str = ""
    trace_metadata: dict[str, Any] = Field(default_factory=dict)
    output_options: OutputOptions = Field(default_factory=OutputOptions)
    # Set by a per_step request: the top-level entry (index) after which the pass pauses.
    pause_after: int | None = None
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    step_execution_path: list[str] = Field(default_factory=list)
    # step id -> graph position (entry index, child index...) of steps currently executing.
    active_steps: dict[str, list[int]] = Field(default_factory=dict)
    # step id -> graph position of suspended steps.
    suspended_paths: dict[str, list[int]] = Field(default_factory=dict)
    resume_labels: dict[str, ResumeLabel] = Field(default_factory=dict)
    pending_resume: PendingResume | None = None
    # True between a resume claim and the next suspension: a late concurrent resume lost a race.
    resumed_since_suspend: bool = False
    # Set by a claim (resume, time travel) that already wrote this pass's workflow-start.
    pass_announced: bool = False
    # When a WAITING run's durable timer fires.
    wake_at: float | None = None
    # Snapshots of nested workflows, by the id of the step that runs them.
    children: dict[str, Snapshot] = Field(default_factory=dict)
    # Executor bookkeeping per graph entry (e.g. which branches were taken), keyed by position.
    entry_state: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Foreach iterations by the foreach's step id, then by index; an absent index has not run.
    iterations: dict[str, dict[int, IterationRecord]] = Field(default_factory=dict)
    result: JSON = None
    error: ErrorData | None = None
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    def suspended_leaves(self) -> list[SuspendedLeaf]:
        """Suspended steps with full paths (nested workflows expanded)."""
        leaves: list[SuspendedLeaf] = []
        for step_id in self.suspended_paths:
            child = self.children.get(step_id)
            if child is not None and child.suspended_paths:
                leaves.extend(
                    SuspendedLeaf(
                        path=[step_id, *leaf.path], payload=leaf.payload, labels=leaf.labels
                    )
                    for leaf in child.suspended_leaves()
                )
                continue
            rec = self.steps.get(step_id)
            leaves.append(
                SuspendedLeaf(
                    path=[step_id],
                    payload=rec.suspend_payload if rec else None,
                    labels=list(rec.suspend_labels) if rec else [],
                )
            )
        return leaves

    def adopt_legacy_items(self, step_id: str, entry: int) -> bool:
        """Move the iterations of the foreach `step_id` (graph entry `entry`) out of the entry
        state, where a run written before iteration records were kept apart holds them as a
        list, into `iterations`. True when it moved any: they must then be written."""
        state = self.entry_state.get(str(entry))
        legacy = state.pop("items", None) if state is not None else None
        if not legacy:
            return False
        self.iterations[step_id] = {
            i: IterationRecord.model_validate(item)
            for i, item in enumerate(legacy)
            if item is not None
        }
        return True

    def finish_data(
        self,
        *,
        result: JSON | UnsetType = UNSET,
        error: EventError | UnsetType | None = UNSET,
        suspended: tuple[Suspension, ...] | UnsetType = UNSET,
    ) -> WorkflowFinish:
        """A workflow-finish of the run's current status with `result`, `error` or
        `suspended` as given, and the state when the run's output options ask for it."""
        state = dict(self.state) if self.output_options.include_state else UNSET
        return WorkflowFinish(
            status=self.status, state=state, result=result, error=error, suspended=suspended
        )

    def flat_steps(self) -> dict[str, StepRecord]:
        """Step records with nested workflows' steps flattened as "child.step"."""
        flat = dict(self.steps)
        for child_id, child in self.children.items():
            for step_id, rec in child.flat_steps().items():
                flat[f"{child_id}.{step_id}"] = rec
        return flat


@dataclass
class ChangeSet:
    """What an execution changed in its snapshot's records since the last commit it handed
    to a journal: step records and foreach iterations. `full` asks for every record (the
    first commit of a pass, whose snapshot may have been read from an older layout, and any
    change that touches records wholesale, such as a cancel)."""

    full: bool = True
    steps: set[str] = field(default_factory=set)
    items: dict[str, set[int]] = field(default_factory=dict)

    def step(self, step_id: str) -> None:
        self.steps.add(step_id)

    def item(self, step_id: str, index: int) -> None:
        self.items.setdefault(step_id, set()).add(index)

    def note(self, events: Iterable[Event]) -> None:
        """Mark what `events` announce: every step and iteration transition is committed
        with an event naming it (a step-output changes no record)."""
        for event in events:
            data = event.data
            if isinstance(data, StepProgress):
                self.item(data.step_id, data.current_index)
            elif isinstance(data, StepData) and not isinstance(data, StepOutput):
                self.step(data.step_id)

    def adopt(self, nested: ChangeSet, prefix: str) -> None:
        """Take over what a nested workflow's change set marks, its ids prefixed (the run
        keeps a nested workflow's records as its own, "child.step"); `nested` is cleared."""
        self.full = self.full or nested.full
        self.steps.update(prefix + step_id for step_id in nested.steps)
        for step_id, indexes in nested.items.items():
            self.items.setdefault(prefix + step_id, set()).update(indexes)
        nested.clear()

    def clear(self) -> None:
        self.full = False
        self.steps = set()
        self.items = {}


# The snapshot's fields kept as records of their own, outside its JSON (the run's "blob").
_RECORD_FIELDS = {"steps", "iterations"}


def _blob_exclude(snapshot: Snapshot) -> dict[str, Any]:
    """What the blob leaves out: the records, at every depth of nested workflows."""
    spec: dict[str, Any] = dict.fromkeys(_RECORD_FIELDS, True)
    if snapshot.children:
        spec["children"] = {
            child_id: _blob_exclude(child) for child_id, child in snapshot.children.items()
        }
    return spec


def _owner(snapshot: Snapshot, step_id: str) -> tuple[Snapshot, str] | None:
    """The (nested) snapshot that keeps the record of `step_id` ("child.step" for a step of
    the nested workflow `child`; ids never hold a dot otherwise), and the id it keeps it by.
    None when that nested workflow has no snapshot."""
    *parents, own = step_id.split(".")
    for child_id in parents:
        found = snapshot.children.get(child_id)
        if found is None:
            return None
        snapshot = found
    return snapshot, own


def _nested(snapshot: Snapshot, prefix: str = "") -> Iterator[tuple[str, Snapshot]]:
    """The snapshot and its nested workflows' at every depth, each with the prefix of its
    records' ids ("" for the run's own, "child." for a nested workflow's)."""
    yield prefix, snapshot
    for child_id, child in snapshot.children.items():
        yield from _nested(child, f"{prefix}{child_id}.")


@dataclass(frozen=True, slots=True)
class SnapshotImage:
    """A snapshot as it was at one instant: its JSON without step records and foreach
    iterations, the JSON of those records (every one when `full`, else those changed), and
    the fields a store indexes it by.

    A journal that writes behind the executor takes one of these at each transition, so a
    later write stores exactly what was committed, whatever the live snapshot became since.
    A store applies a partial image over the records it has; a full one replaces them all."""

    run_id: str
    workflow_id: str
    resource_id: str
    status: RunStatus
    request_id: str
    updated_at: float
    json: str
    # Step id -> StepRecord JSON.
    steps: dict[str, str]
    # Foreach step id -> iteration index -> IterationRecord JSON.
    items: dict[str, dict[int, str]]
    full: bool
    # Every foreach step id with iteration records (whether or not this image carries any).
    foreach_steps: tuple[str, ...]

    @classmethod
    def of(
        cls, snapshot: Snapshot | SnapshotImage, changes: ChangeSet | None = None
    ) -> SnapshotImage:
        """The image of `snapshot`: full without `changes`, else with the records `changes`
        names, which it then clears (the next image carries what changes after this one)."""
        if isinstance(snapshot, SnapshotImage):
            return snapshot
        full = changes is None or changes.full
        # Nested workflows' records are kept as the parent's, under "child.step" ids.
        foreach_steps: list[str] = []
        steps: dict[str, str] = {}
        items: dict[str, dict[int, str]] = {}
        if full:
            for prefix, owner in _nested(snapshot):
                for step_id, rec in owner.steps.items():
                    steps[prefix + step_id] = rec.model_dump_json(exclude_defaults=True)
                for step_id, kept in owner.iterations.items():
                    foreach_steps.append(prefix + step_id)
                    items[prefix + step_id] = {
                        i: it.model_dump_json(exclude_defaults=True) for i, it in kept.items()
                    }
        else:
            assert changes is not None
            for step_id in changes.steps:
                found = _owner(snapshot, step_id)
                changed = found[0].steps.get(found[1]) if found is not None else None
                if changed is not None:
                    steps[step_id] = changed.model_dump_json(exclude_defaults=True)
            for step_id, indexes in changes.items.items():
                found = _owner(snapshot, step_id)
                iterations = found[0].iterations.get(found[1]) if found is not None else None
                if iterations is not None:
                    items[step_id] = {
                        i: it.model_dump_json(exclude_defaults=True)
                        for i in indexes
                        if (it := iterations.get(i)) is not None
                    }
            for prefix, owner in _nested(snapshot):
                foreach_steps.extend(prefix + step_id for step_id in owner.iterations)
        if changes is not None:
            changes.clear()
        return cls(
            run_id=snapshot.run_id,
            workflow_id=snapshot.workflow_id,
            resource_id=snapshot.resource_id,
            status=snapshot.status,
            request_id=snapshot.request_id,
            updated_at=snapshot.updated_at,
            # Fields at their defaults are left out: they load back the same, in fewer bytes.
            json=snapshot.model_dump_json(
                exclude=_blob_exclude(snapshot),
                exclude_defaults=True,
            ),
            steps=steps,
            items=items,
            full=full,
            foreach_steps=tuple(foreach_steps),
        )

    def merged(self, later: SnapshotImage) -> SnapshotImage:
        """One image that stores what this one and then `later` store (group commit)."""
        if later.full:
            return later
        items = {step_id: dict(kept) for step_id, kept in self.items.items()}
        for step_id, kept in later.items.items():
            items.setdefault(step_id, {}).update(kept)
        steps = {**self.steps, **later.steps}
        return dataclasses.replace(later, steps=steps, items=items, full=self.full)

    def load(self) -> Snapshot:
        """The snapshot (whole only when the image is full)."""
        return assemble(self.json, self.steps, self.items)


def take_records(snapshot: Snapshot, source: Snapshot) -> None:
    """Give `snapshot` (read from a blob, so without records) the records `source` holds, at
    every depth of nested workflows both have."""
    snapshot.steps, snapshot.iterations = source.steps, source.iterations
    for child_id, child in snapshot.children.items():
        if (kept := source.children.get(child_id)) is not None:
            take_records(child, kept)


def assemble(
    blob: str, steps: Mapping[str, str], items: Mapping[str, Mapping[int, str]]
) -> Snapshot:
    """A snapshot from its JSON and its records' JSON. Step records come in the order of the
    execution path (records off the path after, as given), whatever order a store kept."""
    snapshot = Snapshot.model_validate_json(blob)
    # Records by the (nested) snapshot that keeps them; a nested workflow's records whose
    # snapshot is gone are left out (a later full write drops them).
    owned: dict[int, tuple[Snapshot, dict[str, str]]] = {}
    for step_id, record in steps.items():
        found = _owner(snapshot, step_id)
        if found is not None:
            owned.setdefault(id(found[0]), (found[0], {}))[1][found[1]] = record
    for owner, records in owned.values():
        path = {step_id: i for i, step_id in enumerate(owner.step_execution_path)}
        last = len(path)
        for step_id in sorted(records, key=lambda s: path.get(s, last)):
            owner.steps[step_id] = StepRecord.model_validate_json(records[step_id])
    for step_id, kept in items.items():
        found = _owner(snapshot, step_id)
        if found is None:
            continue
        iterations = found[0].iterations.setdefault(found[1], {})
        for i in sorted(kept):
            iterations[i] = IterationRecord.model_validate_json(kept[i])
    return snapshot


__all__ = [
    "ChangeSet",
    "ErrorData",
    "Event",
    "EventType",
    "IterationRecord",
    "OutputOptions",
    "PendingResume",
    "ResumeLabel",
    "RunStatus",
    "Snapshot",
    "SnapshotImage",
    "StepRecord",
    "StepStatus",
    "SuspendedLeaf",
    "assemble",
    "now",
    "take_records",
]
