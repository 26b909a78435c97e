"""The HTTP routes as the protos declare them: the vendored google.api definitions, and every
RPC of WorkflowService reachable over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2
from pydantic import ValidationError

from stepline.server import cli
from stepline.server.auth import required_scope
from stepline.server.http.routes import PathTemplate, RouteTable, TemplateError
from stepline.server.settings import Settings
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


def test_the_docs_route_table_is_the_protos() -> None:
    text = (REPO_ROOT / "docs" / "http.md").read_text()
    documented = set(
        re.findall(
            r"^\| (\w+) \| `(\w+) (\S+)` \|\s*`?([^`|]*?)`?\s*\| (read|write) \|$", text, re.M
        )
    )
    declared = {
        (r.method.name, r.http_method, r.template.text, r.body, required_scope(r.rpc))
        for r in RouteTable(SERVICE.methods).routes
    }
    assert documented == declared


# -- path templates ------------------------------------------------------------------------------


def test_a_variable_matches_one_segment_and_is_decoded() -> None:
    template = PathTemplate.parse("/v1/runs/{run_id}")
    assert template.match("/v1/runs/a%2Fb%3Ac%20%C3%BC") == {("run_id",): "a/b:c ü"}
    assert template.match("/v1/runs/a/b") is None
    assert template.match("/v1/runs/") is None


def test_a_custom_verb_is_split_from_the_last_segment() -> None:
    template = PathTemplate.parse("/v1/runs/{run_id}:cancel")
    assert template.verb == "cancel"
    assert template.match("/v1/runs/r1:cancel") == {("run_id",): "r1"}
    assert template.match("/v1/runs/a:b:cancel") == {("run_id",): "a:b"}
    assert template.match("/v1/runs/r1") is None


def test_patterns_nested_fields_and_multi_segment_variables() -> None:
    template = PathTemplate.parse("/v1/{parent.name=projects/*}/files/{path=**}:get")
    assert template.match("/v1/projects/p1/files/a/b%2Fc/d:get") == {
        ("parent", "name"): "projects/p1",
        ("path",): "a/b%2Fc/d",  # across segments an encoded slash stays encoded
    }
    assert template.literals == 3


@pytest.mark.parametrize(
    "text",
    ["v1/runs", "/v1/{run_id", "/v1/{1bad}", "/v1/**/x", "/v1/runs:", "/v1/a b", "/v1/{x=a/{y}}"],
)
def test_bad_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(text)


def test_the_most_specific_route_wins() -> None:
    table = RouteTable(SERVICE.methods)
    watch = table.find("GET", "/v1/runs/r1:watch")
    assert watch is not None and watch.route.method.name == "Watch"
    get = table.find("GET", "/v1/runs/r1")
    assert get is not None and get.route.method.name == "GetExecutionResult"
    by_workflow = table.find("GET", "/v1/workflows/greet/runs")
    assert by_workflow is not None and by_workflow.route.method.name == "ListRuns"
    assert by_workflow.values == {("workflow_id",): "greet"}
    assert table.find("PUT", "/v1/runs/r1") is None
    assert table.allowed("/v1/runs/r1") == ["DELETE", "GET"]


# -- settings ------------------------------------------------------------------------------------


def test_http_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_HTTP_PORT", "8080")
    monkeypatch.setenv("STEPLINE_HTTP_CORS_ORIGINS", "https://ops.example, http://[::1]:3000")
    from_env = Settings()
    assert from_env.http_port == 8080
    assert from_env.http_cors_origins == ["https://ops.example", "http://[::1]:3000"]
    args = cli._parser().parse_args(
        ["serve", "--http-port", "0", "--http-cors-origin", "*", "--http-cors-origin", "http://a:1"]
    )
    from_flags = cli._settings(args)
    assert from_flags.http_port == 0 and from_flags.http_cors_origins == ["*", "http://a:1"]
    for origin in ("https://ops.example/console", "ops.example", "ftp://ops.example"):
        with pytest.raises(ValidationError):
            Settings(http_cors_origins=[origin])
    with pytest.raises(ValidationError):
        Settings(http_port=70000)
