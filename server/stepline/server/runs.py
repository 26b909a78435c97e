"""The run API every front end uses: start, resume, cancel, wait, watch, list, delete.

Knows nothing of gRPC. Validates requests, records claims in the store and queues work for
the worker. Waits and watches are `tailing.py`; which step a resume addresses is
`resume_target.py`; how a time travel rewinds a run is `reentry.py`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .cancellation import close_open_steps
from .errors import (
    Conflict,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    StoreConflict,
    WorkflowNotFound,
)
from .events import WorkflowCanceled, WorkflowStart
from .logs import log_canceled
from .model import (
    ChangeSet,
    Event,
    OutputOptions,
    PendingResume,
    RunStatus,
    Snapshot,
    SnapshotImage,
    StepRecord,
    now,
    take_records,
)
from .reentry import rewind, travel_target
from .resume_target import resume_target, split_path
from .store import Hold, Lease, Page, RunFilter, Store, StoredRun
from .tailing import Tail
from .workflows import Registry, Workflow

_TRACE_ID = re.compile(r"[0-9a-fA-F]{1,32}")
_TRACE_ID_RULE = "must be 1 to 32 hexadecimal characters"
# Names the run of a start that carries a request id and no run id (see `_run_id_for`).
_REQUEST_NAMESPACE = uuid.UUID("5d0f3c1e-8a4b-4f61-9e2d-7b1c6a0e4f93")
_MAX_ID_LENGTH = 256
# How long Cancel waits for a held run to stop before answering with its current status.
_CANCEL_WAIT = 5.0
_CAS_ATTEMPTS = 20


class LocalRunner(Protocol):
    """The worker of this replica, seen from the run API: a run started or claimed here is
    executed here at once when a slot is free (no trip through the queue), and a wait for a
    run executing here is answered from memory. Without one, every run goes through the
    queue and every wait reads the log."""

    owner: str
    lease_ttl: float

    def reserve(self) -> bool: ...

    def unreserve(self) -> None: ...

    def execute(self, lease: Lease) -> None: ...

    def pass_of(self, run_id: str) -> asyncio.Future[StoredRun | None] | None: ...


@dataclass(frozen=True)
class StartParams:
    workflow_id: str
    input_data: Any = None
    run_id: str = ""
    resource_id: str = ""
    initial_state: dict[str, Any] | None = None
    request_context: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    trace_metadata: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    # Remembered by the run: its later results and finish events carry the state.
    include_state: bool = False
    # Run the first top-level entry only, then pause.
    per_step: bool = False


@dataclass(frozen=True)
class ResumeParams:
    run_id: str
    step: tuple[str, ...] = ()
    label: str = ""
    resume_data: Any = None
    request_context: dict[str, Any] | None = None
    for_each_index: int | None = None
    include_state: bool = False
    # Pause after the top-level entry that holds the resumed step.
    per_step: bool = False


@dataclass(frozen=True)
class TimeTravelParams:
    run_id: str
    # Path of the step to re-execute from; segments may be dotted ("child.inner").
    step: tuple[str, ...]
    input_data: Any = None
    initial_state: dict[str, Any] | None = None
    resume_data: Any = None
    # Step results to use instead of the snapshot's, keyed by step id ("child.inner" nested).
    context: dict[str, StepRecord] = field(default_factory=dict)
    request_context: dict[str, Any] | None = None
    include_state: bool = False
    # Pause after the top-level entry that holds the target step.
    per_step: bool = False


@dataclass(frozen=True)
class RestartParams:
    run_id: str
    # Merged over the stored request context (supplied keys win).
    request_context: dict[str, Any] = field(default_factory=dict)
    # Non-empty values replace the run's trace id / trace metadata.
    trace_id: str = ""
    trace_metadata: dict[str, Any] = field(default_factory=dict)
    include_state: bool = False


@dataclass(frozen=True)
class Started:
    run_id: str
    created: bool
    status: RunStatus


@dataclass(frozen=True)
class Resumed:
    run_id: str
    status: RunStatus
    # The continuation's events have sequences greater than this.
    after_sequence: int


@dataclass(frozen=True)
class Canceled:
    status: RunStatus
    cancel_requested: bool


class RunService:
    """The run API. Stateless apart from the store: any replica can serve any run."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        cancel_wait: float = _CANCEL_WAIT,
        runner: LocalRunner | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.cancel_wait = cancel_wait
        self.runner = runner
        self._tail = Tail(store, self.get, passes=runner)

    def drain(self) -> None:
        """End every wait and watch in progress (and refuse new ones) with ShuttingDown, so
        their callers reconnect to another replica. Runs themselves are not touched."""
        self._tail.drain()

    # -- workflows -------------------------------------------------------------------------
    def list_workflows(self) -> list[Workflow]:
        return list(self.registry)

    def get_workflow(self, workflow_id: str) -> Workflow:
        """Raises WorkflowNotFound."""
        workflow = self.registry.get(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        return workflow

    # -- runs ------------------------------------------------------------------------------
    async def start(self, params: StartParams) -> Started:
        """Validate, record and queue a run. Raises WorkflowNotFound, InvalidArgument,
        RunAlreadyExists."""
        workflow = self.get_workflow(params.workflow_id)
        snapshot = self._new_snapshot(workflow, params)
        runner = self.runner
        if runner is not None and runner.reserve():
            try:
                outcome = await self.store.create(
                    snapshot, lease_owner=runner.owner, lease_ttl=runner.lease_ttl
                )
            except BaseException:
                runner.unreserve()
                raise
            if outcome.lease is not None:
                runner.execute(outcome.lease)
            else:
                runner.unreserve()
        else:
            outcome = await self.store.create(snapshot)
        if outcome.created:
            return Started(snapshot.run_id, True, RunStatus.PENDING)
        existing = outcome.run.snapshot
        if (
            params.request_id
            and existing.request_id == params.request_id
            and existing.workflow_id == workflow.id
        ):
            return Started(existing.run_id, False, existing.status)
        raise RunAlreadyExists(existing.run_id, existing.workflow_id)

    def _new_snapshot(self, workflow: Workflow, params: StartParams) -> Snapshot:
        violations: list[FieldViolation] = []
        _check_id(params.run_id, "run_id", violations)
        _check_id(params.resource_id, "resource_id", violations)
        _check_id(params.request_id, "request_id", violations)
        trace_id = params.trace_id
        if trace_id and not _TRACE_ID.fullmatch(trace_id):
            violations.append(FieldViolation("tracing_options.trace_id", _TRACE_ID_RULE))
        data = workflow.input_schema.conform(params.input_data, "input_data", violations)
        state: Any = params.initial_state or {}
        if workflow.state_schema is not None:
            state = workflow.state_schema.conform(state, "initial_state", violations)
        if violations:
            raise InvalidArgument(f"invalid start request for workflow {workflow.id!r}", violations)
        return Snapshot(
            run_id=params.run_id or _run_id_for(workflow.id, params.request_id),
            workflow_id=workflow.id,
            resource_id=params.resource_id,
            request_id=params.request_id,
            input=data,
            state=state,
            request_context=dict(params.request_context),
            trace_id=_padded_trace_id(trace_id) if trace_id else "",
            trace_metadata=dict(params.trace_metadata),
            output_options=OutputOptions(include_state=params.include_state),
            pause_after=0 if params.per_step else None,
        )

    async def wait(
        self, run_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> StoredRun:
        """Block (bounded by `timeout`; None = no bound) until a workflow-finish event with a
        sequence above `after_sequence` exists, then return the stored run. On timeout returns
        the current stored run, whatever its status. Raises RunNotFound."""
        return await self._tail.wait(run_id, after_sequence=after_sequence, timeout=timeout)

    async def resume(self, params: ResumeParams) -> Resumed:
        """Claim a suspended run (compare-and-set) and queue its continuation. Raises
        RunNotFound, FailedPrecondition, InvalidArgument, ResumeAlreadyClaimed."""
        stored = await self.get(params.run_id)
        snap = stored.snapshot
        if snap.status is not RunStatus.SUSPENDED:
            if snap.resumed_since_suspend and not snap.status.finished:
                raise ResumeAlreadyClaimed(snap.run_id)
            raise FailedPrecondition.of_run(
                snap,
                "RUN_NOT_SUSPENDED",
                f"run {snap.run_id!r} is not suspended (status {snap.status})",
            )
        workflow = self.get_workflow(snap.workflow_id)
        target = resume_target(
            workflow,
            snap,
            step=params.step,
            label=params.label,
            for_each_index=params.for_each_index,
            data=params.resume_data,
        )
        path = list(target.path)

        claimed = snap.model_copy(deep=True)
        claimed.status = RunStatus.RUNNING
        claimed.pending_resume = PendingResume(
            step_id=path[0], path=path, data=target.data, for_each_index=target.for_each_index
        )
        claimed.resumed_since_suspend = True
        claimed.pass_announced = True
        claimed.output_options.include_state |= params.include_state
        claimed.pause_after = _entry_of(workflow, path[0]) if params.per_step else None
        if params.request_context:
            claimed.request_context = {**snap.request_context, **params.request_context}
        claimed.updated_at = now()
        start = Event(data=WorkflowStart(workflow_id=snap.workflow_id, reason="resume"))
        # The claim changes no step record: it writes the run's header only (unless the run
        # is of the first layout, whose records must be rewritten apart).
        changes = ChangeSet(full=not stored.records_apart)
        try:
            await self._claim(stored, claimed, start, changes)
        except StoreConflict:
            raise ResumeAlreadyClaimed(snap.run_id) from None
        return Resumed(snap.run_id, RunStatus.RUNNING, stored.last_sequence)

    async def _claim(
        self, stored: StoredRun, claimed: Snapshot, start: Event, changes: ChangeSet
    ) -> None:
        """Write a claim (compare-and-set on the stored version) and have the run executed:
        by this replica when it has a free slot, the claim then taking the lease in the same
        write; else through the queue. Raises StoreConflict when the claim lost."""
        image = SnapshotImage.of(claimed, changes)
        runner = self.runner
        if runner is None or not runner.reserve():
            await self.store.write(image, [start], expected_version=stored.version)
            await self.store.enqueue(claimed.run_id)
            return
        try:
            outcome = await self.store.write(
                image,
                [start],
                expected_version=stored.version,
                hold=Hold(runner.owner, runner.lease_ttl),
            )
        except BaseException:
            runner.unreserve()
            raise
        assert outcome.fence is not None
        # What the write stored, as a read would give it back (through its JSON); the
        # records a partial claim left alone are the ones read.
        if image.full:
            held = image.load()
        else:
            held = Snapshot.model_validate_json(image.json)
            take_records(held, claimed)
        run = StoredRun(held, outcome.version, outcome.last_sequence, False, leased=True)
        runner.execute(Lease(run_id=claimed.run_id, fence=outcome.fence, run=run))

    async def _dispatch(self, run_id: str) -> None:
        """Have an unheld run executed: here, when a slot is free and the lease is taken,
        else by whichever replica takes it from the queue."""
        runner = self.runner
        if runner is not None and runner.reserve():
            try:
                lease = await self.store.acquire(run_id, runner.owner, runner.lease_ttl)
            except BaseException:
                runner.unreserve()
                raise
            if lease is not None:
                runner.execute(lease)
                return
            runner.unreserve()
        await self.store.enqueue(run_id)

    async def cancel(self, run_id: str) -> Canceled:
        """Cooperative and idempotent; a finished run is left unchanged. Raises RunNotFound."""
        for _ in range(_CAS_ATTEMPTS):
            stored = await self.get(run_id)
            status = stored.snapshot.status
            if status.finished:
                return Canceled(status, status is RunStatus.CANCELED)
            if stored.leased:
                # A worker holds the run: ask it to stop and give it a moment to do so.
                if not await self.store.request_cancel(run_id):
                    continue
                settled = await self.wait(
                    run_id, after_sequence=stored.last_sequence, timeout=self.cancel_wait
                )
                return Canceled(settled.snapshot.status, True)
            snap = stored.snapshot.model_copy(deep=True)
            snap.status = RunStatus.CANCELED
            snap.updated_at = now()
            events = [
                *close_open_steps(snap, self.registry.get(snap.workflow_id)),
                Event(data=WorkflowCanceled()),
                Event(data=snap.finish_data()),
            ]
            try:
                await self.store.write(snap, events, expected_version=stored.version)
            except StoreConflict:
                continue
            log_canceled(run_id, workflow_id=snap.workflow_id)
            return Canceled(RunStatus.CANCELED, True)
        raise Conflict(run_id)

    async def get(self, run_id: str) -> StoredRun:
        """Raises RunNotFound."""
        stored = await self.store.get(run_id) if run_id else None
        if stored is None:
            raise RunNotFound(run_id)
        return stored

    def watch(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        keep_open_on_suspend: bool = False,
        fresh: bool = False,
    ) -> AsyncIterator[Event]:
        """Replay events after `after_sequence`, then tail until the run settles (finishes,
        or suspends unless keep_open_on_suspend). Raises RunNotFound, CursorExpired.
        `fresh`: this call just created or claimed the run at `after_sequence`."""
        return self._tail.watch(
            run_id,
            after_sequence=after_sequence,
            keep_open_on_suspend=keep_open_on_suspend,
            fresh=fresh,
        )

    async def list_runs(self, filter: RunFilter, *, page_size: int, page_token: str) -> Page:
        return await self.store.list_runs(filter, page_size, page_token)

    async def delete(self, run_id: str) -> None:
        """Raises RunNotFound."""
        if not run_id or not await self.store.delete(run_id):
            raise RunNotFound(run_id)

    async def restart(self, params: RestartParams) -> StoredRun:
        """Re-drive a RUNNING/WAITING run that no live replica holds, from its recorded steps,
        and wait until it settles; the request's context, tracing and output options are
        stored with the run first. A run whose lease expired is taken over at once; a run
        this replica is executing (its recovery took it over) is waited for. A SUCCESS/FAILED
        run is returned as stored, untouched. Raises RunNotFound, InvalidArgument (bad trace
        id), FailedPrecondition (held by another live replica; pending, suspended, paused or
        canceled)."""
        run_id = params.run_id
        if params.trace_id and not _TRACE_ID.fullmatch(params.trace_id):
            raise InvalidArgument(
                "invalid restart request",
                [FieldViolation("tracing_options.trace_id", _TRACE_ID_RULE)],
            )
        stored = await self.get(run_id)
        snap = stored.snapshot
        if snap.status in (RunStatus.SUCCESS, RunStatus.FAILED):
            return stored
        if not snap.status.active:
            raise FailedPrecondition.of_run(
                snap,
                "RUN_NOT_ACTIVE",
                f"run {run_id!r} is {snap.status}; only a running or waiting run can be restarted",
            )
        if stored.leased:
            if self.runner is None or self.runner.pass_of(run_id) is None:
                raise FailedPrecondition.of_run(
                    snap,
                    "RUN_HELD",
                    f"run {run_id!r} is held by a live replica; it is not orphaned",
                )
            # This replica is driving the run (its recovery took the orphan over, typically):
            # the answer is that pass's result, as for a start this replica executes. The
            # pass runs with the options it has.
            return await self.wait(run_id, after_sequence=stored.last_sequence)
        await self._store_restart_options(stored, params)
        await self._dispatch(run_id)
        return await self.wait(run_id, after_sequence=stored.last_sequence)

    async def _store_restart_options(self, stored: StoredRun, params: RestartParams) -> None:
        """Write what the restart request changes into the (unheld) run before it is
        re-driven, so the pass and everything after it see it. Raises Conflict when another
        request or a recovering replica changed the run meanwhile."""
        snap = stored.snapshot.model_copy(deep=True)
        snap.request_context = {**snap.request_context, **params.request_context}
        if params.trace_id:
            snap.trace_id = _padded_trace_id(params.trace_id)
        if params.trace_metadata:
            snap.trace_metadata = dict(params.trace_metadata)
        snap.output_options.include_state |= params.include_state
        if snap == stored.snapshot:
            return
        snap.updated_at = now()
        try:
            await self.store.write(snap, [], expected_version=stored.version)
        except StoreConflict:
            raise Conflict(snap.run_id) from None

    async def time_travel(self, params: TimeTravelParams) -> Resumed:
        """Re-execute a settled run from a step, keeping the run id and continuing its event
        sequence. Prior results come from `context` or the snapshot. Raises RunNotFound,
        InvalidArgument (unknown step, input the target does not take), FailedPrecondition
        (running run, snapshot that no longer matches the graph). A refused time travel
        leaves the run untouched."""
        stored = await self.get(params.run_id)
        snap = stored.snapshot
        path = split_path(params.step, "step")
        workflow = self.get_workflow(snap.workflow_id)
        target = travel_target(workflow, path, params.input_data)
        if not snap.status.settled:
            raise FailedPrecondition.of_run(
                snap,
                "RUN_IS_RUNNING",
                f"run {snap.run_id!r} is {snap.status}; time travel needs a settled run",
            )
        rewound = snap.model_copy(deep=True)
        rewind(
            workflow,
            rewound,
            target,
            context=params.context,
            resume=params.resume_data,
            original=snap,
        )
        if params.initial_state is not None:
            state: Any = params.initial_state
            if workflow.state_schema is not None:
                violations: list[FieldViolation] = []
                state = workflow.state_schema.conform(state, "initial_state", violations)
                if violations:
                    raise InvalidArgument("invalid initial state", violations)
            rewound.state = state
        if params.request_context:
            rewound.request_context = {**snap.request_context, **params.request_context}
        rewound.output_options.include_state |= params.include_state
        rewound.pause_after = _entry_of(workflow, path[0]) if params.per_step else None
        rewound.status = RunStatus.RUNNING
        rewound.result = rewound.error = None
        rewound.pass_announced = True
        rewound.resumed_since_suspend = False
        rewound.updated_at = now()
        start = Event(data=WorkflowStart(workflow_id=snap.workflow_id, reason="time_travel"))
        try:
            await self._claim(stored, rewound, start, ChangeSet())
        except StoreConflict:
            raise Conflict(snap.run_id) from None
        return Resumed(snap.run_id, RunStatus.RUNNING, stored.last_sequence)


def _run_id_for(workflow_id: str, request_id: str) -> str:
    """The id of a run started without a run id: derived from the request id when there is
    one, so that every retry of that start (on any replica, until the run is forgotten)
    names the same run and the store's create-if-absent makes it once; random otherwise."""
    if not request_id:
        return uuid.uuid4().hex
    # Neither id holds control characters (`_check_id`), so the NUL keeps the pair apart.
    return uuid.uuid5(_REQUEST_NAMESPACE, f"{workflow_id}\0{request_id}").hex


def _padded_trace_id(trace_id: str) -> str:
    return trace_id.lower().rjust(32, "0")


def _entry_of(workflow: Workflow, step_id: str) -> int | None:
    """The top-level entry (index) holding `step_id`: where a per_step pass pauses."""
    found = workflow.find(step_id)
    return None if found is None else found[0]


def _check_id(value: str, field_name: str, violations: list[FieldViolation]) -> None:
    if len(value) > _MAX_ID_LENGTH:
        violations.append(
            FieldViolation(field_name, f"must be at most {_MAX_ID_LENGTH} characters")
        )
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        violations.append(FieldViolation(field_name, "must not contain control characters"))
