"""Bearer tokens with scopes, TLS and mutual TLS, through real channels and certificates
generated here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from pydantic import ValidationError

from stepline.client import Client, PermissionDenied, RunStatus, Unauthenticated
from stepline.server.app import Server
from stepline.server.auth import READ_METHODS, TokenFileError, parse_token_file
from stepline.server.settings import ConfigError, Settings
from stepline.v1 import workflow_service_pb2
from tests.ops_support import BOUND, Certs, make_certs, running

pytestmark = pytest.mark.timeout(60)

SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
STATIC = "static-token-0123456789"
READER = "reader-token-abcdef"
WRITER = "writer-token-ghijkl"
ADMIN = "admin-token-mnopqr"
TOKEN_FILE = f"""
# scopes per token; none listed means all
{READER} read
{WRITER}   write   # a comment after the scopes
{ADMIN}
"""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN_FILE)
    async with running(auth_tokens=[STATIC], auth_token_file=tokens) as started:
        yield started


def _bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{scheme} {token}"),)


async def _call(
    channel: grpc.aio.Channel, method: Any, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Call `method` (a MethodDescriptor) with an empty request; the status it ends with."""
    request = message_factory.GetMessageClass(method.input_type)()
    response = message_factory.GetMessageClass(method.output_type)
    path = f"/{SERVICE.full_name}/{method.name}"
    codecs = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response.FromString,
    }
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, **codecs)(request, metadata=metadata, timeout=BOUND)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path, **codecs)(request, metadata=metadata, timeout=BOUND)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            _check_details(error)
        return error.code()
    return grpc.StatusCode.OK


def _check_details(error: grpc.aio.AioRpcError) -> None:
    """Refusals carry google.rpc.Status details with a stepline ErrorInfo, like every error."""
    status = rpc_status.from_call(error)
    assert status is not None and status.code == error.code().value[0]
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert info.domain == "stepline.dev"
    expected = {
        grpc.StatusCode.UNAUTHENTICATED: {"MISSING_CREDENTIALS", "INVALID_CREDENTIALS"},
        grpc.StatusCode.PERMISSION_DENIED: {"INSUFFICIENT_SCOPE"},
    }[error.code()]
    assert info.reason in expected


async def test_every_rpc_needs_a_valid_token(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        for method in SERVICE.methods:
            assert await _call(channel, method) is grpc.StatusCode.UNAUTHENTICATED, method.name
            for bad in (_bearer("not-a-token"), _bearer(READER, "Basic"), _bearer("", "Bearer")):
                code = await _call(channel, method, bad)
                assert code is grpc.StatusCode.UNAUTHENTICATED, method.name


async def test_health_and_reflection_need_no_token(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=BOUND
        )
        listed = [reply async for reply in call]
        assert listed[0].list_services_response.service


@pytest.mark.parametrize(
    ("token", "allowed"),
    [
        (READER, {"read"}),
        (WRITER, {"write"}),
        (ADMIN, {"read", "write"}),
        (STATIC, {"read", "write"}),
    ],
)
async def test_scopes_decide_which_rpcs_a_token_may_call(
    server: Server, token: str, allowed: set[str]
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        for method in SERVICE.methods:
            scope = "read" if method.name in READ_METHODS else "write"
            # The scheme is case-insensitive: the typed client sends "Bearer", others "bearer".
            code = await _call(channel, method, _bearer(token, "bearer"))
            if scope in allowed:
                # Past auth: the empty request may still be refused for what it says.
                assert code not in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ), method.name
            else:
                assert code is grpc.StatusCode.PERMISSION_DENIED, method.name


async def test_the_typed_client_sends_its_token(server: Server) -> None:
    async with await Client.connect(server.target, token=WRITER) as writer:
        result = await writer.start("chain", {"value": 1}, timeout=BOUND)
        assert result.status is RunStatus.SUCCESS
        with pytest.raises(PermissionDenied) as denied:
            await writer.get_result(result.run_id)
        assert denied.value.metadata == {
            "method": "GetExecutionResult",
            "required_scope": "read",
        }
    async with await Client.connect(server.target) as anonymous:
        with pytest.raises(Unauthenticated) as missing:
            await anonymous.list_workflows()
        assert missing.value.reason == "MISSING_CREDENTIALS"
        assert WRITER not in str(missing.value)


def test_token_file_format() -> None:
    grants = parse_token_file("a read\nb write read\nc\n\n# x\n")
    assert grants == {
        "a": frozenset({"read"}),
        "b": frozenset({"read", "write"}),
        "c": frozenset({"read", "write"}),
    }
    bad_files = {
        "secret-one admin\n": "line 1: unknown scope 'admin'",
        "a\nsecret-one\nsecret-one read\n": "line 3: the same token is listed twice",
        "# nothing\n": "no tokens",
    }
    for text, message in bad_files.items():
        with pytest.raises(TokenFileError) as error:
            parse_token_file(text, source="tokens.txt")
        assert message in str(error.value)
        assert "secret-one" not in str(error.value)


async def test_a_bad_token_file_stops_the_server_before_it_serves(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("abcdefgh superuser\n")
    with pytest.raises(ConfigError, match="line 1: unknown scope"):
        async with running(auth_token_file=tokens):
            pass


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls(certs: Certs, cert: Path | None = None, key: Path | None = None) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def _works(target: str, tls: Any, *, token: str | None = None) -> bool:
    async with await Client.connect(target, tls=tls, token=token) as client:
        try:
            workflows = await client.list_workflows()
        except Exception:  # any failure to connect counts as "no"
            return False
        return bool(workflows)


async def test_tls(certs: Certs) -> None:
    async with running(tls_cert=certs.server_cert, tls_key=certs.server_key) as server:
        assert await _works(server.target, _tls(certs))
        assert not await _works(server.target, None)  # plaintext to a TLS port
        untrusting = grpc.ssl_channel_credentials(root_certificates=certs.rogue_cert.read_bytes())
        assert not await _works(server.target, untrusting)


async def test_mutual_tls_with_a_token(certs: Certs) -> None:
    async with running(
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca,
        tls_require_client_auth=True,
        auth_tokens=[STATIC],
    ) as server:
        target = server.target
        signed = _tls(certs, certs.client_cert, certs.client_key)
        assert await _works(target, signed, token=STATIC)
        assert not await _works(target, signed)  # a certificate does not replace the token
        assert not await _works(target, _tls(certs), token=STATIC)  # no client certificate
        rogue = _tls(certs, certs.rogue_cert, certs.rogue_key)
        assert not await _works(target, rogue, token=STATIC)  # signed by another CA


def test_tls_settings_are_checked_together(certs: Certs, tmp_path: Path) -> None:
    problems: dict[str, dict[str, Any]] = {
        "tls_cert and tls_key go together": {"tls_cert": certs.server_cert},
        "tls_client_ca needs tls_cert": {"tls_client_ca": certs.ca},
        "tls_require_client_auth needs tls_client_ca": {
            "tls_cert": certs.server_cert,
            "tls_key": certs.server_key,
            "tls_require_client_auth": True,
        },
        "is not a readable file": {"tls_cert": tmp_path / "nope", "tls_key": certs.server_key},
    }
    for message, fields in problems.items():
        with pytest.raises(ValidationError, match=message):
            Settings(**fields)


async def test_a_key_that_does_not_match_the_certificate_is_refused(certs: Certs) -> None:
    with pytest.raises(ConfigError, match="not a matching PEM certificate and key"):
        async with running(tls_cert=certs.server_cert, tls_key=certs.client_key):
            pass


async def test_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_AUTH_TOKENS", "first-token-1, second-token-2")
    async with running() as server:
        for token in ("first-token-1", "second-token-2"):
            assert await _works(server.target, None, token=token)
        assert not await _works(server.target, None, token="third-token-3")
