"""The gRPC adapter: `stepline.v1.WorkflowService` served on top of a RunService."""

from __future__ import annotations

import grpc

from stepline.v1 import workflow_service_pb2_grpc

from ..runs import RunService
from .servicer import WorkflowServicer


def add_services(server: grpc.aio.Server, service: RunService) -> None:
    """Register WorkflowService on `server`, backed by `service`."""
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
        WorkflowServicer(service), server
    )


__all__ = ["WorkflowServicer", "add_services"]
