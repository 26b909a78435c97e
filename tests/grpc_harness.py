"""A real Stepline server on 127.0.0.1:0 over each store, and what the gRPC tests share.

Test modules import the fixture functions (`*_fixture`; pytest registers them under the names
`server`, `client`, `stub` and `release_gates`). Every fixture is per test: a fresh store
(memory, or Redis under its own prefix in a flushed database: conftest's `store`), a server
running `tests.flows`, the typed `Client`, and a bare stub for requests the client can't make.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from stepline.client import Client, EventType, RunEvent, RunResult, SteplineError
from stepline.server.app import Server
from stepline.server.settings import Settings
from stepline.server.store import Store
from stepline.v1 import workflow_service_pb2_grpc
from tests import flows

# Every wait in these tests is bounded by this; a healthy run settles in milliseconds.
BOUND = 10.0
DOMAIN = "stepline.dev"
TYPE_PREFIX = "type.googleapis.com/google.rpc."

Stub: TypeAlias = workflow_service_pb2_grpc.WorkflowServiceStub
Gate: TypeAlias = Callable[[str], asyncio.Event]
M = TypeVar("M", bound=Message)


@pytest.fixture(name="server")
async def server_fixture(store: Store) -> AsyncIterator[Server]:
    """A server over the test's store. `Server.stop` closes the store; the `store` fixture's
    own teardown closes it again, which both stores tolerate."""
    started = await Server.start(
        Settings(host="127.0.0.1", port=0, workflows=["tests.flows"]), store=store
    )
    try:
        yield started
    finally:
        await started.stop(grace=1)


@pytest.fixture(name="client")
async def client_fixture(server: Server) -> AsyncIterator[Client]:
    connected = await Client.connect(server.target)
    try:
        yield connected
    finally:
        await connected.close()


@pytest.fixture(name="stub")
async def stub_fixture(server: Server) -> AsyncIterator[Stub]:
    """A bare generated stub on its own channel."""
    channel = grpc.aio.insecure_channel(server.target)
    try:
        yield workflow_service_pb2_grpc.WorkflowServiceStub(channel)
    finally:
        await channel.close()


@pytest.fixture(name="release_gates")
def release_gates_fixture(server: Server) -> Iterator[Gate]:
    """`flows.gate`, with every gate it made opened at teardown (before the server stops),
    so a test that fails half-way leaves no step waiting."""
    made: list[str] = []

    def hold(run_id: str) -> asyncio.Event:
        made.append(run_id)
        return flows.gate(run_id)

    yield hold
    for run_id in made:
        gate = flows.GATES.pop(run_id, None)
        if gate is not None:
            gate.set()


# -- event streams -------------------------------------------------------------------------------


def kinds(events: Iterable[RunEvent]) -> list[str]:
    """Event types, with the step id where there is one: `step-start:add_one`."""
    return [f"{e.type.value}:{e.step_id}" if e.step_id else e.type.value for e in events]


def sequences(events: Iterable[RunEvent]) -> list[int]:
    return [e.sequence for e in events]


async def collect(events: AsyncIterator[RunEvent], *, limit: float = BOUND) -> list[RunEvent]:
    """Every event of a stream that must end by itself within `limit` seconds."""

    async def drain() -> list[RunEvent]:
        return [event async for event in events]

    return await asyncio.wait_for(drain(), limit)


async def until(
    events: AsyncIterator[RunEvent], stop: Callable[[RunEvent], bool], *, limit: float = BOUND
) -> list[RunEvent]:
    """Events up to and including the first that satisfies `stop`; the stream stays open."""
    seen: list[RunEvent] = []

    async def read() -> None:
        async for event in events:
            seen.append(event)
            if stop(event):
                return
        raise AssertionError(f"stream ended before the awaited event: {kinds(seen)}")

    await asyncio.wait_for(read(), limit)
    return seen


async def close(events: AsyncIterator[RunEvent]) -> None:
    """Drop a stream the way a caller that stops iterating does: its RPC is cancelled."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


def is_step_start(step_id: str) -> Callable[[RunEvent], bool]:
    return lambda event: event.type is EventType.STEP_START and event.step_id == step_id


def is_finish(event: RunEvent) -> bool:
    return event.is_finish


async def settled(client: Client, run_id: str) -> RunResult:
    """The run's result once it settles (bounded)."""
    result = await client.get_result(run_id, wait=BOUND, timeout=BOUND + 2)
    assert result.status.settled, f"run {run_id} did not settle: {result.status}"
    return result


# -- error details -------------------------------------------------------------------------------


def detail(error: SteplineError, kind: str) -> Mapping[str, Any]:
    """The one status detail of type `google.rpc.<kind>` a typed client error carries."""
    found = [d for d in error.details if d.get("@type") == TYPE_PREFIX + kind]
    assert len(found) == 1, f"expected one {kind} in {error.details}"
    return found[0]


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The `google.rpc.Status` a failed raw call carried in its trailers."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carried no google.rpc.Status details"
    assert status.code == error.code().value[0]
    return status


def unpack(status: status_pb2.Status, kind: type[M]) -> list[M]:
    """Every detail of `kind` in `status`."""
    found: list[M] = []
    for packed in status.details:
        message = kind()
        if packed.Is(message.DESCRIPTOR):
            packed.Unpack(message)
            found.append(message)
    return found


def error_info(status: status_pb2.Status) -> Any:
    """The single stepline ErrorInfo every error status carries."""
    infos = unpack(status, error_details_pb2.ErrorInfo)
    assert len(infos) == 1 and infos[0].domain == DOMAIN, status
    return infos[0]
