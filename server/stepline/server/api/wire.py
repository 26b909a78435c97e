"""Request bytes → messages, where bytes that are not a valid request are the caller's mistake.

grpc answers a request deserializer that raises with UNKNOWN ("Unexpected DecodeError ...") and
no details. The deserializers made here never raise: undecodable bytes (corrupt framing, a
string that is not UTF-8, nesting deeper than protobuf's limit of 100 messages) become a
`MalformedRequest`, which the RPC guard (`errors.unary` / `errors.streaming`) refuses with
INVALID_ARGUMENT and a BadRequest naming the top-level field whose bytes do not decode (reason
MALFORMED_REQUEST; VALUE_TOO_DEEP for nesting, which is valid protobuf that no JSON value here
may have).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from ..errors import VALUE_TOO_DEEP, FieldViolation, InvalidArgument
from .values import TOO_DEEP

M = TypeVar("M", bound=Message)


class MalformedRequest:
    """Stands in for a request whose bytes did not decode."""

    def __init__(self, type_name: str, field: str, problem: str) -> None:
        self.type_name = type_name
        self.field = field
        self.problem = problem

    def error(self) -> InvalidArgument:
        where = self.field or "(request)"
        # Nesting past the runtime's limit is still valid protobuf: the value is what's wrong.
        reason = VALUE_TOO_DEEP if self.problem == TOO_DEEP else "MALFORMED_REQUEST"
        return InvalidArgument(
            f"malformed {self.type_name}", [FieldViolation(where, self.problem)], reason=reason
        )


def lenient_deserializer(message_class: type[M]) -> Callable[[bytes], M | MalformedRequest]:
    """`message_class.FromString`, answering a MalformedRequest instead of raising."""
    descriptor = message_class.DESCRIPTOR

    def deserialize(data: bytes) -> M | MalformedRequest:
        try:
            return message_class.FromString(data)
        except (DecodeError, RecursionError) as err:
            field = _locate(message_class, data)
            return MalformedRequest(descriptor.full_name, field, _problem(err))

    return deserialize


def _problem(err: BaseException) -> str:
    text = str(err)
    if "Depth" in text or isinstance(err, RecursionError):
        return TOO_DEEP
    if "UTF-8" in text:
        return "is not valid UTF-8"
    return "is not a valid protobuf encoding"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; IndexError when it runs off the end."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _locate(message_class: type[Message], data: bytes) -> str:
    """The top-level field (`name`, or `name[i]` for a repeated one) whose bytes do not decode
    as a request holding only that field; "" when the request's own framing is broken or no
    single field is to blame."""
    descriptor = message_class.DESCRIPTOR
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            start = pos
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            field = descriptor.fields_by_number.get(number)
            index = seen.get(number, 0)
            seen[number] = index + 1
            name = ""
            if field is not None:
                many = field.is_repeated and not _is_map(field)
                name = f"{field.name}[{index}]" if many else field.name
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
                if pos > len(data):
                    return name
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                payload, pos = data[pos : pos + length], pos + length
                if len(payload) < length:
                    return name
                if field is not None and not _decodes(message_class, data[start:pos]):
                    return name
            else:
                return name  # groups (3, 4) are not used by proto3; 6 and 7 do not exist
    except IndexError:
        return ""
    return ""


def _is_map(field: Any) -> bool:
    """A map field (a FieldDescriptor; the upb one is typed apart from the Python one)."""
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _decodes(message_class: type[Message], field_bytes: bytes) -> bool:
    """Whether one field's bytes (tag included) decode in a request of their own, at the depth
    they had in the whole request."""
    try:
        message_class.FromString(field_bytes)
    except (DecodeError, RecursionError):
        return False
    return True
