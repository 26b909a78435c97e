"""HTTP request parts → the RPC's request message, and messages → JSON, with the proto3 JSON
mapping (google.protobuf.json_format): lowerCamelCase names on output, either name on input,
enums by name, 64-bit integers as strings, Timestamp/Duration as RFC 3339 / "1.5s" strings.

The request is built as grpc-gateway builds it: the body (all of it for `body: "*"`, else
into the one field the rule names), then the path variables, then, unless the body took
every field, the query parameters (`?statuses=RUN_STATUS_FAILED&statuses=...` for a
repeated field, `output_options.include_state=true` for a nested one). Parsing is strict:
an unknown field, a value of the wrong type or bytes that are not JSON make the request a
MalformedRequest, which the RPC refuses with INVALID_ARGUMENT (a BadRequest names the field)
exactly as it refuses undecodable protobuf.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ..api.values import TOO_DEEP
from ..api.wire import MalformedRequest
from .routes import FieldPath, Route, field_chain

# Message types a query parameter or path variable can set: their JSON form is a string.
_FROM_TEXT = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.FloatValue",
        "google.protobuf.DoubleValue",
        "google.protobuf.Value",
    }
)
# Doubles up to this magnitude hold every integer exactly.
_EXACT = 2.0**53
_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_PARSE_PREFIX = re.compile(r"^Failed to parse \w+ field: ")
_PARSE_SUFFIX = re.compile(r"\s+at [\w.\[\]\"]+\.?$")


class _Refused(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def request_message(
    route: Route,
    path_values: Mapping[FieldPath, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message | MalformedRequest:
    """The request `route`'s RPC receives; a MalformedRequest when the parts don't make one."""
    message_class = GetMessageClass(route.method.input_type)
    message = message_class()
    try:
        if route.body == "*":
            _fill_from_body(message, body)
        elif route.body:
            _set_json(message, route.body, _json(body, route.body))
        elif body.strip():
            raise _Refused("", "takes no request body")
        for path, text in path_values.items():
            _set_text(message, ".".join(path), [text])
        if route.body != "*":
            bound = {".".join(path) for path in path_values} | {route.body}
            for name, texts in _grouped(query).items():
                if _canonical(message, name) in bound:
                    raise _Refused(name, "is set by the path or the body, not the query")
                _set_text(message, name, texts)
        elif query:
            raise _Refused(query[0][0], "is not a query parameter: send it in the JSON body")
    except _Refused as refused:
        return MalformedRequest(message.DESCRIPTOR.full_name, refused.field, refused.problem)
    return message


def to_json(message: Message) -> Any:
    """A message as proto3 JSON (a dict), every field present (defaults included)."""
    return _integral(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


def _integral(value: Any) -> Any:
    """`value` with whole floats as ints. JSON values (google.protobuf.Value) hold numbers as
    doubles, so an input of 2 would come back as 2.0: the same JSON number, written as the
    caller wrote it."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def response_json(route: Route, message: Message) -> Any:
    """The HTTP body of a response: the whole message, or the field `response_body` names."""
    whole = to_json(message)
    if not route.response_body:
        return whole
    field = message.DESCRIPTOR.fields_by_name[route.response_body]
    return whole.get(field.json_name)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# -- body ----------------------------------------------------------------------------------------


def _json(body: bytes, where: str) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise _Refused(where, "is not valid UTF-8") from None
    except RecursionError:
        raise _Refused(where, TOO_DEEP) from None
    except ValueError as err:
        raise _Refused(where, f"is not valid JSON ({err})") from None


def _fill_from_body(message: Message, body: bytes) -> None:
    document = _json(body, "")
    if not isinstance(document, dict):
        raise _Refused("", "the body must be a JSON object")
    seen: dict[str, str] = {}
    for key, value in document.items():
        try:
            (field,) = field_chain(message.DESCRIPTOR, [key])
        except KeyError:
            problem = f"is not a field of {message.DESCRIPTOR.full_name}"
            raise _Refused(key, problem) from None
        if field.name in seen:
            raise _Refused(key, f"is given twice (also as {seen[field.name]!r})")
        seen[field.name] = key
        _parse_into(message, {field.name: value}, key)


def _set_json(message: Message, dotted: str, value: Any) -> None:
    """Set the field at `dotted` from a JSON value."""
    parent, leaf = _walk(message, dotted)
    _replace(parent, leaf, value, dotted)


def _parse_into(message: Message, document: dict[str, Any], where: str) -> None:
    try:
        json_format.ParseDict(document, message)
    except RecursionError:
        raise _Refused(where, TOO_DEEP) from None
    except json_format.ParseError as err:
        if "depth" in str(err).lower() or "recursion" in str(err).lower():
            raise _Refused(where, TOO_DEEP) from None
        raise _Refused(where, _clean(str(err))) from None


def _clean(text: str) -> str:
    first = text.splitlines()[0] if text else "is not valid"
    return _PARSE_SUFFIX.sub("", _PARSE_PREFIX.sub("", first)).rstrip(".")


# -- path and query ------------------------------------------------------------------------------


def _grouped(query: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    return grouped


def _canonical(message: Message, dotted: str) -> str:
    """`dotted` with every JSON name replaced by the proto name; unchanged if unknown."""
    try:
        return ".".join(f.name for f in field_chain(message.DESCRIPTOR, dotted.split(".")))
    except KeyError:
        return dotted


def _walk(message: Message, dotted: str) -> tuple[Message, FieldDescriptor]:
    """The message holding the field at `dotted`, and that field."""
    try:
        chain = field_chain(message.DESCRIPTOR, dotted.split("."))
    except KeyError as err:
        problem = f"is not a field of {message.DESCRIPTOR.full_name} ({err.args[0]!r})"
        raise _Refused(dotted, problem) from None
    parent = message
    for field in chain[:-1]:
        if field.message_type is None:
            raise _Refused(dotted, f"{field.name} is not a message")
        parent = getattr(parent, field.name)
    return parent, chain[-1]


def _set_text(message: Message, dotted: str, texts: list[str]) -> None:
    """Set the field at `dotted` from path or query text (several values: a repeated field)."""
    parent, leaf = _walk(message, dotted)
    if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
        raise _Refused(dotted, "is a map: send it in a JSON body")
    values = [_from_text(leaf, text, dotted) for text in texts]
    if leaf.is_repeated:
        _replace(parent, leaf, values, dotted)
    elif len(values) > 1:
        raise _Refused(dotted, "is given more than once")
    else:
        _replace(parent, leaf, values[0], dotted)


def _from_text(field: FieldDescriptor, text: str, where: str) -> Any:
    """The JSON value standing for `text` in `field`."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        return _bool(text, where)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return int(text) if text.lstrip("-").isdigit() else text
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.BoolValue":
            return _bool(text, where)
        if name not in _FROM_TEXT:
            raise _Refused(where, f"is a {name}: send it in a JSON body")
    return text


def _bool(text: str, where: str) -> bool:
    if text.lower() not in _BOOLS:
        raise _Refused(where, f"must be true or false, not {text!r}")
    return _BOOLS[text.lower()]


def _replace(parent: Message, leaf: FieldDescriptor, value: Any, where: str) -> None:
    """Set `leaf` of `parent` to the JSON `value`, replacing what was there."""
    scratch = type(parent)()
    _parse_into(scratch, {leaf.name: value}, where)
    parent.ClearField(leaf.name)
    parent.MergeFrom(scratch)
