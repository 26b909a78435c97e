"""The OpenAPI document served at /v1/openapi.json.

`openapi/stepline.swagger.json` is generated from the protos by grpc-gateway's
protoc-gen-openapiv2 (scripts/generate_protos.py; OpenAPI 2.0, "swagger"). It describes
grpc-gateway's own streaming format for server-streaming RPCs, so those operations are
corrected here to what this server sends: Server-Sent Events whose data is the response
message, resumable with Last-Event-ID. The title, and the bearer scheme when tokens are
configured, are set here too.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from .sse import CONTENT_TYPE, STATUS_EVENT
from .transcode import dumps

GENERATED = "openapi/stepline.swagger.json"
STREAM_DESCRIPTION = (
    "Server-Sent Events: one event per response message (data: its JSON; id: the run "
    f"event's sequence), then an `event: {STATUS_EVENT}` whose data is a google.rpc.Status "
    "(code 0 when the stream ended normally). Reconnect with Last-Event-ID to continue after "
    "the last event received."
)


def generated() -> dict[str, Any]:
    """The document as protoc-gen-openapiv2 wrote it."""
    text = resources.files(__package__).joinpath(GENERATED).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def document(service: ServiceDescriptor, *, bearer_auth: bool) -> bytes:
    """The document to serve, as JSON bytes."""
    doc = generated()
    doc["info"] = {
        "title": f"Stepline {service.name}",
        "version": service.file.package.rsplit(".", 1)[-1],
        "description": (
            f"{service.full_name} over HTTP/JSON (proto3 JSON mapping). Errors are "
            "google.rpc.Status JSON. Generated from the protos; see docs/http.md."
        ),
    }
    streaming = {f"{service.name}_{m.name}" for m in service.methods if m.server_streaming}
    for operation in _operations(doc):
        if operation.get("operationId", "").rstrip("0123456789") in streaming:
            _as_event_stream(operation)
    if bearer_auth:
        doc["securityDefinitions"] = {
            "bearer": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Bearer <token>`: the same tokens and scopes as gRPC.",
            }
        }
        doc["security"] = [{"bearer": []}]
    return dumps(doc)


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in doc.get("paths", {}).values() for op in path.values()]


def _as_event_stream(operation: dict[str, Any]) -> None:
    ok = operation.get("responses", {}).get("200", {})
    wrapped = ok.get("schema", {}).get("properties", {}).get("result")
    operation["produces"] = [CONTENT_TYPE]
    operation["responses"]["200"] = {
        "description": STREAM_DESCRIPTION,
        **({"schema": wrapped} if wrapped else {}),
    }
    operation.setdefault("parameters", []).append(
        {
            "name": "Last-Event-ID",
            "in": "header",
            "type": "string",
            "required": False,
            "description": "Continue after this event sequence (sent by EventSource itself).",
        }
    )
