"""HTTP calls dispatched into the gRPC server's own handlers, in process.

Each call is resolved through the same interceptor chain as a gRPC call (telemetry, then
authentication), with the HTTP headers as its invocation metadata, and runs the same
registered WorkflowServicer method. So tokens and scopes, error statuses and details, RPC
metrics, spans and log context are those of gRPC by construction. The handlers get a
`CallContext` standing in for grpc's ServicerContext: an abort records the google.rpc.Status
and raises grpc's AbortError, as in a gRPC call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import status_pb2  # type: ignore[import-untyped]

Handler = Any  # grpc.RpcMethodHandler (grpc ships no type hints)
Metadata = tuple[tuple[str, str], ...]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# gRPC's timeout header: up to 8 digits and a unit (Hours, Minutes, Seconds, milli, micro, nano).
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that describe the HTTP connection, not the call.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "content-length"}
)


def parse_timeout(value: str) -> float:
    """Seconds of a `grpc-timeout` header value such as "30S" or "500m". Raises ValueError."""
    found = _TIMEOUT.fullmatch(value.strip())
    if found is None:
        raise ValueError(f"grpc-timeout {value!r} is not 1-8 digits and a unit (H M S m u n)")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def call_metadata(headers: Mapping[str, str]) -> Metadata:
    """The HTTP headers as gRPC invocation metadata: lower-case keys, connection headers left
    out. `authorization`, `traceparent` and `tracestate` are read from here as over gRPC."""
    return tuple(
        (key.lower(), value) for key, value in headers.items() if key.lower() not in _HOP_BY_HOP
    )


def peer_of(address: Any) -> str:
    """grpc's peer string for a socket address: `ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    return "unknown"


class CallContext:
    """What the servicer and the interceptors use of grpc.aio.ServicerContext, for one HTTP
    call: the abort (which keeps the google.rpc.Status), the deadline, the peer, the
    metadata."""

    def __init__(self, metadata: Metadata, peer: str, timeout: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._code: grpc.StatusCode | None = None
        self.status: status_pb2.Status | None = None

    async def abort_with_status(self, status: Any) -> NoReturn:
        """End the call with a grpc.Status (as grpc_status.rpc_status.to_status makes)."""
        details = dict(status.trailing_metadata or ()).get(STATUS_DETAILS_KEY)
        if isinstance(details, bytes):
            self.status = status_pb2.Status.FromString(details)
        else:
            self.status = status_pb2.Status(code=status.code.value[0], message=status.details)
        self._code = status.code
        raise grpc.aio.AbortError()

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> NoReturn:
        self.status = status_pb2.Status(code=code.value[0], message=details)
        self._code = code
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def cancelled(self) -> bool:
        return False


@dataclass(frozen=True)
class CallDetails:
    """grpc.HandlerCallDetails for an HTTP call."""

    method: str
    invocation_metadata: Metadata


Continuation = Callable[[CallDetails], Awaitable[Handler | None]]


class Dispatcher:
    """Resolves a method's handler the way grpc.aio's server does: through every server
    interceptor, the first one outermost, down to the registered handlers."""

    def __init__(
        self, handlers: Mapping[str, Handler], interceptors: Sequence[grpc.aio.ServerInterceptor]
    ) -> None:
        self._handlers = dict(handlers)  # full method name → handler
        self._interceptors = tuple(interceptors)

    async def resolve(self, method: str, metadata: Metadata) -> Handler | None:
        return await self._through(0, CallDetails(method, metadata))

    async def _through(self, index: int, details: CallDetails) -> Handler | None:
        if index == len(self._interceptors):
            return self._handlers.get(details.method)

        async def continuation(next_details: CallDetails) -> Handler | None:
            return await self._through(index + 1, next_details)

        return await self._interceptors[index].intercept_service(continuation, details)
