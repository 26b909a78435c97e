"""Shared fixtures: a real `redis-server` for the session, and a fresh store of each kind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stepline.server.runs import RunService
from stepline.server.store import MemoryStore, RedisStore, Store
from stepline.server.worker import Worker
from tests.engine_harness import Engine, registry

_STARTUP_SECONDS = 10.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private `redis-server` on a free loopback port, without persistence; yields its URL.

    Skips the tests that use it when the binary is missing, unless STEPLINE_REQUIRE_REDIS=1."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("STEPLINE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and STEPLINE_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH (set STEPLINE_REQUIRE_REDIS=1 to fail instead)")
    workdir = tmp_path_factory.mktemp("redis")
    # Another process may take the free port before redis binds it; try a few.
    for _attempt in range(3):
        port = _free_port()
        process = _start(binary, port, workdir)
        if _wait_ready(process, port):
            break
        _stop(process)
    else:
        pytest.fail(f"redis-server did not start; see {workdir / 'redis.log'}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    command = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + _STARTUP_SECONDS
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
async def engine(store: Store) -> AsyncIterator[Engine]:
    """RunService + Worker over the `store` fixture, serving tests/flows.py."""
    reg = registry()
    worker = Worker(store, reg, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    yield Engine(RunService(store, reg, cancel_wait=3.0), worker, store)
    await worker.stop(grace=1.0)
