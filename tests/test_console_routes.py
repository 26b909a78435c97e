"""The console's routes on the HTTP port, without a browser: the page at every client-side
route with a strict Content-Security-Policy, the built assets from the package, and the two
read-only routes the page asks (the token's scopes; a run's request context and lease)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stepline.server.app import Server
from stepline.server.console import ASSETS, CONTENT_SECURITY_POLICY
from stepline.server.settings import Settings

ADMIN = "routes-admin"
VIEWER = "routes-viewer"
WRITER = "routes-writer"
TRACE_URL = "https://tracing.invalid/trace/{trace_id}"


async def _serve(tmp_path: Path, *, tokens: bool) -> Server:
    extra: dict[str, Any] = {}
    if tokens:
        token_file = tmp_path / "tokens.txt"
        token_file.write_text(f"{ADMIN}\n{VIEWER} read\n{WRITER} write\n")
        extra["auth_token_file"] = token_file
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        workflows=["tests.console_flows"],
        trace_url_template=TRACE_URL,
        **extra,
    )
    return await Server.start(settings)


@pytest.fixture(name="base")
async def base_fixture(tmp_path: Path) -> AsyncIterator[str]:
    server = await _serve(tmp_path, tokens=True)
    try:
        assert server.http_url is not None
        yield server.http_url
    finally:
        await server.stop(grace=1)


@pytest.fixture(name="http")
async def http_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_page_route_serves_the_page_with_a_strict_csp(
    base: str, http: aiohttp.ClientSession
) -> None:
    index = (ASSETS / "index.html").read_bytes()
    for path in ("/", "/runs", "/runs/order-1", "/workflows", "/workflows/hold"):
        async with http.get(base + path) as response:
            assert response.status == 200, path
            assert response.content_type == "text/html"
            assert await response.read() == index
            policy = response.headers["Content-Security-Policy"]
            assert policy == CONTENT_SECURITY_POLICY
            assert "script-src 'self'" in policy and "unsafe" not in policy
            assert "frame-ancestors 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "Set-Cookie" not in response.headers
    # The API's own paths are the API's: a page route never shadows them.
    async with http.get(base + "/v1/runs") as response:
        assert response.status == 401
        assert response.content_type == "application/json"


async def test_the_built_assets_come_from_the_package(
    base: str, http: aiohttp.ClientSession
) -> None:
    for name, kind in (
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        async with http.get(f"{base}/console/{name}") as response:
            assert response.status == 200
            assert response.content_type == kind
            assert await response.read() == (ASSETS / name).read_bytes()
            etag = response.headers["ETag"]
            assert "Content-Security-Policy" in response.headers
        async with http.get(f"{base}/console/{name}", headers={"If-None-Match": etag}) as again:
            assert again.status == 304
    for missing in ("index.html", "nope.js", "..%2Fapp.py"):
        async with http.get(f"{base}/console/{missing}") as response:
            assert response.status == 404, missing


async def test_the_session_route_tells_a_token_its_scopes(
    base: str, http: aiohttp.ClientSession
) -> None:
    url = f"{base}/console/api/session"
    for token, scopes in ((ADMIN, ["read", "write"]), (VIEWER, ["read"]), (WRITER, ["write"])):
        async with http.get(url, headers=_auth(token)) as response:
            assert response.status == 200
            assert await response.json() == {
                "authRequired": True,
                "scopes": scopes,
                "traceUrlTemplate": TRACE_URL,
            }
    for headers in ({}, _auth("not-a-token"), {"Authorization": "Basic abc"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            body = await response.json()
            assert body["code"] == 16
            assert body["details"][0]["reason"] in ("MISSING_CREDENTIALS", "INVALID_CREDENTIALS")


async def test_without_tokens_the_session_has_every_scope(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = await _serve(tmp_path, tokens=False)
    try:
        async with http.get(f"{server.http_url}/console/api/session") as response:
            assert response.status == 200
            assert await response.json() == {
                "authRequired": False,
                "scopes": ["read", "write"],
                "traceUrlTemplate": TRACE_URL,
            }
    finally:
        await server.stop(grace=1)


async def test_run_details_need_the_read_scope(base: str, http: aiohttp.ClientSession) -> None:
    start = {
        "runId": "order-ctx",
        "inputData": {"item": "lamp"},
        "requestContext": {"tenant": "acme"},
        "tracingOptions": {"traceId": "abc123", "metadata": {"origin": "test"}},
    }
    async with http.post(
        f"{base}/v1/workflows/reviewed_order/runs", json=start, headers=_auth(ADMIN)
    ) as response:
        assert response.status == 200, await response.text()
    async with http.get(
        f"{base}/v1/runs/order-ctx?wait_timeout=10s", headers=_auth(VIEWER)
    ) as response:
        assert (await response.json())["result"]["status"] == "RUN_STATUS_SUSPENDED"
    url = f"{base}/console/api/runs/order-ctx/details"
    async with http.get(url, headers=_auth(VIEWER)) as response:
        assert response.status == 200
        assert await response.json() == {
            "requestContext": {"tenant": "acme"},
            "traceMetadata": {"origin": "test"},
            "leased": False,
            "cancelRequested": False,
        }
    async with http.get(url, headers=_auth(WRITER)) as response:
        assert response.status == 403
        assert (await response.json())["details"][0]["reason"] == "INSUFFICIENT_SCOPE"
    async with http.get(url) as response:
        assert response.status == 401
    async with http.get(
        f"{base}/console/api/runs/no-such-run/details", headers=_auth(VIEWER)
    ) as response:
        assert response.status == 404
        assert (await response.json())["details"][0]["reason"] == "RUN_NOT_FOUND"
