"""grpc.health.v1 (Check and Watch) and server reflection, through real channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stepline.server.store import RedisStore
from tests.ops_support import BOUND, running
from tests.processes import free_port, start_redis, stop_process

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "stepline.v1.WorkflowService"


async def _next_status(watch: AsyncIterator[Any]) -> int:
    reply = await asyncio.wait_for(anext(watch), BOUND)
    return int(reply.status)


async def _status_becomes(watch: AsyncIterator[Any], wanted: int) -> None:
    while (await _next_status(watch)) != wanted:
        pass


async def test_check_and_watch_say_serving_until_the_server_drains() -> None:
    async with running() as server:
        channel = grpc.aio.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=BOUND)
            assert reply.status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=BOUND)
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND

        call = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        watch = call.__aiter__()
        assert await _next_status(watch) == SERVING
        stopping = asyncio.create_task(server.stop(grace=1))
        assert await _next_status(watch) == NOT_SERVING
        call.cancel()  # a watch never ends by itself; don't make the drain wait for it
        await asyncio.wait_for(stopping, BOUND)
        await channel.close()


@pytest.mark.timeout(60)
async def test_health_follows_whether_redis_answers(tmp_path: Path) -> None:
    """NOT_SERVING while Redis is down (even at start-up), SERVING once it answers."""
    port = free_port()
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix="health-test")
    async with running(store=store, health_probe_interval=0.05) as server:
        channel = grpc.aio.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="")).__aiter__()
        assert await _next_status(watch) == NOT_SERVING  # no Redis yet

        redis_process, _ = await asyncio.to_thread(start_redis, tmp_path, port)
        try:
            await _status_becomes(watch, SERVING)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert reply.status == SERVING
        finally:
            await asyncio.to_thread(stop_process, redis_process)
        await _status_becomes(watch, NOT_SERVING)
        assert server.metrics.store_up._value.get() == 0
        await channel.close()


async def _reflect(
    stub: reflection_pb2_grpc.ServerReflectionStub, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = stub.ServerReflectionInfo(iter([request]))
    replies = [reply async for reply in call]
    assert len(replies) == 1
    return replies[0]


async def test_reflection_lists_and_describes_the_services() -> None:
    """What grpcurl does: list the services, then fetch the file defining one of them."""
    async with running() as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = await _reflect(stub, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {service.name for service in listed.list_services_response.service}
        assert names == {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }

        described = await _reflect(
            stub, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in described.file_descriptor_response.file_descriptor_proto
        ]
        methods = {
            method.name
            for file in files
            for service in file.service
            if f"{file.package}.{service.name}" == SERVICE
            for method in service.method
        }
        assert {"Start", "StartAsync", "Stream", "Resume", "Watch", "ListRuns"} <= methods


async def test_reflection_can_be_turned_off() -> None:
    async with running(reflection=False) as server, grpc.aio.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as off:
            await _reflect(stub, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert off.value.code() is grpc.StatusCode.UNIMPLEMENTED
