"""Prometheus metrics of one replica, served over HTTP when `--metrics-port` is given.

Runs and steps (counted by the replica that executes them, from its committed transitions):
  stepline_runs_started_total{workflow}            first passes (workflow-start "start")
  stepline_runs_finished_total{workflow,status}    workflow-finish events: success, failed,
                                                   canceled, suspended
  stepline_step_duration_seconds{workflow,step,status}   histogram, from the step's own times
Replica and store:
  stepline_active_runs            runs this replica is working on (taking or executing)
  stepline_held_leases            runs it holds a lease on
  stepline_queue_depth            queued runs no replica has taken yet (store-wide)
  stepline_store_up               1 while the store answers the health probe
RPCs (go-grpc-prometheus names; health and reflection are not counted):
  grpc_server_started_total{grpc_service,grpc_method,grpc_type}
  grpc_server_handled_total{grpc_service,grpc_method,grpc_type,grpc_code}
  grpc_server_handling_seconds{grpc_service,grpc_method,grpc_type,grpc_code}   histogram

Each Metrics object has its own registry, so several servers can live in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .events import Event, StepResult, StepSuspended, WorkflowFinish, WorkflowStart
from .model import Snapshot

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter(
            "stepline_runs_started", "Runs started (first pass).", ["workflow"], registry=r
        )
        self.runs_finished = Counter(
            "stepline_runs_finished",
            "Execution passes that ended a run or suspended it, by final status.",
            ["workflow", "status"],
            registry=r,
        )
        self.step_duration = Histogram(
            "stepline_step_duration_seconds",
            "Time from a step's start to its result or suspension.",
            ["workflow", "step", "status"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.active_runs = Gauge(
            "stepline_active_runs", "Runs this replica is working on.", registry=r
        )
        self.held_leases = Gauge(
            "stepline_held_leases", "Runs this replica holds a lease on.", registry=r
        )
        self.queue_depth = Gauge(
            "stepline_queue_depth", "Queued runs that no replica has taken yet.", registry=r
        )
        self.store_up = Gauge(
            "stepline_store_up", "1 while the store answers the health probe.", registry=r
        )
        self.rpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", RPC_LABELS, registry=r
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            [*RPC_LABELS, "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC (a whole stream for streaming RPCs), by status code.",
            [*RPC_LABELS, "grpc_code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )

    def track(self, *, active_runs: Callable[[], int], held_leases: Callable[[], int]) -> None:
        """Read the replica gauges from these callables at every scrape."""
        self.active_runs.set_function(active_runs)
        self.held_leases.set_function(held_leases)

    def rpc_begin(self, service: str, method: str, kind: str) -> None:
        self.rpc_started.labels(service, method, kind).inc()

    def rpc_end(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        self.rpc_handled.labels(service, method, kind, code).inc()
        self.rpc_seconds.labels(service, method, kind, code).observe(seconds)

    def observer(self) -> RunMetrics:
        return RunMetrics(self)

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Start the HTTP scrape endpoint (`GET /metrics`) on a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsEndpoint(server, thread)


class MetricsEndpoint:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class RunMetrics:
    """`RunObserver` that counts runs and times steps from committed transitions."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def pass_started(self, snapshot: Snapshot) -> RunMetrics:
        return self

    def committed(self, snapshot: Snapshot, events: Sequence[Event]) -> None:
        workflow, m = snapshot.workflow_id, self._metrics
        for event in events:
            match event.data:
                case WorkflowStart(reason="start"):
                    m.runs_started.labels(workflow).inc()
                case WorkflowFinish(status=status):
                    m.runs_finished.labels(workflow, status.value).inc()
                case StepResult() as result:
                    self._step(
                        workflow,
                        result.step_id,
                        result.status.value,
                        result.started_at,
                        result.ended_at,
                    )
                case StepSuspended() as suspended:
                    step = snapshot.steps.get(suspended.step_id)
                    started = step.started_at if step is not None else None
                    self._step(
                        workflow, suspended.step_id, "suspended", started, suspended.suspended_at
                    )

    def _step(
        self, workflow: str, step: str, status: str, start: float | None, end: float | None
    ) -> None:
        if start is not None and end is not None:
            self._metrics.step_duration.labels(workflow, step, status).observe(
                max(0.0, end - start)
            )

    def ended(self, snapshot: Snapshot, error: BaseException | None) -> None:
        return None
