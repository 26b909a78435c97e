"""How a step fails: the engine's own failure exceptions, and the bounded, stack-free
`ErrorData` that any exception is recorded as."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from ..context import MAX_JSON_DEPTH, json_problem
from ..model import ErrorData
from ..schema import SchemaViolation

# Bounds on a serialized error: causes followed, characters of text, nesting of details.
MAX_ERROR_CAUSES = 5
MAX_ERROR_TEXT = 10_000
MAX_DETAILS_DEPTH = MAX_JSON_DEPTH - 2 * MAX_ERROR_CAUSES - 2


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
    return ErrorData(message=_clip(text_of(err)) or name, name=name, details=details or None)


# `<object object at 0x7f...>`: a memory address means nothing to a caller, so it is dropped.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def text_of(value: object, show: Callable[[object], str] = str) -> str:
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
        data = to_jsonable_python(value, fallback=lambda item: _clip(text_of(item, repr), 200))
    except Exception:  # circular, or a raising __getattr__ ...
        data = None
    else:
        if json_problem(data, "details", limit=MAX_DETAILS_DEPTH) is None:
            return data
    return _clip(text_of(value, repr), 1000)


def violations(prefix: str, err: SchemaViolation) -> str:
    """A failure message: `prefix`, then one line per schema violation."""
    return prefix + "".join(f"\n- {v.field}: {v.description}" for v in err.violations)


__all__ = [
    "MAX_ERROR_CAUSES",
    "MAX_ERROR_TEXT",
    "ForeachInputInvalid",
    "LoopConditionFailed",
    "StepCancelledError",
    "StepInputInvalid",
    "StepOutputInvalid",
    "StepTimeoutError",
    "serialize_error",
    "text_of",
    "violations",
]
