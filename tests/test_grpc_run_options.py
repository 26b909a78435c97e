"""Options a run remembers, through gRPC on both stores: `output_options.include_state` given
on any request that starts or continues a run, and the request context, tracing options and
output options of a Restart."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from stepline.client import Client, EventType, InvalidArgument, RunEvent, RunStatus
from stepline.server.events import Event, StepStart, WorkflowStart
from stepline.server.model import RunStatus as EngineStatus
from stepline.server.model import Snapshot, StepRecord, StepStatus, now
from stepline.server.store import Store

# Imported fixtures are registered under their `name=`s: server, client.
from tests.grpc_harness import (  # noqa: F401
    BOUND,
    client_fixture,
    collect,
    server_fixture,
    settled,
)

# -- include_state is remembered -----------------------------------------------------------------


def finishes(events: list[RunEvent]) -> list[RunEvent]:
    return [event for event in events if event.is_finish]


async def full_log(client: Client, run_id: str) -> list[RunEvent]:
    return await collect(client.watch(run_id, keep_open_on_suspend=False))


async def test_start_async_include_state_is_kept_for_later_reads(client: Client) -> None:
    started = await client.start_async(
        "stateful", {"value": 3}, initial_state={"count": 10}, include_state=True
    )
    parked = await settled(client, started.run_id)  # asks for nothing
    assert parked.status is RunStatus.SUSPENDED
    assert parked.state == {"count": 13}
    [finish] = finishes(await full_log(client, started.run_id))
    assert finish.data["state"] == {"count": 13}

    # Later requests that do not ask for it still get it: the run remembers.
    resumed = await client.resume(started.run_id, {"ok": True})
    assert resumed.status is RunStatus.SUCCESS and resumed.state == {"count": 13}
    assert [f.data.get("state") for f in finishes(await full_log(client, started.run_id))] == [
        {"count": 13},
        {"count": 13},
    ]

    plain = await client.start_async("stateful", {"value": 1})
    assert (await settled(client, plain.run_id)).state is None
    [plain_finish] = finishes(await full_log(client, plain.run_id))
    assert "state" not in plain_finish.data


Remembering = Callable[[Client], Awaitable[str]]


async def _start(client: Client) -> str:
    return (await client.start("stateful", {"value": 2}, include_state=True)).run_id


async def _stream(client: Client) -> str:
    events = await collect(client.stream("stateful", {"value": 2}, include_state=True))
    assert events[-1].is_finish and events[-1].data["state"] == {"count": 2}
    return events[-1].run_id


async def _parked(client: Client) -> str:
    run = await client.start("stateful", {"value": 2})
    assert run.status is RunStatus.SUSPENDED and run.state is None
    return run.run_id


async def _resume(client: Client) -> str:
    run_id = await _parked(client)
    await client.resume(run_id, {"ok": True}, include_state=True)
    return run_id


async def _resume_async(client: Client) -> str:
    run_id = await _parked(client)
    await client.resume_async(run_id, {"ok": True}, include_state=True)
    return run_id


async def _resume_stream(client: Client) -> str:
    run_id = await _parked(client)
    await collect(client.resume_stream(run_id, {"ok": True}, include_state=True))
    return run_id


async def _time_travel(client: Client) -> str:
    run_id = await _parked(client)
    await client.time_travel(run_id, "count_up", include_state=True)
    return run_id


async def _time_travel_stream(client: Client) -> str:
    run_id = await _parked(client)
    await collect(client.time_travel_stream(run_id, "count_up", include_state=True))
    return run_id


REMEMBERING: dict[str, Remembering] = {
    "start": _start,
    "stream": _stream,
    "resume": _resume,
    "resume_async": _resume_async,
    "resume_stream": _resume_stream,
    "time_travel": _time_travel,
    "time_travel_stream": _time_travel_stream,
}


@pytest.mark.parametrize("how", sorted(REMEMBERING))
async def test_every_request_that_runs_a_run_remembers_include_state(
    client: Client, how: str
) -> None:
    run_id = await REMEMBERING[how](client)
    done = await settled(client, run_id)
    state = (await client.get_result(run_id, include_state=True)).state
    assert state is not None and state["count"] >= 2
    assert done.state == state  # GetExecutionResult without include_state
    last_finish = finishes(await full_log(client, run_id))[-1]
    assert last_finish.data["state"] == state


# -- Restart takes request context, tracing and output options ------------------------------------


async def orphan(store: Store, workflow_id: str, data: Any, **fields: Any) -> str:
    """A run whose replica died inside its first step: RUNNING, unheld, and not yet due for
    recovery (its watchdog deadline is the dead lease's, well after the test)."""
    run_id = uuid.uuid4().hex
    snap = Snapshot(run_id=run_id, workflow_id=workflow_id, input=data, **fields)
    created = await store.create(snap, lease_owner="dead-replica", lease_ttl=3 * BOUND)
    assert created.lease is not None
    first = "count_up"
    snap.status = EngineStatus.RUNNING
    snap.steps[first] = StepRecord(status=StepStatus.RUNNING, payload=data, started_at=now())
    snap.active_steps[first] = [0]
    snap.step_execution_path = [first]
    events = [
        Event(data=WorkflowStart(workflow_id=workflow_id, reason="start")),
        Event(data=StepStart(step_id=first, payload=data)),
    ]
    await store.write(snap, events, fence=created.lease.fence)
    await store.release(run_id, created.lease.fence)
    return run_id


async def test_restart_applies_request_context_tracing_and_output_options(
    client: Client, store: Store
) -> None:
    run_id = await orphan(
        store,
        "stateful",
        {"value": 5},
        request_context={"tenant": "a", "region": "eu"},
        trace_id="0" * 31 + "1",
        trace_metadata={"origin": "first"},
    )

    restarted = await client.restart(
        run_id,
        request_context={"tenant": "b"},
        trace_id="abc",
        trace_metadata={"origin": "restart"},
        include_state=True,
    )

    assert restarted.status is RunStatus.SUSPENDED  # count_up re-ran; report suspended
    assert restarted.state == {"count": 5}
    assert restarted.trace_id == "0" * 29 + "abc"
    stored = await store.get(run_id)
    assert stored is not None and stored.snapshot.trace_metadata == {"origin": "restart"}
    log = await full_log(client, run_id)
    assert [e.data["reason"] for e in log if e.type is EventType.WORKFLOW_START] == [
        "start",
        "restart",
    ]
    # Remembered: the finish of the re-drive and every later read carry the state.
    assert finishes(log)[-1].data["state"] == {"count": 5}
    done = await client.resume(run_id, {"ok": True})
    assert done.status is RunStatus.SUCCESS and done.state == {"count": 5}
    assert done.result is not None
    assert done.result["context"] == {"tenant": "b", "region": "eu", "seen_by": "count_up"}


async def test_restart_with_a_bad_trace_id_changes_nothing(client: Client, store: Store) -> None:
    run_id = await orphan(store, "stateful", {"value": 1})
    before = await client.get_result(run_id)

    with pytest.raises(InvalidArgument) as info:
        await client.restart(run_id, trace_id="xyz")

    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in info.value.violations] == ["tracing_options.trace_id"]
    assert "tracing_options.trace_id" in str(info.value)
    assert await client.get_result(run_id) == before
