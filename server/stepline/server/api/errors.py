"""The one table from engine errors to gRPC statuses, and the guard every RPC runs under.

Each status carries `google.rpc.Status` details: ErrorInfo always, plus BadRequest,
PreconditionFailure, ResourceInfo or RetryInfo where they help the caller act. Anything that is
not a SteplineError is a bug: it is logged here with its traceback and the caller only sees
"internal error".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from ..errors import (
    Conflict,
    CursorExpired,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    ShuttingDown,
    SteplineError,
    StoreUnavailable,
    Unauthenticated,
    Unimplemented,
    WorkflowNotFound,
)
from .wire import MalformedRequest

DOMAIN = "stepline.dev"
INTERNAL_MESSAGE = "internal error"
# What the store's own error says (addresses, driver messages) is for the server's log only.
STORE_UNAVAILABLE_MESSAGE = "the run store is unavailable; retry shortly"
INTERNAL_REASON = "INTERNAL"
RUN_RESOURCE = "stepline.v1.Run"
WORKFLOW_RESOURCE = "stepline.v1.Workflow"
RETRY_DELAY_SECONDS = 1
# The status travels in trailers, and clients refuse trailers over 8 KiB (gRPC's default soft
# limit; 16 KiB hard): the message percent-encoded in `grpc-message`, then the message again
# and the details as base64 in `grpc-status-details-bin`. So everything a caller's request can
# make long is clipped, in UTF-8 bytes: an input with hundreds of schema errors reports the
# first few, plus how many were left out, and a 1 MB id comes back as its first kilobyte.
MAX_FIELD_VIOLATIONS = 10
MAX_VIOLATIONS_BYTES = 2560  # the BadRequest
MAX_TEXT = 200  # one field path or description
MAX_ID = 1024  # ids in metadata and resource names: any valid id (256 characters) fits
MAX_MESSAGE = 600  # the message, as percent-encoded in `grpc-message`

log = logging.getLogger(__name__)

CODES: dict[type[SteplineError], grpc.StatusCode] = {
    WorkflowNotFound: grpc.StatusCode.NOT_FOUND,
    RunNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    RunAlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResumeAlreadyClaimed: grpc.StatusCode.ABORTED,
    Conflict: grpc.StatusCode.ABORTED,  # a lost compare-and-set race: retry the request
    CursorExpired: grpc.StatusCode.OUT_OF_RANGE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code(error: SteplineError) -> grpc.StatusCode:
    """The code for an engine error; subclasses inherit their parent's code."""
    for cls in type(error).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _details(error: SteplineError, metadata: dict[str, str]) -> list[Message]:
    """The detail messages beyond ErrorInfo; may add keys to `metadata`."""
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest()
        for violation in error.violations[:MAX_FIELD_VIOLATIONS]:
            shown = bad_request.field_violations.add(
                field=_clip(violation.field), description=_clip(violation.description)
            )
            if (
                bad_request.ByteSize() > MAX_VIOLATIONS_BYTES
                and len(bad_request.field_violations) > 1
            ):
                bad_request.field_violations.remove(shown)
                break
        omitted = len(error.violations) - len(bad_request.field_violations)
        if omitted:
            metadata["omitted_violations"] = str(omitted)
        return [bad_request]
    if isinstance(error, FailedPrecondition):
        description = f"run is {error.status}"
        if error.suspended_steps:
            metadata["suspended_steps"] = ",".join(error.suspended_steps)
            description += f"; suspended steps: {', '.join(error.suspended_steps)}"
        if error.suspended_indexes is not None:
            indexes = [str(i) for i in error.suspended_indexes]
            metadata["suspended_indexes"] = ",".join(indexes)
            description += f"; suspended iterations: {', '.join(indexes) or 'none'}"
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=error.reason,
                        subject=_clip(f"run/{error.run_id}", MAX_ID),
                        description=_clip(description, MAX_ID),
                    )
                ]
            )
        ]
    if isinstance(error, WorkflowNotFound):
        return [_resource(WORKFLOW_RESOURCE, error.workflow_id, error.message)]
    if isinstance(error, RunNotFound | RunAlreadyExists):
        return [_resource(RUN_RESOURCE, error.run_id, error.message)]
    if isinstance(error, StoreUnavailable):
        return [
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=RETRY_DELAY_SECONDS)
            )
        ]
    return []


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` in at most `limit` UTF-8 bytes, ending in "…" when cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


def _clip_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut so that percent-encoded (as gRPC sends it) it takes at most `limit` bytes."""
    used = 0
    for index, char in enumerate(text):
        used += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode())
        if used > limit - 9:  # room for "…", itself three encoded bytes
            return text[:index] + "…"
    return text


def _invalid_message(error: InvalidArgument) -> str:
    """The message, then the first violation and how many others there are: most clients
    show only the message, and it should say which field to fix."""
    if not error.violations:
        return _clip_message(error.message)
    first = error.violations[0]
    more = len(error.violations) - 1
    tail = f" (and {more} more)" if more else ""
    head = f"{error.message}: {_clip(first.field)}: {_clip(first.description)}"
    return _clip_message(head, MAX_MESSAGE - len(tail)) + tail


def _resource(resource_type: str, name: str, description: str) -> Message:
    info: Message = error_details_pb2.ResourceInfo(
        resource_type=resource_type,
        resource_name=_clip(name, MAX_ID),
        description=_clip(description),
    )
    return info


def to_status(error: BaseException) -> status_pb2.Status:
    """The rich status sent for `error`. Non-engine errors become a bare INTERNAL."""
    if not isinstance(error, SteplineError):
        code = grpc.StatusCode.INTERNAL
        message = INTERNAL_MESSAGE
        info = error_details_pb2.ErrorInfo(reason=INTERNAL_REASON, domain=DOMAIN)
        extra: list[Message] = []
    else:
        code = status_code(error)
        if isinstance(error, InvalidArgument):
            message = _invalid_message(error)
        elif isinstance(error, StoreUnavailable):
            message = STORE_UNAVAILABLE_MESSAGE
        else:
            message = _clip_message(error.message)
        metadata = {key: str(value) for key, value in error.metadata.items()}
        extra = _details(error, metadata)
        metadata = {key: _clip(value, MAX_ID) for key, value in metadata.items()}
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in [info, *extra]:
        status.details.add().Pack(detail)
    return status


async def abort(context: Any, error: Exception, *, method: str) -> NoReturn:
    """End the RPC with the status for `error`, logging what the caller must not see."""
    if not isinstance(error, SteplineError) or status_code(error) is grpc.StatusCode.INTERNAL:
        log.error("unhandled error in %s", method, exc_info=error)
    elif isinstance(error, StoreUnavailable):
        log.warning("%s: store unavailable: %s", method, error.message)
    await context.abort_with_status(rpc_status.to_status(to_status(error)))
    # abort_with_status always raises; this keeps the NoReturn contract honest if it didn't.
    raise RuntimeError("abort_with_status returned")


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def unary(
    method: Callable[[S, Req, Any], Awaitable[Resp]],
) -> Callable[[S, Req, Any], Coroutine[Any, Any, Resp]]:
    """Run a unary RPC method under the error mapping."""

    @functools.wraps(method)
    async def guarded(self: S, request: Req, context: Any) -> Resp:
        try:
            if isinstance(request, MalformedRequest):
                raise request.error()
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, error, method=method.__name__)

    return guarded


def streaming(
    method: Callable[[S, Req, Any], AsyncGenerator[Resp, None]],
) -> Callable[[S, Req, Any], AsyncGenerator[Resp, None]]:
    """Run a server-streaming RPC method (an async generator) under the error mapping.

    Cancellation (the client went away) is a BaseException and passes through untouched.
    """

    @functools.wraps(method)
    async def guarded(self: S, request: Req, context: Any) -> AsyncGenerator[Resp, None]:
        try:
            if isinstance(request, MalformedRequest):
                raise request.error()
            # aclosing: a stream that ends early closes the inner generator (and its reads) now.
            async with aclosing(method(self, request, context)) as responses:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, error, method=method.__name__)

    return guarded
