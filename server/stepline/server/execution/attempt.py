"""One step's execution: its attempts under the retry policy, each in a task of its own within
the step's time limit, its input validated, and everything it hands back (output, state,
suspend payload, bail value, request context) checked to be plain JSON."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..context import BailSignal, NonRetryableError, StepContext, SuspendSignal, json_problem
from ..model import ErrorData
from ..schema import SchemaViolation
from ..workflows import Step
from .base import Kind
from .failures import (
    StepCancelledError,
    StepInputInvalid,
    StepOutputInvalid,
    StepTimeoutError,
    serialize_error,
    text_of,
    violations,
)

if TYPE_CHECKING:
    from .walk import Execution

log = logging.getLogger(__name__)

# How long a step that timed out gets to unwind once cancelled before it is abandoned.
TIMEOUT_UNWIND = 1.0


@dataclass
class Attempt:
    """How a step's execute() ended after its retries."""

    kind: Kind
    attempts: int
    value: Any = None
    error: ErrorData | None = None
    suspend: SuspendSignal | None = None
    state_update: dict[str, Any] = field(default_factory=dict)


class _Escaped(Exception):
    """Carries a BaseException a step raised (SystemExit, KeyboardInterrupt, GeneratorExit...)
    out of the step's task: asyncio re-raises KeyboardInterrupt and SystemExit escaping a task
    into the event loop, which would stop the server."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


async def run_attempts(
    ex: Execution, step: Step[Any, Any], payload: Any, resume_data: Any, suspend_data: Any
) -> Attempt:
    """Run execute() with the step's retry policy and time limit.

    Whatever an attempt raises ends as this step's failure, never the pass's: BaseExceptions
    that are not the engine's signals (SystemExit, KeyboardInterrupt, GeneratorExit...)
    fail the step without retries; everything else, StepTimeoutError included, is retried
    by the policy. What the step hands back (output, state, suspend payload, bail value,
    request context) must be plain JSON, or the step fails with StepOutputInvalid."""
    retries = step.retries if step.retries is not None else ex.workflow.retry.attempts
    timeout = step.effective_timeout(ex.workflow.step_timeout)
    attempt = 0
    while True:
        attempt += 1
        ctx: StepContext[Any] | None = None
        before = _json_copy(ex.request_context)
        unfit: str | None = None
        try:
            try:
                ctx = StepContext(
                    ex,
                    step,
                    _step_input(step, payload),
                    retry_count=attempt - 1,
                    resume_data=resume_data,
                    suspend_data=suspend_data,
                )
                output = _step_output(step, await _call_step(step, ctx, timeout))
                state_update = plain_json(ctx.state_update, "state")
            finally:
                if ctx is not None:
                    ctx.close()
                unfit = _unfit_request_context(ex, before)
            if unfit is not None:
                raise StepOutputInvalid(unfit)
        except SuspendSignal as signal:
            try:
                if unfit is not None:
                    raise StepOutputInvalid(unfit)
                suspended = plain_json(signal.payload, "suspend_payload")
            except StepOutputInvalid as err:
                return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
            return Attempt(Kind.SUSPENDED, attempt, suspend=SuspendSignal(suspended, signal.labels))
        except BailSignal as signal:
            try:
                if unfit is not None:
                    raise StepOutputInvalid(unfit)
                value = plain_json(signal.value, "result")
            except StepOutputInvalid as err:
                return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
            return Attempt(Kind.BAILED, attempt, value=value)
        except _Escaped as escaped:
            if ex.cancel_event.is_set():
                return Attempt(Kind.CANCELED, attempt)
            return Attempt(Kind.FAILED, attempt, error=serialize_error(escaped.error))
        except Exception as err:
            if ex.cancel_event.is_set():
                return Attempt(Kind.CANCELED, attempt)
            if isinstance(err, NonRetryableError) or attempt > retries:
                return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
            if await ex.cancelled_within(ex.workflow.retry.delay_before(attempt)):
                return Attempt(Kind.CANCELED, attempt)
            continue
        except asyncio.CancelledError:
            raise  # the run's own task: the pass is being handed back
        except BaseException as err:
            # Another BaseException a step raised (its own subclasses, for one).
            if ex.cancel_event.is_set():
                return Attempt(Kind.CANCELED, attempt)
            return Attempt(Kind.FAILED, attempt, error=serialize_error(err))
        return Attempt(Kind.OK, attempt, value=output, state_update=state_update)


def plain_json(value: Any, path: str) -> Any:
    """`value` as plain JSON data; raises StepOutputInvalid naming `path` when it is not
    JSON-serializable, nests too deeply or holds NaN / Infinity."""
    try:
        data = to_jsonable_python(value)
    except Exception as err:
        raise StepOutputInvalid(f"{path} is not JSON-serializable: {text_of(err)}") from None
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


def _unfit_request_context(ex: Execution, before: dict[str, Any]) -> str | None:
    """Why the request context a step left behind can't be stored (restoring it to
    `before`, its JSON copy from before the attempt), or None. Steps may change it in
    place, so a bad value would otherwise break every later write of the run."""
    try:
        after = to_jsonable_python(ex.request_context)
    except Exception as err:
        problem = f"request_context is not JSON-serializable: {text_of(err)}"
    else:
        if after == before:  # unchanged (the common case): nothing to walk
            return None
        found = json_problem(after, "request_context")
        if found is None:
            return None
        problem = f"request_context is not plain JSON: {found}"
    ex.request_context.clear()
    ex.request_context.update(before)
    return problem


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


def _step_input(step: Step[Any, Any], payload: Any) -> Any:
    try:
        return step.input_schema.validate(payload, path="input")
    except SchemaViolation as err:
        raise StepInputInvalid(violations("Step input validation failed:", err)) from None


def _step_output(step: Step[Any, Any], value: Any) -> Any:
    # Checked before the schema too: dumping an `Any` turns NaN into null without a word.
    problem = json_problem(value, "output")
    if problem is not None:
        raise StepOutputInvalid(f"Step output is not plain JSON: {problem}")
    try:
        data = step.output_schema.normalize(value, path="output")
    except SchemaViolation as err:
        raise StepOutputInvalid(
            violations(f"Step output does not match {step.output_schema.name}:", err)
        ) from None
    except PydanticSerializationError as err:
        raise StepOutputInvalid(f"Step output is not JSON-serializable: {text_of(err)}") from None
    except (ValueError, TypeError, RecursionError) as err:  # e.g. a circular structure
        raise StepOutputInvalid(f"Step output is not JSON-serializable: {text_of(err)}") from None
    problem = json_problem(data, "output")
    if problem is not None:
        raise StepOutputInvalid(f"Step output is not plain JSON: {problem}")
    return data


__all__ = ["TIMEOUT_UNWIND", "Attempt", "plain_json", "run_attempts"]
