"""Standard gRPC tools against a live `stepline serve`: the pinned `grpcurl` and
`grpc-health-probe` (installed by scripts/install_tools.sh into .cache/tools/bin), used the way
docs/operations.md shows, with no protos on the caller's side.

Without the binaries these tests skip, unless CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.processes import REPO_ROOT, Launcher, Replica

TOOLS = REPO_ROOT / ".cache" / "tools" / "bin"
TOKEN = "tools-test-token-0123456789"
SERVICE = "stepline.v1.WorkflowService"
SERVICE_FILE = "stepline/v1/workflow_service.proto"
GRPCURL_STATUS_BASE = 64  # grpcurl exits with 64 + the gRPC status code of a failed call
CALL_SECONDS = 30.0

pytestmark = pytest.mark.timeout(90)


def _tool(name: str) -> Path:
    path = TOOLS / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"{path} is missing: run `bash scripts/install_tools.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def status(self) -> Any:
        """The google.rpc.Status that `grpcurl -format-error` prints (on stderr) for a failure."""
        return json.loads(self.err)

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def _run(*command: str | Path) -> Ran:
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=CALL_SECONDS,
        stdin=subprocess.DEVNULL,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica for the module, with bearer-token auth on (reflection and health stay open)."""
    launcher = Launcher(tmp_path_factory.mktemp("serve"))
    try:
        yield launcher("--workflows", "tests.flows", "--auth-token", TOKEN)
    finally:
        launcher.stop_all()


@dataclass
class Grpcurl:
    binary: Path
    target: str

    def __call__(self, *args: str, flags: Sequence[str] = (), token: bool = True) -> Ran:
        """`grpcurl -plaintext [token header] FLAGS TARGET ARGS`."""
        header = ("-H", f"authorization: Bearer {TOKEN}") if token else ()
        return _run(self.binary, "-plaintext", *header, *flags, self.target, *args)


@pytest.fixture
def grpcurl(server: Replica) -> Grpcurl:
    return Grpcurl(_tool("grpcurl"), server.target)


def _objects(text: str) -> list[Any]:
    """The JSON objects grpcurl prints one after another for a stream."""
    decoder = json.JSONDecoder()
    objects, at = [], 0
    while (at := _skip_space(text, at)) < len(text):
        value, at = decoder.raw_decode(text, at)
        objects.append(value)
    return objects


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


# -- grpcurl -----------------------------------------------------------------------------------
def test_grpcurl_lists_services_and_methods(grpcurl: Grpcurl) -> None:
    services = grpcurl("list", token=False)
    assert services.code == 0, services
    assert set(services.out.split()) == {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    methods = grpcurl("list", SERVICE, token=False)
    assert methods.code == 0, methods
    assert {f"{SERVICE}.StartAsync", f"{SERVICE}.Start", f"{SERVICE}.Stream"} <= set(
        methods.out.split()
    )


def test_grpcurl_describes_the_service_and_a_method(grpcurl: Grpcurl) -> None:
    service = grpcurl("describe", SERVICE, token=False)
    assert service.code == 0, service
    assert f"{SERVICE} is a service" in service.out
    assert "rpc StartAsync ( .stepline.v1.StartAsyncRequest )" in service.out

    method = grpcurl("describe", f"{SERVICE}.StartAsync", token=False)
    assert method.code == 0, method
    assert f"{SERVICE}.StartAsync is a method" in method.out
    assert "returns ( .stepline.v1.StartAsyncResponse )" in method.out

    missing = grpcurl("describe", f"{SERVICE}.NoSuchMethod", token=False)
    assert missing.code != 0
    assert "Symbol not found" in missing.err


def test_grpcurl_describes_the_v1_reflection_service(grpcurl: Grpcurl) -> None:
    described = grpcurl("describe", "grpc.reflection.v1.ServerReflection", token=False)
    assert described.code == 0, described
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in described.out


def test_grpcurl_start_with_json_input(grpcurl: Grpcurl) -> None:
    request = json.dumps({"workflow_id": "sequence", "input_data": {"value": 3}})
    started = grpcurl(f"{SERVICE}/Start", flags=["-d", request])
    assert started.code == 0, started
    result = started.json()["result"]
    assert result["status"] == "RUN_STATUS_SUCCESS"
    assert result["result"] == {"value": 8}
    assert result["step_execution_path"] == ["add_one", "double"]


def test_grpcurl_stream_prints_every_event(grpcurl: Grpcurl) -> None:
    request = json.dumps({"workflow_id": "sequence", "input_data": {"value": 3}})
    streamed = grpcurl(f"{SERVICE}/Stream", flags=["-d", request])
    assert streamed.code == 0, streamed
    events = [reply["event"] for reply in _objects(streamed.out)]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert "workflow_start" in events[0]
    assert events[-1]["workflow_finish"]["status"] == "RUN_STATUS_SUCCESS"
    assert len({e["run_id"] for e in events}) == 1


def test_grpcurl_shows_error_details(grpcurl: Grpcurl) -> None:
    request = json.dumps({"workflow_id": "no-such-workflow", "input_data": {}})
    failed = grpcurl(f"{SERVICE}/Start", flags=["-format-error", "-d", request])
    assert failed.code == GRPCURL_STATUS_BASE + grpc.StatusCode.NOT_FOUND.value[0], failed
    status = failed.status()
    assert status["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-workflow" in status["message"]
    info = next(
        d for d in status["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    )
    assert info["reason"] == "WORKFLOW_NOT_FOUND"
    assert info["metadata"] == {"workflow_id": "no-such-workflow"}


def test_grpcurl_without_the_token_header_is_unauthenticated(grpcurl: Grpcurl) -> None:
    refused = grpcurl(f"{SERVICE}/ListWorkflows", flags=["-format-error", "-d", "{}"], token=False)
    assert refused.code == GRPCURL_STATUS_BASE + grpc.StatusCode.UNAUTHENTICATED.value[0]
    reasons = {d.get("reason") for d in refused.status()["details"]}
    assert "MISSING_CREDENTIALS" in reasons


# -- grpc-health-probe -------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["", SERVICE])
def test_grpc_health_probe_reports_serving(server: Replica, service: str) -> None:
    probed = _run(_tool("grpc-health-probe"), "-addr", server.target, "-service", service)
    assert probed.code == 0, probed
    assert "status: SERVING" in probed.out + probed.err


# -- both reflection versions, asked directly ----------------------------------------------------
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _ask(target: str, version: str, request: Any) -> Any:
    """One reflection request over `version` ("v1" or "v1alpha"); v1's messages are v1alpha's
    under a new package name, identical on the wire."""
    with grpc.insecure_channel(target) as channel:
        if version == "v1alpha":
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([request]), timeout=CALL_SECONDS)
        else:
            call = channel.stream_stream(
                V1_METHOD,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            replies = call(iter([request]), timeout=CALL_SECONDS)
        (reply,) = list(replies)
    return reply


def _file_names(reply: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_both_reflection_versions_answer(server: Replica, version: str) -> None:
    listed = _ask(server.target, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names

    for symbol in (SERVICE, f"{SERVICE}.StartAsync", "stepline.v1.RunEvent"):
        asked = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        reply = _ask(server.target, version, asked)
        assert reply.WhichOneof("message_response") == "file_descriptor_response", symbol
        expected = "stepline/v1/event.proto" if "RunEvent" in symbol else SERVICE_FILE
        assert _file_names(reply)[0] == expected

    unknown = reflection_pb2.ServerReflectionRequest(file_containing_symbol="stepline.v1.Nope")
    reply = _ask(server.target, version, unknown)
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
