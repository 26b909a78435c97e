"""Shared fixtures: a real `redis-server` for the session, and a fresh store of each kind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from stepline.server.runs import RunService
from stepline.server.store import MemoryStore, RedisStore, Store
from stepline.server.worker import Worker
from tests.engine_harness import Engine, registry
from tests.processes import start_redis, stop_process


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private `redis-server` on a free loopback port, without persistence; yields its URL.

    Skips the tests that use it when the binary is missing, unless STEPLINE_REQUIRE_REDIS=1."""
    process, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store; the Redis one has its own key prefix and a flushed database."""
    if request.param == "memory":
        memory = MemoryStore()
        yield memory
        await memory.close()
        return
    url: str = request.getfixturevalue("redis_server")
    admin = Redis.from_url(url)
    await admin.flushdb()
    redis_store = RedisStore.from_url(url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield redis_store
    finally:
        await redis_store.close()
        await admin.flushdb()
        await admin.aclose()


@pytest.fixture(params=["local", "queued"])
async def engine(store: Store, request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """RunService + Worker over the `store` fixture, serving tests/flows.py. `local`: runs
    started or resumed through the service execute on its worker at once, as in the server;
    `queued`: every run goes through the store's queue, as when the replica is full."""
    reg = registry()
    worker = Worker(store, reg, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    runner = worker if request.param == "local" else None
    yield Engine(RunService(store, reg, cancel_wait=3.0, runner=runner), worker, store)
    await worker.stop(grace=1.0)
