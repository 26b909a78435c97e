"""Wiring: store, registry, run service, worker and the gRPC server in one object."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api import add_services
from .runs import RunService
from .settings import Settings
from .store import Store
from .store.memory import MemoryStore
from .store.redis import RedisStore
from .worker import Worker
from .workflows import Registry

log = logging.getLogger(__name__)

SERVICE_NAME = "stepline.v1.WorkflowService"


def open_store(settings: Settings) -> Store:
    if settings.redis_url:
        return RedisStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryStore()


def load_registry(settings: Settings) -> Registry:
    registry = Registry()
    for module in settings.workflows:
        registry.load_module(module)
    return registry


class Server:
    """A running Stepline replica: gRPC front end, run service and worker."""

    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.service = RunService(store, registry)
        self.worker = Worker(
            store,
            registry,
            max_concurrent_runs=settings.max_concurrent_runs,
            lease_ttl=settings.lease_ttl,
        )
        limit = settings.max_message_bytes
        self.grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.max_connection_age_ms", 30 * 60_000),
                ("grpc.max_connection_age_grace_ms", 60_000),
            ]
        )
        self.health = health_aio.HealthServicer()
        self.port = 0

    @classmethod
    async def start(
        cls, settings: Settings, *, registry: Registry | None = None, store: Store | None = None
    ) -> Server:
        server = cls(settings, store or open_store(settings), registry or load_registry(settings))
        await server._start()
        return server

    async def _start(self) -> None:
        add_services(self.grpc, self.service)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                [
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self.grpc,
            )
        self.port = self.grpc.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"could not bind {self.settings.host}:{self.settings.port}")
        await self.worker.start()
        await self.grpc.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, finish or hand back in-flight runs, close RPCs and the store."""
        grace = self.settings.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.worker.stop(grace)
        await self.grpc.stop(grace=min(grace, 1.0))
        await self.store.close()

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()
