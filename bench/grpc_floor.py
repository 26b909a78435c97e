"""The floor under W1: what a Python gRPC server costs when it does nothing at all.

A `grpc.aio` server on uvloop (as `stepline serve` runs) answers `WorkflowService.Start` with
a canned StartResponse the size of a real 3-step run's, no engine and no store; the client
calls it as the bench's W1 does (4 channels, sequential, then 64 in flight). Whatever this
reports bounds what Stepline's W1 can reach on the same machine: Stepline adds the engine,
the store and Redis on top of these calls.

    python bench/grpc_floor.py [--calls 4000] [--concurrency 64]

Prints a table and one JSON line. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psutil
from google.protobuf import struct_pb2, timestamp_pb2

from stepline.v1 import event_pb2, run_pb2, workflow_service_pb2_grpc
from stepline.v1 import workflow_service_pb2 as pb

CHANNELS = 4


def canned_response() -> pb.StartResponse:
    """A StartResponse shaped like a finished `bench_add3` run's (three steps, each with its
    payload, output and times)."""

    def num(value: int) -> struct_pb2.Value:
        return struct_pb2.Value(
            struct_value=struct_pb2.Struct(fields={"value": struct_pb2.Value(number_value=value)})
        )

    at = timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=123_000_000)
    result = run_pb2.RunResult(
        run_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        workflow_id="bench_add3",
        status=run_pb2.RUN_STATUS_SUCCESS,
        result=num(4),
        input=num(1),
    )
    for i, step_id in enumerate(("add_1", "add_2", "add_3")):
        step = result.steps[step_id]
        step.status = run_pb2.STEP_STATUS_SUCCESS
        step.payload.CopyFrom(num(i + 1))
        step.output.CopyFrom(num(i + 2))
        step.started_at.CopyFrom(at)
        step.ended_at.CopyFrom(at)
    return pb.StartResponse(result=result)


def canned_events() -> list[pb.StreamResponse]:
    """The eight events of a `bench_add3` run as a Stream sends them."""
    out = [pb.StreamResponse(event=event_pb2.RunEvent(run_id="r", sequence=1))]
    for i in range(3):
        out.append(pb.StreamResponse(event=event_pb2.RunEvent(run_id="r", sequence=2 + 2 * i)))
        out.append(pb.StreamResponse(event=event_pb2.RunEvent(run_id="r", sequence=3 + 2 * i)))
    out.append(pb.StreamResponse(event=event_pb2.RunEvent(run_id="r", sequence=8)))
    return out


def _serve(port: int, ready: Any) -> None:
    import uvloop

    reply = canned_response()

    async def start(request: pb.StartRequest, context: Any) -> pb.StartResponse:
        return reply

    events = canned_events()

    async def stream(request: pb.StreamRequest, context: Any) -> AsyncIterator[pb.StreamResponse]:
        for event in events:
            yield event

    handler = grpc.method_handlers_generic_handler(
        "stepline.v1.WorkflowService",
        {
            "Start": grpc.unary_unary_rpc_method_handler(
                start,
                request_deserializer=pb.StartRequest.FromString,
                response_serializer=pb.StartResponse.SerializeToString,
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=pb.StreamRequest.FromString,
                response_serializer=pb.StreamResponse.SerializeToString,
            ),
        },
    )

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _drive(
    target: str, calls: int, concurrency: int, server: psutil.Process
) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
    stubs = [workflow_service_pb2_grpc.WorkflowServiceStub(ch) for ch in channels]
    request = pb.StartRequest(workflow_id="bench_add3")
    for ch in channels:
        await ch.channel_ready()
    for i in range(200):
        await stubs[i % CHANNELS].Start(request)

    latencies = []
    for _ in range(calls // 4):
        began = time.perf_counter()
        await stubs[0].Start(request)
        latencies.append(time.perf_counter() - began)

    firsts, finishes = [], []
    for _ in range(calls // 4):
        began = time.perf_counter()
        first = None
        async for _reply in stubs[0].Stream(pb.StreamRequest(workflow_id="bench_add3")):
            if first is None:
                first = time.perf_counter() - began
        firsts.append(first or 0.0)
        finishes.append(time.perf_counter() - began)

    before = server.cpu_times()
    queue = iter(range(calls))

    async def caller(index: int) -> None:
        for _ in queue:
            await stubs[index % CHANNELS].Start(request)

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    after = server.cpu_times()
    for ch in channels:
        await ch.close()
    cpu = (after.user + after.system - before.user - before.system) / calls
    return {
        "seq_p50_ms": round(statistics.median(latencies) * 1000, 4),
        "stream_first_p50_ms": round(statistics.median(firsts) * 1000, 4),
        "stream_finish_p50_ms": round(statistics.median(finishes) * 1000, 4),
        "conc_calls_per_s": round(calls / elapsed, 1),
        "server_cpu_us_per_call": round(cpu * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    port = _free_port()
    ready = multiprocessing.Event()
    process = multiprocessing.Process(target=_serve, args=(port, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(20):
            raise SystemExit("grpc_floor: the server did not start")
        assert process.pid is not None
        figures = asyncio.run(
            _drive(f"127.0.0.1:{port}", args.calls, args.concurrency, psutil.Process(process.pid))
        )
    finally:
        process.terminate()
        process.join(10)
    rows = [
        ("bare grpc.aio Start, sequential p50", f"{figures['seq_p50_ms']:.3f} ms"),
        (
            f"bare grpc.aio Start, {args.concurrency} in flight",
            f"{figures['conc_calls_per_s']:,.0f} calls/s",
        ),
        ("server CPU per call", f"{figures['server_cpu_us_per_call']:.0f} us"),
        ("bare Stream of 8 events, first p50", f"{figures['stream_first_p50_ms']:.3f} ms"),
        ("bare Stream of 8 events, last p50", f"{figures['stream_finish_p50_ms']:.3f} ms"),
    ]
    for name, value in [("figure", "value"), *rows]:
        print(f"{name:<40} {value}")
    print(json.dumps({"bench": "grpc_floor", "calls": args.calls, **figures}))


if __name__ == "__main__":
    main()
