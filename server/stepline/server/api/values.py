"""JSON ⇄ `google.protobuf.Value`/`Struct` and float epoch ⇄ `Timestamp`, for the adapter.

Decoding goes through a `RequestDecoder` that collects every field problem of one request, so a
caller with three bad fields hears about all three in one INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from ..context import MAX_JSON_DEPTH
from ..errors import VALUE_TOO_DEEP, FieldViolation, InvalidArgument

# Doubles represent every integer up to 2**53 exactly; beyond that an "integral" float is a
# rounded value and stays a float rather than pretending to be an exact int.
_MAX_EXACT_INT = 2**53
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TOO_DEEP = f"is nested too deeply (JSON values nest at most {MAX_JSON_DEPTH} levels)"


# -- encoding (engine JSON -> proto) -------------------------------------------------------------


def to_value(data: Any) -> struct_pb2.Value:
    """Encode a JSON value (None, bool, int, float, str, list/tuple, mapping with str keys)."""
    value = struct_pb2.Value()
    _fill_value(value, data)
    return value


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """Encode a JSON object."""
    struct = struct_pb2.Struct()
    _fill_struct(struct, data)
    return struct


def to_list_value(items: Iterable[Any]) -> struct_pb2.ListValue:
    """Encode a JSON array."""
    list_value = struct_pb2.ListValue()
    for item in items:
        _fill_value(list_value.values.add(), item)
    return list_value


def _fill_value(value: struct_pb2.Value, data: Any) -> None:
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):  # before int: bool is an int subclass
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = float(data)
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, Mapping):
        # SetInParent marks the oneof even when the mapping is empty.
        value.struct_value.SetInParent()
        _fill_struct(value.struct_value, data)
    elif isinstance(data, list | tuple):
        value.list_value.SetInParent()
        for item in data:
            _fill_value(value.list_value.values.add(), item)
    else:
        raise TypeError(f"{type(data).__name__} is not a JSON value")


def _fill_struct(struct: struct_pb2.Struct, data: Mapping[str, Any]) -> None:
    for key, item in data.items():
        _fill_value(struct.fields[str(key)], item)


def to_timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """Float epoch seconds to a Timestamp; None stays unset."""
    if seconds is None:
        return None
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def from_timestamp(timestamp: timestamp_pb2.Timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


# -- decoding (request proto -> engine JSON), with field paths ----------------------------------


def child_path(parent: str, key: str) -> str:
    """`parent.key`, or `parent["odd key"]` when the key is not identifier-like."""
    if _IDENTIFIER.match(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


class RequestDecoder:
    """Decodes request fields, collecting violations; `check()` raises them together."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self._too_deep = 0

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def check(self) -> None:
        """Raise InvalidArgument listing every violation found so far, if any; its reason is
        VALUE_TOO_DEEP when nesting is all that is wrong."""
        if self.violations:
            only_depth = self._too_deep == len(self.violations)
            reason = VALUE_TOO_DEEP if only_depth else InvalidArgument.reason
            raise InvalidArgument("invalid request", self.violations, reason=reason)

    def required(self, value: str, field: str) -> str:
        if not value:
            self.fail(field, "is required")
        return value

    def value(self, value: struct_pb2.Value, field: str, *, depth: int = 0) -> Any:
        """Decode a Value; an unset Value is JSON null. `depth` counts the objects and arrays
        around it: a value nested deeper than MAX_JSON_DEPTH is refused (whatever holds it must
        stay encodable in every message that carries it back)."""
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            return self._number(value.number_value, field)
        if kind == "string_value":
            return value.string_value
        if kind == "bool_value":
            return value.bool_value
        if kind == "struct_value":
            return self.struct(value.struct_value, field, depth=depth)
        if kind == "list_value":
            if not self._nestable(field, depth):
                return None
            return [
                self.value(item, f"{field}[{index}]", depth=depth + 1)
                for index, item in enumerate(value.list_value.values)
            ]
        return None

    def struct(self, struct: struct_pb2.Struct, field: str, *, depth: int = 0) -> dict[str, Any]:
        if not self._nestable(field, depth):
            return {}
        return {
            key: self.value(item, child_path(field, key), depth=depth + 1)
            for key, item in struct.fields.items()
        }

    def _nestable(self, field: str, depth: int) -> bool:
        if depth < MAX_JSON_DEPTH:
            return True
        self.fail(field, TOO_DEEP)
        self._too_deep += 1
        return False

    def optional_value(self, message: Message, field: str) -> Any:
        """The JSON value of a message field, or None when the field is unset."""
        return self.value(getattr(message, field), field) if message.HasField(field) else None

    def optional_struct(self, message: Message, field: str) -> dict[str, Any] | None:
        """The object of a Struct message field, or None when the field is unset."""
        return self.struct(getattr(message, field), field) if message.HasField(field) else None

    def step_path(self, segments: Iterable[str]) -> tuple[str, ...]:
        """A step path whose every segment is non-empty (`step[i]` names a bad one)."""
        path = tuple(segments)
        for index, segment in enumerate(path):
            self.required(segment, f"step[{index}]")
        return path

    def duration(self, duration: duration_pb2.Duration, field: str) -> float:
        seconds = duration.seconds + duration.nanos / 1e9
        if seconds < 0:
            self.fail(field, "must not be negative")
            return 0.0
        return seconds

    def _number(self, number: float, field: str) -> int | float | None:
        if math.isnan(number) or math.isinf(number):
            self.fail(field, "must be a finite number (NaN and Infinity are not JSON)")
            return None
        if number.is_integer() and abs(number) <= _MAX_EXACT_INT:
            return int(number)
        return number


def from_value(value: struct_pb2.Value, field: str) -> Any:
    """Decode one Value on its own; raises InvalidArgument naming the offending path."""
    decoder = RequestDecoder()
    data = decoder.value(value, field)
    decoder.check()
    return data


def from_struct(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """Decode one Struct on its own; raises InvalidArgument naming the offending path."""
    decoder = RequestDecoder()
    data = decoder.struct(struct, field)
    decoder.check()
    return data
