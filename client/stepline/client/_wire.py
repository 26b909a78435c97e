"""JSON ⇄ `google.protobuf.Value`/`Struct` and datetime ⇄ `Timestamp` for the client.

The server has its own codec: the two halves ship separately and must not import each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

# Doubles hold every integer up to 2**53 exactly; larger integral values stay floats.
_MAX_EXACT_INT = 2**53


def to_value(data: Any) -> struct_pb2.Value:
    """Encode a JSON value (None, bool, int, float, str, list/tuple, mapping)."""
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):  # before int: bool is an int subclass
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = float(data)
    elif isinstance(data, str):
        value.string_value = data
    elif isinstance(data, Mapping):
        value.struct_value.CopyFrom(to_struct(data))
    elif isinstance(data, list | tuple):
        value.list_value.CopyFrom(to_list_value(data))
    else:
        raise TypeError(f"{type(data).__name__} is not a JSON value")
    return value


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    for key, item in data.items():
        struct.fields[str(key)].CopyFrom(to_value(item))
    return struct


def to_list_value(items: Iterable[Any]) -> struct_pb2.ListValue:
    list_value = struct_pb2.ListValue()
    for item in items:
        list_value.values.add().CopyFrom(to_value(item))
    return list_value


def from_value(value: struct_pb2.Value) -> Any:
    """Decode a Value; an unset Value is None."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return from_list_value(value.list_value)
    return None


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: from_value(item) for key, item in struct.fields.items()}


def from_list_value(list_value: struct_pb2.ListValue) -> list[Any]:
    return [from_value(item) for item in list_value.values]


def to_datetime(timestamp: timestamp_pb2.Timestamp) -> datetime:
    """A timezone-aware UTC datetime."""
    return timestamp.ToDatetime(tzinfo=UTC)


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp; a naive datetime is taken as local time, as Python does everywhere."""
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment.astimezone(UTC))
    return timestamp


def to_duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
