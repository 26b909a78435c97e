"""The gRPC adapter: `stepline.v1.WorkflowService` served on top of a RunService."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from stepline.v1 import workflow_service_pb2

from ..runs import RunService
from .servicer import WorkflowServicer
from .wire import lenient_deserializer

SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]


def add_services(server: grpc.aio.Server, service: RunService) -> dict[str, Any]:
    """Register WorkflowService on `server`, backed by `service`; returns its method handlers
    by method name (grpc.RpcMethodHandler), which the HTTP API dispatches into too.

    Like the generated `add_WorkflowServiceServicer_to_server`, but request bytes that do not
    decode reach the handler as a MalformedRequest (refused with INVALID_ARGUMENT) instead of
    failing inside grpc with UNKNOWN."""
    servicer = WorkflowServicer(service)
    handlers: dict[str, Any] = {}
    for method in SERVICE.methods:
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=lenient_deserializer(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
    return handlers


__all__ = ["WorkflowServicer", "add_services"]
