"""The Redis store: a few hashes and one stream per run, Lua scripts for every guarded change.

Layout (names in `keys.py`; docs/storage.md): the run hash holds the snapshot JSON without its
records and the store fields (`ver`, `seq`, `fence`, lease, `cancel`, `layout`, `ikeys`); step
records are a hash of their own, and each foreach's iterations another; the run's event
stream has entry ids `0-<sequence>`, so a cursor is a stream id; a finished run is compacted
by housekeeping into its header fields and one deflated blob; sorted sets index runs by
created_at; a stream with one consumer group is the work queue; a pub/sub channel carries
cancel requests.

`RedisStore` is composed of one part per concern, all sharing one `RedisCore` (clients, keys,
scripts, the pipelined round trip):
- `redis_runs.py`: run operations (create, get, write, lease, cancel, delete, events);
- `redis_compaction.py`: compacting finished runs (layout 4) and expanding them again;
- `redis_queue.py`: the work queue (enqueue, dequeue, ack, depth, reclaim);
- `redis_timers.py`: timers and recovery (fire_timers, recover, sweep_expired);
- `redis_listing.py`: listing runs through the created_at indexes.
Every guarded change is one Lua script (`scripts.py`).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .redis_core import BLOCKING_CONNECTIONS
from .redis_listing import RunListing
from .redis_queue import WorkQueue
from .redis_runs import RunOperations
from .redis_timers import TimersAndRecovery

__all__ = ["RedisStore"]

# A retried script whose reply was lost would apply its write twice.
_NO_RETRY = Retry(NoBackoff(), 0)


class RedisStore(RunOperations, WorkQueue, TimersAndRecovery, RunListing):
    """A `Store` on Redis (single node, or Cluster-compatible key layout)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "stepline",
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retention: float | None = None,
        max_events: int | None = None,
    ) -> RedisStore:
        """Connect to `url` (e.g. `redis://127.0.0.1:6379/0`); `close()` closes the clients.

        `socket_timeout` bounds every command (and is the grace added to a blocking read),
        so an unreachable Redis raises `StoreUnavailable` within about that long."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": connect_timeout,
            "retry": _NO_RETRY,
        }
        client = Redis.from_url(url, socket_timeout=socket_timeout, **options)
        blocking = Redis.from_url(
            url, socket_timeout=None, max_connections=BLOCKING_CONNECTIONS, **options
        )
        store = cls(
            client,
            prefix=prefix,
            blocking_client=blocking,
            retention=retention,
            max_events=max_events,
        )
        store._owned += [client, blocking]
        return store

    @property
    def durable(self) -> bool:
        return True
