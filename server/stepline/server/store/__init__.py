"""Run storage: one interface, an in-process and a Redis implementation.

`RedisStore` is imported on first use, so the engine and the memory store work without the
redis package installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    CreateOutcome,
    Hold,
    Lease,
    Page,
    Renewal,
    RunFilter,
    RunHead,
    RunRow,
    Store,
    StoredRun,
    WorkItem,
    WriteOutcome,
)
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "CreateOutcome",
    "Hold",
    "Lease",
    "MemoryStore",
    "Page",
    "RedisStore",
    "Renewal",
    "RunFilter",
    "RunHead",
    "RunRow",
    "Store",
    "StoredRun",
    "WorkItem",
    "WriteOutcome",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
