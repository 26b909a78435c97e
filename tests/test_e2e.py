"""End to end: `stepline serve` started as a subprocess, exactly as a user would run it.

Each server listens on 127.0.0.1 on a free port, is ready once the standard gRPC health check
answers SERVING, and is stopped with SIGTERM (SIGKILL only if it does not exit in time). Its
stderr goes to a file under the test's tmp_path, shown when something goes wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stepline.client import Client, EventType, RunEvent, RunResult, RunStatus, StepStatus
from stepline.server import cli
from stepline.server.settings import Settings
from tests.processes import REPO_ROOT, Launcher, Replica, environment, stepline_command

TEST_SECONDS = 40.0  # whole-test deadline for the client side of each test

pytestmark = pytest.mark.timeout(60)


# -- running `stepline serve` ----------------------------------------------------------------
@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


async def _start(serve: Launcher, *flags: str) -> Replica:
    return await asyncio.to_thread(serve, *flags)


async def _stop(replica: Replica) -> tuple[int, float]:
    began = time.monotonic()
    code = await asyncio.to_thread(replica.stop)
    return code, time.monotonic() - began


async def _collect(events: AsyncIterator[RunEvent]) -> list[RunEvent]:
    return [event async for event in events]


def _assert_dense(events: Sequence[RunEvent], run_id: str) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.run_id for e in events} == {run_id}


async def _poll(
    client: Client,
    run_id: str,
    done: Callable[[RunResult], bool],
    *,
    seconds: float = 10.0,
    wait: bool = False,
) -> RunResult:
    """GetExecutionResult until `done(result)`, at most `seconds`; with `wait`, each call
    asks the server to wait (up to the time left) for the run to settle."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if wait and left > 0:
            result = await client.get_result(run_id, wait=left, timeout=left + 5)
        else:
            result = await client.get_result(run_id, timeout=5)
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


# -- 1. in-memory store, the example workflows -----------------------------------------------
async def test_embedded_store_serves_examples_and_stops_cleanly(serve: Launcher) -> None:
    replica = await _start(serve)  # no --redis-url, no --workflows
    async with asyncio.timeout(TEST_SECONDS), await Client.connect(replica.target) as client:
        workflows = {w.id for w in await client.list_workflows()}
        assert workflows == {"greet", "onboarding", "approval"}

        greeted = await client.start("greet", {"name": "Ada"}, timeout=10)
        assert greeted.status is RunStatus.SUCCESS, greeted
        assert greeted.result == {"message": "HELLO, ADA!"}

        parked = await client.start("approval", {"item": "laptop", "amount": 1200}, timeout=10)
        assert parked.status is RunStatus.SUSPENDED, parked
        assert [s.labels for s in parked.suspended] == [("review",)]
        approved = await client.resume(
            parked.run_id, {"approved": True, "reviewer": "bob"}, label="review", timeout=10
        )
        assert approved.status is RunStatus.SUCCESS, approved
        assert approved.result == {"item": "laptop", "approved": True, "reviewer": "bob"}

        events = await _collect(client.stream("greet", {"name": "Ada"}))
        assert events, "Stream yielded nothing"
        _assert_dense(events, events[0].run_id)
        assert events[0].type is EventType.WORKFLOW_START
        assert events[-1].type is EventType.WORKFLOW_FINISH
        assert events[-1].data["status"] is RunStatus.SUCCESS
        assert events[-1].data["result"] == {"message": "HELLO, ADA!"}

    async with (
        asyncio.timeout(10),
        grpc.aio.insecure_channel(replica.target) as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        services = {
            service.name
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5)
            for service in reply.list_services_response.service
        }
    assert "stepline.v1.WorkflowService" in services
    assert "grpc.health.v1.Health" in services

    code, took = await _stop(replica)
    log = replica.log
    assert code == 0, log
    assert took < 5.0, f"SIGTERM took {took:.1f}s\n{log}"
    assert "in-memory" in log, log
    assert "not durable" in log.lower(), log
    assert "stopped" in log, log


# -- 2. Redis: a suspended run outlives the process that started it -------------------------
async def test_redis_run_survives_a_server_restart(serve: Launcher, redis_server: str) -> None:
    flags = (
        "--redis-url", redis_server,
        "--redis-prefix", f"e2e-{uuid.uuid4().hex[:12]}",
        "--workflows", "tests.flows",
        "--shutdown-grace", "3",
    )  # fmt: skip
    first = await _start(serve, *flags)
    async with asyncio.timeout(TEST_SECONDS):
        async with await Client.connect(first.target) as client:
            parked = await client.start("approval", {"question": "ship it?"}, timeout=10)
        assert parked.status is RunStatus.SUSPENDED, parked
        first_pass = parked.last_sequence
        assert first_pass > 0

        code, _ = await _stop(first)
        assert code == 0, first.log
        assert "redis (durable)" in first.log, first.log

        second = await _start(serve, *flags)
        async with await Client.connect(second.target) as client:
            stored = await client.get_result(parked.run_id, timeout=5)
            assert stored.status is RunStatus.SUSPENDED, stored
            assert [(s.path, s.payload, s.labels) for s in stored.suspended] == [
                (("approve",), {"question": "ship it?"}, ("approval",))
            ]
            assert stored.steps["approve"].suspend_payload == {"question": "ship it?"}
            assert stored.last_sequence == first_pass

            done = await client.resume(
                parked.run_id, {"approved": True, "note": "lgtm"}, label="approval", timeout=10
            )
            assert done.status is RunStatus.SUCCESS, done
            assert done.result == {"approved": True, "note": "lgtm", "question": "ship it?"}
            assert done.steps["record"].status is StepStatus.SUCCESS

            events = await _collect(client.watch(parked.run_id))

    _assert_dense(events, parked.run_id)
    assert events[-1].sequence == done.last_sequence
    starts = [e for e in events if e.type is EventType.WORKFLOW_START]
    assert [e.data["reason"] for e in starts] == ["start", "resume"]
    before, after = events[:first_pass], events[first_pass:]
    assert before[0].type is EventType.WORKFLOW_START
    assert any(e.type is EventType.STEP_SUSPENDED for e in before)
    assert before[-1].type is EventType.WORKFLOW_FINISH
    assert before[-1].data["status"] is RunStatus.SUSPENDED
    assert after[0].type is EventType.WORKFLOW_START
    assert after[-1].type is EventType.WORKFLOW_FINISH
    assert after[-1].data["status"] is RunStatus.SUCCESS
    assert {e.step_id for e in after if e.type is EventType.STEP_RESULT} == {"approve", "record"}


# -- 3. two replicas on one Redis ------------------------------------------------------------
async def test_two_replicas_share_runs(serve: Launcher, redis_server: str) -> None:
    flags = (
        "--redis-url", redis_server,
        "--redis-prefix", f"e2e-{uuid.uuid4().hex[:12]}",
        "--workflows", "tests.flows",
        "--shutdown-grace", "3",
    )  # fmt: skip
    a, b = await asyncio.gather(_start(serve, *flags), _start(serve, *flags))
    assert a.target != b.target
    async with (
        asyncio.timeout(TEST_SECONDS),
        await Client.connect(a.target) as via_a,
        await Client.connect(b.target) as via_b,
    ):
        # Started through A, read and watched through B.
        started = await via_a.start_async("sequence", {"value": 3}, timeout=5)
        result = await via_b.get_result(started.run_id, wait=10, timeout=15)
        assert result.status is RunStatus.SUCCESS, result
        assert result.result == {"value": 8}
        events = await _collect(via_b.watch(started.run_id))
        _assert_dense(events, started.run_id)
        assert events[0].type is EventType.WORKFLOW_START
        assert events[-1].type is EventType.WORKFLOW_FINISH
        assert events[-1].data["status"] is RunStatus.SUCCESS
        assert events[-1].sequence == result.last_sequence

        # Started through A, canceled through B while its step is running.
        began = time.monotonic()
        waiting = await via_a.start_async("cancellable", {"seconds": 10}, timeout=5)
        running = await _poll(
            via_b,
            waiting.run_id,
            lambda r: (
                "wait_for_cancel" in r.steps
                and r.steps["wait_for_cancel"].status is StepStatus.RUNNING
            ),
        )
        assert running.status is RunStatus.RUNNING, running
        canceled = await via_b.cancel(waiting.run_id)
        assert canceled.cancel_requested
        final = await _poll(
            via_b, waiting.run_id, lambda r: r.status.finished, seconds=8, wait=True
        )
        assert final.status is RunStatus.CANCELED, final
        assert time.monotonic() - began < 9, "the run ran out its 10 s instead of being canceled"
        assert "never_after_cancel" not in final.steps
        seen_by_a = await via_a.get_result(waiting.run_id, wait=5, timeout=10)
        assert seen_by_a.status is RunStatus.CANCELED

    codes = await asyncio.gather(_stop(a), _stop(b))
    assert [code for code, _ in codes] == [0, 0], a.log + b.log


# -- 4. invalid settings ---------------------------------------------------------------------
def test_invalid_port_is_rejected_quickly() -> None:
    began = time.monotonic()
    done = subprocess.run(
        [*stepline_command(), "serve", "--port", "-5"],
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode != 0
    assert time.monotonic() - began < 10
    assert "port" in done.stderr, done.stderr
    assert "invalid settings" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_port_in_use_is_reported_without_a_traceback() -> None:
    with socket.socket() as holder:  # no SO_REUSEPORT, so gRPC cannot share it
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        began = time.monotonic()
        done = subprocess.run(
            [*stepline_command(), "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    assert done.returncode != 0
    assert time.monotonic() - began < 10
    assert f"could not bind 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# -- 6. a durable sleep survives SIGKILL ------------------------------------------------------
async def test_sleeping_run_wakes_after_the_server_is_killed(
    serve: Launcher, redis_server: str
) -> None:
    flags = (
        "--redis-url", redis_server,
        "--redis-prefix", f"e2e-{uuid.uuid4().hex[:12]}",
        "--workflows", "tests.flows",
    )  # fmt: skip
    first = await _start(serve, *flags)
    async with asyncio.timeout(TEST_SECONDS):
        async with await Client.connect(first.target) as client:
            run = await client.start_async("long_nap", {"value": 1})
            waiting = await _poll(client, run.run_id, lambda r: r.status is RunStatus.WAITING)
        assert waiting.status is RunStatus.WAITING, waiting
        wake_at = waiting.steps["sleep_long_nap_1"].metadata["wake_at"]

        os.kill(first.process.pid, signal.SIGKILL)
        await asyncio.to_thread(first.process.wait, 5)

        second = await _start(serve, *flags)
        async with await Client.connect(second.target) as client:
            done = await _poll(client, run.run_id, lambda r: r.status.finished, wait=True)
            events = await _collect(client.watch(run.run_id))

    assert done.status is RunStatus.SUCCESS, done
    assert done.result == {"value": 4}
    slept = done.steps["sleep_long_nap_1"]
    assert slept.ended_at is not None and slept.ended_at.timestamp() >= wake_at
    _assert_dense(events, run.run_id)
    assert [e.step_id for e in events if e.type is EventType.STEP_WAITING] == ["sleep_long_nap_1"]


def test_every_setting_is_a_serve_flag() -> None:
    """Settings documents each field as a flag: the parser must offer every one of them."""
    parser = cli._parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    flags = {option for action in serve._actions for option in action.option_strings}
    for name in Settings.model_fields:
        flag = "--" + cli._FLAGS.get(name, name.replace("_", "-"))
        assert flag in flags, f"setting {name!r} has no `stepline serve {flag}`"
    parsed = parser.parse_args(
        ["serve", "--run-retention", "60", "--max-events-per-run", "50", "--redis-timeout", "2"]
    )
    settings = cli._settings(parsed)
    assert (settings.run_retention, settings.max_events_per_run, settings.redis_timeout) == (
        60.0,
        50,
        2.0,
    )


async def test_example_runs_start_once_on_an_empty_store(
    serve: Launcher, redis_server: str
) -> None:
    """`--example-runs` (what scripts/serve.sh passes) gives a newcomer runs to look at: the
    examples' sample runs, finished and suspended; a restart on the same Redis adds none."""
    flags = (
        "--redis-url", redis_server,
        "--redis-prefix", f"e2e-{uuid.uuid4().hex[:12]}",
        "--example-runs",
    )  # fmt: skip
    first = await _start(serve, *flags)
    async with asyncio.timeout(TEST_SECONDS), await Client.connect(first.target) as client:
        while True:
            page = await client.list_runs()
            settled = [r for r in page.runs if r.status in (RunStatus.SUCCESS, RunStatus.SUSPENDED)]
            if len(settled) == 5:
                break
            await asyncio.sleep(0.05)
    assert sorted((run.workflow_id, run.status.value) for run in page.runs) == [
        ("approval", "suspended"),
        ("greet", "success"),
        ("greet", "success"),
        ("onboarding", "success"),
        ("onboarding", "success"),
    ]
    code, _ = await _stop(first)
    assert code == 0, first.log
    second = await _start(serve, *flags)
    async with asyncio.timeout(TEST_SECONDS), await Client.connect(second.target) as client:
        assert len((await client.list_runs()).runs) == 5
