"""A small HTTP/JSON client for the HTTP API tests: JSON calls, Server-Sent Events, and the
google.rpc.Status details of an error body. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from stepline.server.http.routes import RouteTable
from stepline.v1 import workflow_service_pb2

BOUND = 10.0
DOMAIN = "stepline.dev"
TYPE_PREFIX = "type.googleapis.com/google.rpc."
SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
ROUTES = RouteTable(SERVICE.methods)
Json = Any  # a parsed JSON document


@dataclass(frozen=True)
class Reply:
    """An HTTP answer with a JSON body."""

    status: int
    headers: Mapping[str, str]
    body: Json

    def detail(self, kind: str) -> dict[str, Any]:
        """The one `google.rpc.<kind>` detail of an error body."""
        found = [d for d in self.body.get("details", []) if d.get("@type") == TYPE_PREFIX + kind]
        assert len(found) == 1, f"expected one {kind} in {self.body}"
        detail: dict[str, Any] = found[0]
        return detail

    @property
    def reason(self) -> str:
        info = self.detail("ErrorInfo")
        assert info["domain"] == DOMAIN, info
        reason: str = info["reason"]
        return reason


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str  # "message" unless the server named it
    data: Json


@dataclass
class EventStream:
    """The events of a Server-Sent Events response, as they arrive."""

    response: aiohttp.ClientResponse
    events: list[SseEvent] = field(default_factory=list)

    async def next(self, limit: float = BOUND) -> SseEvent | None:
        """The next event; None when the response ended."""
        return await asyncio.wait_for(self._read(), limit)

    async def take(self, count: int, limit: float = BOUND) -> list[SseEvent]:
        """The next `count` events, which must come."""
        taken: list[SseEvent] = []
        for _ in range(count):
            event = await self.next(limit)
            assert event is not None, f"the stream ended after {taken}"
            taken.append(event)
        return taken

    async def _read(self) -> SseEvent | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    event = SseEvent(
                        fields.get("id"),
                        fields.get("event", "message"),
                        json.loads("\n".join(data)),
                    )
                    self.events.append(event)
                    return event
                fields.clear()
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        return None

    async def until_status(self, limit: float = BOUND) -> tuple[list[SseEvent], Json]:
        """Every message up to the final `status` event, and that status."""
        messages: list[SseEvent] = []

        async def read() -> Json:
            while True:
                event = await self._read()
                if event is None:
                    raise AssertionError(f"the stream ended without a status event: {messages}")
                if event.event == "status":
                    return event.data
                messages.append(event)

        status = await asyncio.wait_for(read(), limit)
        return messages, status


class Api:
    """Calls the HTTP API of one server, with an optional bearer token; remembers which RPCs
    it reached."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None = None):
        self.session = session
        self.base = URL(base)
        self.token = token
        self.called: set[str] = set()

    def with_token(self, token: str | None) -> Api:
        other = Api(self.session, str(self.base), token)
        other.called = self.called
        return other

    def _headers(self, headers: Mapping[str, str] | None, body: bool) -> dict[str, str]:
        merged = {"Content-Type": "application/json"} if body else {}
        if self.token is not None:
            merged["Authorization"] = f"Bearer {self.token}"
        merged.update(headers or {})
        return merged

    def _note(self, method: str, url: URL) -> None:
        found = ROUTES.find(method, url.raw_path)
        if found is not None:
            self.called.add(found.route.method.name)

    async def call(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        url = self.base.join(URL(path, encoded=True))
        self._note(method, url)
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method,
            url,
            data=data,
            headers=self._headers(headers, body is not None),
            timeout=aiohttp.ClientTimeout(total=BOUND),
        ) as response:
            text = await response.text()
            return Reply(response.status, response.headers, json.loads(text) if text else None)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, body: Json | None = None, **kwargs: Any) -> Reply:
        return await self.call("POST", path, {} if body is None else body, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("DELETE", path, **kwargs)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[EventStream]:
        """An open Server-Sent Events response (its status and headers checked by the
        caller)."""
        url = self.base.join(URL(path, encoded=True))
        self._note(method, url)
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method,
            url,
            data=data,
            headers=self._headers(headers, body is not None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=BOUND),
        ) as response:
            yield EventStream(response)

    async def events(
        self,
        method: str,
        path: str,
        body: Json | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[list[SseEvent], Json]:
        """A whole SSE response that must end by itself: its messages and final status."""
        async with self.stream(method, path, body, headers=headers) as stream:
            assert stream.response.status == 200, await stream.response.text()
            assert stream.response.content_type == "text/event-stream"
            return await stream.until_status()


def run_events(events: list[SseEvent]) -> list[dict[str, Any]]:
    """The RunEvent of each message (`{"event": {...}}`)."""
    return [event.data["event"] for event in events]


def kinds(events: list[SseEvent]) -> list[str]:
    """`step-start:add_one`-like names of the run events, from their payload field."""
    names = []
    for event in run_events(events):
        (payload,) = (k for k in event if k not in ("runId", "sequence", "timestamp"))
        step = event[payload].get("stepId") if isinstance(event[payload], dict) else None
        names.append(f"{payload}:{step}" if step else payload)
    return names
