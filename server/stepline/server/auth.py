"""Bearer tokens and the two scopes they grant.

Tokens come from `--auth-token` / `STEPLINE_AUTH_TOKENS` (every scope) and from
`--auth-token-file`, a text file with one token per line, optionally followed by the scopes
it grants (all of them when none are listed); `#` starts a comment:

    # ci: may start and resume runs, not browse them
    3f0c9d...e1  write
    # dashboard: read-only
    a71b44...90  read
    # operator: everything
    c2d8e5...7b

Scopes (each RPC needs exactly one; `write` does not include `read`):
  read   GetExecutionResult, Watch, ListRuns, ListWorkflows, GetWorkflow
  write  everything else: StartAsync, Start, Stream, Resume, ResumeAsync, ResumeStream,
         Cancel, Restart, TimeTravel, TimeTravelStream, DeleteRun (and any RPC added later)

Health checking and reflection need no token. Callers send `authorization: Bearer <token>`
(the scheme is case-insensitive). No configured token means no authentication at all.
Tokens are kept only as SHA-256 digests and compared in constant time, against every
configured token, so neither the answer's timing nor the logs tell anything about them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import PermissionDenied, Unauthenticated
from .settings import ConfigError, Settings

READ = "read"
WRITE = "write"
SCOPES = frozenset({READ, WRITE})
READ_METHODS = frozenset(
    {"GetExecutionResult", "Watch", "ListRuns", "ListWorkflows", "GetWorkflow"}
)
# Services anyone may call: probes and generic tools must work without credentials.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
INVALID_CREDENTIALS = "INVALID_CREDENTIALS"


class TokenFileError(ConfigError):
    """The token file can't be used; the message names the line, never the token."""


def split_method(method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def required_scope(method: str) -> str | None:
    """The scope a full method name needs; None for the open services."""
    service, name = split_method(method)
    if service in OPEN_SERVICES:
        return None
    return READ if name in READ_METHODS else WRITE


def parse_token_file(text: str, *, source: str = "token file") -> dict[str, frozenset[str]]:
    """Token → scopes from the file format above."""
    grants: dict[str, frozenset[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, *scopes = line.split()
        unknown = sorted(set(scopes) - SCOPES)
        if unknown:
            raise TokenFileError(
                f"{source}, line {number}: unknown scope {', '.join(map(repr, unknown))} "
                f"(scopes are {', '.join(sorted(SCOPES))})"
            )
        if token in grants:
            raise TokenFileError(f"{source}, line {number}: the same token is listed twice")
        grants[token] = frozenset(scopes) or SCOPES
    if not grants:
        raise TokenFileError(f"{source}: no tokens (an empty file would lock every caller out)")
    return grants


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The accepted tokens (as digests) and their scopes."""

    def __init__(self, grants: Mapping[str, frozenset[str]]) -> None:
        if not grants:
            raise ValueError("a token table needs at least one token")
        self._grants = [(_digest(token), scopes) for token, scopes in grants.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenTable | None:
        """The table the settings describe; None when authentication is off.
        Raises TokenFileError."""
        grants = {token.get_secret_value(): SCOPES for token in settings.auth_tokens}
        if settings.auth_token_file is not None:
            path = settings.auth_token_file
            for token, scopes in _read(path).items():
                grants[token] = grants.get(token, frozenset()) | scopes
        return cls(grants) if grants else None

    def scopes(self, token: str) -> frozenset[str] | None:
        """The token's scopes, or None if it is not accepted."""
        presented = _digest(token)
        found: frozenset[str] | None = None
        for digest, scopes in self._grants:  # no early exit: same work for every token
            if hmac.compare_digest(presented, digest):
                found = scopes
        return found

    def authorize(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Check the call's credentials for `method`. Raises Unauthenticated or
        PermissionDenied."""
        scope = required_scope(method)
        if scope is None:
            return
        header = next((value for key, value in metadata if key.lower() == "authorization"), None)
        if header is None:
            raise Unauthenticated(
                "this server needs a bearer token: send `authorization: Bearer <token>`",
                reason=MISSING_CREDENTIALS,
            )
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the authorization header must be `Bearer <token>`", reason=INVALID_CREDENTIALS
            )
        scopes = self.scopes(token)
        if scopes is None:
            raise Unauthenticated("the bearer token is not valid", reason=INVALID_CREDENTIALS)
        if scope not in scopes:
            raise PermissionDenied(split_method(method)[1], scope)


def settings_secrets(settings: Settings) -> list[str]:
    """Every token the settings configure, for log redaction."""
    secrets = [token.get_secret_value() for token in settings.auth_tokens]
    if settings.auth_token_file is not None:
        with contextlib.suppress(TokenFileError):  # reported where the table is built
            secrets += list(_read(settings.auth_token_file))
    return secrets


def _read(path: Path) -> dict[str, frozenset[str]]:
    try:
        text = path.read_text()
    except OSError as err:
        raise TokenFileError(f"cannot read the token file {str(path)!r}: {err.strerror}") from None
    return parse_token_file(text, source=str(path))
