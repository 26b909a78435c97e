"""`JSON`: any value JSON can hold, for payloads whose shape belongs to the workflow.

Type checkers see the recursive union. At run time the alias is `Any`: neither msgspec nor
pydantic resolves a recursive alias written with forward references, and both take `Any` as
"whatever the JSON holds" (dicts, lists, strings, numbers, booleans, null), which is exactly
this type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
else:
    JSON = Any

__all__ = ["JSON"]
