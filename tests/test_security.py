"""Security through real channels, with bearer tokens on and the Redis store.

- Every RPC of WorkflowService (enumerated from the service descriptor, so a new RPC is
  covered by itself) refuses a caller without a valid token (UNAUTHENTICATED) and a token
  without the RPC's scope (PERMISSION_DENIED), before looking at the request: a refused call
  changes nothing (no run, no Redis key). Health checking needs no token.
- Tokens never reach the logs (every record at DEBUG, unredacted) nor the spans.
- Errors never carry stack traces, file paths, memory or network addresses: refusals of
  every kind, a failing step's error as GetExecutionResult and Watch return it, and the
  UNAVAILABLE of an unreachable Redis.
Ids that try to reach another run's keys are in tests/test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from redis.asyncio import Redis

from stepline.client import Client, RunStatus
from stepline.server import Registry, StepContext, Workflow, step
from stepline.server import logs as server_logs
from stepline.server.api.values import to_value
from stepline.server.app import Server
from stepline.server.auth import READ_METHODS, required_scope
from stepline.server.settings import Settings
from stepline.server.store import RedisStore
from stepline.v1 import workflow_service_pb2
from tests.grpc_harness import unpack
from tests.processes import free_port

pytestmark = pytest.mark.timeout(60)

SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
METHODS: list[MethodDescriptor] = list(SERVICE.methods)
BOUND = 10.0
READER = "reader-token-7f3a9c1e"
WRITER = "writer-token-52d0be84"
ADMIN = "admin-token-c4e1f09d"
STATIC = "static-token-9b8a7c6d"
TOKENS = (READER, WRITER, ADMIN, STATIC)
TOKEN_FILE = f"{READER} read\n{WRITER} write\n{ADMIN}\n"

# The documented split (docs/operations.md); anything added later needs `write`.
DOCUMENTED_READ = {"GetExecutionResult", "Watch", "ListRuns", "ListWorkflows", "GetWorkflow"}


# -- workflows -----------------------------------------------------------------------------------


class Payload(BaseModel):
    value: int = 0


class Unshowable:
    """An object whose repr carries a memory address."""


def _deep_in_the_code(depth: int) -> None:
    if depth:
        _deep_in_the_code(depth - 1)
        return
    try:
        empty: dict[str, str] = {}
        empty["secret"]
    except KeyError as err:
        raise RuntimeError(f"could not load {Unshowable()!r}") from err


class Detailed(Exception):
    def __init__(self) -> None:
        super().__init__("failed with details")
        self.details = {"object": Unshowable(), "path": Path("relative/file.txt")}


@step(input=Payload, output=Payload, retries=0)
async def explodes(ctx: StepContext[Payload]) -> Payload:
    if ctx.input.value == 1:
        raise Detailed()
    _deep_in_the_code(5)
    return ctx.input


@step(input=Payload, output=Payload)
async def fine(ctx: StepContext[Payload]) -> Payload:
    logging.getLogger("tests.security").debug("step ran for %s", ctx.run_id)
    return ctx.input


exploding = Workflow("exploding", input=Payload, output=Payload).then(explodes).commit()
fine_flow = Workflow("fine", input=Payload, output=Payload).then(fine).commit()


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Secured:
    server: Server
    store: RedisStore
    admin: Redis
    redis_port: int
    spans: InMemorySpanExporter
    channel: grpc.aio.Channel
    suspended: str  # a suspended run, for requests that need one
    finished: str  # a finished run


@pytest.fixture
async def secured(redis_server: str, tmp_path: Path) -> AsyncIterator[Secured]:
    admin = Redis.from_url(redis_server)
    await admin.flushdb()
    store = RedisStore.from_url(redis_server, prefix=f"secure-{uuid.uuid4().hex[:8]}")
    registry = Registry([exploding, fine_flow])
    registry.load_module("tests.flows")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN_FILE)
    spans = InMemorySpanExporter()
    server = await Server.start(
        Settings(host="127.0.0.1", port=0, auth_tokens=[STATIC], auth_token_file=tokens),
        registry=registry,
        store=store,
        span_exporter=spans,
    )
    channel = grpc.aio.insecure_channel(server.target)
    async with await Client.connect(server.target, token=ADMIN) as client:
        suspended = await client.start("approval", {}, timeout=BOUND)
        finished = await client.start("sequence", {"value": 1}, timeout=BOUND)
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    try:
        yield Secured(server, store, admin, port, spans, channel, suspended.run_id, finished.run_id)
    finally:
        await channel.close()
        await server.stop(grace=1)
        await admin.flushdb()
        await admin.aclose()


def _valid_requests(secured: Secured) -> dict[str, dict[str, Any]]:
    """A request each RPC would carry out for a caller allowed to make it."""
    run, done = secured.suspended, secured.finished
    start = {"workflow_id": "sequence", "input_data": to_value({"value": 1})}
    resume = {"run_id": run, "resume_data": to_value({"approved": True})}
    return {
        "StartAsync": start,
        "Start": start,
        "Stream": start,
        "Resume": resume,
        "ResumeAsync": resume,
        "ResumeStream": resume,
        "Cancel": {"run_id": run},
        "Restart": {"run_id": done},
        "TimeTravel": {"run_id": done, "step": ["double"]},
        "TimeTravelStream": {"run_id": done, "step": ["double"]},
        "GetExecutionResult": {"run_id": run},
        "Watch": {"run_id": done},
        "ListRuns": {},
        "DeleteRun": {"run_id": done},
        "ListWorkflows": {},
        "GetWorkflow": {"workflow_id": "sequence"},
    }


def _request(secured: Secured, method: MethodDescriptor) -> Message:
    fields = _valid_requests(secured)[method.name]  # a new RPC needs an entry above
    message: Message = GetMessageClass(method.input_type)(**fields)
    return message


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None = None

    def status(self) -> Any:
        assert self.error is not None
        status = rpc_status.from_call(self.error)
        assert status is not None, "no google.rpc.Status details"
        return status

    def info(self) -> Any:
        [info] = unpack(self.status(), error_details_pb2.ErrorInfo)
        assert info.domain == "stepline.dev"
        return info


async def call(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    request: Message | bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Outcome:
    path = f"/{SERVICE.full_name}/{method.name}"
    codecs: dict[str, Any] = {
        "request_serializer": lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        "response_deserializer": GetMessageClass(method.output_type).FromString,
    }
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, **codecs)(request, metadata=metadata, timeout=BOUND)

            async def drain() -> None:
                async for _ in stream:
                    pass

            try:
                await asyncio.wait_for(drain(), 2.0)
            except TimeoutError:
                stream.cancel()
        else:
            await channel.unary_unary(path, **codecs)(request, metadata=metadata, timeout=BOUND)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error)
    return Outcome(grpc.StatusCode.OK)


def bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{scheme} {token}"),)


async def _snapshot_of_redis(admin: Redis) -> dict[str, Any]:
    """Every key and its serialized value."""
    return {str(key): await admin.dump(key) for key in await admin.keys("*")}


# -- authentication and scopes -------------------------------------------------------------------

NOT_A_VALID_TOKEN: list[tuple[tuple[str, str], ...]] = [
    (),  # no header at all
    bearer("not-a-token"),
    bearer(READER + "x"),
    bearer(READER[:-1]),
    bearer(ADMIN.upper()),
    bearer(ADMIN, "Basic"),
    bearer(ADMIN, "Token"),
    (("authorization", "Bearer"),),
    (("authorization", "Bearer    "),),
    (("authorization", ADMIN),),  # no scheme
    (("x-api-key", ADMIN),),  # not where a token goes
    (("authorization", "Bearer " + "a" * 6000),),
    (("authorization", f"Bearer {ADMIN} {ADMIN}"),),
]


def test_the_scopes_cover_every_rpc() -> None:
    names = {m.name for m in METHODS}
    assert READ_METHODS == DOCUMENTED_READ and names >= READ_METHODS
    for method in METHODS:
        expected = "read" if method.name in DOCUMENTED_READ else "write"
        assert required_scope(f"/{SERVICE.full_name}/{method.name}") == expected, method.name
    # A method this server does not have yet still needs `write`.
    assert required_scope(f"/{SERVICE.full_name}/SomethingNew") == "write"
    assert required_scope("/grpc.health.v1.Health/Check") is None


async def test_every_rpc_refuses_a_caller_without_a_valid_token(secured: Secured) -> None:
    before = await _snapshot_of_redis(secured.admin)
    for method in METHODS:
        request = _request(secured, method)
        for metadata in NOT_A_VALID_TOKEN:
            outcome = await call(secured.channel, method, request, metadata)
            assert outcome.code is grpc.StatusCode.UNAUTHENTICATED, (method.name, metadata)
            assert outcome.info().reason in {"MISSING_CREDENTIALS", "INVALID_CREDENTIALS"}
            assert outcome.info().reason == (
                "MISSING_CREDENTIALS"
                if not metadata or metadata[0][0] != "authorization"
                else "INVALID_CREDENTIALS"
            ), (method.name, metadata)
        # Bytes that are no request at all: authentication still comes first.
        garbage = await call(secured.channel, method, b"\xff\xff\xff")
        assert garbage.code is grpc.StatusCode.UNAUTHENTICATED, method.name
    assert await _snapshot_of_redis(secured.admin) == before  # nothing was written


async def test_a_token_without_the_scope_is_permission_denied(secured: Secured) -> None:
    before = await _snapshot_of_redis(secured.admin)
    for method in METHODS:
        request = _request(secured, method)
        needs = "read" if method.name in DOCUMENTED_READ else "write"
        wrong = WRITER if needs == "read" else READER
        for metadata in (
            bearer(wrong),
            bearer(wrong, "bearer"),
            bearer(wrong, "BEARER"),
            # Headers do not add up: the first one is the caller's credential.
            (("authorization", f"Bearer {wrong}"), ("authorization", f"Bearer {ADMIN}")),
        ):
            outcome = await call(secured.channel, method, request, metadata)
            assert outcome.code is grpc.StatusCode.PERMISSION_DENIED, (method.name, metadata)
            info = outcome.info()
            assert info.reason == "INSUFFICIENT_SCOPE"
            assert dict(info.metadata) == {"method": method.name, "required_scope": needs}
    assert await _snapshot_of_redis(secured.admin) == before


async def test_a_token_with_the_scope_gets_through(secured: Secured) -> None:
    for method in METHODS:
        token = READER if method.name in DOCUMENTED_READ else WRITER
        for granted in (token, ADMIN, STATIC):
            outcome = await call(
                secured.channel, method, GetMessageClass(method.input_type)(), bearer(granted)
            )
            # Past authentication, an empty request may still be refused for what it says.
            assert outcome.code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), method.name


async def test_health_needs_no_token(secured: Secured) -> None:
    health = health_pb2_grpc.HealthStub(secured.channel)
    for name in ("", SERVICE.full_name):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=BOUND)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    unknown = await call(secured.channel, METHODS[0], b"", bearer("nope"))
    assert unknown.code is grpc.StatusCode.UNAUTHENTICATED
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- tokens stay out of logs and spans -----------------------------------------------------------


@pytest.fixture
def raw_logs() -> Iterator[io.StringIO]:
    """Every record at DEBUG, as `stepline serve --log-level debug --log-format json` writes
    it but with no secrets to redact: what the server logs, not what redaction saves."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cython = logging.getLogger("grpc._cython.cygrpc")
    cython_level = cython.level
    handler = server_logs.configure(level="debug", format="json", secrets=(), stream=stream)
    capture = logging.StreamHandler(stream)  # and each record's arguments and extras, raw
    capture.setFormatter(logging.Formatter("%(message)s %(args)r %(__dict__)s"))
    root.addHandler(capture)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.removeHandler(capture)
        for old in handlers:
            root.addHandler(old)
        root.setLevel(level)
        cython.setLevel(cython_level)


async def test_tokens_never_reach_the_logs_or_the_spans(
    secured: Secured, raw_logs: io.StringIO
) -> None:
    for method in METHODS:
        request = _request(secured, method)
        for token in (*TOKENS, "wrong-" + ADMIN):
            for scheme in ("Bearer", "Basic"):
                await call(secured.channel, method, request, bearer(token, scheme))
    async with await Client.connect(secured.server.target, token=WRITER) as writer:
        done = await writer.start("fine", {"value": 3}, timeout=BOUND)
        assert done.status is RunStatus.SUCCESS
        failed = await writer.start("exploding", {"value": 0}, timeout=BOUND)
        assert failed.status is RunStatus.FAILED
    logged = raw_logs.getvalue()
    assert "rpc " in logged and f"step ran for {done.run_id}" in logged  # DEBUG was on
    assert "refused" in logged  # refusals are logged, by reason
    spans = secured.spans.get_finished_spans()
    assert spans
    exported = "\n".join(span.to_json() for span in spans)
    for token in TOKENS:
        assert token not in logged
        assert token not in exported


# -- no stack traces, no addresses ---------------------------------------------------------------

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _leaks(text: str, redis_port: int) -> list[str]:
    markers = (
        "Traceback",
        'File "',
        "/work/",
        "site-packages",
        '.py"',
        ".py:",
        "redis://",
        f"127.0.0.1:{redis_port}",
        f"localhost:{redis_port}",
    )
    found = [marker for marker in markers if marker in text]
    found += _ADDRESS.findall(text)
    return found


def _error_text(outcome: Outcome) -> str:
    assert outcome.error is not None
    status = outcome.status()
    return f"{outcome.error.details()}\n{MessageToJson(status)}\n{status.SerializeToString()!r}"


async def test_errors_carry_no_stack_traces_or_addresses(secured: Secured) -> None:
    token = bearer(ADMIN)
    async with await Client.connect(secured.server.target, token=ADMIN) as client:
        deep = await client.start("exploding", {"value": 0}, timeout=BOUND)
        detailed = await client.start("exploding", {"value": 1}, timeout=BOUND)
    assert deep.status is RunStatus.FAILED and deep.error is not None
    assert deep.error.message == "could not load <tests.test_security.Unshowable object>"
    assert deep.error.details["cause"]["name"] == "KeyError"
    assert detailed.error is not None
    assert detailed.error.details["details"]["object"] == "<tests.test_security.Unshowable object>"

    by_name = {m.name: m for m in METHODS}
    for run in (deep, detailed):
        result = await call(
            secured.channel,
            by_name["GetExecutionResult"],
            workflow_service_pb2.GetExecutionResultRequest(run_id=run.run_id),
            token,
        )
        assert result.code is grpc.StatusCode.OK
        stream = secured.channel.unary_stream(
            f"/{SERVICE.full_name}/Watch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=GetMessageClass(by_name["Watch"].output_type).FromString,
        )
        watch = workflow_service_pb2.WatchRequest(run_id=run.run_id)
        events = [e async for e in stream(watch, metadata=token)]
        raw_result = await secured.channel.unary_unary(
            f"/{SERVICE.full_name}/GetExecutionResult",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=GetMessageClass(
                by_name["GetExecutionResult"].output_type
            ).FromString,
        )(
            workflow_service_pb2.GetExecutionResultRequest(run_id=run.run_id, include_state=True),
            metadata=token,
        )
        wire = MessageToJson(raw_result) + "".join(MessageToJson(e) for e in events)
        assert "failed" in wire.lower()
        assert _leaks(wire, secured.redis_port) == [], run.run_id

    # Refusals of every kind, and the server's own words in them.
    refusals: list[tuple[str, dict[str, Any], tuple[tuple[str, str], ...]]] = [
        ("GetExecutionResult", {"run_id": "nope"}, token),
        ("StartAsync", {"workflow_id": "nope"}, token),
        ("StartAsync", {"workflow_id": "sequence", "input_data": to_value({"value": "x"})}, token),
        (
            "StartAsync",
            {
                "workflow_id": "sequence",
                "run_id": secured.finished,
                "input_data": to_value({"value": 1}),
            },
            token,
        ),
        ("Resume", {"run_id": secured.finished}, token),
        ("Restart", {"run_id": secured.suspended}, token),
        ("TimeTravel", {"run_id": secured.finished, "step": ["nope"]}, token),
        ("ListRuns", {"page_token": "forged"}, token),
        ("Watch", {"run_id": secured.finished, "after_sequence": -1}, token),
        ("GetWorkflow", {"workflow_id": "nope"}, ()),
        ("DeleteRun", {"run_id": secured.finished}, bearer(READER)),
    ]
    seen: set[grpc.StatusCode] = set()
    for name, fields, metadata in refusals:
        method = by_name[name]
        outcome = await call(
            secured.channel, method, GetMessageClass(method.input_type)(**fields), metadata
        )
        assert outcome.code is not grpc.StatusCode.OK, name
        seen.add(outcome.code)
        assert _leaks(_error_text(outcome), secured.redis_port) == [], name
    malformed = await call(secured.channel, by_name["StartAsync"], b"\x0a\x02\xc3\x28", token)
    assert malformed.code is grpc.StatusCode.INVALID_ARGUMENT
    text = _error_text(malformed)
    assert "DecodeError" not in text and "upb" not in text
    assert _leaks(text, secured.redis_port) == []
    assert seen >= {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }


async def test_an_unreachable_redis_is_unavailable_without_its_address() -> None:
    port = free_port()
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix="unreachable")
    registry = Registry([fine_flow])
    server = await Server.start(Settings(host="127.0.0.1", port=0), registry=registry, store=store)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            by_name = {m.name: m for m in METHODS}
            for name, fields in (
                ("GetExecutionResult", {"run_id": "r1"}),
                ("StartAsync", {"workflow_id": "fine", "input_data": to_value({"value": 1})}),
                ("ListRuns", {}),
            ):
                method = by_name[name]
                outcome = await call(channel, method, GetMessageClass(method.input_type)(**fields))
                assert outcome.code is grpc.StatusCode.UNAVAILABLE, name
                assert outcome.info().reason == "STORE_UNAVAILABLE"
                text = _error_text(outcome)
                assert str(port) not in text and "127.0.0.1" not in text, text
                assert "Connect" not in text and "Errno" not in text, text
                assert unpack(outcome.status(), error_details_pb2.RetryInfo)
    finally:
        await server.stop(grace=1)
