"""Compiled pydantic schemas: validate JSON values into Python objects and back.

Each schema is compiled once (a TypeAdapter) when a step or workflow is defined, never per call.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from .errors import FieldViolation

T = TypeVar("T")


class SchemaViolation(Exception):
    """A value failed its schema; one violation per problem, each with a JSON path."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def json_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def violations_from(err: ValidationError, prefix: str) -> list[FieldViolation]:
    return [
        FieldViolation(json_path(prefix, tuple(e["loc"])), e["msg"])
        for e in err.errors(include_url=False)
    ]


class Schema(Generic[T]):
    """A type (usually a pydantic model) compiled for validation and JSON dumping."""

    def __init__(self, tp: type[T]) -> None:
        self.type = tp
        self._adapter: TypeAdapter[T] = TypeAdapter(tp)

    @property
    def name(self) -> str:
        return getattr(self.type, "__name__", repr(self.type))

    def json_schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    def validate(self, value: Any, *, path: str = "") -> T:
        """Validate a JSON value (or an instance); raises SchemaViolation."""
        try:
            return self._adapter.validate_python(value)
        except ValidationError as err:
            raise SchemaViolation(violations_from(err, path)) from None

    def dump(self, value: T) -> Any:
        """The JSON form of a validated value."""
        return self._adapter.dump_python(value, mode="json")

    def normalize(self, value: Any, *, path: str = "") -> Any:
        """Validate then dump: the JSON value with defaults applied and extras dropped."""
        return self.dump(self.validate(value, path=path))

    def conform(self, value: Any, path: str, violations: list[FieldViolation]) -> Any:
        """`normalize`, collecting what is wrong into `violations` (and answering None)
        instead of raising, so a request's checks can all be reported at once."""
        try:
            return self.normalize(value, path=path)
        except SchemaViolation as err:
            violations.extend(err.violations)
            return None


def optional_schema(tp: type[Any] | None) -> Schema[Any] | None:
    return Schema(tp) if tp is not None else None
