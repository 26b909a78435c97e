"""Hostile requests through a real channel to a real server on the Redis store.

Every field of every request of stepline.v1.WorkflowService gets random and malformed values
(property-based: requests are drawn from the service's descriptors, so a new RPC or field is
fuzzed without touching this file); then the classics one by one: bytes that are not a
request, JSON nested 10,000 levels deep, NaN and Infinity, huge strings and 10 MB messages,
ids full of characters that mean something to Redis, tampered page tokens, unknown enum
numbers, racing requests.

Every call must end with a proper status: OK, or a refusal with the code SPEC §3 names, a
message, and `google.rpc.Status` details (an ErrorInfo always; a BadRequest naming the field
for INVALID_ARGUMENT). Never UNKNOWN or INTERNAL for a caller's mistake, never a stack trace.
After every test (the fixture's teardown): a canary run started first is unchanged, every Redis
key is in the server's namespace and belongs to a run that exists, health is SERVING and a
normal run still succeeds.

Hypothesis runs derandomized with modest example counts (the `stepline-ci` profile), so the
file is quick and repeatable; set STEPLINE_HYPOTHESIS_EXAMPLES to look harder.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from stepline.client import Client, RunStatus
from stepline.server import Registry, StepContext, Workflow, step
from stepline.server.api.values import to_struct, to_value
from stepline.server.app import Server
from stepline.server.context import MAX_JSON_DEPTH
from stepline.server.settings import Settings
from stepline.server.store import RedisStore
from stepline.v1 import run_pb2, workflow_service_pb2
from stepline.v1 import workflow_service_pb2 as pb
from tests.grpc_harness import unpack

pytestmark = pytest.mark.timeout(120)

SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
METHODS: list[MethodDescriptor] = list(SERVICE.methods)
DOMAIN = "stepline.dev"
BOUND = 10.0  # deadline of one call
STREAM_READ = 1.0  # a stream still open after this long (kept open on suspend) is fine
BIG = 64 << 20  # the test channel's own message limits, far above the server's

settings.register_profile(
    "stepline-ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("STEPLINE_HYPOTHESIS_EXAMPLES", "12")),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one server for all examples of a test
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
CI = settings.get_profile("stepline-ci")

# Codes a caller's request may earn. UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED,
# CANCELLED, UNIMPLEMENTED or DATA_LOSS would be the server's fault.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", "redis://", "Error 111")


# -- the server ----------------------------------------------------------------------------------


@step(input=dict, output=dict)
async def echo_step(ctx: StepContext[dict[str, Any]]) -> dict[str, Any]:
    return ctx.input


echo = Workflow("echo", input=dict, output=dict).then(echo_step).commit()
tally = Workflow("tally", input=dict[str, int], output=dict).then(echo_step).commit()

# Runs every test has: the canary must never change; the victims may be hit on purpose.
SUSPENDED_VICTIM = "victim-suspended"
FINISHED_VICTIM = "victim-finished"


@dataclass
class Hostile:
    server: Server
    store: RedisStore
    admin: Redis
    prefix: str
    redis_port: int
    channel: grpc.aio.Channel
    client: Client
    canary: str

    async def call(
        self, method: MethodDescriptor, request: Message | bytes, *, read: float = STREAM_READ
    ) -> Outcome:
        return await invoke(self.channel, method, request, read=read)


@dataclass(frozen=True)
class Outcome:
    method: str
    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None = None

    def __str__(self) -> str:
        detail = self.error.details() if self.error is not None else ""
        return f"{self.method}: {self.code.name} {detail!r}"[:400]


@pytest.fixture
async def hostile(redis_server: str) -> AsyncIterator[Hostile]:
    admin = Redis.from_url(redis_server)
    await admin.flushdb()
    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_server, prefix=prefix)
    registry = Registry([echo, tally])
    registry.load_module("tests.flows")
    server = await Server.start(Settings(host="127.0.0.1", port=0), registry=registry, store=store)
    options = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
    channel = grpc.aio.insecure_channel(server.target, options=options)
    client = await Client.connect(server.target)
    canary = await client.start("sequence", {"value": 1}, resource_id="canary", timeout=BOUND)
    assert canary.status is RunStatus.SUCCESS
    stored = await store.get(canary.run_id)
    events = await store.read_events(canary.run_id, 0)
    await client.start("approval", {"question": "ship?"}, run_id=SUSPENDED_VICTIM, timeout=BOUND)
    await client.start("sequence", {"value": 2}, run_id=FINISHED_VICTIM, timeout=BOUND)
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    state = Hostile(server, store, admin, prefix, port, channel, client, canary.run_id)
    try:
        yield state
        # Whatever the test sent, the server is intact.
        assert await store.get(canary.run_id) == stored, "the canary run changed"
        assert await store.read_events(canary.run_id, 0) == events, "the canary's log changed"
        await _keys_are_namespaced(state)
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        after = await client.start("sequence", {"value": 5}, timeout=BOUND)
        assert (after.status, after.result) == (RunStatus.SUCCESS, {"value": 12})
    finally:
        await client.close()
        await channel.close()
        await server.stop(grace=1)
        await admin.flushdb()
        await admin.aclose()


# A run's keys are `<prefix>:run:{<percent-encoded id>}` and that plus `:events`, `:steps`,
# `:items:<percent-encoded step id>` or `:z` (compacted); the rest are the deployment's own
# queue, indexes and timers.
_ENCODED = r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+|%"


async def _keys_are_namespaced(state: Hostile) -> None:
    prefix = re.escape(state.prefix)
    suffix = rf"(:events|:steps|:z|:items:({_ENCODED}))?"
    run_key = re.compile(rf"{prefix}:run:\{{({_ENCODED})\}}{suffix}")
    own = rf"queue|timers|watchdog|compact|cancel|idx:all|idx:(wf|res):({_ENCODED})"
    other = re.compile(rf"{prefix}:({own})")
    keys = [k.decode() if isinstance(k, bytes) else k for k in await state.admin.keys("*")]
    assert keys
    for key in keys:
        run = run_key.fullmatch(key)
        if run is None:
            assert other.fullmatch(key), f"a key outside the namespace: {key!r}"
            continue
        run_id = "" if run.group(1) == "%" else unquote(run.group(1))
        assert await state.store.get(run_id) is not None, f"a key of no run: {key!r}"


# -- calling -------------------------------------------------------------------------------------


def _serialize(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


async def invoke(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    request: Message | bytes,
    *,
    read: float = STREAM_READ,
) -> Outcome:
    """Call `method` with `request` (a message, or raw bytes sent as they are). A stream still
    open after `read` seconds is cancelled and counts as OK."""
    path = f"/{SERVICE.full_name}/{method.name}"
    response = GetMessageClass(method.output_type)
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path, request_serializer=_serialize, response_deserializer=response.FromString
            )(request, timeout=BOUND)

            async def drain() -> None:
                async for _ in call:
                    pass

            try:
                await asyncio.wait_for(drain(), read)
            except TimeoutError:
                call.cancel()  # kept open on a suspended run: a normal answer
        else:
            await channel.unary_unary(
                path, request_serializer=_serialize, response_deserializer=response.FromString
            )(request, timeout=BOUND)
    except grpc.aio.AioRpcError as error:
        return Outcome(method.name, error.code(), error)
    return Outcome(method.name, grpc.StatusCode.OK)


def check(outcome: Outcome, *, allowed: Iterable[grpc.StatusCode] = REFUSALS) -> Any:
    """A proper answer: OK, or an allowed refusal with a message and rich details, none of
    which tells the caller about the server's insides. Returns the decoded google.rpc.Status
    (None for OK)."""
    if outcome.code is grpc.StatusCode.OK:
        return None
    assert outcome.code in set(allowed), str(outcome)
    error = outcome.error
    assert error is not None
    assert error.details(), str(outcome)
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details: {outcome}"
    assert status.code == outcome.code.value[0]
    infos = unpack(status, error_details_pb2.ErrorInfo)
    assert len(infos) == 1 and infos[0].domain == DOMAIN and infos[0].reason, str(outcome)
    if outcome.code is grpc.StatusCode.INVALID_ARGUMENT:
        [bad_request] = unpack(status, error_details_pb2.BadRequest)
        assert bad_request.field_violations, str(outcome)
        for violation in bad_request.field_violations:
            assert violation.field and violation.description, str(outcome)
    wire = status.SerializeToString().decode(errors="replace") + (error.details() or "")
    for leak in LEAKS:
        assert leak not in wire, f"{leak!r} in {outcome}"
    return status


def violations(status: Any) -> list[tuple[str, str]]:
    [bad_request] = unpack(status, error_details_pb2.BadRequest)
    return [(v.field, v.description) for v in bad_request.field_violations]


def method(name: str) -> MethodDescriptor:
    return SERVICE.methods_by_name[name]


# -- strategies: any request of the service ------------------------------------------------------

REDIS_SPECIAL = [*"{}:*?[]^\\-!\n\r\t %\"'\x00", "a", "é", "🙂", "\u202e", "\ufeff", "\u2028"]
KNOWN = [
    "",
    "sequence",
    "approval",
    "echo",
    "two_approvals",
    "add_one",
    "approve",
    "record",
    "review",
    "approval",
    "label-a",
    SUSPENDED_VICTIM,
    FINISHED_VICTIM,
    "{victim-suspended}",
    "victim-suspended*",
    "*",
    "stepline:queue",
]
hostile_text = st.one_of(
    st.text(max_size=16),
    st.text(alphabet=st.sampled_from(REDIS_SPECIAL), max_size=12),
    st.sampled_from(KNOWN),
    st.text(min_size=257, max_size=400),  # longer than an id may be
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),  # NaN and ±Infinity included
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(hostile_text, json_values, max_size=4)

SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    "google.protobuf.Value": json_values.map(to_value),
    "google.protobuf.Struct": json_objects.map(to_struct),
    "google.protobuf.ListValue": st.lists(json_values, max_size=4).map(
        lambda items: to_value(items).list_value
    ),
    "google.protobuf.Timestamp": st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.integers(-(2**63), 2**63 - 1),
        nanos=st.integers(-(2**31), 2**31 - 1),
    ),
    "google.protobuf.Duration": st.builds(
        duration_pb2.Duration,
        seconds=st.integers(-(2**63), 2**63 - 1),
        nanos=st.integers(-(2**31), 2**31 - 1),
    ),
    "stepline.v1.TracingOptions": st.builds(
        run_pb2.TracingOptions,
        trace_id=st.one_of(hostile_text, st.text("0123456789abcdefABCDEF", max_size=40)),
        metadata=json_objects.map(to_struct),
    ),
}

_INTS: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _is_map(field: Any) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _single(field: Any, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return hostile_text
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind in _INTS:
        low, high = _INTS[kind]
        return st.one_of(st.integers(low, high), st.sampled_from([0, 1, -1, low, high]))
    raise AssertionError(f"no strategy for {field.full_name} (type {kind}): add one")


def _field(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        key = _single(field.message_type.fields_by_name["key"], depth)
        value = _single(field.message_type.fields_by_name["value"], depth)
        return st.dictionaries(key, value, max_size=3)
    if field.is_repeated:
        return st.lists(_single(field, depth), max_size=4)
    return _single(field, depth)


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of this type: every field maybe set, to anything its type allows."""
    if descriptor.full_name in SPECIAL:
        return SPECIAL[descriptor.full_name]
    cls = GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    fields = {field.name: _field(field, depth) for field in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: cls(**values))


# -- every field of every request ----------------------------------------------------------------


@pytest.mark.parametrize("rpc", METHODS, ids=[m.name for m in METHODS])
@CI
@given(data=st.data())
async def test_any_request_gets_a_proper_answer(
    hostile: Hostile, rpc: MethodDescriptor, data: st.DataObject
) -> None:
    request = data.draw(message_strategy(rpc.input_type), label="request")
    outcome = await hostile.call(rpc, request)
    event(outcome.code.name)
    check(outcome)


# A valid request of each RPC, built around a fresh suspended run (`run`) where it needs one;
# the next test replaces one field of it. A new RPC fails the test until it has one here.
def _bases(run: str) -> dict[str, dict[str, Any]]:
    start = {"workflow_id": "echo", "input_data": to_value({"a": [1, "b"]}), "run_id": f"n-{run}"}
    resume = {"run_id": run, "resume_data": to_value({"approved": True}), "label": "approval"}
    travel = {"run_id": FINISHED_VICTIM, "step": ["double"]}
    return {
        "StartAsync": start,
        "Start": start,
        "Stream": start,
        "Resume": resume,
        "ResumeAsync": resume,
        "ResumeStream": resume,
        "Cancel": {"run_id": run},
        "Restart": {"run_id": FINISHED_VICTIM},
        "TimeTravel": travel,
        "TimeTravelStream": travel,
        "GetExecutionResult": {"run_id": run, "include_state": True},
        "Watch": {"run_id": FINISHED_VICTIM},
        "ListRuns": {"workflow_id": "approval", "page_size": 2},
        "DeleteRun": {"run_id": run},
        "ListWorkflows": {},
        "GetWorkflow": {"workflow_id": "sequence"},
    }


@pytest.mark.parametrize("rpc", METHODS, ids=[m.name for m in METHODS])
@CI
@given(data=st.data())
async def test_one_bad_field_in_a_good_request(
    hostile: Hostile, rpc: MethodDescriptor, data: st.DataObject
) -> None:
    run = await hostile.client.start("approval", {"question": "fuzz?"}, timeout=BOUND)
    base = _bases(run.run_id)[rpc.name]
    cls = GetMessageClass(rpc.input_type)
    good = await hostile.call(rpc, cls(**base))
    assert good.code is grpc.StatusCode.OK, str(good)
    if rpc.input_type.fields:
        field = data.draw(st.sampled_from(list(rpc.input_type.fields)), label="field")
        value = data.draw(_field(field, 0), label=field.name)
        # The good request may have used up its run (resumed, canceled, deleted, started).
        run = await hostile.client.start("approval", {"question": "again?"}, timeout=BOUND)
        request = cls(**{**_bases(run.run_id)[rpc.name], field.name: value})
        outcome = await hostile.call(rpc, request)
        event(outcome.code.name)
        check(outcome)


@pytest.mark.parametrize("rpc", METHODS, ids=[m.name for m in METHODS])
@CI
@given(raw=st.binary(max_size=96))
async def test_any_bytes_get_a_proper_answer(
    hostile: Hostile, rpc: MethodDescriptor, raw: bytes
) -> None:
    check(await hostile.call(rpc, raw))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _first_string_field(descriptor: Descriptor) -> Any:
    return next(f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING)


async def test_bytes_that_are_no_request_are_invalid_argument(hostile: Hostile) -> None:
    for rpc in METHODS:
        samples = {"": b"\xff\xff\xff\xff", "truncated": b"\x0a\x20abc"}
        if any(f.type == FieldDescriptor.TYPE_STRING for f in rpc.input_type.fields):
            field = _first_string_field(rpc.input_type)
            samples[field.name] = _length_delimited(field.number, b"ok\xc3\x28\xff")
        for expected, raw in samples.items():
            outcome = await hostile.call(rpc, raw)
            status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
            assert status is not None, str(outcome)
            assert unpack(status, error_details_pb2.ErrorInfo)[0].reason == "MALFORMED_REQUEST"
            [(field_name, description)] = violations(status)
            if expected == "truncated":
                # The request's field number 1 claims more bytes than there are.
                first = rpc.input_type.fields_by_number.get(1)
                expected = first.name if first is not None else ""
                assert description == "is not a valid protobuf encoding"
            elif expected:
                assert description == "is not valid UTF-8"
            assert field_name == (expected or "(request)"), str(outcome)


# -- JSON nested 10,000 levels deep, and just past the limit -------------------------------------

_JSON_TYPES = ("google.protobuf.Value", "google.protobuf.Struct")


def _json_fields(descriptor: Descriptor, depth: int = 0) -> list[list[Any]]:
    """Paths (lists of fields) from a request to every Value or Struct field in it."""
    paths: list[list[Any]] = []
    for field in descriptor.fields:
        if field.message_type is None:
            continue
        if field.message_type.full_name in _JSON_TYPES:
            paths.append([field])
        elif depth < 2:
            target: Any = field.message_type
            if _is_map(field):
                target = field.message_type.fields_by_name["value"].message_type
                if target is None:
                    continue
            paths += [[field, *rest] for rest in _json_fields(target, depth + 1)]
    return paths


def _deep_value(levels: int) -> bytes:
    """A google.protobuf.Value: a list in a list ... `levels` deep, around a string."""
    value = _length_delimited(3, b"bottom")  # Value.string_value
    for _ in range(levels):
        value = _length_delimited(6, _length_delimited(1, value))  # list_value.values
    return value


def _wrap(path: list[Any], json_bytes: bytes) -> bytes:
    """Request bytes holding `json_bytes` (a Value) at `path`."""
    last = path[-1]
    inner = json_bytes
    if last.message_type.full_name == "google.protobuf.Struct":
        entry = _length_delimited(1, b"key") + _length_delimited(2, json_bytes)
        inner = _length_delimited(1, entry)  # Struct.fields
    for field in reversed(path):
        if field is not last and _is_map(field):
            value_number = field.message_type.fields_by_name["value"].number
            inner = _length_delimited(1, b"k") + _length_delimited(value_number, inner)
        inner = _length_delimited(field.number, inner)
    return inner


async def test_json_nested_ten_thousand_levels_in_every_field(hostile: Hostile) -> None:
    deep = _deep_value(10_000)
    tried = 0
    for rpc in METHODS:
        for path in _json_fields(rpc.input_type):
            tried += 1
            outcome = await hostile.call(rpc, _wrap(path, deep))
            status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
            assert status is not None, str(outcome)
            [(field, description)] = violations(status)
            assert field == path[0].name, str(outcome)
            assert "nested too deeply" in description
            # Valid protobuf, only deeper than JSON may nest here: not MALFORMED_REQUEST.
            assert unpack(status, error_details_pb2.ErrorInfo)[0].reason == "VALUE_TOO_DEEP"
    assert tried >= 20  # input_data, initial_state, request_context, ... of every request


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


async def test_json_nests_at_most_32_levels(hostile: Hostile) -> None:
    too_deep = pb.StartAsyncRequest(
        workflow_id="echo",
        input_data=to_value({"a": _nested(MAX_JSON_DEPTH)}),
        request_context=to_struct({"b": _nested(MAX_JSON_DEPTH)}),
    )
    outcome = await hostile.call(method("StartAsync"), too_deep)
    status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
    found = violations(status)
    assert [field for field, _ in found] == [
        "input_data.a" + "[0]" * (MAX_JSON_DEPTH - 1),
        "request_context.b" + "[0]" * (MAX_JSON_DEPTH - 1),
    ]
    assert all("nested too deeply" in description for _, description in found)
    assert unpack(status, error_details_pb2.ErrorInfo)[0].reason == "VALUE_TOO_DEEP"

    # As deep as allowed is stored, run, and can be read back whole from every API.
    deepest = {"a": _nested(MAX_JSON_DEPTH - 1)}
    done = await hostile.client.start(
        "echo", deepest, request_context={"c": _nested(MAX_JSON_DEPTH - 1)}, timeout=BOUND
    )
    assert done.status is RunStatus.SUCCESS and done.result == deepest
    assert (await hostile.client.get_result(done.run_id)).result == deepest
    events = [event async for event in hostile.client.watch(done.run_id)]
    assert events[-1].is_finish


# -- NaN and Infinity ----------------------------------------------------------------------------


async def test_nan_and_infinity_are_refused_where_they_are(hostile: Hostile) -> None:
    start = pb.StartRequest(
        workflow_id="echo",
        input_data=to_value({"x": math.nan, "ok": 1.5}),
        initial_state=to_struct({"y": [1, math.inf]}),
        request_context=to_struct({"z": -math.inf}),
    )
    start.tracing_options.metadata.update({"m": math.nan})
    status = check(
        await hostile.call(method("Start"), start), allowed={grpc.StatusCode.INVALID_ARGUMENT}
    )
    assert [field for field, _ in violations(status)] == [
        "input_data.x",
        "initial_state.y[1]",
        "request_context.z",
        "tracing_options.metadata.m",
    ]
    resume = pb.ResumeRequest(run_id=SUSPENDED_VICTIM, resume_data=to_value({"approved": math.inf}))
    status = check(
        await hostile.call(method("Resume"), resume), allowed={grpc.StatusCode.INVALID_ARGUMENT}
    )
    assert violations(status)[0][0] == "resume_data.approved"
    travel = pb.TimeTravelRequest(
        run_id=FINISHED_VICTIM,
        step=["double"],
        context={
            "add_one": run_pb2.StepResult(
                status=run_pb2.STEP_STATUS_SUCCESS, output=to_value({"value": math.nan})
            )
        },
    )
    status = check(
        await hostile.call(method("TimeTravel"), travel), allowed={grpc.StatusCode.INVALID_ARGUMENT}
    )
    assert violations(status)[0][0] == "context['add_one'].output.value"
    still = await hostile.client.get_result(SUSPENDED_VICTIM)
    assert still.status is RunStatus.SUSPENDED


# -- size ----------------------------------------------------------------------------------------


async def test_ten_megabyte_messages_are_resource_exhausted(hostile: Hostile) -> None:
    ten = b"x" * (10 << 20)
    for rpc in METHODS:
        # A string field when the request has one, else an unknown field: either way 10 MB.
        fields = [f for f in rpc.input_type.fields if f.type == FieldDescriptor.TYPE_STRING]
        raw = _length_delimited(fields[0].number if fields else 99, ten)
        outcome = await hostile.call(rpc, raw, read=BOUND)
        assert outcome.code is grpc.StatusCode.RESOURCE_EXHAUSTED, str(outcome)


async def test_huge_strings(hostile: Hostile) -> None:
    megabyte = "r" * 1_000_000
    # Lookups of a megabyte-long id: NOT_FOUND, with details clipped to fit gRPC's trailers.
    for name, request in [
        ("GetExecutionResult", pb.GetExecutionResultRequest(run_id=megabyte)),
        ("Cancel", pb.CancelRequest(run_id=megabyte)),
        ("Watch", pb.WatchRequest(run_id=megabyte)),
        ("DeleteRun", pb.DeleteRunRequest(run_id=megabyte)),
        ("GetWorkflow", pb.GetWorkflowRequest(workflow_id=megabyte)),
        ("Resume", pb.ResumeRequest(run_id="é" * 100_000)),
    ]:
        outcome = await hostile.call(method(name), request)
        status = check(outcome, allowed={grpc.StatusCode.NOT_FOUND})
        assert len(status.SerializeToString()) < 4096, name

    # A start naming such ids is refused field by field.
    start = pb.StartAsyncRequest(
        workflow_id="echo",
        run_id=megabyte,
        resource_id=megabyte,
        request_id=megabyte,
        input_data=to_value({}),
    )
    status = check(
        await hostile.call(method("StartAsync"), start), allowed={grpc.StatusCode.INVALID_ARGUMENT}
    )
    assert [field for field, _ in violations(status)] == ["run_id", "resource_id", "request_id"]

    # Hundreds of problems with long non-ASCII paths: the first ones, and how many more.
    keys = {"κλειδί-" * 40 + str(i): "not a number" for i in range(300)}
    bad = pb.StartAsyncRequest(workflow_id="tally", input_data=to_value(keys))
    outcome = await hostile.call(method("StartAsync"), bad)
    status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
    assert 1 <= len(violations(status)) <= 10
    [info] = unpack(status, error_details_pb2.ErrorInfo)
    assert int(info.metadata["omitted_violations"]) == 300 - len(violations(status))

    # 3 MB of input is accepted (under the 4 MiB limit), and the run works; its result is
    # larger than a message may be, so reading it whole is RESOURCE_EXHAUSTED, not an error.
    large = {"blob": "🙂" * 750_000}
    started = await hostile.client.start_async("echo", large)
    outcome = await hostile.call(
        method("GetExecutionResult"),
        pb.GetExecutionResultRequest(
            run_id=started.run_id, wait_timeout=duration_pb2.Duration(seconds=5)
        ),
    )
    assert outcome.code is grpc.StatusCode.RESOURCE_EXHAUSTED, str(outcome)
    listed = await hostile.client.list_runs(workflow_id="echo")
    assert started.run_id in [run.run_id for run in listed.runs]
    await hostile.client.delete_run(started.run_id)


# -- ids that mean something to Redis ------------------------------------------------------------

REDIS_IDS = [
    "{",
    "}",
    "{}",
    "{victim-suspended}",
    "a:b",
    "run:{x}:events",
    "*",
    "?",
    "[a-z]",
    "a b",
    " ",
    "%",
    "%41",
    "A",
    "%7B",
    "ü🙂",
    "\u202eevil",
    "stepline:queue",
    "..",
    "/",
]


async def test_ids_that_mean_something_to_redis(hostile: Hostile) -> None:
    client = hostile.client
    for run_id in REDIS_IDS:
        resource_id = f"res:{run_id}*"
        done = await client.start(
            "echo", {"id": run_id}, run_id=run_id, resource_id=resource_id, timeout=BOUND
        )
        assert (done.run_id, done.status) == (run_id, RunStatus.SUCCESS)
        assert done.result == {"id": run_id}
        again = await client.get_result(run_id)
        assert again == done
        mine = await client.list_runs(resource_id=resource_id)
        assert [run.run_id for run in mine.runs] == [run_id]
    # "%41" and "A" are different runs; "{victim-suspended}" is not the victim.
    assert (await client.get_result("%41")).input == {"id": "%41"}
    assert (await client.get_result("A")).input == {"id": "A"}
    victim = await client.get_result(SUSPENDED_VICTIM)
    assert victim.status is RunStatus.SUSPENDED
    listed = await client.list_runs(workflow_id="echo", page_size=1000)
    assert sorted(run.run_id for run in listed.runs) == sorted(REDIS_IDS)
    for pattern in ("*", "?", "[a-z]", "{"):
        await client.delete_run(pattern)  # deletes that run, never what the pattern matches
    listed = await client.list_runs(workflow_id="echo", page_size=1000)
    assert sorted(run.run_id for run in listed.runs) == sorted(
        set(REDIS_IDS) - {"*", "?", "[a-z]", "{"}
    )
    assert (await client.get_result(SUSPENDED_VICTIM)).status is RunStatus.SUSPENDED

    # Workflow ids are looked up, never used as patterns; control characters are refused.
    for workflow_id in ("*", "sequence*", "{sequence}", "seq?ence"):
        outcome = await hostile.call(
            method("StartAsync"), pb.StartAsyncRequest(workflow_id=workflow_id)
        )
        assert outcome.code is grpc.StatusCode.NOT_FOUND, str(outcome)
        check(outcome)
        listed_wf = await client.list_runs(workflow_id=workflow_id)
        assert listed_wf.runs == ()
    for control in ("a\nb", "\x00", "tab\there", "\x7f"):
        outcome = await hostile.call(
            method("StartAsync"),
            pb.StartAsyncRequest(
                workflow_id="echo", run_id=control, resource_id=control, input_data=to_value({})
            ),
        )
        status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
        assert [field for field, _ in violations(status)] == ["run_id", "resource_id"]


# -- page tokens and enum numbers ----------------------------------------------------------------


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


FORGED = [
    [1.0, "x"],
    [1e308, "{*}"],
    [-1, ""],
    [0, "\u0000"],
    ["1", "x"],
    [1, 2],
    [None, "x"],
    [True, "x"],
    [1, "x", "extra"],
    {"after": 1},
    "NaN",
    [[1], "x"],
]


@CI
@given(
    token=st.one_of(
        st.text(max_size=64),
        st.binary(max_size=48).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
        st.sampled_from(FORGED).map(_token),
        st.sampled_from(
            ["W05hTiwgIngiXQ==", "WzEsICJ4Il0", "=", "====", "!!", "W0luZmluaXR5LCAieCJd"]
        ),
    ),
    page_size=st.integers(-5, 1005),
)
async def test_tampered_page_tokens(hostile: Hostile, token: str, page_size: int) -> None:
    request = pb.ListRunsRequest(page_token=token, page_size=page_size)
    outcome = await hostile.call(method("ListRuns"), request)
    status = check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})
    if status is not None:
        assert {field for field, _ in violations(status)} <= {"page_token", "page_size"}


async def test_genuine_tokens_flipped_bit_by_bit(hostile: Hostile) -> None:
    for value in range(4):
        await hostile.client.start("sequence", {"value": value}, timeout=BOUND)
    first = await hostile.client.list_runs(page_size=2)
    token = first.next_page_token
    assert token
    for index in range(len(token)):
        for replacement in ("A", "_", "=", "*"):
            tampered = token[:index] + replacement + token[index + 1 :]
            outcome = await hostile.call(
                method("ListRuns"), pb.ListRunsRequest(page_token=tampered, page_size=2)
            )
            check(outcome, allowed={grpc.StatusCode.INVALID_ARGUMENT})


async def test_unknown_enum_numbers(hostile: Hostile) -> None:
    for number in (99, -1, 2**31 - 1, -(2**31)):
        unknown = run_pb2.RunStatus.ValueType(number)
        request = pb.ListRunsRequest(statuses=[run_pb2.RUN_STATUS_SUCCESS, unknown])
        status = check(
            await hostile.call(method("ListRuns"), request),
            allowed={grpc.StatusCode.INVALID_ARGUMENT},
        )
        assert violations(status) == [("statuses[1]", f"{number} is not a known run status")]
        step_status = run_pb2.StepStatus.ValueType(number)
        travel = pb.TimeTravelRequest(
            run_id=FINISHED_VICTIM,
            step=["double"],
            context={"add_one": run_pb2.StepResult(status=step_status)},
        )
        status = check(
            await hostile.call(method("TimeTravel"), travel),
            allowed={grpc.StatusCode.INVALID_ARGUMENT},
        )
        assert violations(status)[0][0] == "context['add_one'].status"


# -- racing --------------------------------------------------------------------------------------


async def test_racing_writes_to_one_run_are_aborted_not_internal(hostile: Hostile) -> None:
    """Concurrent time travels of one run: one wins each round; a loser is told to retry
    (ABORTED) or that the run is now running (FAILED_PRECONDITION)."""
    rpc = method("TimeTravel")
    for _ in range(3):
        request = pb.TimeTravelRequest(run_id=FINISHED_VICTIM, step=["double"])
        outcomes = await asyncio.gather(*(hostile.call(rpc, request) for _ in range(8)))
        for outcome in outcomes:
            check(outcome, allowed={grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION})
        assert any(outcome.code is grpc.StatusCode.OK for outcome in outcomes)
    delete = pb.DeleteRunRequest(run_id=FINISHED_VICTIM)
    deletes = await asyncio.gather(*(hostile.call(method("DeleteRun"), delete) for _ in range(6)))
    for outcome in deletes:
        check(outcome, allowed={grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})
