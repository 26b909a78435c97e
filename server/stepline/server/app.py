"""Wiring: store, registry, run service, worker, telemetry and the gRPC server in one object."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter

from .api import SERVICE, add_services
from .api.interceptors import AuthInterceptor, TelemetryInterceptor
from .api.reflection import enable_reflection
from .auth import TokenTable
from .console import mount as mount_console
from .errors import StoreUnavailable
from .http import HttpGateway
from .logs import RunLog
from .metrics import Metrics, MetricsEndpoint
from .runs import RunService, StartParams
from .settings import ConfigError, Settings
from .store import RunFilter, Store
from .store.memory import MemoryStore
from .store.redis import RedisStore
from .telemetry import Tracing
from .worker import Worker
from .workflows import Registry

log = logging.getLogger(__name__)

SERVICE_NAME = "stepline.v1.WorkflowService"
HEALTH_NAMES = ("", SERVICE_NAME)
# The longest one store probe may take before the store counts as unreachable.
PROBE_TIMEOUT = 2.0


def open_store(settings: Settings) -> Store:
    retention = settings.run_retention or None
    max_events = settings.max_events_per_run
    if settings.redis_url:
        return RedisStore.from_url(
            settings.redis_url,
            prefix=settings.redis_prefix,
            socket_timeout=settings.redis_timeout,
            retention=retention,
            max_events=max_events,
        )
    return MemoryStore(retention=retention, max_events=max_events)


def load_registry(settings: Settings) -> Registry:
    registry = Registry()
    for module in settings.workflows:
        try:
            registry.load_module(module)
        except ModuleNotFoundError as err:
            # Only a module named by --workflows (or a package above it) is a setting error;
            # anything the module itself fails to import is its author's traceback to read.
            if err.name is None or not (module + ".").startswith(err.name + "."):
                raise
            raise ConfigError(
                f"--workflows {module}: no module named {err.name!r} (modules are imported "
                "from the current directory and PYTHONPATH)"
            ) from None
    return registry


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core options: message limits, stream cap, keepalive and connection age."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging idle Watch streams (the default stops after two pings without data),
        # so a peer that vanished behind a proxy is noticed.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.keepalive_min_ping_interval)),
        ("grpc.max_connection_age_ms", ms(settings.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace)),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mutual TLS) credentials from the certificate files; None for plaintext.
    Raises ConfigError when the files don't hold a usable certificate and key."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(
            f"tls_cert / tls_key: not a matching PEM certificate and key ({err})"
        ) from None
    client_ca = None
    if settings.tls_client_ca is not None:
        try:
            check.load_verify_locations(cafile=settings.tls_client_ca)
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(f"tls_client_ca: not a PEM CA bundle ({err})") from None
        client_ca = settings.tls_client_ca.read_bytes()
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=settings.tls_require_client_auth,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Server:
    """A running Stepline replica: gRPC front end, run service, worker and telemetry."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        *,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        """Raises ConfigError for settings that validated but can't be used (token file)."""
        self.settings = settings
        self.store = store
        self.registry = registry
        self.tokens = TokenTable.from_settings(settings)
        self.metrics = Metrics()
        self.tracing = Tracing.from_settings(settings, exporter=span_exporter)
        self.worker = Worker(
            store,
            registry,
            max_concurrent_runs=settings.max_concurrent_runs,
            lease_ttl=settings.lease_ttl,
            observers=[
                *([self.tracing.observer()] if self.tracing.recording else []),
                self.metrics.observer(),
                RunLog(),
            ],
        )
        self.service = RunService(store, registry, runner=self.worker)
        self.metrics.track(
            active_runs=lambda: self.worker.active_runs,
            held_leases=lambda: self.worker.held_leases,
        )
        # Outermost first; the HTTP API runs its calls through the same list.
        interceptors: list[grpc.aio.ServerInterceptor] = [
            TelemetryInterceptor(self.tracing, self.metrics)
        ]
        if self.tokens is not None:
            interceptors.append(AuthInterceptor(self.tokens))
        self.grpc = grpc.aio.server(
            interceptors=interceptors,
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.health = health_aio.HealthServicer()
        self.interceptors = tuple(interceptors)
        self.port = 0
        self.metrics_port: int | None = None
        self.http: HttpGateway | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._store_up: bool | None = None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        registry: Registry | None = None,
        store: Store | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> Server:
        """Build and start a replica. `span_exporter` overrides `settings.trace_exporter`.
        Raises ConfigError, and OSError when a port can't be bound."""
        server = cls(
            settings,
            store or open_store(settings),
            registry or load_registry(settings),
            span_exporter=span_exporter,
        )
        await server._start()
        return server

    async def _start(self) -> None:
        settings = self.settings
        handlers = add_services(self.grpc, self.service)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if settings.reflection:
            enable_reflection(
                self.grpc,
                [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            )
        if self.tokens is not None and not settings.tls and not _loopback(settings.host):
            log.warning("bearer tokens are accepted over plaintext: configure TLS (--tls-cert)")
        credentials = server_credentials(settings)
        address = f"{settings.host}:{settings.port}"
        try:
            if credentials is None:
                self.port = self.grpc.add_insecure_port(address)
            else:
                self.port = self.grpc.add_secure_port(address, credentials)
        except RuntimeError as err:  # grpcio raises this; older versions returned 0
            raise OSError(f"could not bind {address} (address in use?)") from err
        if self.port == 0:
            raise OSError(f"could not bind {address} (address in use?)")
        if settings.http_port is not None:
            self.http = HttpGateway(
                settings, SERVICE, handlers, self.interceptors, bearer_auth=self.tokens is not None
            )
            # The console (stepline.server.console): the run inspector at / on the same port.
            mount_console(self.http.app, self.service, self.tokens, settings)
            self.http.bind(settings.host, settings.http_port)  # served once gRPC is
        if settings.metrics_port is not None:
            host = settings.metrics_host or settings.host
            self._metrics_endpoint = self.metrics.serve(host, settings.metrics_port)
            self.metrics_port = self._metrics_endpoint.port
        await self.worker.start()
        await self.grpc.start()
        if self.http is not None:
            await self.http.start()
        await self._probe()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="stepline-health")
        if settings.example_runs:
            await self._start_example_runs()

    async def _start_example_runs(self) -> None:
        """Start the modules' sample runs, once: only into a store that holds no run yet, so
        a restart on Redis adds none."""
        examples = self.registry.example_runs
        if not examples or (await self.store.list_runs(RunFilter(), 1, "")).rows:
            return
        for example in examples:
            try:
                await self.service.start(StartParams(example.workflow_id, example.input_data))
            except Exception as err:  # a bad sample must not keep the server from serving
                log.warning("example run of %s not started: %s", example.workflow_id, err)
        log.info("started %d example runs", len(examples))

    # -- health --------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_probe_interval)
            await self._probe()

    async def _probe(self) -> None:
        """SERVING while the store answers, NOT_SERVING while it does not."""
        try:
            depth = await asyncio.wait_for(self.store.queue_depth(), PROBE_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as err:
            up = False
            reason = str(err) or "no answer within the probe timeout"
        except Exception:
            log.exception("store health probe failed")
            up, reason = False, "probe error"
        else:
            up, reason = True, ""
            self.metrics.queue_depth.set(depth)
        self.metrics.store_up.set(1 if up else 0)
        if up == self._store_up:
            return
        if not up:
            log.warning("store unreachable (%s): health is NOT_SERVING until it answers", reason)
        elif self._store_up is not None:
            log.info("store reachable again: health is SERVING")
        self._store_up = up
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_NAMES:
            await self.health.set(name, status)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def http_url(self) -> str | None:
        """The HTTP API's base URL (`http://127.0.0.1:8080`); None when it is off."""
        if self.http is None or self.http.port is None:
            return None
        host = self.settings.host
        return f"{self.http.scheme}://{f'[{host}]' if ':' in host else host}:{self.http.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, finish or hand back in-flight runs, close RPCs and the store."""
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.health.enter_graceful_shutdown()
        # Open waits and streams end with UNAVAILABLE now, so their callers reconnect to
        # another replica from their last event while in-flight runs finish or are handed back.
        self.service.drain()
        await self.worker.stop(grace)
        await self.grpc.stop(grace=min(grace, 1.0))
        if self.http is not None:
            await self.http.stop()
        await self.store.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self.tracing.shutdown()

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()
