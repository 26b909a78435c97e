"""The Prometheus endpoint, scraped over HTTP after runs went through the server."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stepline.client import Client, RunNotFound, RunStatus
from stepline.server.app import Server
from tests import ops_flows
from tests.ops_support import BOUND, eventually, eventually_async, running

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running(metrics_port=0) as started:
        yield started


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=BOUND) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


async def scrape(server: Server) -> Samples:
    assert server.metrics_port is not None
    content_type, text = await asyncio.to_thread(
        _get, f"http://127.0.0.1:{server.metrics_port}/metrics"
    )
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_runs_steps_and_rpcs_are_counted(server: Server) -> None:
    async with await Client.connect(server.target) as client:
        assert (await client.start("chain", {"value": 1})).status is RunStatus.SUCCESS
        assert (await client.start("chain", {"value": 2})).status is RunStatus.SUCCESS
        assert (await client.start("broken", {"value": 1})).status is RunStatus.FAILED
        assert (await client.start("approval", {"value": 1})).status is RunStatus.SUSPENDED
        with pytest.raises(RunNotFound):
            await client.get_result("no-such-run")

    samples = await scrape(server)
    assert value(samples, "stepline_runs_started_total", workflow="chain") == 2
    assert value(samples, "stepline_runs_finished_total", workflow="chain", status="success") == 2
    assert value(samples, "stepline_runs_finished_total", workflow="broken", status="failed") == 1
    finished = value(
        samples, "stepline_runs_finished_total", workflow="approval", status="suspended"
    )
    assert finished == 1
    step = {"workflow": "chain", "step": "double", "status": "success"}
    assert value(samples, "stepline_step_duration_seconds_count", **step) == 2
    assert value(samples, "stepline_step_duration_seconds_bucket", le="+Inf", **step) == 2
    failed = {"workflow": "broken", "step": "explode", "status": "failed"}
    assert value(samples, "stepline_step_duration_seconds_count", **failed) == 1
    suspended = {"workflow": "approval", "step": "review", "status": "suspended"}
    assert value(samples, "stepline_step_duration_seconds_count", **suspended) == 1

    rpc = {"grpc_service": "stepline.v1.WorkflowService", "grpc_type": "unary"}
    assert value(samples, "grpc_server_started_total", grpc_method="Start", **rpc) == 4
    ok = {"grpc_method": "Start", "grpc_code": "OK", **rpc}
    assert value(samples, "grpc_server_handled_total", **ok) == 4
    assert value(samples, "grpc_server_handling_seconds_count", **ok) == 4
    missing = {"grpc_method": "GetExecutionResult", "grpc_code": "NOT_FOUND", **rpc}
    assert value(samples, "grpc_server_handled_total", **missing) == 1
    assert value(samples, "grpc_server_handling_seconds_count", **missing) == 1
    assert value(samples, "stepline_store_up") == 1


async def test_gauges_show_what_the_replica_holds(server: Server) -> None:
    async with await Client.connect(server.target) as client:
        started = await client.start_async("holding", {"value": 1})
        gate = ops_flows.gate(started.run_id)
        try:

            async def holding() -> Samples | None:
                samples = await scrape(server)
                return samples if value(samples, "stepline_held_leases") == 1 else None

            samples = await eventually_async(holding)
            assert value(samples, "stepline_active_runs") == 1
            assert value(samples, "stepline_queue_depth") == 0
        finally:
            gate.set()
        await client.get_result(started.run_id, wait=BOUND, timeout=BOUND + 2)
    await eventually(lambda: server.worker.active_runs == 0)
    samples = await scrape(server)
    assert value(samples, "stepline_active_runs") == 0
    assert value(samples, "stepline_held_leases") == 0


async def test_the_endpoint_is_off_by_default() -> None:
    async with running() as server:
        assert server.metrics_port is None
