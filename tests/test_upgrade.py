"""Upgrades lose nothing: a Redis written by an earlier release keeps working.

tests/fixtures/redis-v1/ holds a dump written by the release before the run journal v2
(how: tests/fixtures/make_redis_fixture.py; which runs: its manifest.json). This test loads it
into a private redis-server, serves it with the current code (`stepline serve`, a real
process, serving tests/upgrade_flows.py as the old release did) and checks, as a client would,
that every stored run reads back as it was and that the unfinished ones carry on: the
suspended ones resume, the sleeping one wakes, the one whose replica died mid-step is
recovered, the queued one runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepline.client import Client, EventType, RunResult, RunStatus, StepStatus
from tests.processes import Launcher, start_redis, stop_process

pytestmark = pytest.mark.timeout(90)

FIXTURE = Path(__file__).parent / "fixtures" / "redis-v1"
MANIFEST: dict[str, Any] = json.loads((FIXTURE / "manifest.json").read_text())
SETTLE_SECONDS = 30.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The fixture's dump in a private redis-server, served by one current replica."""
    data = tmp_path / "redis"
    data.mkdir()
    shutil.copy(FIXTURE / "dump.rdb", data / "dump.rdb")
    process, port = start_redis(data)
    launcher = Launcher(tmp_path)
    try:
        replica = launcher(
            "--redis-url", f"redis://127.0.0.1:{port}/0",
            "--workflows", MANIFEST["workflows"],
            "--lease-ttl", "1.5",
        )  # fmt: skip
        yield replica.target
    finally:
        launcher.stop_all()
        stop_process(process)


@pytest.fixture
async def client(served: str) -> AsyncIterator[Client]:
    async with await Client.connect(served) as connected:
        yield connected


async def settled(client: Client, run_id: str) -> RunResult:
    """The run once it is finished or suspended (bounded wait)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = await client.get_result(run_id)
        if result.status.finished or result.status is RunStatus.SUSPENDED:
            return result
        assert time.monotonic() < deadline, f"{run_id} still {result.status} after upgrade"
        await asyncio.sleep(0.05)


async def test_finished_runs_read_back_as_they_were(client: Client) -> None:
    success = await client.get_result("v1-success")
    assert success.status is RunStatus.SUCCESS
    assert success.result == {"value": 36}
    assert success.step_execution_path == ("add_one", "double", "square")
    assert set(success.steps) == {"add_one", "double", "square"}
    assert success.steps["double"].payload == {"value": 3}
    assert success.steps["double"].output == {"value": 6}

    failed = await client.get_result("v1-failed")
    assert failed.status is RunStatus.FAILED
    assert failed.error is not None and "refused 2" in failed.error.message

    canceled = await client.get_result("v1-canceled")
    assert canceled.status is RunStatus.CANCELED

    big = await client.get_result("v1-bigforeach")
    assert big.status is RunStatus.SUCCESS
    assert big.result == [{"value": v * 10} for v in range(0, 100, 2)]

    events = [event async for event in client.watch("v1-success")]
    assert events[0].type is EventType.WORKFLOW_START
    assert events[-1].type is EventType.WORKFLOW_FINISH
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    tail = [event async for event in client.watch("v1-success", after_sequence=len(events) - 1)]
    assert [e.sequence for e in tail] == [len(events)]


async def test_listing_and_idempotent_start_see_old_runs(client: Client) -> None:
    page = await client.list_runs(page_size=100)
    listed = {run.run_id: run.status for run in page.runs}
    for run in MANIFEST["runs"]:
        assert run["run_id"] in listed
    by_workflow = await client.list_runs(workflow_id="up_fanout")
    assert {run.run_id for run in by_workflow.runs} == {"v1-bigforeach", "v1-foreach"}
    again = await client.start("up_chain", {"value": 2}, run_id="v1-success", request_id="req-1")
    assert again.run_id == "v1-success" and again.result == {"value": 36}


async def test_suspended_runs_resume(client: Client) -> None:
    suspended = await client.get_result("v1-suspended")
    assert suspended.status is RunStatus.SUSPENDED
    assert [s.payload for s in suspended.suspended] == [{"asked": 5}]
    done = await client.resume("v1-suspended", {"approved": True}, label="gate")
    assert done.status is RunStatus.SUCCESS and done.result == {"value": 10}

    foreach = await client.get_result("v1-foreach")
    assert foreach.status is RunStatus.SUSPENDED
    await client.resume("v1-foreach", {"approved": True}, label="item-1")
    done = await client.resume("v1-foreach", {"approved": True}, label="item-3")
    assert done.status is RunStatus.SUCCESS
    assert done.result == [{"value": 10}, {"value": 20}, {"value": 30}, {"value": 40}]

    nested = await client.get_result("v1-nested")
    assert nested.status is RunStatus.SUSPENDED
    assert [list(s.path) for s in nested.suspended] == [["up_inner", "gate"]]
    done = await client.resume("v1-nested", {"approved": True}, step=["up_inner", "gate"])
    assert done.status is RunStatus.SUCCESS and done.result == {"value": 18}


async def test_unfinished_runs_carry_on(client: Client) -> None:
    sleeping = await settled(client, "v1-sleeping")
    assert sleeping.status is RunStatus.SUCCESS and sleeping.result == {"value": 4}

    midstep = await settled(client, "v1-midstep")
    assert midstep.status is RunStatus.SUCCESS and midstep.result == {"value": 204}
    # The step recorded before the crash is kept, not run again.
    assert midstep.steps["add_one"].status is StepStatus.SUCCESS
    assert midstep.steps["add_one"].attempts == 1

    pending = await settled(client, "v1-pending")
    assert pending.status is RunStatus.SUCCESS and pending.result == {"value": 16}

    canceled = await client.get_result("v1-canceled")
    assert canceled.status is RunStatus.CANCELED
