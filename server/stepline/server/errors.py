"""The engine's error tree. The gRPC adapter maps each class to a status in one table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Snapshot


class SteplineError(Exception):
    """Root of every error the engine raises to a caller."""

    reason = "STEPLINE_ERROR"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class WorkflowNotFound(SteplineError):
    reason = "WORKFLOW_NOT_FOUND"

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is not registered", workflow_id=workflow_id)
        self.workflow_id = workflow_id


class RunNotFound(SteplineError):
    reason = "RUN_NOT_FOUND"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist", run_id=run_id)
        self.run_id = run_id


@dataclass(frozen=True)
class FieldViolation:
    """`field` is a JSON path such as `input_data.items[2].name`."""

    field: str
    description: str


# The reason of an InvalidArgument whose every violation is a JSON value nested too deeply.
VALUE_TOO_DEEP = "VALUE_TOO_DEEP"


class InvalidArgument(SteplineError):
    """`message` says what was refused; the status message adds the first violation."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation],
        *,
        reason: str = "INVALID_ARGUMENT",
    ) -> None:
        super().__init__(message)
        self.violations = list(violations)
        self.reason = reason


class RunAlreadyExists(SteplineError):
    reason = "RUN_ALREADY_EXISTS"

    def __init__(self, run_id: str, workflow_id: str) -> None:
        super().__init__(
            f"run {run_id!r} was already started by another request",
            run_id=run_id,
            workflow_id=workflow_id,
        )
        self.run_id = run_id
        self.workflow_id = workflow_id


class FailedPrecondition(SteplineError):
    """The run is in a state that does not allow the operation. `suspended_indexes` lists the
    suspended iterations of the foreach a refused resume named."""

    reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        run_id: str,
        status: str,
        suspended_steps: Sequence[str] = (),
        suspended_indexes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, status=status)
        self.reason = reason
        self.run_id = run_id
        self.status = status
        self.suspended_steps = list(suspended_steps)
        self.suspended_indexes = None if suspended_indexes is None else list(suspended_indexes)

    @classmethod
    def of_run(
        cls,
        snap: Snapshot,
        reason: str,
        message: str,
        *,
        suspended_indexes: Sequence[int] | None = None,
    ) -> FailedPrecondition:
        """A refusal about `snap`'s run, naming its status and its suspended steps."""
        return cls(
            message,
            reason=reason,
            run_id=snap.run_id,
            status=snap.status.value,
            suspended_steps=sorted(snap.suspended_paths),
            suspended_indexes=suspended_indexes,
        )


class ResumeAlreadyClaimed(SteplineError):
    reason = "RESUME_ALREADY_CLAIMED"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"another resume already claimed run {run_id!r}", run_id=run_id)
        self.run_id = run_id


class CursorExpired(SteplineError):
    reason = "CURSOR_EXPIRED"

    def __init__(self, run_id: str, after_sequence: int, first_kept: int) -> None:
        super().__init__(
            f"events after {after_sequence} of run {run_id!r} are no longer kept "
            f"(oldest kept sequence is {first_kept})",
            run_id=run_id,
        )


class Unimplemented(SteplineError):
    reason = "UNIMPLEMENTED"


class Unauthenticated(SteplineError):
    """The call carried no credentials, or ones the server does not accept."""

    reason = "UNAUTHENTICATED"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(SteplineError):
    """The caller's credentials do not grant the scope the RPC needs."""

    reason = "INSUFFICIENT_SCOPE"

    def __init__(self, method: str, scope: str) -> None:
        super().__init__(
            f"the token may not call {method}: it needs the {scope!r} scope",
            method=method,
            required_scope=scope,
        )


class ShuttingDown(SteplineError):
    """This replica is draining; the caller should retry (or reconnect) on another one."""

    reason = "SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__("this server is shutting down; retry on another replica")


class StoreUnavailable(SteplineError):
    """The backing store cannot be reached; nothing was written."""

    reason = "STORE_UNAVAILABLE"


class StoreConflict(Exception):
    """A compare-and-set lost: the stored version or status was not the expected one.

    Internal to the engine (runs/worker turn it into a caller-facing error or a retry).
    """


class LeaseLost(Exception):
    """A write carried a fencing token that is no longer current: another holder took over."""


class Conflict(SteplineError):
    """The run kept changing under a compare-and-set; the caller may retry."""

    reason = "CONCURRENT_MODIFICATION"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} changed concurrently; retry the request", run_id=run_id)
        self.run_id = run_id
