"""The HTTP/JSON API: an aiohttp application in the gRPC server's event loop that serves
every RPC at the route its `google.api.http` option declares, plus /v1/openapi.json.

A request is matched to a route, transcoded to the RPC's request message, and dispatched to
the gRPC server's own handler (stepline.server.http.dispatch); the response is sent as
proto3 JSON, or as Server-Sent Events for a server-streaming RPC. Nothing here knows one RPC
from another: a new annotated RPC is served without code.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import status_pb2  # type: ignore[import-untyped]

from ..api.wire import MalformedRequest
from ..settings import Settings
from . import openapi
from .dispatch import CallContext, Dispatcher, Handler, call_metadata, parse_timeout, peer_of
from .errors import (
    BAD_HEADER,
    BODY_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    NO_ROUTE,
    TOO_MANY_REQUESTS,
    UNSUPPORTED_MEDIA_TYPE,
    call_status,
    gateway_status,
    status_response,
)
from .routes import Match, RouteTable
from .sse import CURSOR_FIELD, EventStream, last_event_id
from .transcode import dumps, request_message, response_json

log = logging.getLogger(__name__)

OPENAPI_PATH = "/v1/openapi.json"
JSON = "application/json"
# Methods whose requests may carry a body; a body must then be JSON.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID, grpc-timeout, traceparent, tracestate"
_CORS_EXPOSED = "Retry-After, WWW-Authenticate"
_CORS_MAX_AGE = "600"
# Seconds open calls get when the gateway stops. The run service has drained by then: waits
# and streams have ended with UNAVAILABLE, so this only bounds the last writes.
STOP_GRACE = 1.0
BACKLOG = 128


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context (client certificates as for gRPC); None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_require_client_auth else ssl.CERT_OPTIONAL
        )
    return context


def _is_json(content_type: str) -> bool:
    return content_type == JSON or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class HttpGateway:
    """The HTTP front end of one replica."""

    def __init__(
        self,
        settings: Settings,
        service: ServiceDescriptor,
        handlers: Mapping[str, Handler],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        *,
        bearer_auth: bool,
    ) -> None:
        """`handlers`: the gRPC method handlers by method name. Raises TemplateError for a
        route the protos declare that can't be served."""
        self._settings = settings
        self.routes = RouteTable(service.methods)
        self._dispatcher = Dispatcher(
            {f"/{service.full_name}/{name}": h for name, h in handlers.items()}, interceptors
        )
        self._openapi = openapi.document(service, bearer_auth=bearer_auth)
        self._origins = frozenset(settings.http_cors_origins)
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None
        self.app = self._application()

    def _application(self) -> web.Application:
        middlewares = [self._preflight] if self._origins else []
        app = web.Application(
            middlewares=middlewares, client_max_size=self._settings.max_message_bytes
        )
        app.router.add_get(OPENAPI_PATH, self._serve_openapi)
        for prefix in sorted(self.routes.prefixes()):
            app.router.add_route("*", f"/{prefix}/{{tail:.*}}", self._serve_call)
        app.on_response_prepare.append(self._response_headers)
        return app

    # -- lifecycle -------------------------------------------------------------------------------

    def bind(self, host: str, port: int) -> int:
        """Bind the listening socket (served from `start`); returns its port (0 picks one).
        Raises OSError when it can't bind."""
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        except OSError as err:
            raise OSError(f"could not bind {host}:{port} for HTTP ({err.strerror})") from err
        self.port = int(self._socket.getsockname()[1])
        return self.port

    async def start(self) -> None:
        """Serve on the socket `bind` made."""
        if self._socket is None:
            raise RuntimeError("bind() first")
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=STOP_GRACE
        )
        await runner.setup()
        site = web.SockSite(runner, self._socket, ssl_context=ssl_context(self._settings))
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        """Stop accepting, give open calls STOP_GRACE seconds, then close every connection."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def scheme(self) -> str:
        return "https" if self._settings.tls else "http"

    # -- handlers --------------------------------------------------------------------------------

    async def _serve_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type=JSON)

    async def _serve_call(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        try:
            found = self.routes.find(request.method, raw_path)
        except UnicodeDecodeError:
            return _refuse(grpc.StatusCode.INVALID_ARGUMENT, "the path is not UTF-8", NO_ROUTE)
        if found is None:
            return self._no_route(request.method, raw_path)
        cap = self._settings.max_concurrent_rpcs
        if cap is not None and self._in_flight >= cap:
            return _refuse(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in flight", TOO_MANY_REQUESTS
            )
        self._in_flight += 1
        try:
            return await self._call(request, found)
        finally:
            self._in_flight -= 1

    def _no_route(self, method: str, raw_path: str) -> web.Response:
        allowed = self.routes.allowed(raw_path)
        if allowed:
            return _refuse(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not served at this path; use {', '.join(allowed)}",
                METHOD_NOT_ALLOWED,
                http_status=405,
                headers={"Allow": ", ".join(allowed)},
            )
        return _refuse(grpc.StatusCode.NOT_FOUND, "no API route at this path", NO_ROUTE)

    async def _call(self, request: web.Request, found: Match) -> web.StreamResponse:
        route = found.route
        body = b""
        if request.method in _BODY_METHODS and not _is_json(request.content_type):
            return _refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                "send the request as Content-Type: application/json (an empty body is {})",
                UNSUPPORTED_MEDIA_TYPE,
                http_status=415,
            )
        if request.body_exists:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                limit = self._settings.max_message_bytes
                return _refuse(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request body is larger than {limit} bytes",
                    BODY_TOO_LARGE,
                    http_status=413,
                )
        try:
            timeout = (
                parse_timeout(request.headers["grpc-timeout"])
                if "grpc-timeout" in request.headers
                else None
            )
        except ValueError as err:
            return _refuse(grpc.StatusCode.INVALID_ARGUMENT, str(err), BAD_HEADER)
        message = request_message(route, found.values, list(request.query.items()), body)
        metadata = call_metadata(request.headers)
        peer = peer_of(request.transport.get_extra_info("peername") if request.transport else None)
        context = CallContext(metadata, peer, timeout)
        handler = await self._dispatcher.resolve(route.rpc, metadata)
        if handler is None:
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, "method not served", NO_ROUTE)
        render = partial(response_json, route)
        if route.method.server_streaming:
            message, skip = _resume_from(request, message)
            stream = EventStream(
                request, handler.unary_stream(message, context), context, render, skip_through=skip
            )
            return await stream.serve()
        return await _unary(handler.unary_unary, message, context, render)

    # -- headers ---------------------------------------------------------------------------------

    @web.middleware
    async def _preflight(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """CORS preflight requests from an allowed origin (only installed with origins)."""
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers
            and self._allows(origin)
        ):
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
                    "Access-Control-Allow-Headers": _CORS_HEADERS,
                    "Access-Control-Max-Age": _CORS_MAX_AGE,
                },
            )
        return await handler(request)

    def _allows(self, origin: str | None) -> bool:
        return origin is not None and ("*" in self._origins or origin in self._origins)

    async def _response_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """On every response, just before its headers go out (streams included)."""
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        if not self._origins:
            return
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if self._allows(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSED


def _refuse(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    status = gateway_status(code, message, reason)
    return status_response(status, http_status=http_status, headers=headers)


def _resume_from(
    request: web.Request, message: Message | MalformedRequest
) -> tuple[Message | MalformedRequest, int]:
    """Apply a reconnecting client's Last-Event-ID: the request's cursor field where it has
    one (Watch's after_sequence), else the sequence through which events are skipped."""
    try:
        last = last_event_id(request.headers)
    except ValueError:
        if isinstance(message, MalformedRequest):
            return message, 0
        name = message.DESCRIPTOR.full_name
        return MalformedRequest(name, "Last-Event-ID", "must be an event sequence number"), 0
    if last is None or isinstance(message, MalformedRequest):
        return message, 0
    if CURSOR_FIELD in message.DESCRIPTOR.fields_by_name:
        setattr(message, CURSOR_FIELD, max(getattr(message, CURSOR_FIELD), last))
        return message, 0
    return message, last


async def _unary(
    behavior: Callable[[Any, CallContext], Awaitable[Message]],
    message: Message | MalformedRequest,
    context: CallContext,
    render: Callable[[Message], Any],
) -> web.Response:
    deadline = asyncio.timeout(context.time_remaining())  # None: no deadline
    try:
        async with deadline:
            response = await behavior(message, context)
    except grpc.aio.AbortError:
        return status_response(context.status or _unknown())
    except TimeoutError:
        if deadline.expired():
            return status_response(
                call_status(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            )
        log.exception("call failed")
        return status_response(call_status(grpc.StatusCode.INTERNAL, "internal error"))
    except Exception:
        log.exception("call failed")
        return status_response(call_status(grpc.StatusCode.INTERNAL, "internal error"))
    return web.Response(body=dumps(render(response)), content_type=JSON)


def _unknown() -> status_pb2.Status:
    return call_status(grpc.StatusCode.UNKNOWN, "the call ended without a status")
