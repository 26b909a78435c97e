"""OpenTelemetry spans per RPC, per run pass and per step, caught by the in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from stepline.client import Client, RunStatus
from stepline.server.app import Server
from stepline.server.store import Store
from stepline.v1 import run_pb2, workflow_service_pb2_grpc
from stepline.v1 import workflow_service_pb2 as pb
from tests.ops_support import BOUND, eventually, running

pytestmark = pytest.mark.timeout(60)

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def server(exporter: InMemorySpanExporter, store: Store) -> AsyncIterator[Server]:
    """On each store: the trace id a resumed pass uses is read back from the stored run."""
    async with running(store=store, span_exporter=exporter) as started:
        yield started


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with await Client.connect(server.target) as connected:
        yield connected


def _trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


def _named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


async def _spans(exporter: InMemorySpanExporter, *names: str) -> tuple[ReadableSpan, ...]:
    """The finished spans, once every name in `names` is among them (bounded wait)."""

    def ready() -> tuple[ReadableSpan, ...] | None:
        spans = exporter.get_finished_spans()
        return spans if all(_named(spans, name) for name in names) else None

    return await eventually(ready)


async def test_spans_carry_the_callers_trace_id_and_metadata(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    result = await client.start(
        "fork",
        {"value": 2},
        trace_id="abc",
        trace_metadata={"tenant": "acme", "attempt": 2, "tags": ["a", "b"]},
        timeout=BOUND,
    )
    assert result.status is RunStatus.SUCCESS
    trace_id = "0" * 29 + "abc"  # left-padded to 32
    assert result.trace_id == trace_id

    spans = await _spans(exporter, "run fork", "step total", "stepline.v1.WorkflowService/Start")
    (rpc,) = _named(spans, "stepline.v1.WorkflowService/Start")
    (run,) = _named(spans, "run fork")
    steps = [span for span in spans if span.name.startswith("step ")]
    assert {s.name for s in steps} == {"step double", "step triple", "step total"}
    assert {_trace(span) for span in (rpc, run, *steps)} == {trace_id}

    # The RPC span: SERVER kind, a root of the caller's trace (no traceparent was sent).
    assert rpc.kind is SpanKind.SERVER and rpc.parent is None
    assert _attr(rpc, "rpc.method") == "Start" and _attr(rpc, "rpc.grpc.status_code") == 0
    assert _attr(rpc, "stepline.run_id") == result.run_id
    # The run span is the root of the run's spans and carries the tracing metadata.
    assert run.parent is None
    assert _attr(run, "stepline.run_id") == result.run_id
    assert _attr(run, "stepline.workflow_id") == "fork"
    assert _attr(run, "stepline.reason") == "start"
    assert _attr(run, "stepline.status") == "success"
    assert _attr(run, "stepline.trace_metadata.tenant") == "acme"
    assert _attr(run, "stepline.trace_metadata.attempt") == 2
    assert _attr(run, "stepline.trace_metadata.tags") == '["a", "b"]'
    # Steps (parallel ones too) are its children, and lie within it.
    for step in steps:
        assert step.parent is not None and step.parent.span_id == _id(run)
        assert _attr(step, "stepline.step.status") == "success"
        assert step.status.status_code is StatusCode.OK
        assert run.start_time is not None and step.start_time is not None
        assert run.end_time is not None and step.end_time is not None
        assert run.start_time <= step.start_time <= step.end_time <= run.end_time
    (double,) = _named(spans, "step double")
    assert [event.name for event in double.events] == ["output"]


async def test_an_incoming_traceparent_is_honoured(
    server: Server, exporter: InMemorySpanExporter
) -> None:
    """With no tracing_options, the run joins the caller's trace from `traceparent`."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        response = await stub.Start(
            pb.StartRequest(workflow_id="chain", input_data=_value({"value": 1})),
            metadata=(("traceparent", traceparent),),
            timeout=BOUND,
        )
    assert response.result.trace_id == CALLER_TRACE

    spans = await _spans(exporter, "run chain", "stepline.v1.WorkflowService/Start")
    (rpc,) = _named(spans, "stepline.v1.WorkflowService/Start")
    assert rpc.parent is not None and rpc.parent.is_remote
    assert format(rpc.parent.span_id, "016x") == CALLER_SPAN
    assert {_trace(span) for span in spans} == {CALLER_TRACE}


async def test_a_resumed_run_joins_its_original_trace(
    server: Server, client: Client, exporter: InMemorySpanExporter
) -> None:
    suspended = await client.start("approval", {"value": 1}, trace_id="feed", timeout=BOUND)
    assert suspended.status is RunStatus.SUSPENDED
    first = await _spans(exporter, "run approval", "step review")
    (review,) = _named(first, "step review")
    assert _attr(review, "stepline.step.status") == "suspended"
    assert [event.name for event in review.events] == ["suspended"]
    (first_pass,) = _named(first, "run approval")
    assert _attr(first_pass, "stepline.status") == "suspended"
    exporter.clear()

    # The resume comes from another caller, in another trace.
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        resumed = await stub.Resume(
            pb.ResumeRequest(run_id=suspended.run_id, resume_data=_value({"approved": True})),
            metadata=(("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),),
            timeout=BOUND,
        )
    assert resumed.result.status == run_pb2.RUN_STATUS_SUCCESS

    spans = await _spans(exporter, "run approval", "step double")
    (rpc,) = _named(spans, "stepline.v1.WorkflowService/Resume")
    assert _trace(rpc) == CALLER_TRACE
    (second_pass,) = _named(spans, "run approval")
    assert _trace(second_pass) == "0" * 28 + "feed"
    assert _attr(second_pass, "stepline.reason") == "resume"
    for name in ("step review", "step double"):
        (step,) = _named(spans, name)
        assert _trace(step) == "0" * 28 + "feed"
        assert step.parent is not None and step.parent.span_id == _id(second_pass)
    (review_again,) = _named(spans, "step review")
    assert _attr(review_again, "stepline.step.resumed") is True


async def test_a_failure_marks_the_step_and_the_run(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    result = await client.start("broken", {"value": 1}, timeout=BOUND)
    assert result.status is RunStatus.FAILED
    spans = await _spans(exporter, "run broken", "step explode")
    (step,) = _named(spans, "step explode")
    assert step.status.status_code is StatusCode.ERROR
    assert step.status.description == "cannot handle 2"
    assert _attr(step, "stepline.error.name") == "NonRetryableError"
    (run,) = _named(spans, "run broken")
    assert run.status.status_code is StatusCode.ERROR
    assert _attr(run, "stepline.status") == "failed"


async def test_a_failed_rpc_records_its_code(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(Exception, match="RUN_NOT_FOUND"):
        await client.get_result("missing-run")
    spans = await _spans(exporter, "stepline.v1.WorkflowService/GetExecutionResult")
    (rpc,) = spans
    assert _attr(rpc, "rpc.grpc.status_code") == grpc.StatusCode.NOT_FOUND.value[0]
    assert _attr(rpc, "stepline.run_id") == "missing-run"
    assert rpc.status.status_code is StatusCode.ERROR


def _value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


async def test_a_nested_workflows_steps_are_children_of_the_step_running_it(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    result = await client.start("nested", {"value": 1}, timeout=BOUND)
    assert result.status is RunStatus.SUCCESS
    spans = await _spans(exporter, "run nested", "step triple")
    (run,) = _named(spans, "run nested")
    (chain,) = _named(spans, "step chain")
    assert chain.parent is not None and chain.parent.span_id == _id(run)
    for name in ("step chain.add_one", "step chain.double"):
        (inner,) = _named(spans, name)
        assert inner.parent is not None and inner.parent.span_id == _id(chain)


async def test_a_pass_woken_by_a_timer_is_traced_in_the_same_trace(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    result = await client.start("napping", {"value": 1}, trace_id="5eed", timeout=BOUND)
    assert result.status is RunStatus.SUCCESS
    spans = await _spans(exporter, "step add_one")
    passes = _named(spans, "run napping")
    assert [_attr(span, "stepline.reason") for span in passes] == ["start", "wake"]
    assert [_attr(span, "stepline.status") for span in passes] == ["waiting", "success"]
    assert {_trace(span) for span in spans if span.name != "stepline.v1.WorkflowService/Start"} == {
        "0" * 28 + "5eed"
    }
    (nap,) = [span for span in spans if span.name.startswith("step sleep_")]
    assert nap.parent is not None and nap.parent.span_id == _id(passes[1])
    assert nap.end_time is not None and nap.start_time is not None
    assert nap.end_time - nap.start_time >= 1.0e9  # the whole sleep, across both passes
