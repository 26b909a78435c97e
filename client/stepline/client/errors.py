"""The client's error tree, decoded from `google.rpc.Status` details in exactly one place.

The class is chosen by the server's `ErrorInfo.reason` first (it is more specific), then by the
gRPC status code; a status neither knows about raises the root `SteplineError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.json_format import MessageToDict

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from .models import FieldViolation

DOMAIN = "stepline.dev"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class SteplineError(Exception):
    """A failed RPC.

    `code` is the `grpc.StatusCode`, `reason` the server's ErrorInfo reason (e.g.
    "RUN_NOT_FOUND"; "" when the server sent none), `metadata` its ErrorInfo metadata, and
    `details` every status detail as JSON (each with an "@type" key).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.details: tuple[Mapping[str, Any], ...] = tuple(details)

    def __str__(self) -> str:
        label = self.reason or getattr(self.code, "name", str(self.code))
        return f"{label}: {self.message}"


class NotFound(SteplineError):
    """The workflow or run does not exist."""


class RunNotFound(NotFound):
    @property
    def run_id(self) -> str:
        return self.metadata.get("run_id", "")


class WorkflowNotFound(NotFound):
    @property
    def workflow_id(self) -> str:
        return self.metadata.get("workflow_id", "")


class InvalidArgument(SteplineError):
    """The request was malformed or its data failed a schema; see `violations`.

    The message names the first violation. `reason` is "INVALID_ARGUMENT",
    "INVALID_RESUME_DATA" (resume data failed the step's resume schema), "VALUE_TOO_DEEP"
    (a JSON value nests deeper than the server allows) or "MALFORMED_REQUEST" (the bytes
    were no valid request)."""

    @property
    def violations(self) -> list[FieldViolation]:
        """One entry per problem, with the JSON path of the offending field."""
        return [
            FieldViolation(str(v.get("field", "")), str(v.get("description", "")))
            for detail in self.details
            if detail.get("@type") == _BAD_REQUEST_TYPE
            for v in detail.get("field_violations", [])
        ]


class RunAlreadyExists(SteplineError):
    """Another start already used this run id."""

    @property
    def existing_run_id(self) -> str:
        return self.metadata.get("run_id", "")


class FailedPrecondition(SteplineError):
    """The run's state does not allow the operation (e.g. resuming a run that is running)."""

    @property
    def run_id(self) -> str:
        return self.metadata.get("run_id", "")

    @property
    def run_status(self) -> str:
        """The run's status when the request was refused, e.g. "running"."""
        return self.metadata.get("status", "")

    @property
    def suspended_steps(self) -> list[str]:
        steps = self.metadata.get("suspended_steps", "")
        return steps.split(",") if steps else []

    @property
    def suspended_indexes(self) -> list[int]:
        """The suspended iterations of the foreach that a refused resume named."""
        indexes = self.metadata.get("suspended_indexes", "")
        return [int(i) for i in indexes.split(",") if i.lstrip("-").isdigit()]


class NotSuspended(FailedPrecondition):
    """Resume of a run that is not suspended."""


class StepNotSuspended(FailedPrecondition):
    """Resume named a step (or label), or a foreach iteration (`for_each_index`; see
    `suspended_indexes`), that is not suspended."""


class MultipleSuspendedSteps(FailedPrecondition):
    """Several steps are suspended and the resume did not say which one."""


class Aborted(SteplineError):
    """A concurrent change to the run won; reading the run again and retrying may succeed."""


class ResumeAlreadyClaimed(Aborted):
    """Another resume of the same suspension won the race."""


class ConcurrentModification(Aborted):
    """The run changed while this call was changing it (e.g. two time travels at once)."""


class CursorExpired(SteplineError):
    """The Watch cursor is older than the events the server still keeps."""


class Unavailable(SteplineError):
    """The server (or its store) can't be reached right now; retrying may succeed."""


class Unauthenticated(SteplineError):
    pass


class PermissionDenied(SteplineError):
    pass


class ResourceExhausted(SteplineError):
    """E.g. a message over the size limit."""


class Unimplemented(SteplineError):
    pass


class DeadlineExceeded(SteplineError):
    """The call's timeout expired. The run itself carries on."""


_BY_REASON: dict[str, type[SteplineError]] = {
    "RUN_NOT_FOUND": RunNotFound,
    "WORKFLOW_NOT_FOUND": WorkflowNotFound,
    "RUN_ALREADY_EXISTS": RunAlreadyExists,
    "RUN_NOT_SUSPENDED": NotSuspended,
    "STEP_NOT_SUSPENDED": StepNotSuspended,
    "ITERATION_NOT_SUSPENDED": StepNotSuspended,
    "MULTIPLE_SUSPENDED_STEPS": MultipleSuspendedSteps,
    "RESUME_ALREADY_CLAIMED": ResumeAlreadyClaimed,
    "CONCURRENT_MODIFICATION": ConcurrentModification,
    "CURSOR_EXPIRED": CursorExpired,
    "INVALID_RESUME_DATA": InvalidArgument,
    "VALUE_TOO_DEEP": InvalidArgument,
    "MALFORMED_REQUEST": InvalidArgument,
}

_BY_CODE: dict[grpc.StatusCode, type[SteplineError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: RunAlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: CursorExpired,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return MessageToDict(detail, preserving_proto_field_name=True)
    except (TypeError, KeyError):  # a detail type this client has never heard of
        return {"@type": detail.type_url}


def from_rpc_error(error: grpc.RpcError) -> SteplineError:
    """The typed error for a failed call (`grpc.aio.AioRpcError` or a sync `grpc.RpcError`)."""
    code = error.code()
    message = error.details() or ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # trailers disagree with the status line: trust the status line
        status = None
    reason = ""
    metadata: dict[str, str] = {}
    details: list[dict[str, Any]] = []
    for detail in status.details if status is not None else ():
        details.append(_detail_json(detail))
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            reason = info.reason
            metadata = dict(info.metadata)
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, SteplineError)
    return cls(message, code=code, reason=reason, metadata=metadata, details=details)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn a failed gRPC call inside the block into its SteplineError."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
