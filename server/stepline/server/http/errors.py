"""Errors over HTTP: a `google.rpc.Status` as JSON, with the HTTP status its gRPC code maps to
(the mapping of google/rpc/code.proto, as grpc-gateway uses it)."""

from __future__ import annotations

import grpc
from aiohttp import web
from google.protobuf import json_format

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from ..api.errors import DOMAIN
from .transcode import dumps

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Reasons of the errors the HTTP layer answers itself, before any RPC runs.
NO_ROUTE = "NO_ROUTE"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
BODY_TOO_LARGE = "BODY_TOO_LARGE"
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
BAD_HEADER = "BAD_HEADER"


def code_of(status: status_pb2.Status) -> grpc.StatusCode:
    return _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)


def status_json(status: status_pb2.Status) -> bytes:
    """The Status as JSON, `code`, `message` and `details` always present (also code 0)."""
    document = {"code": 0, "message": "", "details": [], **json_format.MessageToDict(status)}
    return dumps(document)


def status_response(
    status: status_pb2.Status,
    *,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The response for a failed call: the Status as JSON, the mapped HTTP status, and
    `WWW-Authenticate` (401) or `Retry-After` (a RetryInfo detail) where they apply."""
    code = code_of(status)
    extra = dict(headers or {})
    if code is grpc.StatusCode.UNAUTHENTICATED:
        extra.setdefault("WWW-Authenticate", 'Bearer realm="stepline"')
    retry = retry_after(status)
    if retry is not None:
        extra.setdefault("Retry-After", str(retry))
    return web.Response(
        status=http_status or HTTP_STATUS.get(code, 500),
        body=status_json(status),
        content_type="application/json",
        headers=extra,
    )


def retry_after(status: status_pb2.Status) -> int | None:
    """Whole seconds of the status's RetryInfo, if it has one."""
    for packed in status.details:
        info = error_details_pb2.RetryInfo()
        if packed.Is(info.DESCRIPTOR):
            packed.Unpack(info)
            seconds: int = info.retry_delay.seconds + (1 if info.retry_delay.nanos else 0)
            return max(1, seconds)
    return None


def gateway_status(code: grpc.StatusCode, message: str, reason: str) -> status_pb2.Status:
    """A status the HTTP layer answers itself (no route, wrong method, body too large...),
    with the ErrorInfo every Stepline error carries."""
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    return status


def call_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """A status for a call that ended without one of Stepline's (a deadline, a bug)."""
    reason = "DEADLINE_EXCEEDED" if code is grpc.StatusCode.DEADLINE_EXCEEDED else "INTERNAL"
    return gateway_status(code, message, reason)
