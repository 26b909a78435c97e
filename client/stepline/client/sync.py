"""A blocking client for code without an event loop.

Every method runs the async `Client`'s method on a private event loop in a daemon thread, so
there is one implementation of each call; event streams become plain iterators.

    with SyncClient.connect("localhost:50051") as client:
        result = client.start("greet", {"name": "Ada"})
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import grpc

from .client import Client

P = ParamSpec("P")
T = TypeVar("T")


class _End(Generic[T]):
    """Marks the end of an async iterator without sending StopAsyncIteration through a future."""


async def _next(items: AsyncIterator[T]) -> T | _End[T]:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _End()


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    @functools.wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._client, *args, **kwargs))

    return call


def _iterating(
    method: Callable[Concatenate[Client, P], AsyncIterator[T]],
) -> Callable[Concatenate[SyncClient, P], Iterator[T]]:
    @functools.wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(method(self._client, *args, **kwargs))

    return call


class SyncClient:
    """The blocking twin of `Client`: same methods and arguments, results returned directly.

    Create it with `SyncClient.connect`; close it with `close()` or a `with` block.
    """

    def __init__(
        self, client: Client, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self._client = client
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
        options: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    ) -> SyncClient:
        """Open a channel to `target`; the arguments are those of `Client.connect`."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="stepline-client", daemon=True)
        thread.start()
        connecting = Client.connect(target, token=token, tls=tls, options=options)
        try:
            client = asyncio.run_coroutine_threadsafe(connecting, loop).result()
        except BaseException:
            _stop(loop, thread)
            raise
        return cls(client, loop, thread)

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result()
        except BaseException:
            # E.g. KeyboardInterrupt while blocked: stop the call instead of leaving it running.
            future.cancel()
            raise

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        try:
            while not isinstance(item := self._run(_next(items)), _End):
                yield item
        finally:
            # An iterator abandoned early still closes its stream on the loop.
            if isinstance(items, AsyncGenerator) and self._loop.is_running():
                self._run(items.aclose())

    def close(self) -> None:
        """Close the channel and stop the private event loop. Safe to call twice."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
            self._run(self._loop.shutdown_asyncgens())
        finally:
            _stop(self._loop, self._thread)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    start = _blocking(Client.start)
    start_async = _blocking(Client.start_async)
    stream = _iterating(Client.stream)
    resume = _blocking(Client.resume)
    resume_async = _blocking(Client.resume_async)
    resume_stream = _iterating(Client.resume_stream)
    time_travel = _blocking(Client.time_travel)
    time_travel_stream = _iterating(Client.time_travel_stream)
    cancel = _blocking(Client.cancel)
    restart = _blocking(Client.restart)
    get_result = _blocking(Client.get_result)
    watch = _iterating(Client.watch)
    list_runs = _blocking(Client.list_runs)
    delete_run = _blocking(Client.delete_run)
    list_workflows = _blocking(Client.list_workflows)
    get_workflow = _blocking(Client.get_workflow)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
