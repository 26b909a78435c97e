"""HTTP routes read from the `google.api.http` option of each RPC, and request paths matched
against their path templates.

The template syntax is google.api.HttpRule's:

    Template = "/" Segment { "/" Segment } [ ":" Verb ]
    Segment  = "*" | "**" | LITERAL | "{" FieldPath [ "=" Segment { "/" Segment } ] "}"

`{run_id}` binds one path segment to the request field `run_id`; `{name=runs/*}` binds the
segments the sub-pattern matches; `*` is one segment, `**` one or more (last only). Paths are
matched as sent (percent-encoded), so a `/` or `:` inside an id must be sent as `%2F` / `%3A`
(what encodeURIComponent does); the bound values are then decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

FieldPath = tuple[str, ...]

_SEGMENT = "[^/]+"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()+,;=@-]+")
_ENCODED_SLASH = re.compile("%2F", re.IGNORECASE)


class TemplateError(ValueError):
    """A path template (or the route around it) that does not parse or names no field."""


@dataclass(frozen=True)
class Variable:
    """A `{field=...}` of a template: the request field it fills and its regex group."""

    field_path: FieldPath
    group: str
    multi_segment: bool


@dataclass(frozen=True)
class PathTemplate:
    text: str
    regex: re.Pattern[str]
    variables: tuple[Variable, ...]
    verb: str
    literals: int  # literal segments: on a tie the more specific template is tried first

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Raises TemplateError."""
        return _Parser(text).template()

    def match(self, raw_path: str) -> dict[FieldPath, str] | None:
        """The decoded value of each variable when `raw_path` (percent-encoded, without the
        query) matches; None otherwise."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        return {
            v.field_path: _decode(found.group(v.group), v.multi_segment) for v in self.variables
        }


def _decode(value: str, multi_segment: bool) -> str:
    if not multi_segment:
        return unquote(value, errors="strict")
    # Across segments a decoded `%2F` would read as a separator: keep it encoded.
    return "%2F".join(unquote(part, errors="strict") for part in _ENCODED_SLASH.split(value))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.variables: list[Variable] = []
        self.literals = 0

    def fail(self, problem: str) -> TemplateError:
        return TemplateError(f"path template {self.text!r}: {problem} (at {self.pos})")

    def template(self) -> PathTemplate:
        text = self.text
        verb = ""
        colon = text.rfind(":")
        if colon > max(text.rfind("/"), text.rfind("}")):
            text, verb = text[:colon], text[colon + 1 :]
            if not _LITERAL.fullmatch(verb):
                raise self.fail(f"bad verb {verb!r}")
        if not text.startswith("/"):
            raise self.fail("must start with /")
        self.pos = 1
        body = self.segments(text, top=True)
        if self.pos != len(text):
            raise self.fail("unexpected text")
        pattern = "/" + body + (":" + re.escape(verb) if verb else "")
        return PathTemplate(
            self.text, re.compile(pattern), tuple(self.variables), verb, self.literals
        )

    def segments(self, text: str, *, top: bool) -> str:
        parts: list[str] = []
        while True:
            parts.append(self.segment(text, top=top))
            if parts[-1] == "**" and self.pos < len(text) and text[self.pos] == "/":
                raise self.fail("** must be the last segment")
            if self.pos < len(text) and text[self.pos] == "/":
                self.pos += 1
                continue
            return "/".join(_SEGMENT + "(?:/" + _SEGMENT + ")*" if p == "**" else p for p in parts)

    def segment(self, text: str, *, top: bool) -> str:
        if top and text.startswith("{", self.pos):
            return self.variable(text)
        end = self.pos
        while end < len(text) and text[end] not in "/}":
            end += 1
        word = text[self.pos : end]
        self.pos = end
        if word in ("*", "**"):
            return _SEGMENT if word == "*" else word
        if not _LITERAL.fullmatch(word):
            raise self.fail(f"bad segment {word!r}")
        self.literals += 1
        return re.escape(word)

    def variable(self, text: str) -> str:
        close = text.find("}", self.pos)
        if close < 0:
            raise self.fail("unclosed {")
        inner = text[self.pos + 1 : close]
        name, _, pattern = inner.partition("=")
        if not _IDENT.fullmatch(name):
            raise self.fail(f"bad field path {name!r}")
        group = f"v{len(self.variables)}"
        if pattern:
            sub = _Parser(pattern)
            regex = sub.segments(pattern, top=False)
            if sub.pos != len(pattern):
                raise self.fail(f"bad variable pattern {pattern!r}")
            self.literals += sub.literals
            multi = "/" in pattern or "**" in pattern
        else:
            regex, multi = _SEGMENT, False
        self.variables.append(Variable(tuple(name.split(".")), group, multi))
        self.pos = close + 1
        return f"(?P<{group}>{regex})"


# -- routes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC."""

    http_method: str  # GET, POST, ...
    template: PathTemplate
    method: MethodDescriptor
    # The request field the body fills: "*" for all not bound by the path, "" for none.
    body: str
    # The response field sent as the body; "" for the whole response.
    response_body: str

    @property
    def rpc(self) -> str:
        """The full gRPC method name, `/package.Service/Method`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


@dataclass(frozen=True)
class Match:
    route: Route
    values: dict[FieldPath, str]


def field_chain(message: Any, path: Sequence[str]) -> list[FieldDescriptor]:
    """The fields a dotted path walks through in `message`, a message Descriptor (the upb
    one is typed apart from the Python one); each name is a proto or JSON name. Raises
    KeyError naming the first name that is not a field."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in path:
        field = None if current is None else _field(current, name)
        if field is None:
            raise KeyError(name)
        chain.append(field)
        current = field.message_type if not field.is_repeated else None
    return chain


def _field(message: Descriptor, name: str) -> FieldDescriptor | None:
    field: FieldDescriptor | None = message.fields_by_name.get(name)
    if field is None:
        field = next((f for f in message.fields if f.json_name == name), None)
    return field


def _rules(method: MethodDescriptor) -> Iterator[Any]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule = options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def _route(method: MethodDescriptor, rule: Any) -> Route:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError(f"{method.full_name}: an http rule without a pattern")
    if kind == "custom":
        custom: http_pb2.CustomHttpPattern = rule.custom
        http_method, path = custom.kind.upper(), custom.path
    else:
        http_method, path = kind.upper(), getattr(rule, kind)
    template = PathTemplate.parse(path)
    for name in (
        *(".".join(v.field_path) for v in template.variables),
        *([rule.body] if rule.body not in ("", "*") else []),
    ):
        try:
            field_chain(method.input_type, name.split("."))
        except KeyError as err:
            raise TemplateError(f"{method.full_name}: {path}: no request field {err}") from None
    return Route(http_method, template, method, rule.body, rule.response_body)


class RouteTable:
    """Every HTTP route of the given RPCs, tried most specific first."""

    def __init__(self, methods: Iterable[MethodDescriptor]) -> None:
        """Raises TemplateError for a route that can't be served."""
        routes = [_route(method, rule) for method in methods for rule in _rules(method)]
        # Custom verbs first (`/runs/{id}:watch` before `/runs/{id}`), then more literals.
        routes.sort(key=lambda r: (not r.template.verb, -r.template.literals))
        self.routes: tuple[Route, ...] = tuple(routes)

    def find(self, http_method: str, raw_path: str) -> Match | None:
        """The route serving this request, with its path values; None when there is none.
        Raises UnicodeDecodeError when a bound value is not percent-encoded UTF-8."""
        for route in self.routes:
            if route.http_method != http_method:
                continue
            values = route.template.match(raw_path)
            if values is not None:
                return Match(route, values)
        return None

    def allowed(self, raw_path: str) -> list[str]:
        """The HTTP methods some route serves at this path (for 405 and CORS)."""
        found = {r.http_method for r in self.routes if r.template.regex.fullmatch(raw_path)}
        return sorted(found)

    def prefixes(self) -> set[str]:
        """The first path segment of every route, e.g. {"v1"}."""
        return {r.template.text.lstrip("/").split("/", 1)[0].split(":", 1)[0] for r in self.routes}
