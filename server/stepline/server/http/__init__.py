"""The HTTP/JSON API: every RPC of stepline.v1.WorkflowService at the route its
`google.api.http` option declares, dispatched into the gRPC server's own handlers (same
tokens, errors and metrics), server-streaming RPCs as Server-Sent Events, and the OpenAPI
document at /v1/openapi.json. See docs/http.md."""

from __future__ import annotations

from .gateway import HttpGateway

__all__ = ["HttpGateway"]
