"""Retention over gRPC: finished runs are forgotten after `run_retention`, a run's log keeps
its latest `max_events_per_run` events, and a Watch from before them is OUT_OF_RANGE. Both
stores, through a real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from stepline.client import Client, CursorExpired, RunNotFound, RunStatus
from stepline.server.app import Server, open_store
from stepline.server.settings import Settings

RETENTION = 0.5
KEPT_EVENTS = 10
BOUND = 10.0


@pytest.fixture(params=["memory", "redis"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client of a server whose store keeps finished runs RETENTION seconds and
    KEPT_EVENTS events per run (the store built from the settings, as `stepline serve`
    does)."""
    redis_url = request.getfixturevalue("redis_server") if request.param == "redis" else None
    settings = Settings(
        host="127.0.0.1",
        port=0,
        workflows=["tests.flows"],
        redis_url=redis_url,
        redis_prefix=f"test-{uuid.uuid4().hex[:12]}",
        run_retention=RETENTION,
        max_events_per_run=KEPT_EVENTS,
    )
    server = await Server.start(settings, store=open_store(settings))
    connected = await Client.connect(server.target)
    try:
        yield connected
    finally:
        await connected.close()
        await server.stop(grace=1)


async def test_a_finished_run_is_gone_after_the_retention(client: Client) -> None:
    done = await client.start("sequence", {"value": 1}, timeout=BOUND)
    assert done.status is RunStatus.SUCCESS
    assert (await client.get_result(done.run_id)).result == done.result

    await asyncio.sleep(RETENTION + 0.5)

    with pytest.raises(RunNotFound):
        await client.get_result(done.run_id)
    assert done.run_id not in [row.run_id for row in (await client.list_runs()).runs]


async def test_a_watch_from_before_the_kept_events_is_out_of_range(client: Client) -> None:
    # Each foreach item adds progress events: 8 items write well over KEPT_EVENTS events.
    done = await client.start("fanout", {"items": list(range(8))}, timeout=BOUND)
    assert done.status is RunStatus.SUCCESS
    assert done.last_sequence > KEPT_EVENTS
    first_kept = done.last_sequence - KEPT_EVENTS + 1

    with pytest.raises(CursorExpired) as expired:
        async for _ in client.watch(done.run_id, reconnect=False):
            pass
    assert expired.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert str(first_kept) in expired.value.message

    replayed = [e.sequence async for e in client.watch(done.run_id, after_sequence=first_kept - 1)]
    assert replayed == list(range(first_kept, done.last_sequence + 1))


async def test_a_request_id_deduplicates_starts_while_its_run_is_kept(client: Client) -> None:
    first = await client.start("sequence", {"value": 1}, request_id="req-kept", timeout=BOUND)
    retry = await client.start_async("sequence", {"value": 1}, request_id="req-kept")
    assert (retry.run_id, retry.created) == (first.run_id, False)

    await asyncio.sleep(RETENTION + 0.5)

    later = await client.start_async("sequence", {"value": 1}, request_id="req-kept")
    assert later.created  # the first run was forgotten, and its key with it
    done = await client.get_result(later.run_id, wait=BOUND, timeout=BOUND + 2)
    assert done.status is RunStatus.SUCCESS
