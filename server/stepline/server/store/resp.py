"""A pipelining Redis connection for the store's short commands.

Commands go out on one connection and their replies come back in order. With nothing on the
wire, what was asked for during one event-loop iteration leaves in one socket write; while
writes are in flight, new commands are held until replies come in and then leave together.
So under load many runs' transitions cost one system call and one Redis read per round trip
instead of one each, and an idle replica still sends at once. Replies are parsed by hiredis.
Blocking reads (XREAD BLOCK, XREADGROUP BLOCK, pub/sub) hold a connection for their whole
wait, so they stay on redis-py's blocking pool; this connection never blocks.

Failures use redis-py's exception types, so the store maps them as it maps redis-py's: a lost
or refused connection is `ConnectionError`, a command unanswered for `command_timeout`
seconds is `TimeoutError` (the connection is then dropped, failing everything in flight on
it), and an error reply is a `ResponseError` (or its NOSCRIPT / READONLY / OOM subclass),
returned in place by `pipeline`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

__all__ = ["Arg", "Pipelined"]

Arg = str | bytes | int | float

_ERRORS: dict[str, type[redis_errors.ResponseError]] = {
    "NOSCRIPT": redis_errors.NoScriptError,
    "READONLY": redis_errors.ReadOnlyError,
    "OOM": redis_errors.OutOfMemoryError,
}


def _pack(command: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, bool):
            raise TypeError("a Redis argument can't be a bool")
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _reply(value: Any) -> Any:
    """hiredis hands an error reply back as a ResponseError; give it its precise type, in a
    reply or directly inside one (EXEC's replies). Deeper arrays are script results, which
    are walked no further: a run's whole records can be thousands of strings."""
    if isinstance(value, list):
        return [
            _error(item) if isinstance(item, redis_errors.ResponseError) else item for item in value
        ]
    return _error(value) if isinstance(value, redis_errors.ResponseError) else value


def _error(error: redis_errors.ResponseError) -> redis_errors.ResponseError:
    message = str(error)
    kind = _ERRORS.get(message.split(" ", 1)[0])
    return kind(message) if kind is not None else error


@dataclass
class _Batch:
    """Commands sent together, answered by one future once all their replies are in."""

    future: asyncio.Future[list[Any]]
    expected: int
    sent_at: float
    replies: list[Any] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: Pipelined) -> None:
        self._owner = owner
        # A compacted run's blob is binary: its bytes that are not UTF-8 come back as lone
        # surrogates, and `str.encode("utf-8", "surrogateescape")` gives the bytes back.
        self._reader = hiredis.Reader(
            encoding="utf-8", errors="surrogateescape", replyError=redis_errors.ResponseError
        )

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        owner = self._owner
        pending = owner._pending
        while (reply := self._reader.gets()) is not False:
            if not pending:
                continue  # nothing waits for it (cannot happen on a healthy connection)
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                pending.popleft()
                owner._sent -= 1
                if not batch.future.done():
                    batch.future.set_result(batch.replies)
        # Replies are coming in: send what was held back meanwhile, in one write.
        owner._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._owner._protocol is self:  # not a connection already given up on
            self._owner._lost(redis_errors.ConnectionError(f"redis closed the connection: {exc}"))


class Pipelined:
    """One auto-pipelined connection (opened on first use, reopened after a failure)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: collections.deque[_Batch] = collections.deque()
        self._outbox: list[bytes] = []
        # Batches in the outbox, and batches written and not fully answered yet.
        self._held = 0
        self._sent = 0
        self._flush_scheduled = False
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    def like(cls, client: Redis, *, command_timeout: float) -> Pipelined:
        """A connection to the server `client` talks to, with its credentials and database."""
        pool = client.connection_pool
        options = pool.connection_kwargs
        context: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):
            context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            context.check_hostname = bool(options.get("ssl_check_hostname", True))
            if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if options.get("ssl_certfile"):
                context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
        unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        return cls(
            host=str(options.get("host", "127.0.0.1")),
            port=int(options.get("port", 6379)),
            path=str(options["path"]) if unix else None,
            db=int(options.get("db", 0) or 0),
            username=options.get("username"),
            password=options.get("password"),
            ssl_context=context,
            connect_timeout=float(options.get("socket_connect_timeout") or 2.0),
            command_timeout=command_timeout,
        )

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send `commands` back to back (nothing else comes between them on the wire) and
        return their replies in order, error replies in place."""
        if not commands:
            return []
        if self._transport is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), len(commands), loop.time())
        self._pending.append(batch)
        self._outbox.extend(_pack(command) for command in commands)
        self._held += 1
        # With nothing on the wire, send at the end of this loop iteration; otherwise hold
        # on until replies come in (`data_received` sends then), so that under load one
        # write carries everything asked for during a round trip.
        if self._sent == 0 and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._watch is None:
            self._watch = loop.call_later(self._command_timeout, self._check_progress)
        return [_reply(reply) for reply in await batch.future]

    async def close(self) -> None:
        """Close the connection, failing what is in flight on it. Like a redis-py client
        after `aclose()`, a later command opens a new one."""
        if self._transport is not None:
            self._transport.close()
        self._lost(redis_errors.ConnectionError("the connection was closed"))

    # -- internals ---------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox and self._transport is not None:
            data = b"".join(self._outbox)
            self._outbox.clear()
            self._sent += self._held
            self._held = 0
            self._transport.write(data)

    def _check_progress(self) -> None:
        """Drop the connection when its oldest command has waited past the timeout."""
        self._watch = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._pending[0].sent_at
        if waited >= self._command_timeout:
            transport = self._transport
            self._lost(redis_errors.TimeoutError("redis did not answer in time"))
            if transport is not None:
                transport.abort()
            return
        self._watch = loop.call_later(self._command_timeout - waited, self._check_progress)

    def _lost(self, error: Exception) -> None:
        self._transport = None
        self._protocol = None
        self._outbox.clear()
        self._held = self._sent = 0
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    transport, protocol = await loop.create_unix_connection(
                        lambda: _Protocol(self), self._path, ssl=self._ssl
                    )
                else:
                    transport, protocol = await loop.create_connection(
                        lambda: _Protocol(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
        except (OSError, TimeoutError) as err:
            raise redis_errors.ConnectionError(f"cannot connect to redis: {err}") from err
        self._transport, self._protocol = transport, protocol
        setup: list[list[Arg]] = []
        if self._password is not None:
            auth: list[Arg] = ["AUTH"]
            if self._username:
                auth.append(self._username)
            setup.append([*auth, self._password])
        if self._db:
            setup.append(["SELECT", self._db])
        for reply in await self.pipeline(setup):
            if isinstance(reply, Exception):
                self._transport = self._protocol = None
                transport.close()
                raise redis_errors.ConnectionError(f"redis refused the connection: {reply}")
