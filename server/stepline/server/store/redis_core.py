"""What every part of the Redis store shares: the clients, the key names, the Lua scripts
registered on the client, and the one way a command reaches Redis.

Commands go over one auto-pipelining connection (`resp.py`): whatever the replica sends in one
event-loop iteration leaves in one write, and a command unanswered within the socket timeout
fails fast. The blocking reads (XREAD/XREADGROUP BLOCK, pub/sub) use a redis-py pool without a
socket timeout, bounded instead by an asyncio timeout of the block plus a grace period.
`reachable` turns every way of losing Redis into `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.commands.core import AsyncScript

from ..errors import StoreUnavailable
from . import scripts
from .keys import Keys
from .resp import Arg, Pipelined

__all__ = ["BLOCKING_CONNECTIONS", "RedisCore", "block_ms", "reachable", "without_socket_timeout"]

_DEFAULT_GRACE = 5.0
# Blocking reads in flight at once (each holds a connection): one per worker, one per pub/sub
# listener, and one per run being waited on or watched here (watchers of one run share it).
BLOCKING_CONNECTIONS = 5000


class RedisCore:
    """The state the parts of `RedisStore` share (one instance: they are its base classes)."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "stepline",
        blocking_client: Redis | None = None,
        retention: float | None = None,
        max_events: int | None = None,
    ) -> None:
        """Use `client` (which must decode responses; the caller keeps ownership of it).

        `blocking_client` serves BLOCK reads and pub/sub and should have no socket timeout;
        when omitted, one is made from `client`'s settings and closed by `close()`.
        `retention`: seconds a finished run is kept (None: forever); `max_events`: events kept
        per run, the oldest trimmed beyond it (None: all)."""
        options = client.connection_pool.connection_kwargs
        if not options.get("decode_responses"):
            raise ValueError("RedisStore needs a client created with decode_responses=True")
        self._keys = Keys(prefix)
        self._retention_ms = "0" if not retention else str(max(1, round(retention * 1000)))
        self._retention = retention
        self._max_events = str(max_events or 0)
        self._redis = client
        self._owned: list[Redis] = []
        if blocking_client is None:
            blocking_client = without_socket_timeout(client)
            self._owned.append(blocking_client)
        self._blocking = blocking_client
        socket_timeout = options.get("socket_timeout")
        self._grace = float(socket_timeout) if socket_timeout else _DEFAULT_GRACE
        self._create = client.register_script(scripts.CREATE)
        self._write = client.register_script(scripts.WRITE)
        self._drop_fired = client.register_script(scripts.DROP_FIRED_TIMERS)
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._read = client.register_script(scripts.READ)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)
        self._request_cancel = client.register_script(scripts.REQUEST_CANCEL)
        self._delete = client.register_script(scripts.DELETE)
        self._compact_read = client.register_script(scripts.COMPACT_READ)
        self._compact = client.register_script(scripts.COMPACT)
        self._expand = client.register_script(scripts.EXPAND)
        self._scripts = [
            self._create,
            self._write,
            self._drop_fired,
            self._acquire,
            self._read,
            self._renew,
            self._release,
            self._request_cancel,
            self._delete,
            self._compact_read,
            self._compact,
            self._expand,
        ]
        # The short commands of the run path go through one pipelining connection.
        self._fast = Pipelined.like(client, command_timeout=self._grace)

    async def close(self) -> None:
        """Close the clients this store created (not a client passed in)."""
        await self._fast.close()
        for client in self._owned:
            await client.aclose()

    def _run_keys(self, run_id: str) -> list[str]:
        return [self._keys.run(run_id), self._keys.events(run_id), self._keys.steps(run_id)]

    @staticmethod
    def _scripted(script: AsyncScript, keys: list[str], args: Sequence[Arg]) -> list[Arg]:
        """A script call by its digest alone (see `_pipeline`)."""
        return ["EVALSHA", script.sha, len(keys), *keys, *args]

    async def _pipeline(self, commands: list[list[Arg]]) -> list[Any]:
        """Send `commands` in one round trip on the pipelining connection; their replies.

        Scripts go by digest (`_scripted`); only when Redis has lost them (a restart, SCRIPT
        FLUSH) are they loaded and the commands sent again. That is safe because a script
        answered NOSCRIPT did not run, and the plain commands sent beside scripts may run
        twice (watchdog deadlines, only-if-absent index entries, a timer)."""
        for attempt in range(2):
            with reachable():
                replies = await self._fast.pipeline(commands)
            missing = any(isinstance(reply, redis_errors.NoScriptError) for reply in replies)
            if missing and attempt == 0:
                await self._pipeline(
                    [["SCRIPT", "LOAD", cast(str, script.script)] for script in self._scripts]
                )
                continue
            with reachable():
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
            return replies
        raise AssertionError("unreachable")


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Turn a lost connection, an unanswered command, a Redis that refuses writes (a
    read-only replica after failover, out of memory) or one still loading its dataset (after
    a restart) into `StoreUnavailable`."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError) as err:
        raise StoreUnavailable(f"redis is unreachable: {err or type(err).__name__}") from err
    except (redis_errors.ReadOnlyError, redis_errors.OutOfMemoryError) as err:
        raise StoreUnavailable(f"redis refused the command: {err}") from err
    except redis_errors.ResponseError as err:
        # The pipelining connection hands `-LOADING` back as a plain ResponseError.
        if str(err).startswith("LOADING"):
            raise StoreUnavailable(f"redis is not ready: {err}") from err
        raise


def block_ms(seconds: float) -> int | None:
    """XREAD's BLOCK argument: None (do not block) for <= 0, since BLOCK 0 waits forever."""
    if seconds <= 0:
        return None
    return max(1, math.ceil(seconds * 1000))


def without_socket_timeout(client: Redis) -> Redis:
    pool = client.connection_pool
    options = {**pool.connection_kwargs, "socket_timeout": None}
    return Redis.from_pool(
        ConnectionPool(
            connection_class=pool.connection_class,
            max_connections=BLOCKING_CONNECTIONS,
            **options,
        )
    )
