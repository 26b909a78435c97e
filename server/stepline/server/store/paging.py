"""What both stores share for `list_runs`: the order, the filter and the page token.

Runs are listed newest first by `(created_at, run_id)`; run ids compare by code point, which
matches Redis's byte order of their UTF-8 encoding. A page token is the position of the last
row returned, `urlsafe-base64(JSON [created_at, run_id])`; the next page starts strictly after.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

from ..errors import FieldViolation, InvalidArgument
from .base import RunFilter, RunRow

__all__ = ["Position", "decode_cursor", "encode_cursor", "matches"]

# (created_at, run_id) of a row.
Position = tuple[float, str]


def encode_cursor(row: RunRow) -> str:
    """The token that resumes listing after `row`."""
    raw = json.dumps([row.created_at, row.run_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> Position | None:
    """The position a token points at; None for the empty token (first page).

    Raises `InvalidArgument` for a token this module did not write."""
    if not cursor:
        return None
    try:
        raw = base64.b64decode(cursor, altchars=b"-_", validate=True)
        value = json.loads(raw, parse_constant=_reject_constant)
    except (binascii.Error, ValueError):
        raise _invalid() from None
    match value:
        case [float() | int() as created_at, str() as run_id] if _is_number(created_at):
            return float(created_at), run_id
    raise _invalid()


def matches(row: RunRow, filter: RunFilter) -> bool:
    """True when `row` passes every condition of `filter` (created bounds are inclusive)."""
    return (
        (not filter.workflow_id or row.workflow_id == filter.workflow_id)
        and (not filter.resource_id or row.resource_id == filter.resource_id)
        and (not filter.statuses or row.status in filter.statuses)
        and (filter.created_after is None or row.created_at >= filter.created_after)
        and (filter.created_before is None or row.created_at <= filter.created_before)
    )


def _is_number(value: float) -> bool:
    # bool is an int to Python; 1e400 parses to infinity.
    return not isinstance(value, bool) and math.isfinite(value)


def _reject_constant(name: str) -> float:
    # json accepts NaN and Infinity by default; no position can hold them.
    raise ValueError(name)


def _invalid() -> InvalidArgument:
    return InvalidArgument(
        "invalid page token",
        [FieldViolation("page_token", "not a token returned by a previous list call")],
    )
