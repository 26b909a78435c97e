"""Walks a committed workflow graph for one run, writing every transition through a journal.

The walk is driven by the snapshot: an entry whose steps already succeeded is replayed from
its recorded output, a suspended step runs again only when the pending resume targets it, a
sleep whose timer has not fired hands the run back, and a step recorded as running (a crashed
or handed-back pass) runs again with its recorded payload. So start, resume, wake-up and
re-drive after a crash are one code path.

Nested workflows run as child executions over a child snapshot kept inside the parent's
(`Snapshot.children`), so one atomic write still covers the whole run; their events reach the
parent's log with step ids prefixed `child.`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from pydantic_core import PydanticSerializationError, to_jsonable_python

from .cancellation import cancel_iterations, close_open_steps
from .context import (
    MAX_JSON_DEPTH,
    BailSignal,
    NonRetryableError,
    StepContext,
    SuspendSignal,
    json_problem,
)
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
    Condition,
    ConditionContext,
    ForeachNode,
    LoopNode,
    Node,
    ParallelNode,
    SleepNode,
    Step,
    StepNode,
    Unit,
    Workflow,
)

log = logging.getLogger(__name__)

# Sleeps this short are waited out in place; longer ones hand the run back to a durable timer.
INLINE_SLEEP = 1.0
# How long a step that timed out gets to unwind once cancelled before it is abandoned.
TIMEOUT_UNWIND = 1.0
# Bounds on a serialized error: causes followed, characters of text, nesting of details.
MAX_ERROR_CAUSES = 5
MAX_ERROR_TEXT = 10_000
MAX_DETAILS_DEPTH = MAX_JSON_DEPTH - 2 * MAX_ERROR_CAUSES - 2


class Journal(Protocol):
    """Where the executor records transitions: one atomic snapshot write + event append."""

    async def commit(
        self,
        snapshot: Snapshot,
        events: Sequence[Event],
        *,
        release: bool = False,
        wake_at: float | None = None,
    ) -> bool:
        """Persist; returns True when cancellation of the run has been requested.

        `wake_at` (with release) registers the durable timer of a WAITING run."""
        ...


class Kind(Enum):
    OK = "ok"
    SUSPENDED = "suspended"
    WAITING = "waiting"
    FAILED = "failed"
    BAILED = "bailed"
    CANCELED = "canceled"
    # A per_step pass stopped after its top-level entry (only `walk` of the run returns it).
    PAUSED = "paused"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    value: Any = None
    error: ErrorData | None = None
    wake_at: float | None = None


# When children of one entry end differently, the entry ends as the first of these.
_PRECEDENCE = (Kind.FAILED, Kind.CANCELED, Kind.BAILED, Kind.WAITING, Kind.SUSPENDED)


def _combine(outcomes: Sequence[Outcome]) -> Outcome | None:
    for kind in _PRECEDENCE:
        matching = [o for o in outcomes if o.kind is kind]
        if matching:
            if kind is Kind.WAITING:
                return min(matching, key=lambda o: o.wake_at or 0.0)
            return matching[0]
    return None


@dataclass
class Attempt:
    """How a step's execute() ended after its retries."""

    kind: Kind
    attempts: int
    value: Any = None
    error: ErrorData | None = None
    suspend: SuspendSignal | None = None
    state_update: dict[str, Any] = field(default_factory=dict)


class StepInputInvalid(Exception):
    pass


class StepOutputInvalid(Exception):
    pass


class LoopConditionFailed(Exception):
    pass


class ForeachInputInvalid(Exception):
    pass


class StepTimeoutError(Exception):
    """An attempt of a step ran past its time limit."""

    def __init__(self, step_id: str, timeout: float) -> None:
        super().__init__(f"step {step_id!r} did not finish within its timeout of {timeout:g} s")
        self.details = {"step_id": step_id, "timeout": timeout}


class StepCancelledError(Exception):
    """A CancelledError escaped a step while nothing was cancelling it (the step cancelled
    its own task, or let the cancellation of something it awaited through)."""


class _Escaped(Exception):
    """Carries a BaseException a step raised (SystemExit, KeyboardInterrupt, GeneratorExit...)
    out of the step's task: asyncio re-raises KeyboardInterrupt and SystemExit escaping a task
    into the event loop, which would stop the server."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


def serialize_error(err: BaseException) -> ErrorData:
    """{message, name, details}: the step's own details and its cause chain, never a stack.

    Bounded whatever the exception does: at most MAX_ERROR_CAUSES causes (a cycle ends the
    chain), MAX_ERROR_TEXT characters of message, details that are JSON nesting at most
    MAX_DETAILS_DEPTH levels (else their repr), and a `__str__` or `details` that raises is
    survived."""
    return _serialize_error(err, {id(err)}, MAX_ERROR_CAUSES)


def _serialize_error(err: BaseException, seen: set[int], causes: int) -> ErrorData:
    details: dict[str, Any] = {}
    try:
        own = getattr(err, "details", None)
    except Exception:
        own = None
    if own is not None:
        details["details"] = _jsonable(own)
    cause = err.__cause__
    if cause is not None and id(cause) not in seen and causes > 0:
        seen.add(id(cause))
        details["cause"] = _serialize_error(cause, seen, causes - 1).model_dump()
    name = type(err).__name__
    return ErrorData(message=_clip(_text(err)) or name, name=name, details=details or None)


# `<object object at 0x7f...>`: a memory address means nothing to a caller, so it is dropped.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(value: object, show: Callable[[object], str] = str) -> str:
    """`str(value)` (or `show(value)`), without memory addresses; survives a raising one."""
    try:
        return _ADDRESS.sub("", show(value))
    except Exception:
        return f"<{type(value).__name__} whose {show.__name__}() failed>"


def _clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    """An error's details as JSON: what is not JSON becomes its repr; details that are too
    deep, circular or raising become the repr of the whole."""
    try:
        data = to_jsonable_python(value, fallback=lambda item: _clip(_text(item, repr), 200))
    except Exception:  # circular, or a raising __getattr__ ...
        data = None
    else:
        if json_problem(data, "details", limit=MAX_DETAILS_DEPTH) is None:
            return data
    return _clip(_text(value, repr), 1000)


def _plain_json(value: Any, path: str) -> Any:
    """`value` as plain JSON data; raises StepOutputInvalid naming `path` when it is not
    JSON-serializable, nests too deeply or holds NaN / Infinity."""
    try:
        data = to_jsonable_python(value)
    except Exception as err:
        raise StepOutputInvalid(f"{path} is not JSON-serializable: {_text(err)}") from None
    problem = json_problem(data, path)
    if problem is not None:
        raise StepOutputInvalid(f"{path} is not plain JSON: {problem}")
    return data


def _json_copy(data: dict[str, Any]) -> dict[str, Any]:
    """A JSON copy of a request context; {} if a parallel step just broke it (its own check
    puts it right)."""
    try:
        copied: dict[str, Any] = to_jsonable_python(data)
    except Exception:
        return {}
    return copied


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _guarded(call: Awaitable[Any]) -> Any:
    """A step's execute(), with what must not escape its task wrapped."""
    try:
        return await call
    except (KeyboardInterrupt, SystemExit, GeneratorExit) as err:
        raise _Escaped(err) from None


async def _call_step(step: Step[Any, Any], ctx: StepContext[Any], timeout: float | None) -> Any:
    """Run one attempt of `step` in a task of its own, within `timeout` seconds.

    A step of its own task can't cancel the run's task (its CancelledError is its own
    failure, StepCancelledError), and one that ignores the cancellation its timeout sends is
    abandoned after TIMEOUT_UNWIND seconds rather than holding the run. The limit is a
    deadline: a step that blocked the event loop past it has timed out even if it then
    returned. When the run's own task is cancelled (the pass is handed back), so is the step.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    task = asyncio.create_task(_guarded(step.execute(ctx)), name=f"stepline-step-{step.id}")
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_consume)
        raise
    overran = timeout is not None and loop.time() - began > timeout
    if not task.done() or overran:
        assert timeout is not None
        task.add_done_callback(_consume)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=TIMEOUT_UNWIND)
            if not task.done():
                log.warning(
                    "step %s ignored the cancellation of its timeout; it is abandoned", step.id
                )
        raise StepTimeoutError(step.id, timeout)
    if task.cancelled():
        raise StepCancelledError(
            f"step {step.id!r} was cancelled from inside: a CancelledError escaped it while "
            "the run was not being canceled"
        )
    return task.result()


def _violations(prefix: str, err: SchemaViolation) -> str:
    return prefix + "".join(f"\n- {v.field}: {v.description}" for v in err.violations)


class _ChildJournal:
    """A nested workflow's transitions are the parent's: prefix the ids, write the parent."""

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
    ) -> bool:
        prefixed = [
            e.model_copy(update={"data": {**e.data, "step_id": self._prefix + e.data["step_id"]}})
            if "step_id" in e.data
            else e
            for e in events
        ]
        await self._parent.commit(prefixed)
        return False  # the shared cancel event already carries the parent's flag


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
            data = _plain_json(value, "value")
        except StepOutputInvalid as err:
            raise TypeError(f"ctx.write() needs plain JSON: {err}") from None
        await self.commit(
            [Event(type=EventType.STEP_OUTPUT, data={"step_id": step_id, "output": data})]
        )

    def abort(self) -> None:
        self.cancel_event.set()

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> Snapshot:
        """Execute until the run settles or waits; returns the final (persisted) snapshot."""
        snap = self.snap
        if snap.status is RunStatus.PENDING:
            snap.status = RunStatus.RUNNING
            await self.commit([self._start_event("start")])
        elif snap.pass_announced:
            snap.pass_announced = False
        elif snap.status is RunStatus.RUNNING:
            # A pass that died or was handed back: continue from the recorded steps.
            await self.commit([self._start_event("restart")])
        snap.status = RunStatus.RUNNING
        snap.wake_at = None
        outcome = await self.walk()
        if self.cancel_event.is_set() and outcome.kind in (Kind.SUSPENDED, Kind.WAITING):
            outcome = Outcome(Kind.CANCELED)  # canceled while parking: the cancel ends the run
        if outcome.kind is Kind.WAITING:
            return await self._hand_to_timer(outcome.wake_at or now())
        return await self._finish(outcome)

    def _start_event(self, reason: str) -> Event:
        return Event(
            type=EventType.WORKFLOW_START, data={"workflow_id": self.workflow_id, "reason": reason}
        )

    async def commit(
        self, events: Sequence[Event], *, release: bool = False, wake_at: float | None = None
    ) -> None:
        self.snap.updated_at = now()
        if await self.journal.commit(self.snap, events, release=release, wake_at=wake_at):
            self.cancel_event.set()

    async def _hand_to_timer(self, wake_at: float) -> Snapshot:
        self.snap.status = RunStatus.WAITING
        self.snap.wake_at = wake_at
        await self.commit([], release=True, wake_at=wake_at)
        return self.snap

    async def _finish(self, outcome: Outcome) -> Snapshot:
        snap = self.snap
        status = _settled_status(outcome.kind)
        snap.status = status
        snap.active_steps.clear()
        snap.pending_resume = None
        snap.pause_after = None  # a per_step request covers one pass
        events: list[Event] = []
        data = snap.finish_data()
        if status is RunStatus.SUCCESS:
            snap.result = outcome.value
            data["result"] = outcome.value
        elif status is RunStatus.FAILED:
            snap.error = outcome.error
            data["error"] = outcome.error.model_dump() if outcome.error else None
        elif status is RunStatus.SUSPENDED:
            snap.resumed_since_suspend = False
            data["suspended"] = [leaf.model_dump() for leaf in snap.suspended_leaves()]
        elif status is RunStatus.PAUSED:
            # Not suspended: a resume is refused as such, not as a lost race.
            snap.resumed_since_suspend = False
            events.append(Event(type=EventType.WORKFLOW_PAUSED))
        else:
            # No step of a canceled run stays running, waiting or suspended.
            events.extend(close_open_steps(snap, self.workflow))
            events.append(Event(type=EventType.WORKFLOW_CANCELED))
        events.append(Event(type=EventType.WORKFLOW_FINISH, data=data))
        await self.commit(events, release=True)
        return snap

    # -- the walk --------------------------------------------------------------------------
    async def walk(self) -> Outcome:
        """Run the graph's entries in order from the snapshot; stop at the first that does
        not complete, or (per_step) after the entry the snapshot names, unless it is the
        last."""
        value: Any = self.snap.input
        last = len(self.workflow.nodes) - 1
        for index, node in enumerate(self.workflow.nodes):
            if self.cancel_event.is_set():
                return Outcome(Kind.CANCELED)
            entry = self.snap.entry_state.get(str(index), {})
            if "input" in entry:  # time travel replaced this entry's input
                value = entry["input"]
            outcome = await self._run_node(index, node, value)
            if outcome.kind is not Kind.OK:
                return outcome
            value = outcome.value
            paused = index == self.snap.pause_after and index < last
            if paused and not self.cancel_event.is_set():  # a cancel wins: it ends the run
                return Outcome(Kind.PAUSED, value)
        if self.cancel_event.is_set():
            return Outcome(Kind.CANCELED)
        return Outcome(Kind.OK, value)

    async def _run_node(self, index: int, node: Node, value: Any) -> Outcome:
        if isinstance(node, StepNode):
            return await self._run_unit(node.step, [index], value)
        if isinstance(node, LoopNode):
            return await self._run_loop(index, node, value)
        if isinstance(node, ForeachNode):
            return await self._run_foreach(index, node, value)
        if isinstance(node, SleepNode):
            return await self._run_sleep(index, node, value)
        if isinstance(node, ParallelNode):
            units: Sequence[Unit] = node.steps
        else:
            units = await self._select_branches(index, node, value)
            if not units:
                return Outcome(Kind.OK, {})
        positions = {u.id: i for i, u in enumerate(node.steps)}
        outcomes = await asyncio.gather(
            *(self._run_unit(u, [index, positions[u.id]], value) for u in units)
        )
        combined = _combine(outcomes)
        if combined is not None:
            return combined
        return Outcome(Kind.OK, {u.id: o.value for u, o in zip(units, outcomes, strict=True)})

    def _condition_context(self, value: Any, iteration: int = 0) -> ConditionContext:
        return ConditionContext(
            input=value,
            state=dict(self.snap.state),
            request_context=self.request_context,
            init_data=self.snap.input,
            step_results={
                k: r.output for k, r in self.snap.steps.items() if r.status is StepStatus.SUCCESS
            },
            iteration_count=iteration,
        )

    async def _select_branches(self, index: int, node: BranchNode, value: Any) -> list[Unit]:
        """Evaluate every condition once per run; the choice is kept in the snapshot."""
        entry = self.snap.entry_state.setdefault(str(index), {})
        if "branches" not in entry:
            ctx = self._condition_context(value)
            chosen = await asyncio.gather(*(_holds(cond, ctx) for cond, _ in node.branches))
            entry["branches"] = [
                u.id for (_, u), ok in zip(node.branches, chosen, strict=True) if ok
            ]
        return [u for u in node.steps if u.id in entry["branches"]]

    # -- loops -----------------------------------------------------------------------------
    async def _run_loop(self, index: int, node: LoopNode, value: Any) -> Outcome:
        """Iteration k (from 1) runs on the previous iteration's output; progress is kept in
        the entry state so a resumed or re-driven loop continues where it was."""
        entry = self.snap.entry_state.setdefault(str(index), {})
        if entry.get("done"):
            return Outcome(Kind.OK, entry["output"])
        iteration = entry.get("iteration", 1)
        payload = entry.get("input", value) if iteration > 1 else value
        while True:
            if iteration > 1 and self.cancel_event.is_set():
                return Outcome(Kind.CANCELED)
            outcome = await self._run_unit(node.step, [index], payload, iteration=iteration)
            if outcome.kind is not Kind.OK:
                return outcome
            try:
                holds = await _evaluate(
                    node.condition, self._condition_context(outcome.value, iteration)
                )
            except Exception as err:
                error = serialize_error(
                    LoopConditionFailed(
                        f"loop condition of step {node.step.id!r} raised on iteration "
                        f"{iteration}: {type(err).__name__}: {err}"
                    )
                )
                return await self._fail_recorded(node.step.id, error)
            if holds is node.until:
                entry.update(done=True, output=outcome.value)
                return Outcome(Kind.OK, outcome.value)
            iteration += 1
            entry.update(iteration=iteration, input=outcome.value)
            payload = outcome.value

    async def _fail_recorded(self, step_id: str, error: ErrorData) -> Outcome:
        """Fail a step whose own execution succeeded (e.g. its loop condition raised)."""
        rec = self.snap.steps[step_id]
        rec.status, rec.error = StepStatus.FAILED, error
        await self.commit(
            [
                Event(
                    type=EventType.STEP_RESULT,
                    data={
                        "step_id": step_id,
                        "status": StepStatus.FAILED.value,
                        "payload": rec.payload,
                        "error": error.model_dump(),
                        "started_at": rec.started_at,
                        "ended_at": rec.ended_at,
                        "attempts": rec.attempts,
                    },
                )
            ]
        )
        return Outcome(Kind.FAILED, error=error)

    # -- sleep -----------------------------------------------------------------------------
    async def _run_sleep(self, index: int, node: SleepNode, value: Any) -> Outcome:
        snap = self.snap
        rec = snap.steps.get(node.id)
        if rec is not None and rec.status is StepStatus.SUCCESS:
            return Outcome(Kind.OK, rec.output)
        if rec is None or rec.status is not StepStatus.WAITING:
            started = now()
            wake_at = node.until if node.until is not None else started + (node.seconds or 0.0)
            rec = StepRecord(
                status=StepStatus.WAITING,
                payload=value,
                started_at=started,
                metadata={"wake_at": wake_at},
            )
            snap.steps[node.id] = rec
            snap.active_steps[node.id] = [index]
            if node.id not in snap.step_execution_path:
                snap.step_execution_path.append(node.id)
            await self.commit(
                [
                    Event(
                        type=EventType.STEP_WAITING,
                        data={
                            "step_id": node.id,
                            "payload": value,
                            "started_at": started,
                            "wake_at": wake_at,
                        },
                    )
                ]
            )
        wake_at = float(rec.metadata["wake_at"])
        remaining = wake_at - now()
        if remaining > INLINE_SLEEP:
            return Outcome(Kind.WAITING, wake_at=wake_at)
        if remaining > 0 and await self._cancelled_within(remaining):
            return Outcome(Kind.CANCELED)
        rec.status, rec.output, rec.ended_at = StepStatus.SUCCESS, rec.payload, now()
        snap.active_steps.pop(node.id, None)
        await self.commit(
            [
                Event(
                    type=EventType.STEP_RESULT,
                    data={
                        "step_id": node.id,
                        "status": StepStatus.SUCCESS.value,
                        "payload": rec.payload,
                        "output": rec.output,
                        "started_at": rec.started_at,
                        "ended_at": rec.ended_at,
                        "attempts": 1,
                    },
                )
            ]
        )
        return Outcome(Kind.OK, rec.output)

    # -- one unit (a step or a nested workflow) ---------------------------------------------
    async def _run_unit(
        self, unit: Unit, position: list[int], payload: Any, *, iteration: int | None = None
    ) -> Outcome:
        prior = self.snap.steps.get(unit.id)
        if (
            prior is not None
            and iteration is not None
            and (prior.metadata.get("iteration_count") != iteration)
        ):
            prior = None  # a record of an earlier loop iteration
        done, resume = self._recorded(unit.id, prior)
        if done is not None:
            return done
        if prior is not None:
            payload = prior.payload
        metadata = {"iteration_count": iteration} if iteration is not None else {}
        rec = await self._open(unit.id, position, payload, prior, resume, metadata)
        if isinstance(unit, Workflow):
            if prior is None:  # a fresh run of the child (e.g. the next loop iteration)
                self.snap.children.pop(unit.id, None)
            return await self._run_child(unit, position, rec, resume)
        attempt = await self._attempts(unit, payload, rec.resume_payload, rec.suspend_payload)
        return await self._close(unit.id, position, rec, attempt)

    def _recorded(
        self, unit_id: str, prior: StepRecord | None
    ) -> tuple[Outcome | None, PendingResume | None]:
        """What the snapshot already decides for a step: its recorded outcome when it needs no
        execution (succeeded; failed, when a pass died before recording the run's end;
        suspended and not the resume target), else the pending resume that targets it (or
        None for a fresh or re-driven run). Time travel clears the records it re-runs."""
        if prior is None:
            return None, None
        if prior.status is StepStatus.SUCCESS:
            return Outcome(Kind.OK, prior.output), None
        if prior.status is StepStatus.FAILED:
            return Outcome(Kind.FAILED, error=prior.error), None
        if prior.status is StepStatus.SUSPENDED:
            pending = self.snap.pending_resume
            if pending is None or pending.step_id != unit_id:
                return Outcome(Kind.SUSPENDED), None
            return None, pending
        return None, None

    async def _open(
        self,
        unit_id: str,
        position: list[int],
        payload: Any,
        prior: StepRecord | None,
        resume: PendingResume | None,
        metadata: dict[str, Any],
    ) -> StepRecord:
        """Record the step as running and emit its step-start."""
        snap = self.snap
        started = now()
        rec = StepRecord(
            status=StepStatus.RUNNING, payload=payload, started_at=started, metadata=metadata
        )
        if resume is not None:
            rec.resume_payload, rec.resumed_at = resume.data, started
        elif prior is not None and prior.resume_payload is not None:
            # Re-driving a resume pass that was interrupted: keep what it was resumed with.
            rec.resume_payload, rec.resumed_at = prior.resume_payload, prior.resumed_at
        if prior is not None:
            rec.suspend_payload = prior.suspend_payload
            rec.suspend_labels = list(prior.suspend_labels)
        snap.steps[unit_id] = rec
        snap.active_steps[unit_id] = position
        if resume is not None:
            snap.suspended_paths.pop(unit_id, None)
            snap.resume_labels = {
                k: v for k, v in snap.resume_labels.items() if v.step_id != unit_id
            }
            snap.pending_resume = None
        if unit_id not in snap.step_execution_path:
            snap.step_execution_path.append(unit_id)
        start: dict[str, Any] = {"step_id": unit_id, "payload": payload, "started_at": started}
        if rec.resume_payload is not None:
            start["resume_payload"] = rec.resume_payload
        if metadata:
            start["metadata"] = metadata
        await self.commit([Event(type=EventType.STEP_START, data=start)])
        return rec

    async def _attempts(
        self, step: Step[Any, Any], payload: Any, resume_data: Any, suspend_data: Any
    ) -> Attempt:
        """Run execute() with the step's retry policy and time limit.

        Whatever an attempt raises ends as this step's failure, never the pass's: BaseExceptions
        that are not the engine's signals (SystemExit, KeyboardInterrupt, GeneratorExit...)
        fail the step without retries; everything else, StepTimeoutError included, is retried
        by the policy. What the step hands back (output, state, suspend payload, bail value,
        request context) must be plain JSON, or the step fails with StepOutputInvalid."""
        retries = step.retries if step.retries is not None else self.workflow.retry.attempts
        timeout = step.effective_timeout(self.workflow.step_timeout)
        attempt = 0
        while True:
            attempt += 1
            ctx: StepContext[Any] | None = None
            before = _json_copy(self.request_context)
            unfit: str | None = None
            try:
                try:
                    ctx = StepContext(
                        self,
                        step,
                        _step_input(step, payload),
                        retry_count=attempt - 1,
                        resume_data=resume_data,
                        suspend_data=suspend_data,
                    )
                    output = _step_output(step, await _call_step(step, ctx, timeout))
                    state_update = _plain_json(ctx.state_update, "state")
                finally:
                    if ctx is not None:
                        ctx.close()
                    unfit = self._unfit_request_context(before)
                if unfit is not None:
                    raise StepOutputInvalid(unfit)
            except SuspendSignal as signal:
                try:
                    if unfit is not None:
                        raise StepOutputInvalid(unfit)
                    suspended = _plain_json(signal.payload, "suspend_payload")
                except StepOutputInvalid as err:
                    return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
                return Attempt(
                    Kind.SUSPENDED, attempt, suspend=SuspendSignal(suspended, signal.labels)
                )
            except BailSignal as signal:
                try:
                    if unfit is not None:
                        raise StepOutputInvalid(unfit)
                    value = _plain_json(signal.value, "result")
                except StepOutputInvalid as err:
                    return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
                return Attempt(Kind.BAILED, attempt, value=value)
            except _Escaped as escaped:
                if self.cancel_event.is_set():
                    return Attempt(Kind.CANCELED, attempt)
                return Attempt(Kind.FAILED, attempt, error=serialize_error(escaped.error))
            except Exception as err:
                if self.cancel_event.is_set():
                    return Attempt(Kind.CANCELED, attempt)
                if isinstance(err, NonRetryableError) or attempt > retries:
                    return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
                if await self._cancelled_within(self.workflow.retry.delay_before(attempt)):
                    return Attempt(Kind.CANCELED, attempt)
                continue
            except asyncio.CancelledError:
                raise  # the run's own task: the pass is being handed back
            except BaseException as err:
                # Another BaseException a step raised (its own subclasses, for one).
                if self.cancel_event.is_set():
                    return Attempt(Kind.CANCELED, attempt)
                return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
            return Attempt(Kind.OK, attempt, value=output, state_update=state_update)

    def _unfit_request_context(self, before: dict[str, Any]) -> str | None:
        """Why the request context a step left behind can't be stored (restoring it to
        `before`, its JSON copy from before the attempt), or None. Steps may change it in
        place, so a bad value would otherwise break every later write of the run."""
        try:
            after = to_jsonable_python(self.request_context)
        except Exception as err:
            problem = f"request_context is not JSON-serializable: {_text(err)}"
        else:
            if after == before:  # unchanged (the common case): nothing to walk
                return None
            found = json_problem(after, "request_context")
            if found is None:
                return None
            problem = f"request_context is not plain JSON: {found}"
        self.request_context.clear()
        self.request_context.update(before)
        return problem

    async def _cancelled_within(self, delay: float) -> bool:
        """Sleep up to `delay`; True if the run was canceled meanwhile."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancel_event.wait(), delay)
        return self.cancel_event.is_set()

    async def _close(
        self, unit_id: str, position: list[int], rec: StepRecord, attempt: Attempt
    ) -> Outcome:
        """Record how the step ended and emit its result (or suspension)."""
        rec.attempts = attempt.attempts
        if attempt.kind is Kind.SUSPENDED and attempt.suspend is not None:
            return await self._suspend(
                unit_id, position, rec, attempt.suspend.payload, attempt.suspend.labels
            )
        if attempt.kind is Kind.OK:
            self.snap.state.update(attempt.state_update)
            return await self._settle(
                unit_id, rec, StepStatus.SUCCESS, attempt.value, Outcome(Kind.OK, attempt.value)
            )
        if attempt.kind is Kind.BAILED:
            return await self._settle(
                unit_id, rec, StepStatus.SUCCESS, attempt.value, Outcome(Kind.BAILED, attempt.value)
            )
        if attempt.kind is Kind.FAILED:
            rec.error = attempt.error
            return await self._settle(
                unit_id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=attempt.error)
            )
        return await self._settle(unit_id, rec, StepStatus.CANCELED, None, Outcome(Kind.CANCELED))

    async def _settle(
        self, unit_id: str, rec: StepRecord, status: StepStatus, output: Any, outcome: Outcome
    ) -> Outcome:
        rec.status, rec.ended_at, rec.output = status, now(), output
        self.snap.active_steps.pop(unit_id, None)
        data: dict[str, Any] = {
            "step_id": unit_id,
            "status": status.value,
            "payload": rec.payload,
            "started_at": rec.started_at,
            "ended_at": rec.ended_at,
            "attempts": rec.attempts,
        }
        if status is StepStatus.SUCCESS:
            data["output"] = output
        if rec.error is not None:
            data["error"] = rec.error.model_dump()
        await self.commit([Event(type=EventType.STEP_RESULT, data=data)])
        return outcome

    async def _suspend(
        self,
        unit_id: str,
        position: list[int],
        rec: StepRecord,
        payload: Any,
        labels: list[str],
        label_targets: dict[str, ResumeLabel] | None = None,
    ) -> Outcome:
        snap = self.snap
        rec.status, rec.suspended_at = StepStatus.SUSPENDED, now()
        rec.suspend_payload, rec.suspend_labels = payload, labels
        rec.resume_payload = rec.resumed_at = None
        snap.active_steps.pop(unit_id, None)
        snap.suspended_paths[unit_id] = position
        targets = label_targets or {label: ResumeLabel(step_id=unit_id) for label in labels}
        snap.resume_labels.update(targets)
        await self.commit(
            [
                Event(
                    type=EventType.STEP_SUSPENDED,
                    data={
                        "step_id": unit_id,
                        "payload": rec.payload,
                        "suspend_payload": payload,
                        "labels": labels,
                        "suspended_at": rec.suspended_at,
                    },
                )
            ]
        )
        return Outcome(Kind.SUSPENDED)

    # -- foreach ---------------------------------------------------------------------------
    async def _run_foreach(self, index: int, node: ForeachNode, value: Any) -> Outcome:
        """One step per list element, at most `concurrency` in flight (a sliding window)."""
        step = node.step
        snap = self.snap
        prior = snap.steps.get(step.id)
        done, resume = self._recorded(step.id, prior)
        if done is not None:
            return done
        if prior is not None:
            value = prior.payload
        rec = await self._open(step.id, [index], value, prior, resume, {})
        if not isinstance(value, list):
            error = serialize_error(
                ForeachInputInvalid(
                    f"foreach step {step.id!r} needs a list as input, got {type(value).__name__}"
                )
            )
            rec.error = error
            return await self._settle(
                step.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=error)
            )
        entry = snap.entry_state.setdefault(str(index), {})
        items: list[dict[str, Any] | None] = entry.setdefault("items", [None] * len(value))

        def targeted(i: int) -> bool:
            item = items[i]
            return (
                resume is not None
                and item is not None
                and item["status"] == "suspended"
                and resume.for_each_index in (None, i)
            )

        todo = [
            i
            for i, item in enumerate(items)
            if item is None or item["status"] == "running" or targeted(i)
        ]
        resume_for = {i: (resume.data if resume else None) for i in todo if targeted(i)}
        stop = asyncio.Event()
        window = asyncio.Semaphore(node.concurrency)

        async def one(i: int) -> None:
            try:
                prev = items[i] or {}
                items[i] = {"status": "running"}
                attempt = await self._attempts(
                    step,
                    value[i],
                    resume_for.get(i),
                    prev.get("suspend_payload") if i in resume_for else None,
                )
                await self._item_done(step, items, i, attempt)
                if attempt.kind is Kind.FAILED or (
                    attempt.kind is Kind.SUSPENDED and node.concurrency == 1
                ):
                    stop.set()  # no new items; in-flight ones finish
            finally:
                window.release()

        tasks: list[asyncio.Task[None]] = []
        for i in todo:
            await window.acquire()
            if stop.is_set() or self.cancel_event.is_set():
                window.release()
                break
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return await self._foreach_outcome(step, [index], rec, items)

    async def _item_done(
        self, step: Step[Any, Any], items: list[dict[str, Any] | None], i: int, attempt: Attempt
    ) -> None:
        status = {
            Kind.OK: "success",
            Kind.BAILED: "success",
            Kind.FAILED: "failed",
            Kind.SUSPENDED: "suspended",
        }.get(attempt.kind, "canceled")
        item: dict[str, Any] = {"status": status}
        if attempt.kind in (Kind.OK, Kind.BAILED):
            item["output"] = attempt.value
            self.snap.state.update(attempt.state_update)
        elif attempt.kind is Kind.FAILED and attempt.error is not None:
            item["error"] = attempt.error.model_dump()
        elif attempt.suspend is not None:
            item["suspend_payload"] = attempt.suspend.payload
            item["labels"] = attempt.suspend.labels
        items[i] = item
        done = sum(1 for it in items if it is not None and it["status"] in ("success", "failed"))
        progress: dict[str, Any] = {
            "step_id": step.id,
            "completed_count": done,
            "total_count": len(items),
            "current_index": i,
            "iteration_status": status,
        }
        if "output" in item:
            progress["iteration_output"] = item["output"]
        await self.commit([Event(type=EventType.STEP_PROGRESS, data=progress)])

    async def _foreach_outcome(
        self,
        step: Step[Any, Any],
        position: list[int],
        rec: StepRecord,
        items: list[dict[str, Any] | None],
    ) -> Outcome:
        rec.attempts = 1
        failed = [it for it in items if it is not None and it["status"] == "failed"]
        if failed:
            rec.error = ErrorData.model_validate(failed[0]["error"])
            return await self._settle(
                step.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=rec.error)
            )
        if self.cancel_event.is_set() and any(
            it is None or it["status"] != "success" for it in items
        ):
            closed = cancel_iterations(step.id, items)
            if closed:
                await self.commit(closed)
            return await self._settle(
                step.id, rec, StepStatus.CANCELED, None, Outcome(Kind.CANCELED)
            )
        suspended = {
            i: it for i, it in enumerate(items) if it is not None and it["status"] == "suspended"
        }
        if suspended or any(it is None for it in items):
            labels = [label for it in suspended.values() for label in it.get("labels", [])]
            targets = {
                label: ResumeLabel(step_id=step.id, for_each_index=i)
                for i, it in suspended.items()
                for label in it.get("labels", [])
            }
            payload = {str(i): it.get("suspend_payload") for i, it in suspended.items()}
            return await self._suspend(step.id, position, rec, payload, labels, targets)
        outputs = [it["output"] for it in items if it is not None]
        return await self._settle(
            step.id, rec, StepStatus.SUCCESS, outputs, Outcome(Kind.OK, outputs)
        )

    # -- nested workflows --------------------------------------------------------------------
    async def _run_child(
        self, child_wf: Workflow, position: list[int], rec: StepRecord, resume: PendingResume | None
    ) -> Outcome:
        snap = self.snap
        child = snap.children.get(child_wf.id)
        if child is None:
            try:
                data = child_wf.input_schema.normalize(rec.payload, path="input")
            except SchemaViolation as err:
                rec.error = serialize_error(
                    StepInputInvalid(_violations("Nested workflow input validation failed:", err))
                )
                return await self._settle(
                    child_wf.id, rec, StepStatus.FAILED, None, Outcome(Kind.FAILED, error=rec.error)
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
        sub = Execution(
            child_wf, child, _ChildJournal(self, child_wf.id), cancel_event=self.cancel_event
        )
        outcome = await sub.walk()
        waiting = outcome.kind is Kind.WAITING
        child.status = RunStatus.WAITING if waiting else _settled_status(outcome.kind)
        if outcome.kind in (Kind.OK, Kind.BAILED):
            snap.state.update(child.state)  # state flows back out
            child.result = outcome.value
            return await self._settle(
                child_wf.id, rec, StepStatus.SUCCESS, outcome.value, Outcome(Kind.OK, outcome.value)
            )
        if outcome.kind is Kind.FAILED:
            child.error = rec.error = outcome.error
            return await self._settle(child_wf.id, rec, StepStatus.FAILED, None, outcome)
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
            return await self._suspend(child_wf.id, position, rec, payload, labels, targets)
        if outcome.kind is Kind.WAITING:
            rec.status = StepStatus.WAITING
            return outcome
        return await self._settle(child_wf.id, rec, StepStatus.CANCELED, None, outcome)


def _settled_status(kind: Kind) -> RunStatus:
    return {
        Kind.OK: RunStatus.SUCCESS,
        Kind.BAILED: RunStatus.SUCCESS,
        Kind.FAILED: RunStatus.FAILED,
        Kind.SUSPENDED: RunStatus.SUSPENDED,
        Kind.CANCELED: RunStatus.CANCELED,
        Kind.PAUSED: RunStatus.PAUSED,
    }[kind]


def _step_input(step: Step[Any, Any], payload: Any) -> Any:
    try:
        return step.input_schema.validate(payload, path="input")
    except SchemaViolation as err:
        raise StepInputInvalid(_violations("Step input validation failed:", err)) from None


def _step_output(step: Step[Any, Any], value: Any) -> Any:
    # Checked before the schema too: dumping an `Any` turns NaN into null without a word.
    problem = json_problem(value, "output")
    if problem is not None:
        raise StepOutputInvalid(f"Step output is not plain JSON: {problem}")
    try:
        data = step.output_schema.normalize(value, path="output")
    except SchemaViolation as err:
        raise StepOutputInvalid(
            _violations(f"Step output does not match {step.output_schema.name}:", err)
        ) from None
    except PydanticSerializationError as err:
        raise StepOutputInvalid(f"Step output is not JSON-serializable: {_text(err)}") from None
    except (ValueError, TypeError, RecursionError) as err:  # e.g. a circular structure
        raise StepOutputInvalid(f"Step output is not JSON-serializable: {_text(err)}") from None
    problem = json_problem(data, "output")
    if problem is not None:
        raise StepOutputInvalid(f"Step output is not plain JSON: {problem}")
    return data


async def _evaluate(cond: Condition, ctx: ConditionContext) -> bool:
    result = cond(ctx)
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


async def _holds(cond: Condition, ctx: ConditionContext) -> bool:
    """A raising branch condition counts as false."""
    try:
        return await _evaluate(cond, ctx)
    except Exception:
        log.warning("branch condition raised; treating it as false", exc_info=True)
        return False


__all__ = ["INLINE_SLEEP", "Execution", "Journal", "serialize_error"]
