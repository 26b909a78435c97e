"""OpenTelemetry tracing: a span per RPC (see api/interceptors.py), per execution pass of a
run, and per step.

A run's trace is the one named by its snapshot's `trace_id`, which a start takes from
`tracing_options.trace_id`, else from the call's trace (incoming `traceparent`, or the RPC's
own span). The trace id is stored with the run, so every pass, on any replica, after any
restart, lands in the same trace: each pass is a root span `run <workflow>` of that trace,
carrying the run's ids and `tracing_options.metadata` (as `stepline.trace_metadata.<key>`),
and the steps it executes are its children. A run with no stored trace id (started without
gRPC) gets one derived from its run id, so its passes still share one trace.

Spans come from the transitions a worker commits (`RunObserver` in worker.py): step-start
opens a step span, step-result / step-suspended closes it, workflow-finish ends the pass.
A step span is the current span while its step runs, so spans and log lines a step makes
itself are its children.

With `trace_exporter = none` nothing is recorded or exported, but trace ids are still made
and propagated, so logs and results can be correlated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from msgspec import UNSET
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import LeaseLost
from .events import (
    Event,
    EventError,
    StepOutput,
    StepProgress,
    StepResult,
    StepStart,
    StepSuspended,
    StepWaiting,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowPaused,
    WorkflowStart,
)
from .model import RunStatus, Snapshot, StepStatus
from .settings import Settings

_HEX = re.compile(r"[0-9a-fA-F]{1,32}")
_forced_trace_id: ContextVar[int | None] = ContextVar("stepline_forced_trace_id", default=None)
_propagator = TraceContextTextMapPropagator()

TRACER_NAME = "stepline.server"
log = logging.getLogger(__name__)


class _IdGenerator(RandomIdGenerator):
    """Random ids, except that a root span can be put into a chosen trace."""

    def generate_trace_id(self) -> int:
        return _forced_trace_id.get() or super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return _forced_trace_id.get() is None


@contextmanager
def new_roots_in(trace_id: int | None) -> Iterator[None]:
    """Root spans started inside the block belong to trace `trace_id` (None: a new one)."""
    token = _forced_trace_id.set(trace_id)
    try:
        yield
    finally:
        _forced_trace_id.reset(token)


def parse_trace_id(text: str) -> int | None:
    """1 to 32 hex characters as a trace id; None when malformed or all zeros."""
    if not _HEX.fullmatch(text):
        return None
    return int(text, 16) or None


def run_trace_id(snapshot: Snapshot) -> int:
    """The trace every span of the run belongs to."""
    stored = parse_trace_id(snapshot.trace_id) if snapshot.trace_id else None
    if stored is not None:
        return stored
    derived = int.from_bytes(hashlib.sha256(snapshot.run_id.encode()).digest()[:16], "big")
    return derived or 1


def format_trace_id(trace_id: int) -> str:
    return format(trace_id, "032x")


def extract(metadata: Sequence[tuple[str, str | bytes]]) -> otel_context.Context:
    """The W3C trace context (`traceparent`, `tracestate`) a call's metadata carries."""
    carrier = {key.lower(): value for key, value in metadata if isinstance(value, str)}
    return _propagator.extract(carrier)


def attribute(value: Any) -> str | bool | int | float:
    """A JSON value as a span attribute: scalars as they are, the rest as JSON text."""
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _ns(seconds: Any) -> int | None:
    return int(float(seconds) * 1e9) if isinstance(seconds, int | float) else None


class Tracing:
    """The server's tracer provider and the tracer everything here uses."""

    def __init__(self, provider: TracerProvider, *, recording: bool = True) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        # False when spans go nowhere: run and step spans are then not built at all.
        self.recording = recording

    @classmethod
    def from_settings(cls, settings: Settings, *, exporter: SpanExporter | None = None) -> Tracing:
        """`exporter` (tests: an in-memory one) overrides `settings.trace_exporter`."""
        resource = Resource.create({"service.name": settings.service_name})
        recording = exporter is not None or settings.trace_exporter != "none"
        provider = TracerProvider(
            resource=resource,
            id_generator=_IdGenerator(),
            sampler=ParentBased(ALWAYS_ON) if recording else ALWAYS_OFF,
            shutdown_on_exit=False,  # Server.stop flushes, within a bound
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.trace_exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif settings.trace_exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            otlp = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
            provider.add_span_processor(BatchSpanProcessor(otlp))
        return cls(provider, recording=recording)

    def observer(self) -> RunTracer:
        return RunTracer(self)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush and stop the exporters, waiting at most `timeout` seconds: an unreachable
        collector must not hold up a replica's shutdown (the rest of the spans are lost)."""
        flushing = threading.Thread(target=self.provider.shutdown, daemon=True)
        flushing.start()
        flushing.join(timeout)
        if flushing.is_alive():
            log.warning("spans not exported within %.0f s of shutdown were dropped", timeout)


class RunTracer:
    """`RunObserver` that turns committed transitions into run and step spans."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer

    def pass_started(self, snapshot: Snapshot) -> _PassSpans:
        return _PassSpans(self._tracer, snapshot)


class _Attached:
    """A span made current in one task, undone only in that task."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self._task = asyncio.current_task()
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def detach(self) -> None:
        if self._task is not None and asyncio.current_task() is self._task:
            otel_context.detach(self._token)
        self._task = None


class _PassSpans:
    def __init__(self, tracer: trace.Tracer, snapshot: Snapshot) -> None:
        self._tracer = tracer
        attributes: dict[str, str | bool | int | float] = {
            "stepline.run_id": snapshot.run_id,
            "stepline.workflow_id": snapshot.workflow_id,
            "stepline.reason": _reason(snapshot),
        }
        if snapshot.resource_id:
            attributes["stepline.resource_id"] = snapshot.resource_id
        for key, value in snapshot.trace_metadata.items():
            if value is not None:
                attributes[f"stepline.trace_metadata.{key}"] = attribute(value)
        with new_roots_in(run_trace_id(snapshot)):
            run = tracer.start_span(
                f"run {snapshot.workflow_id}",
                context=otel_context.Context(),  # a root: the trace id says which run
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
        self._run: _Attached | None = _Attached(run)
        self._steps: dict[str, _Attached] = {}

    def committed(self, snapshot: Snapshot, events: Sequence[Event]) -> None:
        for event in events:
            self._event(event)

    def _event(self, event: Event) -> None:
        if self._run is None:
            return
        run = self._run.span
        match event.data:
            case WorkflowStart(reason=reason):
                run.set_attribute("stepline.reason", reason)
            case StepStart(step_id=step_id) as start:
                self._close_step(step_id, None)  # a loop's next iteration
                resumed = start.resume_payload is not UNSET and start.resume_payload is not None
                span = self._step_span(step_id, start.started_at, resumed=resumed)
                self._steps[step_id] = _Attached(span)
            case StepOutput(step_id=step_id):
                self._step_or_run(step_id).add_event("output", timestamp=_ns(event.timestamp))
            case StepProgress() as progress:
                attributes: dict[str, str | bool | int | float] = {
                    "completed_count": progress.completed_count,
                    "total_count": progress.total_count,
                    "current_index": progress.current_index,
                    "iteration_status": progress.iteration_status.value,
                }
                self._step_or_run(progress.step_id).add_event(
                    "progress", attributes=attributes, timestamp=_ns(event.timestamp)
                )
            case StepResult() as result:
                self._finish_step(result)
            case StepSuspended() as suspended:
                span = self._take_step(suspended.step_id, None)
                span.set_attribute("stepline.step.status", "suspended")
                span.add_event("suspended", attributes={"stepline.labels": suspended.labels})
                span.end(end_time=_ns(suspended.suspended_at))
            case StepWaiting() as waiting:
                attributes = {
                    "stepline.step_id": waiting.step_id,
                    "wake_at": attribute(waiting.wake_at),
                }
                run.add_event("waiting", attributes=attributes)
            case WorkflowCanceled():
                run.add_event("canceled", timestamp=_ns(event.timestamp))
            case WorkflowPaused():
                run.add_event("paused", timestamp=_ns(event.timestamp))
            case WorkflowFinish() as finish:
                run.set_attribute("stepline.status", finish.status.value)
                if finish.status is RunStatus.FAILED:
                    error = finish.error if isinstance(finish.error, EventError) else None
                    run.set_status(Status(StatusCode.ERROR, error.message if error else ""))
                self._end_run(None, end_time=_ns(event.timestamp))

    def _step_span(self, step_id: str, started_at: float | None, *, resumed: bool) -> Span:
        assert self._run is not None
        attributes: dict[str, str | bool | int | float] = {"stepline.step_id": step_id}
        if resumed:
            attributes["stepline.step.resumed"] = True
        # A nested workflow's step ("child.inner") is a child of the step running it.
        parent = self._run
        prefix = step_id
        while "." in prefix:
            prefix = prefix.rsplit(".", 1)[0]
            if prefix in self._steps:
                parent = self._steps[prefix]
                break
        return self._tracer.start_span(
            f"step {step_id}",
            context=trace.set_span_in_context(parent.span),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(started_at),
        )

    def _step_or_run(self, step_id: str) -> Span:
        attached = self._steps.get(step_id) or self._run
        assert attached is not None
        return attached.span

    def _take_step(self, step_id: str, started_at: float | None) -> Span:
        """The open span of the step; a new one if it started in an earlier pass (a sleep)."""
        attached = self._steps.pop(step_id, None)
        if attached is None:
            return self._step_span(step_id, started_at, resumed=False)
        attached.detach()
        return attached.span

    def _finish_step(self, result: StepResult) -> None:
        span = self._take_step(result.step_id, result.started_at)
        span.set_attribute("stepline.step.status", result.status.value)
        span.set_attribute("stepline.step.attempts", result.attempts)
        if result.status is StepStatus.FAILED:
            error = result.error if isinstance(result.error, EventError) else None
            span.set_status(Status(StatusCode.ERROR, error.message if error else ""))
            span.set_attribute("stepline.error.name", error.name if error else "")
        elif result.status is StepStatus.SUCCESS:
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=_ns(result.ended_at))

    def _close_step(self, step_id: str, why: str | None) -> None:
        attached = self._steps.pop(step_id, None)
        if attached is None:
            return
        attached.detach()
        if why is not None:
            attached.span.set_status(Status(StatusCode.ERROR, why))
        attached.span.end()

    def _end_run(self, why: str | None, *, end_time: int | None = None) -> None:
        for step_id in list(self._steps):
            self._close_step(step_id, why or "the pass ended before the step did")
        if self._run is not None:
            self._run.detach()
            if why is not None:
                self._run.span.set_status(Status(StatusCode.ERROR, why))
            self._run.span.end(end_time=end_time)
            self._run = None

    def ended(self, snapshot: Snapshot, error: BaseException | None) -> None:
        if self._run is not None:
            self._run.span.set_attribute("stepline.status", snapshot.status.value)
        self._end_run(_interruption(error))


def _reason(snapshot: Snapshot) -> str:
    """Why a pass runs, for passes whose workflow-start was written by a claim (resume, time
    travel) or that have none (a timer woke the run); a workflow-start event overrides it."""
    if snapshot.pending_resume is not None:
        return "resume"
    if snapshot.pass_announced:
        return "time_travel"
    if snapshot.status is RunStatus.WAITING:
        return "wake"
    return "continue"


def _interruption(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, asyncio.CancelledError):
        return "handed back (the replica stopped)"
    if isinstance(error, LeaseLost):
        return "lease lost to another replica"
    return f"interrupted by {type(error).__name__}"
