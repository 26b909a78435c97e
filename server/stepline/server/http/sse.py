"""Server-streaming RPCs as Server-Sent Events (text/event-stream).

Each response message is one event: `data:` holds its proto3 JSON (e.g. a WatchResponse,
`{"event": {...}}`) and `id:` the run event's sequence, so a client that reconnects with
`Last-Event-ID` (EventSource does it by itself) continues after the last event it got. The
stream always ends with an `event: status` whose data is a google.rpc.Status: code 0 when
the RPC ended normally (close the EventSource then, or it reconnects), the error otherwise;
UNAVAILABLE (a replica draining) means: reconnect with Last-Event-ID. Comments (`: ...`) keep
idle connections open through proxies.

An error raised before the first event (a bad request, a refused token, an unknown run) is
answered as a plain HTTP error with its Status JSON instead, when it comes within
FIRST_EVENT_GRACE; after that the stream is committed to 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import status_pb2  # type: ignore[import-untyped]

from .dispatch import CallContext
from .errors import call_status, status_json, status_response
from .transcode import dumps

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/event-stream"
# The request field a Last-Event-ID header sets, in the requests that have one (Watch).
CURSOR_FIELD = "after_sequence"
STATUS_EVENT = "status"
HEARTBEAT_SECONDS = 15.0
# How long the HTTP status waits for the first event (errors come at once in practice).
FIRST_EVENT_GRACE = 0.5
RECONNECT_MILLISECONDS = 1000
# Responses buffered between the call and a slow client.
QUEUE_SIZE = 16
OK = status_pb2.Status(code=0, message="OK")


def last_event_id(headers: Mapping[str, str]) -> int | None:
    """The sequence a reconnecting client last saw. Raises ValueError when it is not one."""
    value = headers.get("Last-Event-ID")
    if value is None or not value.strip():
        return None
    sequence = int(value.strip())
    if sequence < 0:
        raise ValueError("negative")
    return sequence


def sequence_of(message: Message) -> int | None:
    """The event sequence a streamed response carries: its own `sequence` field, or that of
    a message it holds (the RunEvent in a WatchResponse)."""
    fields = message.DESCRIPTOR.fields_by_name
    if "sequence" in fields:
        value = getattr(message, "sequence")  # noqa: B009 - not every Message has it
        return value if isinstance(value, int) else None
    for field, value in message.ListFields():
        if field.message_type is not None and not field.is_repeated:
            found = sequence_of(value)
            if found is not None:
                return found
    return None


def frame(data: bytes, *, event_id: int | None = None, name: str | None = None) -> bytes:
    """One SSE event. `data` is compact JSON, so it is a single line."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


def status_frame(status: status_pb2.Status) -> bytes:
    return frame(status_json(status), name=STATUS_EVENT)


@dataclass(frozen=True)
class _Ended:
    """The call's responses ran out (error None) or it raised `error`."""

    error: BaseException | None


class EventStream:
    """Relays one streaming call's responses to an HTTP client as SSE.

    The call's generator runs in a task of its own, from first response to last (the
    interceptors' context managers span it, so it must not hop between tasks), and hands
    its responses over through a small queue: a slow client holds the call back."""

    def __init__(
        self,
        request: web.Request,
        responses: AsyncGenerator[Message, None],
        context: CallContext,
        render: Callable[[Message], Any],
        *,
        skip_through: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._request = request
        self._responses = responses
        self._context = context
        self._render = render
        self._skip_through = skip_through
        self._headers = dict(headers or {})
        self._queue: asyncio.Queue[Message | _Ended] = asyncio.Queue(maxsize=QUEUE_SIZE)

    async def serve(self) -> web.StreamResponse:
        pump = asyncio.create_task(self._pump(), name="stepline-http-stream")
        try:
            return await self._serve()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self) -> None:
        try:
            async with contextlib.aclosing(self._responses) as responses:
                async for message in responses:
                    await self._queue.put(message)
        except Exception as error:  # AbortError (a status) or a bug: the stream's end
            await self._queue.put(_Ended(error))
        else:
            await self._queue.put(_Ended(None))

    async def _next(self, timeout: float) -> Message | _Ended | None:
        """The next response or end; None when nothing came within `timeout`."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _serve(self) -> web.StreamResponse:
        first = await self._next(FIRST_EVENT_GRACE)
        if isinstance(first, _Ended) and first.error is not None:
            return status_response(self._ended(first), headers=self._headers)
        response = web.StreamResponse(
            status=200,
            headers={
                **self._headers,
                "Content-Type": f"{CONTENT_TYPE}; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: don't buffer the stream
            },
        )
        await response.prepare(self._request)
        with contextlib.suppress(ConnectionResetError):  # the client left: nothing to tell
            await response.write(b"retry: %d\n\n" % RECONNECT_MILLISECONDS)
            await response.write(status_frame(await self._relay(response, first)))
            await response.write_eof()
        return response

    def _ended(self, end: _Ended) -> status_pb2.Status:
        """The status a stream ended with."""
        if end.error is None:
            return OK
        if isinstance(end.error, grpc.aio.AbortError) and self._context.status is not None:
            return self._context.status
        log.error("streaming call failed", exc_info=end.error)
        return call_status(grpc.StatusCode.INTERNAL, "internal error")

    async def _relay(
        self, response: web.StreamResponse, item: Message | _Ended | None
    ) -> status_pb2.Status:
        """Write every response as an event, starting with `item`; the status the stream
        ended with."""
        while True:
            if isinstance(item, _Ended):
                return self._ended(item)
            if item is not None:
                sequence = sequence_of(item)
                if sequence is None or sequence > self._skip_through:
                    await response.write(frame(dumps(self._render(item)), event_id=sequence))
            remaining = self._context.time_remaining()
            if remaining is not None and remaining <= 0:
                return call_status(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            wait = HEARTBEAT_SECONDS if remaining is None else min(HEARTBEAT_SECONDS, remaining)
            item = await self._next(wait)
            if item is None:
                await response.write(b": keep-alive\n\n")
