"""The console's HTTP routes, added to the HTTP API's aiohttp application by `mount`:

    GET /  /runs  /runs/{run_id}  /workflows  /workflows/{workflow_id}
        index.html: the page routes itself, so every one of these is a link to share
    GET /console/{asset}                     the built script, stylesheet and icon
    GET /console/api/session                 the presented token's scopes (no token needed
                                             when the server has none) and the trace link
                                             template, so the page shows only what it may do
    GET /console/api/runs/{run_id}/details   read scope: what RunResult does not carry (the
                                             request context, the trace metadata, whether a
                                             live replica holds the run's lease)

Every console response carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only, no inline code, no framing). Tokens travel only in the
Authorization header, never a cookie, so a forged cross-site request carries no credentials.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..api.errors import to_status
from ..auth import INVALID_CREDENTIALS, MISSING_CREDENTIALS, SCOPES, TokenTable
from ..errors import SteplineError, Unauthenticated
from ..http.errors import status_response
from ..runs import RunService
from ..settings import Settings

ASSETS = Path(__file__).parent / "assets"
# The page routes of console/src/main.ts; each answers index.html.
PAGES = ("/", "/runs", "/runs/{run_id}", "/workflows", "/workflows/{workflow_id}")
# Served from /console/<name>, with their content types. Nothing else in assets/ is served.
STATIC = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# The RPC whose scope the details route needs (read, like GetExecutionResult).
_DETAILS_METHOD = "/stepline.v1.WorkflowService/GetExecutionResult"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def load(cls, name: str, content_type: str) -> _Asset:
        body = (ASSETS / name).read_bytes()
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    def response(self, request: web.Request) -> web.Response:
        headers = {**SECURITY_HEADERS, "ETag": self.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=self.body, headers={**headers, "Content-Type": f"{self.content_type}"}
        )


class Console:
    """The console's handlers over one replica's run service, tokens and settings."""

    def __init__(self, service: RunService, tokens: TokenTable | None, settings: Settings) -> None:
        self._service = service
        self._tokens = tokens
        self._trace_url = settings.trace_url_template
        self._index = _Asset.load("index.html", "text/html; charset=utf-8")
        self._static = {name: _Asset.load(name, kind) for name, kind in STATIC.items()}

    async def page(self, request: web.Request) -> web.Response:
        return self._index.response(request)

    async def asset(self, request: web.Request) -> web.Response:
        asset = self._static.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(headers=SECURITY_HEADERS)
        return asset.response(request)

    async def session(self, request: web.Request) -> web.Response:
        if self._tokens is None:
            scopes: frozenset[str] = SCOPES
        else:
            try:
                scopes = self._scopes(request, self._tokens)
            except SteplineError as err:
                return _error(err)
        return web.json_response(
            {
                "authRequired": self._tokens is not None,
                "scopes": sorted(scopes),
                "traceUrlTemplate": self._trace_url,
            },
            headers=SECURITY_HEADERS,
        )

    async def details(self, request: web.Request) -> web.Response:
        try:
            if self._tokens is not None:
                header = request.headers.get("Authorization")
                self._tokens.authorize(
                    _DETAILS_METHOD, [("authorization", header)] if header is not None else []
                )
            stored = await self._service.get(request.match_info["run_id"])
        except SteplineError as err:
            return _error(err)
        snapshot = stored.snapshot
        return web.json_response(
            {
                "requestContext": snapshot.request_context,
                "traceMetadata": snapshot.trace_metadata,
                "leased": stored.leased,
                "cancelRequested": stored.cancel_requested,
            },
            headers=SECURITY_HEADERS,
        )

    @staticmethod
    def _scopes(request: web.Request, tokens: TokenTable) -> frozenset[str]:
        """The presented token's scopes. Raises Unauthenticated."""
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "this server needs a bearer token: send `authorization: Bearer <token>`",
                reason=MISSING_CREDENTIALS,
            )
        scopes = tokens.scopes(token.strip())
        if scopes is None:
            raise Unauthenticated("the bearer token is not valid", reason=INVALID_CREDENTIALS)
        return scopes


def _error(err: SteplineError) -> web.Response:
    response = status_response(to_status(err))
    response.headers.update(SECURITY_HEADERS)
    return response


def mount(
    app: web.Application, service: RunService, tokens: TokenTable | None, settings: Settings
) -> None:
    """Add the console's routes to the HTTP API's application (before it starts).
    Raises FileNotFoundError when the built assets are missing."""
    console = Console(service, tokens, settings)
    for path in PAGES:
        app.router.add_get(path, console.page)
    app.router.add_get("/console/api/session", console.session)
    app.router.add_get("/console/api/runs/{run_id}/details", console.details)
    app.router.add_get("/console/{name}", console.asset)
