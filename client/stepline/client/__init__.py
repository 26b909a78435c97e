"""The typed Python client for Stepline.

from stepline.client import Client

async with await Client.connect("localhost:50051") as client:
    result = await client.start("greet", {"name": "Ada"})
"""

from .client import Client
from .errors import (
    CursorExpired,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MultipleSuspendedSteps,
    NotFound,
    NotSuspended,
    PermissionDenied,
    ResourceExhausted,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    SteplineError,
    StepNotSuspended,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    WorkflowNotFound,
)
from .models import (
    CancelResult,
    EventType,
    FieldViolation,
    ResumedRun,
    RunError,
    RunEvent,
    RunPage,
    RunResult,
    RunStatus,
    RunSummary,
    StartedRun,
    StepInfo,
    StepResult,
    StepStatus,
    SuspendedStep,
    WorkflowInfo,
)
from .sync import SyncClient

__all__ = [
    "CancelResult",
    "Client",
    "CursorExpired",
    "DeadlineExceeded",
    "EventType",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "MultipleSuspendedSteps",
    "NotFound",
    "NotSuspended",
    "PermissionDenied",
    "ResourceExhausted",
    "ResumeAlreadyClaimed",
    "ResumedRun",
    "RunAlreadyExists",
    "RunError",
    "RunEvent",
    "RunNotFound",
    "RunPage",
    "RunResult",
    "RunStatus",
    "RunSummary",
    "StartedRun",
    "StepInfo",
    "StepNotSuspended",
    "StepResult",
    "StepStatus",
    "SteplineError",
    "SuspendedStep",
    "SyncClient",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WorkflowInfo",
    "WorkflowNotFound",
]
