"""Server interceptors, outermost first: telemetry (a span, RPC metrics and the log context of
each call), then authentication. Health checking and reflection pass through both.

Telemetry also gives a start without `tracing_options.trace_id` the trace id of the call's
incoming `traceparent` (or, when spans are being recorded, of the Start span itself), so the
run is traced where its caller is and its result names that trace.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import logs
from ..auth import OPEN_SERVICES, TokenTable, split_method
from ..errors import SteplineError
from ..metrics import Metrics
from ..telemetry import Tracing, extract, format_trace_id, new_roots_in, parse_trace_id
from .errors import abort

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler (grpc ships no type hints)
Behavior = Callable[..., Any]


def _wrap(handler: Handler, unary: Behavior, streaming: Behavior) -> Handler:
    """A handler like `handler` (same kind and codecs) that runs `unary` or `streaming`."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming, **codecs)


def _behavior(handler: Handler) -> Behavior:
    behavior: Behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return behavior


def _is_streaming(handler: Handler) -> bool:
    return handler.unary_stream is not None or handler.stream_stream is not None


def _field(message: Any, name: str) -> str:
    """A string field of a request, or "" when the message has no such field."""
    if isinstance(message, Message) and name in message.DESCRIPTOR.fields_by_name:
        value = getattr(message, name)
        return value if isinstance(value, str) else ""
    return ""


def _tracing_options(request: Any) -> Any:
    """A start request's TracingOptions (mutable), or None for other requests."""
    if isinstance(request, Message) and "tracing_options" in request.DESCRIPTOR.fields_by_name:
        return getattr(request, "tracing_options")  # noqa: B009 - not every Message has it
    return None


def _run_id_of(message: Any) -> str:
    """The run id a response names (StartAsync's `run_id`, Start's `result.run_id`, ...)."""
    run_id = _field(message, "run_id")
    if run_id or not isinstance(message, Message):
        return run_id
    for name in ("result", "event"):
        if name in message.DESCRIPTOR.fields_by_name:
            return _field(getattr(message, name), "run_id")
    return ""


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per call (child of the caller's `traceparent`), RPC metrics by method
    and code, and the call's run and workflow ids bound for its log lines."""

    def __init__(self, tracing: Tracing, metrics: Metrics) -> None:
        self._tracer = tracing.tracer
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Handler:
        handler = await continuation(details)
        service, method = split_method(details.method)
        if handler is None or service in OPEN_SERVICES:
            return handler
        metadata = tuple(details.invocation_metadata or ())
        kind = "server_stream" if _is_streaming(handler) else "unary"
        inner = _behavior(handler)

        async def unary(request: Any, context: Any) -> Any:
            with self._observe(service, method, kind, metadata, request, context) as span:
                response = await inner(request, context)
                _note_run(span, response)
                return response

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            with self._observe(service, method, kind, metadata, request, context) as span:
                if not inspect.isasyncgenfunction(inner):  # writes with context.write()
                    await inner(request, context)
                    return
                async with aclosing(inner(request, context)) as responses:
                    async for response in responses:
                        _note_run(span, response)
                        yield response

        return _wrap(handler, unary, streaming)

    @contextmanager
    def _observe(
        self,
        service: str,
        method: str,
        kind: str,
        metadata: tuple[Any, ...],
        request: Any,
        context: Any,
    ) -> Iterator[Span]:
        parent = extract(metadata)
        remote = trace.get_current_span(parent).get_span_context().is_valid
        options = _tracing_options(request)
        chosen = getattr(options, "trace_id", "")
        # A start naming its trace but sent without a traceparent is traced in that trace.
        with new_roots_in(None if remote or not chosen else parse_trace_id(chosen)):
            span = self._tracer.start_span(
                f"{service}/{method}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )
        if options is not None and not chosen and (remote or span.is_recording()):
            # The run joins the caller's trace; with tracing on, at least the Start's.
            options.trace_id = format_trace_id(span.get_span_context().trace_id)
        run_id, workflow_id = _field(request, "run_id"), _field(request, "workflow_id")
        if run_id:
            span.set_attribute("stepline.run_id", run_id)
        self._metrics.rpc_begin(service, method, kind)
        began = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            with (
                trace.use_span(span, record_exception=False, set_status_on_exception=False),
                logs.run_context(run_id, workflow_id),
            ):
                yield span
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            seconds = time.perf_counter() - began
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
            self._metrics.rpc_end(service, method, kind, code.name, seconds)
            log.debug("rpc %s %s in %.1f ms", method, code.name, seconds * 1000)


def _note_run(span: Span, message: Any) -> None:
    if span.is_recording() and "stepline.run_id" not in getattr(span, "attributes", {}):
        run_id = _run_id_of(message)
        if run_id:
            span.set_attribute("stepline.run_id", run_id)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer-token check on every call but health and reflection (see stepline.server.auth):
    UNAUTHENTICATED without a valid token, PERMISSION_DENIED without the RPC's scope."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Handler:
        try:
            self._tokens.authorize(details.method, tuple(details.invocation_metadata or ()))
        except SteplineError as error:
            handler = await continuation(details)
            return None if handler is None else _refusal(handler, error, details.method)
        return await continuation(details)


def _refusal(handler: Handler, error: SteplineError, method: str) -> Handler:
    name = split_method(method)[1]

    async def refuse(request: Any, context: Any) -> Any:
        log.info("refused %s from %s: %s", name, context.peer(), error.reason)
        await abort(context, error, method=name)

    async def refuse_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # never reached; makes this an async generator like the handler it replaces

    return _wrap(handler, refuse, refuse_stream)
