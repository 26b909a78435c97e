"""Structured logs: one line per record, as JSON or for a console, carrying the run it is about.

The run a line is about comes from context variables: the worker binds `run_id` and
`workflow_id` for the task that executes a run (and so for every step it runs), the gRPC
interceptor binds them from the request for the task that serves an RPC. A record can also
name them itself with `extra={"run_id": ...}`. The current OpenTelemetry span adds
`trace_id` and `span_id`. Secrets given to `configure` (bearer tokens) never reach the
output, even if some message happened to include one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from opentelemetry import trace

from .events import (
    Event,
    StepResult,
    StepStart,
    StepSuspended,
    WorkflowFinish,
    WorkflowStart,
)
from .model import RunStatus, Snapshot, StepStatus

_run_id: ContextVar[str | None] = ContextVar("stepline_run_id", default=None)
_workflow_id: ContextVar[str | None] = ContextVar("stepline_workflow_id", default=None)

CONTEXT_FIELDS = ("run_id", "workflow_id", "trace_id", "span_id")
RUNS_LOGGER = "stepline.runs"  # the lines that follow runs: start, steps, outcome
REDACTED = "[REDACTED]"
# Shorter secrets are not searched for: replacing them would mangle ordinary text.
MIN_REDACTED_LENGTH = 6

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def bind_run(run_id: str, workflow_id: str | None = None) -> None:
    """Say that what the current task logs from now on is about this run."""
    _run_id.set(run_id)
    if workflow_id is not None:
        _workflow_id.set(workflow_id)


@contextmanager
def run_context(run_id: str | None, workflow_id: str | None = None) -> Iterator[None]:
    """Like `bind_run` for the duration of the block (None leaves a field as it was)."""
    tokens = [
        (var, var.set(value))
        for var, value in ((_run_id, run_id), (_workflow_id, workflow_id))
        if value
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            # A stream handler's generator can be finalized outside the task that ran it.
            with contextlib.suppress(ValueError):
                var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the run and trace fields of the current context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = _run_id.get()
        if getattr(record, "workflow_id", None) is None:
            record.workflow_id = _workflow_id.get()
        span = trace.get_current_span().get_span_context()
        if span.is_valid and getattr(record, "trace_id", None) is None:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_REDACTED_LENGTH}, key=len, reverse=True
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class JsonFormatter(_Redacting):
    """`{"ts", "level", "logger", "message", run_id?, workflow_id?, trace_id?, ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None and not key.startswith("_"):
                line[key] = value if _is_json_scalar(value) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(line, ensure_ascii=False, default=str))


class ConsoleFormatter(_Redacting):
    """`time LEVEL logger: message  run_id=… workflow_id=…`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{key}={getattr(record, key)}"
            for key in ("run_id", "workflow_id")
            if getattr(record, key, None)
        )
        text = f"{_timestamp(record.created)} {record.levelname} {record.name}: "
        text += record.getMessage()
        if fields:
            text += f"  {fields}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return self.redact(text)


def configure(
    *,
    level: str = "INFO",
    format: Literal["console", "json"] = "console",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `format`; replaces earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(secrets) if format == "json" else ConsoleFormatter(secrets)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's Cython layer logs a line per call at DEBUG that says nothing useful.
    logging.getLogger("grpc._cython.cygrpc").setLevel(max(root.level, logging.INFO))
    return handler


def log_canceled(run_id: str, workflow_id: str, logger: logging.Logger | None = None) -> None:
    """The line for a run that was canceled, whether a worker stopped it or the cancel found
    it idle (suspended or sleeping) and settled it directly."""
    (logger or logging.getLogger(RUNS_LOGGER)).info(
        "run %s canceled", run_id, extra={"run_id": run_id, "workflow_id": workflow_id}
    )


class RunLog:
    """`RunObserver` that writes a line when a pass begins and ends and for each step result
    (a plain start and successful steps at DEBUG). Every line names the run and its
    workflow."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(RUNS_LOGGER)

    def pass_started(self, snapshot: Snapshot) -> _RunPassLog:
        return _RunPassLog(self._log, snapshot)


class _RunPassLog:
    def __init__(self, logger: logging.Logger, snapshot: Snapshot) -> None:
        self._log = logger
        self._extra = {"run_id": snapshot.run_id, "workflow_id": snapshot.workflow_id}
        self._finished = False
        logger.debug(
            "run %s taken (status %s)", snapshot.run_id, snapshot.status, extra=self._extra
        )

    def committed(self, snapshot: Snapshot, events: Sequence[Event]) -> None:
        for event in events:
            match event.data:
                case WorkflowStart(reason=reason):
                    # A plain start is implied by the run's finish line; a resume, restart or
                    # time travel is worth its own.
                    self._log.log(
                        logging.DEBUG if reason == "start" else logging.INFO,
                        "run %s began (%s)",
                        snapshot.run_id,
                        reason,
                        extra=self._extra,
                    )
                case StepStart(step_id=step_id):
                    self._log.debug("step %s started", step_id, extra=self._extra)
                case StepResult() as result:
                    self._step_result(result)
                case StepSuspended(step_id=step_id):  # the run's line names the step
                    self._log.debug("step %s suspended", step_id, extra=self._extra)
                case WorkflowFinish() as finish:
                    self._finished = True
                    self._settled(snapshot.run_id, finish)

    def _settled(self, run_id: str, finish: WorkflowFinish) -> None:
        """The line that says how a pass left the run: finished, suspended or canceled."""
        status = finish.status
        if status is RunStatus.SUSPENDED:
            suspended = finish.suspended or ()
            at = ", ".join(".".join(leaf.path) for leaf in suspended) or "?"
            self._log.info("run %s suspended at %s", run_id, at, extra=self._extra)
        elif status is RunStatus.CANCELED:
            log_canceled(run_id, self._extra["workflow_id"], self._log)
        else:
            error = finish.error or None
            self._log.info(
                "run %s finished: %s%s",
                run_id,
                status.value,
                f" ({error.name}: {error.message})" if error else "",
                extra=self._extra,
            )

    def _step_result(self, result: StepResult) -> None:
        started, ended = result.started_at, result.ended_at
        took = (
            f" in {(ended - started) * 1000:.0f} ms"
            if started is not None and ended is not None
            else ""
        )
        level = logging.DEBUG if result.status is StepStatus.SUCCESS else logging.INFO
        if not self._log.isEnabledFor(level):
            return
        error = result.error or None
        detail = f": {error.name}: {error.message}" if error else ""
        self._log.log(
            level,
            "step %s %s%s%s",
            result.step_id,
            result.status.value,
            took,
            detail,
            extra={**self._extra, "step_id": result.step_id},
        )

    def ended(self, snapshot: Snapshot, error: BaseException | None) -> None:
        if error is not None:
            self._log.info(
                "run %s: pass ended early (%s)",
                snapshot.run_id,
                type(error).__name__,
                extra=self._extra,
            )
        elif not self._finished and snapshot.status is RunStatus.WAITING:
            self._log.info("run %s is waiting for a timer", snapshot.run_id, extra=self._extra)


def _timestamp(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _is_json_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)
