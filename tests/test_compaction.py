"""Compaction of finished runs in Redis (layout 4): housekeeping folds a finished run into its
header fields and one deflated blob, and every reader sees the run as it was; a write to it
(time travel) gets the whole log back first. Through a real server on a real redis-server,
except the race with a write, which needs the store itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from stepline.client import Client, CursorExpired, RunEvent, RunResult, RunStatus
from stepline.server import worker
from stepline.server.app import Server, open_store
from stepline.server.events import Event, EventType, WorkflowFinish
from stepline.server.model import RunStatus as Status
from stepline.server.model import Snapshot
from stepline.server.settings import Settings
from stepline.server.store import RedisStore, scripts
from stepline.server.store.keys import Keys
from tests.ops_support import eventually_async

BOUND = 10.0
RETENTION = 3600.0
KEPT_EVENTS = 10


@dataclass
class Deployment:
    client: Client
    redis: Redis
    keys: Keys

    async def layout(self, run_id: str) -> str | None:
        layout = await self.redis.hget(self.keys.run(run_id), "layout")
        return None if layout is None else str(layout)

    async def compacted(self, run_id: str) -> None:
        """Wait until housekeeping has compacted the run (bounded)."""

        async def done() -> bool:
            return await self.layout(run_id) == scripts.COMPACTED

        await eventually_async(done)

    async def run_keys(self, run_id: str) -> set[str]:
        pattern = self.keys.run(run_id).replace("{", "[{]").replace("}", "[}]") + "*"
        return {key async for key in self.redis.scan_iter(match=pattern)}


async def _deployment(redis_url: str, **settings: Any) -> AsyncIterator[Deployment]:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    config = Settings(
        host="127.0.0.1",
        port=0,
        workflows=["tests.flows"],
        redis_url=redis_url,
        redis_prefix=prefix,
        **settings,
    )
    server = await Server.start(config, store=open_store(config))
    client = await Client.connect(server.target)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield Deployment(client, redis, Keys(prefix))
    finally:
        await client.close()
        await server.stop(grace=1)
        await redis.aclose()


@pytest.fixture(autouse=True)
def quick_housekeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Housekeeping rounds every 0.1 s, compacting runs as soon as they finish."""
    monkeypatch.setattr(worker, "HOUSEKEEPING_INTERVAL", 0.1)
    monkeypatch.setattr(worker, "COMPACT_AFTER", 0.0)


@pytest.fixture
async def kept(redis_server: str) -> AsyncIterator[Deployment]:
    """A server whose finished runs are kept RETENTION seconds."""
    async for deployment in _deployment(redis_server, run_retention=RETENTION):
        yield deployment


@pytest.fixture
async def trimmed(redis_server: str) -> AsyncIterator[Deployment]:
    """A server that keeps KEPT_EVENTS events per run."""
    async for deployment in _deployment(redis_server, max_events_per_run=KEPT_EVENTS):
        yield deployment


async def _watch(client: Client, run_id: str, after: int = 0) -> list[RunEvent]:
    return [event async for event in client.watch(run_id, after_sequence=after, reconnect=False)]


async def _seen(client: Client, run: RunResult) -> tuple[Any, ...]:
    """Everything a user reads about a finished run."""
    result = await client.get_result(run.run_id, include_state=True)
    rows = [row for row in (await client.list_runs()).runs if row.run_id == run.run_id]
    middle = run.last_sequence // 2
    return result, rows, await _watch(client, run.run_id), await _watch(client, run.run_id, middle)


@pytest.mark.parametrize(
    ("workflow", "data"),
    [("sequence", {"value": 1}), ("fanout", {"items": [1, 2, 3]}), ("failing", {"value": 1})],
)
async def test_a_compacted_run_reads_back_as_it_was(
    kept: Deployment, workflow: str, data: dict[str, Any]
) -> None:
    run = await kept.client.start(workflow, data, timeout=BOUND)
    assert run.status.finished
    before = await _seen(kept.client, run)

    await kept.compacted(run.run_id)

    assert await _seen(kept.client, run) == before
    header, blob = kept.keys.run(run.run_id), kept.keys.blob(run.run_id)
    assert await kept.run_keys(run.run_id) == {header, blob}
    # The blob expires with the run: at the same instant (read as expiry times, not as two
    # time-to-live readings taken a moment apart).
    expires = await kept.redis.pexpiretime(header)
    assert expires > 0
    assert await kept.redis.pexpiretime(blob) == expires
    # A watch from the last event ends at once: nothing follows a finished run.
    assert await _watch(kept.client, run.run_id, run.last_sequence) == []


async def test_time_travel_of_a_compacted_run_keeps_its_whole_log(kept: Deployment) -> None:
    run = await kept.client.start("sequence", {"value": 1}, timeout=BOUND)
    before = await _watch(kept.client, run.run_id)
    await kept.compacted(run.run_id)

    again = await kept.client.time_travel(run.run_id, "double", timeout=BOUND)

    assert again.status is RunStatus.SUCCESS
    assert again.result == run.result
    log = await _watch(kept.client, run.run_id)
    assert [event.sequence for event in log] == list(range(1, again.last_sequence + 1))
    assert log[: len(before)] == before
    assert again.last_sequence > run.last_sequence
    # Finished again, it is compacted again, and still reads the same.
    await kept.compacted(run.run_id)
    assert await _watch(kept.client, run.run_id) == log


async def test_a_start_with_the_request_id_of_a_compacted_run_returns_that_run(
    kept: Deployment,
) -> None:
    first = await kept.client.start("sequence", {"value": 1}, request_id="req", timeout=BOUND)
    await kept.compacted(first.run_id)

    retry = await kept.client.start_async("sequence", {"value": 1}, request_id="req")

    assert (retry.run_id, retry.created) == (first.run_id, False)
    assert (await kept.client.get_result(first.run_id)).result == first.result


async def test_deleting_a_compacted_run_leaves_no_key(kept: Deployment) -> None:
    run = await kept.client.start("fanout", {"items": [1, 2]}, timeout=BOUND)
    await kept.compacted(run.run_id)

    await kept.client.delete_run(run.run_id)

    assert await kept.run_keys(run.run_id) == set()
    assert run.run_id not in [row.run_id for row in (await kept.client.list_runs()).runs]


async def test_a_compacted_trimmed_log_keeps_its_first_sequence(trimmed: Deployment) -> None:
    run = await trimmed.client.start("fanout", {"items": list(range(8))}, timeout=BOUND)
    assert run.last_sequence > KEPT_EVENTS
    first_kept = run.last_sequence - KEPT_EVENTS + 1
    await trimmed.compacted(run.run_id)

    with pytest.raises(CursorExpired) as expired:
        await _watch(trimmed.client, run.run_id)
    assert expired.value.code is grpc.StatusCode.OUT_OF_RANGE
    assert str(first_kept) in expired.value.message
    replayed = await _watch(trimmed.client, run.run_id, first_kept - 1)
    assert [event.sequence for event in replayed] == list(range(first_kept, run.last_sequence + 1))


async def test_a_run_written_during_its_compaction_is_left_as_written(
    redis_server: str,
) -> None:
    """A write that lands between compaction's read and its script wins: the run keeps the
    write, in layout 2, until a later round compacts what it wrote."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore.from_url(redis_server, prefix=prefix)
    redis = Redis.from_url(redis_server, decode_responses=True)
    header = Keys(prefix).run("r")
    try:
        snapshot = Snapshot(run_id="r", workflow_id="wf", input={"value": 1})
        await store.create(snapshot)
        snapshot.status = Status.SUCCESS
        finish = Event(data=WorkflowFinish(status=Status.SUCCESS))
        written = await store.write(snapshot, [finish], expected_version=1)
        pipeline = store._pipeline

        async def racing(commands: list[list[Any]]) -> list[Any]:
            replies = await pipeline(commands)
            if any(store._compact_read.sha in command for command in commands):
                snapshot.result = {"value": 2}
                await store.write(snapshot, expected_version=written.version)
            return replies

        store._pipeline = racing  # type: ignore[method-assign]
        assert await store.compact_finished(time.time()) == 1
        store._pipeline = pipeline  # type: ignore[method-assign]
        assert await redis.hget(header, "layout") == scripts.LAYOUT

        # Its second finish put it back in line.
        assert await store.compact_finished(time.time()) == 1
        assert await redis.hget(header, "layout") == scripts.COMPACTED
        stored = await store.get("r")
        assert stored is not None
        assert stored.snapshot.result == {"value": 2}
        assert stored.version == written.version + 1
        events = await store.read_events("r", 0)
        assert [(event.sequence, event.type) for event in events] == [
            (1, EventType.WORKFLOW_FINISH)
        ]
    finally:
        await store.close()
        await redis.aclose()
