"""The client's typed errors, decoded from a real grpc.aio server on 127.0.0.1:0.

The server is the real WorkflowServicer (so statuses come from api/errors.py) over a scripted
RunService that raises or answers what each test sets up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from stepline.client import (
    Aborted,
    Client,
    ConcurrentModification,
    CursorExpired,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MultipleSuspendedSteps,
    NotFound,
    NotSuspended,
    ResumeAlreadyClaimed,
    RunAlreadyExists,
    RunNotFound,
    RunStatus,
    SteplineError,
    StepNotSuspended,
    SyncClient,
    Unavailable,
    Unimplemented,
    WorkflowNotFound,
)
from stepline.client import client as client_module
from stepline.server import errors as engine
from stepline.server.api import add_services
from stepline.server.events import Event, EventType, StepOutput, WorkflowFinish
from stepline.server.model import RunStatus as EngineStatus
from stepline.server.model import Snapshot
from stepline.server.runs import (
    Canceled,
    RestartParams,
    Resumed,
    ResumeParams,
    RunService,
    Started,
    StartParams,
)
from stepline.server.store import StoredRun
from stepline.server.workflows import Workflow


class ScriptedService(RunService):
    """A RunService whose answers the test scripts; `error` is raised by every call."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.run = StoredRun(
            snapshot=Snapshot(run_id="r1", workflow_id="wf", status=EngineStatus.RUNNING),
            version=1,
            last_sequence=3,
            cancel_requested=False,
            leased=True,
        )
        self.wait_hook: Callable[[float | None], Awaitable[None]] | None = None
        self.wait_timeouts: list[float | None] = []
        self.wait_cancelled = asyncio.Event()
        # One list of events (or a trailing exception) per watch call, in order.
        self.watch_script: list[list[Event | Exception]] = []
        self.watch_cursors: list[int] = []
        self.starts: list[StartParams] = []

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def list_workflows(self) -> list[Workflow]:
        self._raise()
        return []

    def get_workflow(self, workflow_id: str) -> Workflow:
        self._raise()
        raise engine.WorkflowNotFound(workflow_id)

    async def start(self, params: StartParams) -> Started:
        self._raise()
        self.starts.append(params)
        return Started(run_id=params.run_id or "r1", created=True, status=EngineStatus.PENDING)

    async def wait(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        timeout: float | None = None,
    ) -> StoredRun:
        self._raise()
        self.wait_timeouts.append(timeout)
        try:
            if self.wait_hook is not None:
                await self.wait_hook(timeout)
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise
        return self.run

    async def resume(self, params: ResumeParams) -> Resumed:
        self._raise()
        return Resumed(run_id=params.run_id, status=EngineStatus.RUNNING, after_sequence=3)

    async def cancel(self, run_id: str) -> Canceled:
        self._raise()
        return Canceled(status=EngineStatus.CANCELED, cancel_requested=True)

    async def get(self, run_id: str) -> StoredRun:
        self._raise()
        return self.run

    async def watch(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        keep_open_on_suspend: bool = False,
        fresh: bool = False,
    ) -> AsyncIterator[Event]:
        self._raise()
        self.watch_cursors.append(after_sequence)
        for item in self.watch_script.pop(0):
            if isinstance(item, Exception):
                raise item
            if item.sequence > after_sequence:
                yield item

    async def restart(self, params: RestartParams) -> StoredRun:
        self._raise()
        raise engine.Unimplemented("restart is not implemented yet")

    async def delete(self, run_id: str) -> None:
        self._raise()


class MetadataRecorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        self.seen.append({k: v for k, v in details.invocation_metadata or ()})
        return await continuation(details)


@pytest.fixture
def service() -> ScriptedService:
    return ScriptedService()


@pytest.fixture
def recorder() -> MetadataRecorder:
    return MetadataRecorder()


@pytest.fixture
async def target(service: ScriptedService, recorder: MetadataRecorder) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[recorder])
    add_services(server, service)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def client(target: str) -> AsyncIterator[Client]:
    async with await Client.connect(target, token="s3cret") as connected:
        yield connected


def _event(sequence: int, event_type: EventType = EventType.STEP_OUTPUT) -> Event:
    if event_type is EventType.WORKFLOW_FINISH:
        return Event(
            data=WorkflowFinish(status=EngineStatus.SUCCESS, result=sequence), sequence=sequence
        )
    return Event(data=StepOutput(step_id="a", output=sequence), sequence=sequence)


# -- each engine error arrives as its typed client error -----------------------------------------


async def test_run_not_found(client: Client, service: ScriptedService) -> None:
    service.error = engine.RunNotFound("r404")
    with pytest.raises(RunNotFound) as caught:
        await client.get_result("r404")
    error = caught.value
    assert isinstance(error, NotFound)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "RUN_NOT_FOUND"
    assert error.run_id == "r404"
    assert "r404" in error.message
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert {d["@type"].rsplit(".", 1)[-1] for d in error.details} == {"ErrorInfo", "ResourceInfo"}


async def test_workflow_not_found(client: Client) -> None:
    with pytest.raises(WorkflowNotFound) as caught:
        await client.get_workflow("nope")
    assert caught.value.workflow_id == "nope"
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


async def test_invalid_argument_lists_violations(client: Client, service: ScriptedService) -> None:
    service.error = engine.InvalidArgument(
        "input failed its schema",
        [
            engine.FieldViolation("input_data.items[2].name", "field required"),
            engine.FieldViolation("initial_state.count", "not an integer"),
        ],
    )
    with pytest.raises(InvalidArgument) as caught:
        await client.start("wf", {"items": []})
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.violations == [
        FieldViolation("input_data.items[2].name", "field required"),
        FieldViolation("initial_state.count", "not an integer"),
    ]


async def test_a_flood_of_violations_still_fits_the_trailer(
    client: Client, service: ScriptedService
) -> None:
    service.error = engine.InvalidArgument(
        "input failed its schema",
        [engine.FieldViolation(f"input_data[{i}]", "too long " * 500) for i in range(1000)],
    )
    with pytest.raises(InvalidArgument) as caught:
        await client.start("wf", list(range(1000)))
    assert 0 < len(caught.value.violations) < 1000
    assert int(caught.value.metadata["omitted_violations"]) > 0


async def test_run_already_exists_names_the_existing_run(
    client: Client, service: ScriptedService
) -> None:
    service.error = engine.RunAlreadyExists("r7", "wf")
    with pytest.raises(RunAlreadyExists) as caught:
        await client.start_async("wf", run_id="r7")
    assert caught.value.existing_run_id == "r7"
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("RUN_NOT_SUSPENDED", NotSuspended),
        ("STEP_NOT_SUSPENDED", StepNotSuspended),
        ("MULTIPLE_SUSPENDED_STEPS", MultipleSuspendedSteps),
        ("RUN_IS_RUNNING", FailedPrecondition),
    ],
)
async def test_failed_precondition_by_reason(
    client: Client, service: ScriptedService, reason: str, expected: type[FailedPrecondition]
) -> None:
    service.error = engine.FailedPrecondition(
        "can't resume", reason=reason, run_id="r1", status="suspended", suspended_steps=["a", "b"]
    )
    with pytest.raises(FailedPrecondition) as caught:
        await client.resume("r1", {"ok": True})
    error = caught.value
    assert type(error) is expected
    assert error.reason == reason
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.suspended_steps == ["a", "b"]
    assert error.run_id == "r1"
    assert error.run_status == "suspended"


async def test_resume_already_claimed(client: Client, service: ScriptedService) -> None:
    service.error = engine.ResumeAlreadyClaimed("r1")
    with pytest.raises(ResumeAlreadyClaimed) as caught:
        await client.resume_async("r1")
    assert caught.value.code is grpc.StatusCode.ABORTED


async def test_concurrent_modification_is_not_a_resume_race(
    client: Client, service: ScriptedService
) -> None:
    service.error = engine.Conflict("r1")
    with pytest.raises(ConcurrentModification) as caught:
        await client.resume_async("r1")
    assert not isinstance(caught.value, ResumeAlreadyClaimed)
    assert isinstance(caught.value, Aborted)
    assert caught.value.code is grpc.StatusCode.ABORTED


async def test_cursor_expired_on_a_stream(client: Client, service: ScriptedService) -> None:
    service.error = engine.CursorExpired("r1", 3, 10)
    with pytest.raises(CursorExpired) as caught:
        async for _ in client.watch("r1", after_sequence=3):
            pass
    assert caught.value.code is grpc.StatusCode.OUT_OF_RANGE


async def test_error_after_some_events_still_arrives_typed(
    client: Client, service: ScriptedService
) -> None:
    service.watch_script = [[_event(1), engine.RunNotFound("r1")]]
    seen: list[int] = []

    async def follow() -> None:
        async for event in client.watch("r1"):
            seen.append(event.sequence)

    with pytest.raises(RunNotFound):
        await follow()
    assert seen == [1]


async def test_unimplemented(client: Client) -> None:
    with pytest.raises(Unimplemented) as caught:
        await client.restart("r1")
    assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED


async def test_store_unavailable(client: Client, service: ScriptedService) -> None:
    service.error = engine.StoreUnavailable("redis is unreachable")
    with pytest.raises(Unavailable) as caught:
        await client.cancel("r1")
    types = [d["@type"] for d in caught.value.details]
    assert "type.googleapis.com/google.rpc.RetryInfo" in types


async def test_unexpected_error_is_internal_and_says_nothing(
    client: Client, service: ScriptedService, caplog: pytest.LogCaptureFixture
) -> None:
    service.error = RuntimeError("password=hunter2")
    with pytest.raises(SteplineError) as caught:
        await client.delete_run("r1")
    # The server keeps the traceback for itself.
    [record] = [r for r in caplog.records if r.name == "stepline.server.api.errors"]
    assert record.exc_info is not None
    assert "DeleteRun" in record.getMessage()
    error = caught.value
    assert type(error) is SteplineError
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.message == "internal error"
    assert "hunter2" not in str(error)
    assert "hunter2" not in repr(error.details)


# -- wire-level validation in the servicer -------------------------------------------------------


async def test_missing_ids_and_bad_paths_name_their_fields(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.get_result("")
    assert [v.field for v in caught.value.violations] == ["run_id"]
    with pytest.raises(InvalidArgument) as caught:
        await client.resume("r1", step=["child", ""])
    assert [v.field for v in caught.value.violations] == ["step[1]"]
    with pytest.raises(InvalidArgument) as caught:
        await client.start("")
    assert [v.field for v in caught.value.violations] == ["workflow_id"]
    with pytest.raises(InvalidArgument) as caught:
        await client.list_runs(page_size=1001)
    assert [v.field for v in caught.value.violations] == ["page_size"]
    with pytest.raises(InvalidArgument) as caught:
        await client.start("wf", {"x": float("nan")})
    assert [v.field for v in caught.value.violations] == ["input_data.x"]


# -- deadlines and disconnects -------------------------------------------------------------------


async def test_deadline_exceeded_stops_the_wait_not_the_run(
    client: Client, service: ScriptedService
) -> None:
    async def forever(bound: float | None) -> None:
        await asyncio.Event().wait()

    service.wait_hook = forever
    with pytest.raises(DeadlineExceeded) as caught:
        await client.start("wf", timeout=0.3)
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    # The handler was cancelled (the client left); nothing asked the engine to cancel the run.
    await asyncio.wait_for(service.wait_cancelled.wait(), 5)


async def test_bounded_wait_answers_inside_the_deadline(
    client: Client, service: ScriptedService
) -> None:
    async def until_bound(bound: float | None) -> None:
        assert bound is not None
        await asyncio.sleep(bound)

    service.wait_hook = until_bound
    result = await client.get_result("r1", wait=30, timeout=2.0)
    assert result.status is RunStatus.RUNNING
    [bound] = service.wait_timeouts
    assert bound is not None
    assert 0 < bound < 2.0


# -- reconnecting watch --------------------------------------------------------------------------


async def test_watch_reconnects_without_gap_or_duplicate(
    client: Client, service: ScriptedService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RECONNECT_BASE_DELAY", 0.01)
    finish = _event(4, EventType.WORKFLOW_FINISH)
    service.watch_script = [
        [_event(1), _event(2), engine.StoreUnavailable("blip")],
        [engine.StoreUnavailable("still down")],
        [_event(1), _event(2), _event(3), finish],
    ]
    events = [event async for event in client.watch("r1")]
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert service.watch_cursors == [0, 2, 2]
    assert events[-1].is_finish
    assert events[-1].data["result"] == 4


async def test_watch_gives_up_after_bounded_attempts(
    client: Client, service: ScriptedService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RECONNECT_BASE_DELAY", 0.001)
    attempts = client_module.RECONNECT_ATTEMPTS
    service.watch_script = [[engine.StoreUnavailable("down")] for _ in range(attempts + 1)]
    with pytest.raises(Unavailable):
        async for _ in client.watch("r1"):
            pass
    assert len(service.watch_cursors) == attempts + 1


async def test_watch_without_reconnect_raises_at_once(
    client: Client, service: ScriptedService
) -> None:
    service.watch_script = [[_event(1), engine.StoreUnavailable("down")]]
    with pytest.raises(Unavailable):
        async for _ in client.watch("r1", reconnect=False):
            pass
    assert service.watch_cursors == [0]


async def test_stream_continues_with_watch_after_first_event(
    client: Client, service: ScriptedService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "RECONNECT_BASE_DELAY", 0.01)
    service.watch_script = [
        [_event(1), engine.StoreUnavailable("blip")],
        [_event(2), _event(3, EventType.WORKFLOW_FINISH)],
    ]
    events = [event async for event in client.stream("wf", {"n": 1})]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert service.watch_cursors == [0, 1]


async def test_stream_before_first_event_sends_the_same_start_again(
    client: Client, service: ScriptedService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing says whether the first start was recorded: its request id makes sending it
    again safe (the server answers the run it started, if it did)."""
    monkeypatch.setattr(client_module, "RECONNECT_BASE_DELAY", 0.01)
    service.watch_script = [
        [engine.StoreUnavailable("down")],
        [_event(1), _event(2, EventType.WORKFLOW_FINISH)],
    ]
    events = [event async for event in client.stream("wf", {"n": 1})]
    assert [e.sequence for e in events] == [1, 2]
    first, again = service.starts
    assert first.request_id and again == first


async def test_resume_stream_before_first_event_does_not_guess(
    client: Client, service: ScriptedService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume may or may not have been applied: it is not sent twice."""
    monkeypatch.setattr(client_module, "RECONNECT_BASE_DELAY", 0.01)
    service.watch_script = [[engine.StoreUnavailable("down")], []]
    with pytest.raises(Unavailable):
        async for _ in client.resume_stream("r1", {"ok": True}):
            pass
    assert service.watch_cursors == [3]


async def test_every_start_carries_a_request_id_of_its_own(
    client: Client, service: ScriptedService
) -> None:
    await client.start_async("wf", {"n": 1})
    await client.start_async("wf", {"n": 1})
    await client.start("wf", {"n": 1}, timeout=5)
    await client.start_async("wf", {"n": 1}, request_id="mine")
    keys = [params.request_id for params in service.starts]
    assert all(keys) and len(set(keys[:3])) == 3
    assert keys[3] == "mine"


# -- the rest of the client's edges -------------------------------------------------------------


async def test_token_is_sent_as_bearer_metadata(client: Client, recorder: MetadataRecorder) -> None:
    await client.cancel("r1")
    assert recorder.seen[-1]["authorization"] == "Bearer s3cret"


async def test_sync_client_decodes_errors_and_iterates(
    target: str, service: ScriptedService
) -> None:
    service.watch_script = [[_event(1), _event(2, EventType.WORKFLOW_FINISH)]]

    def use_sync_client() -> tuple[list[int], Exception | None]:
        with SyncClient.connect(target) as sync:
            sequences = [event.sequence for event in sync.watch("r1")]
            assert sync.cancel("r1").status is RunStatus.CANCELED
            service.error = engine.RunNotFound("gone")
            try:
                sync.get_result("gone")
            except RunNotFound as error:
                return sequences, error
            return sequences, None

    sequences, error = await asyncio.to_thread(use_sync_client)
    assert sequences == [1, 2]
    assert isinstance(error, RunNotFound)
    assert error.run_id == "gone"


async def test_sync_iterator_closed_early_ends_its_stream(
    target: str, service: ScriptedService
) -> None:
    service.watch_script = [[_event(n) for n in range(1, 50)]]

    def first_two() -> list[int]:
        with SyncClient.connect(target) as sync:
            events: Iterator[Any] = sync.watch("r1")
            taken = [next(events).sequence, next(events).sequence]
            close = getattr(events, "close")  # noqa: B009 - a generator, typed as Iterator
            close()
            return taken

    assert await asyncio.to_thread(first_two) == [1, 2]
