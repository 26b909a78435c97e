"""The HTTP routes as the protos declare them: the vendored google.api definitions, and every
RPC of WorkflowService reachable over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2

from stepline.v1 import workflow_service_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOGLEAPIS = REPO_ROOT / "third_party" / "googleapis"
SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]


def _compiled(tmp_path: Path, *files: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    from grpc_tools import protoc  # dev dependency

    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "set.pb"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{GOOGLEAPIS}",
        f"-I{include}",
        f"--descriptor_set_out={out}",
        *files,
    ]
    subprocess.run(command, check=True, cwd=GOOGLEAPIS)
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {file.name: file for file in compiled.file}


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    """protoc fills json_name in descriptor sets; the descriptors embedded in _pb2 modules
    leave it out."""
    for field in file.extension:
        field.ClearField("json_name")
    for message in file.message_type:
        for field in message.field:
            field.ClearField("json_name")


def test_vendored_google_api_protos_equal_the_published_descriptors(tmp_path: Path) -> None:
    compiled = _compiled(tmp_path, "google/api/annotations.proto", "google/api/http.proto")
    for module in (annotations_pb2, http_pb2):
        published = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(published)
        ours = compiled[published.name]
        ours.ClearField("source_code_info")
        _without_json_names(ours)
        assert ours == published, published.name


def test_every_rpc_has_an_http_route() -> None:
    for method in SERVICE.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern"), f"{method.name} has no google.api.http route"
