"""What a step's `execute(ctx)` receives."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from .workflows import Step

InputT = TypeVar("InputT")

log = logging.getLogger(__name__)

# How deeply the JSON values of a run (inputs, outputs, state, payloads) may nest. Every value
# must stay encodable as google.protobuf.Value wherever the API carries it, and protobuf
# refuses messages nested over 100 levels (a JSON level takes two), results wrapping values a
# few levels further down.
MAX_JSON_DEPTH = 32


def json_problem(value: Any, path: str, *, limit: int = MAX_JSON_DEPTH) -> str | None:
    """What makes `value` (already plain JSON data) unfit for a run, naming its path: nesting
    deeper than `limit` levels, or a NaN / Infinity (not JSON, and stores would disagree on
    it). None when it is fit."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: {value} is not a JSON number"
    if isinstance(value, dict | list | tuple):
        if limit <= 0:
            return f"{path}: nested too deeply (JSON values nest at most {MAX_JSON_DEPTH} levels)"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            at = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
            problem = json_problem(item, at, limit=limit - 1)
            if problem is not None:
                return problem
    return None


class NonRetryableError(Exception):
    """Raise from a step to fail it at once, whatever its retry policy.

    `details` (JSON) is stored with the error.
    """

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


class SuspendSignal(BaseException):
    """Raised by ctx.suspend(); a BaseException so `except Exception` in steps can't swallow it."""

    def __init__(self, payload: Any, labels: list[str]) -> None:
        super().__init__("step suspended")
        self.payload = payload
        self.labels = labels


class BailSignal(BaseException):
    """Raised by ctx.bail(): ends the run successfully with `value` as its result."""

    def __init__(self, value: Any) -> None:
        super().__init__("run bailed")
        self.value = value


class StepRuntime(Protocol):
    """The executor's side of a step context."""

    run_id: str
    workflow_id: str
    resource_id: str
    request_context: dict[str, Any]
    cancel_event: asyncio.Event

    def init_data(self) -> Any: ...

    def step_output(self, step_id: str) -> Any: ...

    def state(self) -> dict[str, Any]: ...

    async def emit_output(self, step_id: str, value: Any) -> None: ...

    def abort(self) -> None: ...


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


class StepContext(Generic[InputT]):
    """Execution context of one step attempt."""

    def __init__(
        self,
        runtime: StepRuntime,
        step: Step[Any, Any],
        input: InputT,
        *,
        retry_count: int,
        resume_data: Any = None,
        suspend_data: Any = None,
    ) -> None:
        self._runtime = runtime
        self._step = step
        self.input = input
        self.retry_count = retry_count
        self.resume_data = resume_data
        self.suspend_data = suspend_data
        self._state_update: dict[str, Any] = {}
        self._closed = False

    def close(self) -> None:
        """End this attempt: a step that outlives it (timed out, handed back) can no longer
        write events or abort the run."""
        self._closed = True

    # -- identity --------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self._runtime.run_id

    @property
    def workflow_id(self) -> str:
        return self._runtime.workflow_id

    @property
    def resource_id(self) -> str:
        return self._runtime.resource_id

    @property
    def request_context(self) -> dict[str, Any]:
        """Key/value map shared by every step of the run; changes are persisted."""
        return self._runtime.request_context

    # -- data ------------------------------------------------------------------------------
    def get_init_data(self) -> Any:
        """The workflow's (validated) input."""
        return self._runtime.init_data()

    def get_step_result(self, step: Step[Any, Any] | str) -> Any:
        """The output of an earlier step, or None if it has not succeeded."""
        return self._runtime.step_output(step if isinstance(step, str) else step.id)

    @property
    def state(self) -> dict[str, Any]:
        """The run's shared state, including this attempt's pending `set_state` values."""
        return {**self._runtime.state(), **self._state_update}

    def set_state(self, values: Mapping[str, Any] | BaseModel) -> None:
        """Shallow-merge `values` into the run state once this step succeeds.

        Validated against the step's state schema when it has one.
        """
        plain = _plain(values)
        if self._step.state_schema is not None:
            plain = self._step.state_schema.normalize(plain, path="state")
        if not isinstance(plain, dict):
            raise TypeError("set_state expects a mapping or a pydantic model")
        self._state_update.update(plain)

    @property
    def state_update(self) -> dict[str, Any]:
        return dict(self._state_update)

    # -- control flow ----------------------------------------------------------------------
    def suspend(self, payload: Any = None, *, label: str | list[str] | None = None) -> NoReturn:
        """Park the run here until it is resumed; nothing after this call runs."""
        labels = [label] if isinstance(label, str) else list(label or [])
        data = _plain(payload)
        if self._step.suspend_schema is not None:
            data = self._step.suspend_schema.normalize(data, path="suspend_payload")
        raise SuspendSignal(data, labels)

    def bail(self, value: Any = None) -> NoReturn:
        """End the whole run now with SUCCESS and `value` as its result."""
        raise BailSignal(_plain(value))

    def abort(self) -> None:
        """Cancel the run: this step's result is kept, no later step runs."""
        if self._closed:
            log.warning("step %s called abort() after its attempt ended; ignored", self._step.id)
            return
        self._runtime.abort()

    @property
    def canceled(self) -> bool:
        """True once the run has been asked to cancel."""
        return self._runtime.cancel_event.is_set()

    async def wait_canceled(self) -> None:
        """Return when the run is asked to cancel."""
        await self._runtime.cancel_event.wait()

    async def write(self, value: Any) -> None:
        """Emit a custom step-output event on the run's log."""
        if self._closed:
            raise RuntimeError(f"step {self._step.id!r}: write() after the attempt ended")
        await self._runtime.emit_output(self._step.id, _plain(value))
