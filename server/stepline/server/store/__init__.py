"""Run storage: one interface, an in-process and a Redis implementation."""

from .base import (
    CreateOutcome,
    Lease,
    Page,
    Renewal,
    RunFilter,
    RunRow,
    Store,
    StoredRun,
    WorkItem,
    WriteOutcome,
)
from .memory import MemoryStore
from .redis import RedisStore

__all__ = [
    "CreateOutcome",
    "Lease",
    "MemoryStore",
    "Page",
    "RedisStore",
    "Renewal",
    "RunFilter",
    "RunRow",
    "Store",
    "StoredRun",
    "WorkItem",
    "WriteOutcome",
]
