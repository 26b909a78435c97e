"""Walks a committed workflow graph for one run, writing every transition through a journal.

The walk is driven by the snapshot: an entry whose steps already succeeded is replayed from
its recorded output, a suspended step runs again only when the pending resume targets it, and
a step recorded as running (a crashed or handed-back pass) runs again with its recorded
payload. So start, resume and re-drive after a crash are one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from pydantic_core import PydanticSerializationError, to_jsonable_python

from .context import BailSignal, NonRetryableError, StepContext, SuspendSignal
from .model import (
    ErrorData,
    Event,
    EventType,
    PendingResume,
    ResumeLabel,
    RunStatus,
    Snapshot,
    StepRecord,
    StepStatus,
    now,
)
from .schema import SchemaViolation
from .workflows import (
    BranchNode,
    ConditionContext,
    Node,
    ParallelNode,
    Step,
    StepNode,
    Workflow,
)

log = logging.getLogger(__name__)


class Journal(Protocol):
    """Where the executor records transitions: one atomic snapshot write + event append."""

    async def commit(
        self, snapshot: Snapshot, events: Sequence[Event], *, release: bool = False
    ) -> bool:
        """Persist; returns True when cancellation of the run has been requested."""
        ...


class Kind(Enum):
    OK = "ok"
    SUSPENDED = "suspended"
    FAILED = "failed"
    BAILED = "bailed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    value: Any = None
    error: ErrorData | None = None


# When children of one entry end differently, the entry ends as the first of these.
_PRECEDENCE = (Kind.FAILED, Kind.CANCELED, Kind.BAILED, Kind.SUSPENDED)


class StepInputInvalid(Exception):
    pass


class StepOutputInvalid(Exception):
    pass


def serialize_error(err: BaseException) -> ErrorData:
    """{message, name, details}: the step's own details and its cause chain, never a stack."""
    details: dict[str, Any] = {}
    own = getattr(err, "details", None)
    if own is not None:
        details["details"] = _jsonable(own)
    if err.__cause__ is not None:
        details["cause"] = serialize_error(err.__cause__).model_dump()
    return ErrorData(
        message=str(err) or type(err).__name__,
        name=type(err).__name__,
        details=details or None,
    )


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        return repr(value)


def _violations(prefix: str, err: SchemaViolation) -> str:
    return prefix + "".join(f"\n- {v.field}: {v.description}" for v in err.violations)


class Execution:
    """One pass of a run through its workflow; also the runtime behind each StepContext."""

    def __init__(
        self,
        workflow: Workflow,
        snapshot: Snapshot,
        journal: Journal,
        *,
        cancel_event: asyncio.Event | None = None,
    ) -> None:
        self.workflow = workflow
        self.snap = snapshot
        self.journal = journal
        self.cancel_event = cancel_event or asyncio.Event()
        self.run_id = snapshot.run_id
        self.workflow_id = snapshot.workflow_id
        self.resource_id = snapshot.resource_id
        self.request_context = snapshot.request_context

    # -- StepRuntime -----------------------------------------------------------------------
    def init_data(self) -> Any:
        return self.snap.input

    def step_output(self, step_id: str) -> Any:
        rec = self.snap.steps.get(step_id)
        return rec.output if rec is not None and rec.status is StepStatus.SUCCESS else None

    def state(self) -> dict[str, Any]:
        return dict(self.snap.state)

    async def emit_output(self, step_id: str, value: Any) -> None:
        try:
            data = to_jsonable_python(value)
        except PydanticSerializationError as err:
            raise TypeError(f"ctx.write() needs a JSON-serializable value: {err}") from None
        await self._commit(
            [Event(type=EventType.STEP_OUTPUT, data={"step_id": step_id, "output": data})]
        )

    def abort(self) -> None:
        self.cancel_event.set()

    # -- the walk --------------------------------------------------------------------------
    async def run(self) -> Snapshot:
        """Execute until the run settles; returns the final snapshot (already persisted)."""
        snap = self.snap
        if snap.status is RunStatus.PENDING:
            snap.status = RunStatus.RUNNING
            await self._commit([self._start_event("start")])
        elif snap.pending_resume is None:
            # A pass that died or was handed back: continue from the recorded steps.
            await self._commit([self._start_event("restart")])

        value: Any = snap.input
        for index, node in enumerate(self.workflow.nodes):
            if self.cancel_event.is_set():
                return await self._finish(RunStatus.CANCELED)
            outcome = await self._run_node(index, node, value)
            if outcome.kind is Kind.OK:
                value = outcome.value
            elif outcome.kind is Kind.BAILED:
                return await self._finish(RunStatus.SUCCESS, result=outcome.value)
            elif outcome.kind is Kind.FAILED:
                return await self._finish(RunStatus.FAILED, error=outcome.error)
            elif outcome.kind is Kind.SUSPENDED:
                return await self._finish(RunStatus.SUSPENDED)
            else:
                return await self._finish(RunStatus.CANCELED)
        if self.cancel_event.is_set():
            return await self._finish(RunStatus.CANCELED)
        return await self._finish(RunStatus.SUCCESS, result=value)

    def _start_event(self, reason: str) -> Event:
        return Event(
            type=EventType.WORKFLOW_START, data={"workflow_id": self.workflow_id, "reason": reason}
        )

    async def _commit(self, events: Sequence[Event], *, release: bool = False) -> None:
        self.snap.updated_at = now()
        if await self.journal.commit(self.snap, events, release=release):
            self.cancel_event.set()

    async def _finish(
        self, status: RunStatus, *, result: Any = None, error: ErrorData | None = None
    ) -> Snapshot:
        snap = self.snap
        snap.status = status
        snap.active_steps.clear()
        snap.pending_resume = None
        events: list[Event] = []
        data: dict[str, Any] = {"status": status.value}
        if status is RunStatus.SUCCESS:
            snap.result = result
            data["result"] = result
        elif status is RunStatus.FAILED:
            snap.error = error
            data["error"] = error.model_dump() if error else None
        elif status is RunStatus.SUSPENDED:
            snap.resumed_since_suspend = False
            data["suspended"] = [
                {
                    "path": [sid],
                    "payload": snap.steps[sid].suspend_payload,
                    "labels": snap.steps[sid].suspend_labels,
                }
                for sid in snap.suspended_paths
            ]
        elif status is RunStatus.CANCELED:
            events.append(Event(type=EventType.WORKFLOW_CANCELED))
        events.append(Event(type=EventType.WORKFLOW_FINISH, data=data))
        await self._commit(events, release=True)
        return snap

    async def _run_node(self, index: int, node: Node, value: Any) -> Outcome:
        if isinstance(node, StepNode):
            return await self._run_step(node.step, [index], value)
        if isinstance(node, ParallelNode):
            steps: Sequence[Step[Any, Any]] = node.steps
        else:
            steps = await self._select_branches(index, node, value)
            if not steps:
                return Outcome(Kind.OK, {})
        positions = {s.id: i for i, s in enumerate(node.steps)}
        outcomes = await asyncio.gather(
            *(self._run_step(s, [index, positions[s.id]], value) for s in steps)
        )
        for kind in _PRECEDENCE:
            for outcome in outcomes:
                if outcome.kind is kind:
                    return outcome
        return Outcome(Kind.OK, {s.id: o.value for s, o in zip(steps, outcomes, strict=True)})

    async def _select_branches(
        self, index: int, node: BranchNode, value: Any
    ) -> list[Step[Any, Any]]:
        """Evaluate every condition once per run; the choice is kept in the snapshot."""
        entry = self.snap.entry_state.setdefault(str(index), {})
        if "branches" not in entry:
            ctx = ConditionContext(
                input=value,
                state=dict(self.snap.state),
                request_context=self.request_context,
                init_data=self.snap.input,
                step_results={
                    k: r.output
                    for k, r in self.snap.steps.items()
                    if r.status is StepStatus.SUCCESS
                },
            )
            chosen = await asyncio.gather(*(_holds(cond, ctx) for cond, _ in node.branches))
            entry["branches"] = [
                s.id for (_, s), ok in zip(node.branches, chosen, strict=True) if ok
            ]
        return [s for s in node.steps if s.id in entry["branches"]]

    async def _run_step(self, step: Step[Any, Any], position: list[int], payload: Any) -> Outcome:
        prior = self.snap.steps.get(step.id)
        resume: PendingResume | None = None
        if prior is not None:
            if prior.status is StepStatus.SUCCESS:
                return Outcome(Kind.OK, prior.output)
            if prior.status is StepStatus.SUSPENDED:
                pending = self.snap.pending_resume
                if pending is None or pending.step_id != step.id:
                    return Outcome(Kind.SUSPENDED)
                resume = pending
            payload = prior.payload
        return await self._execute(step, position, payload, prior, resume)

    async def _execute(
        self,
        step: Step[Any, Any],
        position: list[int],
        payload: Any,
        prior: StepRecord | None,
        resume: PendingResume | None,
    ) -> Outcome:
        snap = self.snap
        started = now()
        rec = StepRecord(status=StepStatus.RUNNING, payload=payload, started_at=started)
        if resume is not None:
            rec.resume_payload, rec.resumed_at = resume.data, started
        elif prior is not None and prior.resume_payload is not None:
            # Re-driving a resume pass that was interrupted: keep what it was resumed with.
            rec.resume_payload, rec.resumed_at = prior.resume_payload, prior.resumed_at
        if prior is not None:
            rec.suspend_payload = prior.suspend_payload
            rec.suspend_labels = list(prior.suspend_labels)
        snap.steps[step.id] = rec
        snap.active_steps[step.id] = position
        if resume is not None:
            snap.suspended_paths.pop(step.id, None)
            snap.resume_labels = {
                k: v for k, v in snap.resume_labels.items() if v.step_id != step.id
            }
            snap.pending_resume = None
        if step.id not in snap.step_execution_path:
            snap.step_execution_path.append(step.id)
        start: dict[str, Any] = {"step_id": step.id, "payload": payload, "started_at": started}
        if rec.resume_payload is not None:
            start["resume_payload"] = rec.resume_payload
        await self._commit([Event(type=EventType.STEP_START, data=start)])

        retries = step.retries if step.retries is not None else self.workflow.retry.attempts
        attempt = 0
        while True:
            attempt += 1
            rec.attempts = attempt
            try:
                ctx = StepContext(
                    self,
                    step,
                    _step_input(step, payload),
                    retry_count=attempt - 1,
                    resume_data=rec.resume_payload,
                    suspend_data=rec.suspend_payload,
                )
                output = _step_output(step, await step.execute(ctx))
            except SuspendSignal as signal:
                return await self._suspended(step, rec, signal)
            except BailSignal as signal:
                return await self._settle(
                    step,
                    rec,
                    StepStatus.SUCCESS,
                    output=signal.value,
                    outcome=Outcome(Kind.BAILED, signal.value),
                )
            except Exception as err:
                if self.cancel_event.is_set():
                    return await self._settle(
                        step, rec, StepStatus.CANCELED, outcome=Outcome(Kind.CANCELED)
                    )
                if isinstance(err, NonRetryableError) or attempt > retries:
                    error = serialize_error(err)
                    return await self._settle(
                        step,
                        rec,
                        StepStatus.FAILED,
                        error=error,
                        outcome=Outcome(Kind.FAILED, error=error),
                    )
                if await self._cancelled_within(self.workflow.retry.delay_before(attempt)):
                    return await self._settle(
                        step, rec, StepStatus.CANCELED, outcome=Outcome(Kind.CANCELED)
                    )
                continue
            snap.state.update(ctx.state_update)
            return await self._settle(
                step, rec, StepStatus.SUCCESS, output=output, outcome=Outcome(Kind.OK, output)
            )

    async def _cancelled_within(self, delay: float) -> bool:
        """Sleep for a retry delay; True if the run was canceled meanwhile."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancel_event.wait(), delay)
        return self.cancel_event.is_set()

    async def _settle(
        self,
        step: Step[Any, Any],
        rec: StepRecord,
        status: StepStatus,
        *,
        outcome: Outcome,
        output: Any = None,
        error: ErrorData | None = None,
    ) -> Outcome:
        rec.status, rec.ended_at = status, now()
        rec.output, rec.error = output, error
        self.snap.active_steps.pop(step.id, None)
        data: dict[str, Any] = {
            "step_id": step.id,
            "status": status.value,
            "payload": rec.payload,
            "started_at": rec.started_at,
            "ended_at": rec.ended_at,
            "attempts": rec.attempts,
        }
        if status is StepStatus.SUCCESS:
            data["output"] = output
        if error is not None:
            data["error"] = error.model_dump()
        await self._commit([Event(type=EventType.STEP_RESULT, data=data)])
        return outcome

    async def _suspended(
        self, step: Step[Any, Any], rec: StepRecord, signal: SuspendSignal
    ) -> Outcome:
        snap = self.snap
        rec.status, rec.suspended_at = StepStatus.SUSPENDED, now()
        rec.suspend_payload, rec.suspend_labels = signal.payload, signal.labels
        rec.resume_payload = rec.resumed_at = None
        position = snap.active_steps.pop(step.id)
        snap.suspended_paths[step.id] = position
        for label in signal.labels:
            snap.resume_labels[label] = ResumeLabel(step_id=step.id)
        await self._commit(
            [
                Event(
                    type=EventType.STEP_SUSPENDED,
                    data={
                        "step_id": step.id,
                        "payload": rec.payload,
                        "suspend_payload": signal.payload,
                        "labels": signal.labels,
                        "suspended_at": rec.suspended_at,
                    },
                )
            ]
        )
        return Outcome(Kind.SUSPENDED)


def _step_input(step: Step[Any, Any], payload: Any) -> Any:
    try:
        return step.input_schema.validate(payload, path="input")
    except SchemaViolation as err:
        raise StepInputInvalid(_violations("Step input validation failed:", err)) from None


def _step_output(step: Step[Any, Any], value: Any) -> Any:
    try:
        return step.output_schema.normalize(value, path="output")
    except SchemaViolation as err:
        raise StepOutputInvalid(
            _violations(f"Step output does not match {step.output_schema.name}:", err)
        ) from None
    except PydanticSerializationError as err:
        raise StepOutputInvalid(f"Step output is not JSON-serializable: {err}") from None


async def _holds(cond: Any, ctx: ConditionContext) -> bool:
    """A raising condition counts as false."""
    try:
        result = cond(ctx)
        if asyncio.iscoroutine(result):
            result = await result
        return bool(result)
    except Exception:
        log.warning("branch condition raised; treating it as false", exc_info=True)
        return False


__all__ = ["Execution", "Journal", "serialize_error"]
