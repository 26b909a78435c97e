"""Steps that misbehave, on both stores: whatever a step raises, returns, blocks or ignores, its
run ends with a clear status and error, other runs are unaffected and the worker keeps serving.
Also the step time limit (`step(timeout=...)`, `Workflow(step_timeout=...)`), here and over gRPC.

What happens, in short (see README, "Misbehaving steps"):
- an Exception fails the attempt and is retried by the policy; a BaseException that is not
  the engine's own signal (SystemExit, KeyboardInterrupt, GeneratorExit, a subclass of the
  step's own) fails the step at once: never the worker, never the event loop;
- a CancelledError that escapes a step while the run is not being canceled (it cancelled its
  own task, or let through the cancellation of something it awaited) is StepCancelledError;
- outputs, state, suspend payloads, bail values, custom writes and the request context must be
  plain JSON (no NaN / Infinity, at most 32 levels deep) or the step fails StepOutputInvalid;
- an attempt past its timeout is cancelled and fails StepTimeoutError (retried like any other
  failure); a step that ignores that cancellation is abandoned and can't write to the run any
  more; a step that blocks the event loop (time.sleep) can't be interrupted: every run of the
  replica stalls meanwhile, and if it overran its timeout it has timed out when it returns.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToJson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel

from stepline.client import Client
from stepline.client import RunStatus as WireStatus
from stepline.server import (
    NonRetryableError,
    Registry,
    RetryPolicy,
    Step,
    StepContext,
    Workflow,
    WorkflowDefinitionError,
    step,
)
from stepline.server.app import Server
from stepline.server.execution import attempt as attempt_module
from stepline.server.execution.failures import MAX_ERROR_CAUSES, MAX_ERROR_TEXT, serialize_error
from stepline.server.model import EventType, RunStatus, StepStatus
from stepline.server.runs import RunService, StartParams
from stepline.server.settings import Settings
from stepline.server.store import Store, StoredRun
from stepline.server.worker import Worker
from stepline.v1 import workflow_service_pb2 as pb
from tests.engine_harness import Engine, kinds

pytestmark = pytest.mark.timeout(60)

BOUND = 10.0
# What a test records about steps, keyed by run id.
SEEN: dict[str, list[Any]] = {}


def seen(ctx: StepContext[Any]) -> list[Any]:
    return SEEN.setdefault(ctx.run_id, [])


class Order(BaseModel):
    kind: str = ""
    value: int = 0


class Num(BaseModel):
    value: int


# -- raising -------------------------------------------------------------------------------------


class Unusual(BaseException):
    """A BaseException of the step's own."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    @property
    def details(self) -> Any:
        raise RuntimeError("no details either")


def _cycle() -> BaseException:
    first, second = ValueError("first"), KeyError("second")
    first.__cause__, second.__cause__ = second, first
    return first


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


def _raise_non_exception() -> BaseException:
    raise TypeError("exceptions must derive from BaseException")  # what `raise 42` raises


class Chained(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"level {depth}")
        self.details = {"level": depth, "nested": _deep(40)}


def _long_chain() -> BaseException:
    error: BaseException = Chained(0)
    for depth in range(1, 30):
        nxt = Chained(depth)
        nxt.__cause__ = error
        error = nxt
    return error


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"down": value}
    return value


RAISES: dict[str, Callable[[], BaseException]] = {
    "value_error": lambda: ValueError("bad value"),
    "system_exit": lambda: SystemExit(3),
    "keyboard_interrupt": KeyboardInterrupt,
    "generator_exit": GeneratorExit,
    "own_base_exception": lambda: Unusual("rare"),
    "cancelled_error": asyncio.CancelledError,
    "stop_iteration": StopIteration,
    "unprintable": Unprintable,
    "cause_cycle": _cycle,
    "long_chain": _long_chain,
    "huge_message": lambda: RuntimeError("x" * 1_000_000),
    "non_exception": _raise_non_exception,
    "timeout_error": lambda: TimeoutError("the step's own timeout"),
}


@step(input=Order, output=Order, retries=1)
async def raiser(ctx: StepContext[Order]) -> Order:
    seen(ctx).append(ctx.retry_count)
    if ctx.input.kind == "recursion":
        _recurse(0)
    raise RAISES[ctx.input.kind]()


# (error name, attempts): Exceptions are retried (retries=1), other BaseExceptions are not.
EXPECTED: dict[str, tuple[str, int]] = {
    "value_error": ("ValueError", 2),
    "system_exit": ("SystemExit", 1),
    "keyboard_interrupt": ("KeyboardInterrupt", 1),
    "generator_exit": ("GeneratorExit", 1),
    "own_base_exception": ("Unusual", 1),
    "cancelled_error": ("StepCancelledError", 2),
    "stop_iteration": ("RuntimeError", 2),  # a coroutine raising StopIteration
    "unprintable": ("Unprintable", 2),
    "cause_cycle": ("ValueError", 2),
    "long_chain": ("Chained", 2),
    "huge_message": ("RuntimeError", 2),
    "non_exception": ("TypeError", 2),
    "timeout_error": ("TimeoutError", 2),
    "recursion": ("RecursionError", 2),
}


@step(input=Num, output=Num)
async def steady(ctx: StepContext[Num]) -> Num:
    await asyncio.sleep(0.05)
    return Num(value=ctx.input.value + 1)


steady_again: Step[Num, Num] = Step("steady_again", steady.execute, input=Num, output=Num)
raising = Workflow("raising", input=Order, output=Order).then(raiser).commit()
canary = Workflow("canary", input=Num, output=Num).then(steady).then(steady_again).commit()


# -- returning what is not plain JSON ------------------------------------------------------------


class Loose(BaseModel):
    model_config = {"extra": "allow"}


class Measure(BaseModel):
    x: float


def _circular() -> Any:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


OUTPUTS: dict[str, Callable[[], Any]] = {
    "object": lambda: {"thing": object()},
    "circular": _circular,
    "nan": lambda: {"x": float("nan")},
    "infinity": lambda: {"x": [1.0, math.inf]},
    "too_deep": lambda: _deep(40),
    "wrong_type": lambda: "a string, not an object",
}


@step(input=Order, output=dict[str, Any], retries=0)
async def returner(ctx: StepContext[Order]) -> Any:
    return OUTPUTS[ctx.input.kind]()


@step(input=Order, output=Measure, retries=0)
async def nan_model(ctx: StepContext[Order]) -> Measure:
    return Measure(x=float("nan"))


@step(input=Order, output=dict[str, Any], retries=0)
async def smuggler(ctx: StepContext[Order]) -> dict[str, Any]:
    """Hands back bad values by every other way a step has."""
    kind = ctx.input.kind
    if kind == "state":
        ctx.set_state({"thing": object()})
    elif kind == "suspend":
        ctx.suspend({"at": float("nan")})
    elif kind == "bail":
        ctx.bail(_deep(40))
    elif kind == "write":
        try:
            await ctx.write({"thing": object()})
        except TypeError as err:
            return {"write_refused": str(err)}
    elif kind == "request_context":
        ctx.request_context["thing"] = object()
    elif kind == "request_context_then_raise":
        ctx.request_context["nested"] = {"bad": math.nan}
        raise ValueError("and then it failed")
    return {"kind": kind}


returning = Workflow("returning", input=Order, output=dict).then(returner).commit()
returning_nan_model = Workflow("returning_nan_model", input=Order, output=dict).then(nan_model)
returning_nan_model.commit()
smuggling = Workflow("smuggling", input=Order, output=dict).then(smuggler).commit()


# -- time limits, blocking, cancellation ---------------------------------------------------------


@step(input=Order, output=Order, timeout=0.3, retries=2)
async def hangs_once(ctx: StepContext[Order]) -> Order:
    """Hangs on its first attempt, returns on the second."""
    seen(ctx).append(("attempt", ctx.retry_count))
    if ctx.retry_count == 0:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen(ctx).append(("cancelled", ctx.retry_count))
            raise
    return ctx.input


@step(input=Order, output=Order, timeout=0.2, retries=1)
async def hangs_forever(ctx: StepContext[Order]) -> Order:
    seen(ctx).append(("attempt", ctx.retry_count))
    await asyncio.Event().wait()
    return ctx.input


@step(input=Order, output=Order, timeout=0.2, retries=0)
async def stubborn(ctx: StepContext[Order]) -> Order:
    """Swallows the cancellation its timeout sends, keeps going, then tries to write."""
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen(ctx).append("ignored the cancellation")
            break
    await asyncio.sleep(0.3)
    try:
        await ctx.write({"late": True})
    except RuntimeError as err:
        seen(ctx).append(str(err))
    ctx.abort()  # ignored: the attempt is over
    return ctx.input


@step(input=Order, output=Order)
async def blocks(ctx: StepContext[Order]) -> Order:
    time.sleep(0.6)  # noqa: ASYNC251 - blocking the event loop is the point
    return ctx.input


@step(input=Order, output=Order, timeout=0.2, retries=0)
async def blocks_past_timeout(ctx: StepContext[Order]) -> Order:
    time.sleep(0.5)  # noqa: ASYNC251 - blocking the event loop is the point
    seen(ctx).append("returned")
    return ctx.input


@step(input=Order, output=Order, retries=0)
async def cancelled_mid_await(ctx: StepContext[Order]) -> Order:
    """Awaits something that gets cancelled under it, or cancels its own task."""
    if ctx.input.kind == "self":
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(1)
    other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, other.cancel)
    await other
    return ctx.input


@step(input=Order, output=Order, timeout=0.4, retries=3)
async def ignores_cancel(ctx: StepContext[Order]) -> Order:
    seen(ctx).append(("attempt", ctx.retry_count))
    await asyncio.Event().wait()
    return ctx.input


@step(input=Order, output=Order)
async def quick(ctx: StepContext[Order]) -> Order:
    return ctx.input


@step(input=Order, output=Order, timeout=5.0)
async def generous(ctx: StepContext[Order]) -> Order:
    await asyncio.sleep(0.3)
    return ctx.input


@step(input=Order, output=Order)
async def slow(ctx: StepContext[Order]) -> Order:
    await asyncio.sleep(0.3)
    return ctx.input


@step(input=Order, output=Order)
async def waits_to_be_stopped(ctx: StepContext[Order]) -> Order:
    try:
        await asyncio.Event().wait()
    finally:
        seen(ctx).append("stopped")
    return ctx.input


retried_timeout = Workflow("retried_timeout", input=Order, output=Order).then(hangs_once).commit()
timed_out = Workflow("timed_out", input=Order, output=Order).then(hangs_forever).commit()
stubborn_wf = Workflow("stubborn", input=Order, output=Order).then(stubborn).commit()
blocking = Workflow("blocking", input=Order, output=Order).then(blocks).commit()
blocking_timed = (
    Workflow("blocking_timed", input=Order, output=Order).then(blocks_past_timeout).commit()
)
cancelled_wf = Workflow("cancelled", input=Order, output=Order).then(cancelled_mid_await).commit()
cancel_hang = Workflow("cancel_hang", input=Order, output=Order).then(ignores_cancel).commit()
defaults = (
    Workflow("defaults", input=Order, output=Order, step_timeout=0.15)
    .then(quick)
    .then(generous)  # its own 5 s beats the workflow's 0.15 s
    .then(slow)  # the workflow's 0.15 s applies
    .commit()
)
inner_defaults = Workflow("inner_defaults", input=Order, output=Order, step_timeout=0.1)
inner_defaults.then(slow).commit()
outer_no_limit = (
    Workflow("outer_no_limit", input=Order, output=Order).then(quick).then(inner_defaults).commit()
)
parallel_timeout = (
    Workflow("parallel_timeout", input=Order, output=dict)
    .parallel([hangs_forever, generous])
    .commit()
)


class Items(BaseModel):
    items: list[int]


@step(input=Num, output=Num, timeout=0.2)
async def item_hangs_on_two(ctx: StepContext[Num]) -> Num:
    if ctx.input.value == 2:
        await asyncio.Event().wait()
    return ctx.input


foreach_timeout = (
    Workflow("foreach_timeout", input=Items, output=list)
    .map(lambda ctx: [{"value": v} for v in ctx.input["items"]])
    .foreach(item_hangs_on_two, concurrency=3)
    .commit()
)
stoppable = Workflow("stoppable_hang", input=Order, output=Order).then(waits_to_be_stopped).commit()

WORKFLOWS = [
    raising,
    canary,
    returning,
    returning_nan_model,
    smuggling,
    retried_timeout,
    timed_out,
    stubborn_wf,
    blocking,
    blocking_timed,
    cancelled_wf,
    cancel_hang,
    defaults,
    inner_defaults,
    outer_no_limit,
    parallel_timeout,
    foreach_timeout,
    stoppable,
]


def registry() -> Registry:
    return Registry(WORKFLOWS)


@pytest.fixture
async def engine(store: Store) -> AsyncIterator[Engine]:
    """RunService + Worker over the `store` fixture (both kinds), serving this module's
    workflows."""
    reg = registry()
    worker = Worker(store, reg, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    yield Engine(RunService(store, reg, cancel_wait=1.0), worker, store)
    await worker.stop(grace=1.0)


async def _canary_run(engine: Engine) -> str:
    started = await engine.service.start(StartParams("canary", {"value": 1}))
    return started.run_id


async def _canary_ok(engine: Engine, run_id: str) -> None:
    done = await engine.service.wait(run_id, timeout=BOUND)
    assert done.snapshot.status is RunStatus.SUCCESS, done.snapshot.error
    assert done.snapshot.result == {"value": 3}


def _error(run: StoredRun) -> Any:
    error = run.snapshot.error
    assert error is not None, run.snapshot.status
    return error


# -- whatever a step raises ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(EXPECTED))
async def test_whatever_a_step_raises_fails_only_its_run(engine: Engine, kind: str) -> None:
    other = await _canary_run(engine)
    run = await engine.run("raising", {"kind": kind})
    snap = run.snapshot
    name, attempts = EXPECTED[kind]
    assert snap.status is RunStatus.FAILED
    error = _error(run)
    assert error.name == name
    assert snap.steps["raiser"].status is StepStatus.FAILED
    assert snap.steps["raiser"].attempts == attempts
    assert SEEN[snap.run_id] == list(range(attempts))
    assert error.message and len(error.message) <= MAX_ERROR_TEXT
    assert "Traceback" not in error.model_dump_json()
    events = await engine.events(snap.run_id)
    assert kinds(events)[-2:] == ["step-result:raiser", "workflow-finish"]
    await _canary_ok(engine, other)
    await _canary_ok(engine, await _canary_run(engine))  # the worker still takes work


async def test_error_payloads_are_bounded(engine: Engine) -> None:
    run = await engine.run("raising", {"kind": "long_chain"})
    error = _error(run)
    causes, details = 0, error.details
    while details and "cause" in details:
        causes += 1
        details = details["cause"]["details"]
    assert causes == MAX_ERROR_CAUSES
    # Details nested too deeply to stay encodable inside the chain are kept as their repr.
    assert error.details["details"].startswith("{'level': 29, 'nested': {'down'")

    cycle = _error(await engine.run("raising", {"kind": "cause_cycle"}))
    assert cycle.details == {"cause": {"message": "'second'", "name": "KeyError", "details": None}}

    unprintable = _error(await engine.run("raising", {"kind": "unprintable"}))
    assert unprintable.message == "<Unprintable whose str() failed>"
    assert unprintable.details is None


def test_serialize_error_survives_hostile_exceptions() -> None:
    cycle = serialize_error(_cycle())
    assert cycle.details == {
        "cause": {"message": "'second'", "name": "KeyError", "details": None}
    }  # the cycle back to the first error is not followed
    deep = Chained(0)
    deep.details = _deep(100)
    flat = serialize_error(deep).details
    flattened = flat["details"] if isinstance(flat, dict) else None
    assert isinstance(flattened, str) and flattened.startswith("{'down'")
    odd = ValueError("odd")
    odd.details = {"thing": object(), "loop": _circular()}  # type: ignore[attr-defined]
    odd_details = serialize_error(odd).details
    assert isinstance(odd_details, dict) and isinstance(odd_details["details"], str)
    assert serialize_error(Unprintable()).message == "<Unprintable whose str() failed>"
    assert len(serialize_error(RuntimeError("y" * 50_000)).message) == 10_000


# -- what a step hands back ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("object", "not JSON-serializable"),
        ("circular", "nested too deeply"),  # a cycle never ends
        ("nan", "output.x: nan is not a JSON number"),
        ("infinity", "output.x[1]: inf is not a JSON number"),
        ("too_deep", "nested too deeply"),
        ("wrong_type", "does not match"),
    ],
)
async def test_outputs_that_are_not_plain_json_fail_the_step(
    engine: Engine, kind: str, fragment: str
) -> None:
    other = await _canary_run(engine)
    run = await engine.run("returning", {"kind": kind})
    assert run.snapshot.status is RunStatus.FAILED
    error = _error(run)
    assert error.name == "StepOutputInvalid"
    assert fragment in error.message, error.message
    await _canary_ok(engine, other)


async def test_nan_in_a_model_output_fails_on_both_stores_alike(engine: Engine) -> None:
    run = await engine.run("returning_nan_model", {})
    error = _error(run)
    assert (error.name, run.snapshot.steps["nan_model"].status) == (
        "StepOutputInvalid",
        StepStatus.FAILED,
    )
    assert "output.x: nan is not a JSON number" in error.message


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("state", "state is not JSON-serializable"),
        ("suspend", "suspend_payload.at: nan is not a JSON number"),
        ("bail", "result is not plain JSON"),
        ("request_context", "request_context is not JSON-serializable"),
    ],
)
async def test_every_way_back_is_checked(engine: Engine, kind: str, fragment: str) -> None:
    run = await engine.run("smuggling", {"kind": kind})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    error = _error(run)
    assert error.name == "StepOutputInvalid" and fragment in error.message, error.message
    assert snap.request_context == {}  # a bad request context is put back as it was
    assert snap.state == {}


async def test_a_bad_request_context_is_undone_even_when_the_step_fails(engine: Engine) -> None:
    run = await engine.run(
        "smuggling", {"kind": "request_context_then_raise"}, request_context={"keep": 1}
    )
    assert run.snapshot.status is RunStatus.FAILED
    assert _error(run).name == "ValueError"  # the step's own failure is the one reported
    assert run.snapshot.request_context == {"keep": 1}


async def test_write_refuses_what_is_not_json(engine: Engine) -> None:
    run = await engine.run("smuggling", {"kind": "write"})
    assert run.snapshot.status is RunStatus.SUCCESS
    result = run.snapshot.result
    assert isinstance(result, dict) and isinstance(result["write_refused"], str)
    assert "ctx.write() needs plain JSON" in result["write_refused"]
    events = await engine.events(run.snapshot.run_id)
    assert not [e for e in events if e.type is EventType.STEP_OUTPUT]


# -- time limits ---------------------------------------------------------------------------------


async def test_a_step_past_its_timeout_fails_with_a_clear_error(engine: Engine) -> None:
    other = await _canary_run(engine)
    began = time.monotonic()
    run = await engine.run("timed_out", {})
    elapsed = time.monotonic() - began
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    error = _error(run)
    assert error.name == "StepTimeoutError"
    assert error.message == "step 'hangs_forever' did not finish within its timeout of 0.2 s"
    assert error.details == {"details": {"step_id": "hangs_forever", "timeout": 0.2}}
    # Retried like any failure: two attempts of 0.2 s each.
    assert snap.steps["hangs_forever"].attempts == 2
    assert SEEN[snap.run_id] == [("attempt", 0), ("attempt", 1)]
    assert 0.4 <= elapsed < 3.0
    await _canary_ok(engine, other)


async def test_a_timed_out_attempt_is_cancelled_and_retried(engine: Engine) -> None:
    run = await engine.run("retried_timeout", {"value": 7})
    snap = run.snapshot
    assert snap.status is RunStatus.SUCCESS and snap.result == {"kind": "", "value": 7}
    assert snap.steps["hangs_once"].attempts == 2
    assert SEEN[snap.run_id] == [("attempt", 0), ("cancelled", 0), ("attempt", 1)]


async def test_workflow_default_and_step_override(engine: Engine) -> None:
    run = await engine.run("defaults", {})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED
    assert [snap.steps[s].status for s in ("quick", "generous", "slow")] == [
        StepStatus.SUCCESS,
        StepStatus.SUCCESS,
        StepStatus.FAILED,
    ]
    assert _error(run).message == "step 'slow' did not finish within its timeout of 0.15 s"

    nested = await engine.run("outer_no_limit", {})
    assert nested.snapshot.status is RunStatus.FAILED  # the nested workflow's own default
    assert "step 'slow'" in _error(nested).message and "0.1 s" in _error(nested).message


async def test_timeouts_in_parallel_and_foreach(engine: Engine) -> None:
    run = await engine.run("parallel_timeout", {})
    snap = run.snapshot
    assert snap.status is RunStatus.FAILED and _error(run).name == "StepTimeoutError"
    assert snap.steps["generous"].status is StepStatus.SUCCESS  # the sibling finished

    fanned = await engine.run("foreach_timeout", {"items": [1, 2, 3]})
    assert fanned.snapshot.status is RunStatus.FAILED
    assert "item_hangs_on_two" in _error(fanned).message


async def test_a_step_that_ignores_its_timeout_is_abandoned(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attempt_module, "TIMEOUT_UNWIND", 0.1)
    began = time.monotonic()
    run = await engine.run("stubborn", {})
    assert time.monotonic() - began < 2.0  # the run did not wait for the step
    assert run.snapshot.status is RunStatus.FAILED
    assert _error(run).name == "StepTimeoutError"
    run_id = run.snapshot.run_id
    before = await engine.events(run_id)
    await asyncio.sleep(0.6)  # the abandoned step wakes up, tries to write and abort
    assert SEEN[run_id] == [
        "ignored the cancellation",
        "step 'stubborn': write() after the attempt ended",
    ]
    assert await engine.events(run_id) == before
    assert (await engine.service.get(run_id)).snapshot == run.snapshot


async def test_a_step_blocking_the_event_loop_stalls_but_does_not_break_others(
    engine: Engine,
) -> None:
    """time.sleep in an async step holds the whole replica for that long; then everything
    continues. Runs should use `await asyncio.to_thread(...)` for blocking work."""
    other = await _canary_run(engine)
    blocked = await engine.service.start(StartParams("blocking", {"value": 1}))
    more = [await _canary_run(engine) for _ in range(3)]
    done = await engine.service.wait(blocked.run_id, timeout=BOUND)
    assert done.snapshot.status is RunStatus.SUCCESS
    for run_id in [other, *more]:
        await _canary_ok(engine, run_id)


async def test_a_blocking_step_past_its_timeout_has_timed_out(engine: Engine) -> None:
    run = await engine.run("blocking_timed", {})
    assert SEEN[run.snapshot.run_id] == ["returned"]  # it could not be interrupted...
    assert run.snapshot.status is RunStatus.FAILED  # ...but its deadline had passed
    assert _error(run).name == "StepTimeoutError"


# -- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["self", "awaited"])
async def test_a_step_cancelled_mid_await_fails_cleanly(engine: Engine, kind: str) -> None:
    other = await _canary_run(engine)
    run = await engine.run("cancelled", {"kind": kind})
    assert run.snapshot.status is RunStatus.FAILED
    error = _error(run)
    assert error.name == "StepCancelledError"
    assert "cancelled_mid_await" in error.message
    await _canary_ok(engine, other)


async def test_cancel_of_a_step_that_ignores_it_ends_at_its_timeout(engine: Engine) -> None:
    """Cancel is cooperative: a step that never looks keeps the run RUNNING until its time
    limit; the run then ends CANCELED, not FAILED, and is not retried."""
    started = await engine.service.start(StartParams("cancel_hang", {}))
    run_id = started.run_id
    for _ in range(100):
        if SEEN.get(run_id):
            break
        await asyncio.sleep(0.01)
    canceled = await engine.service.cancel(run_id)
    assert canceled.cancel_requested
    done = await engine.service.wait(run_id, timeout=BOUND)
    assert done.snapshot.status is RunStatus.CANCELED
    assert SEEN[run_id] == [("attempt", 0)]


async def test_a_handed_back_run_stops_its_step_and_is_not_failed(store: Store) -> None:
    reg = registry()
    worker = Worker(store, reg, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    service = RunService(store, reg)
    started = await service.start(StartParams("stoppable_hang", {}))
    for _ in range(200):
        stored = await service.get(started.run_id)
        if "waits_to_be_stopped" in stored.snapshot.steps:
            break
        await asyncio.sleep(0.01)
    await worker.stop(grace=0.1)
    await asyncio.sleep(0)  # the step's task runs its cancellation
    assert SEEN[started.run_id] == ["stopped"]
    stored = await service.get(started.run_id)
    assert stored.snapshot.status is RunStatus.RUNNING  # handed back, for another replica
    assert stored.snapshot.error is None


# -- defining time limits ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5"])
def test_time_limits_must_be_positive_seconds(bad: Any) -> None:
    async def execute(ctx: StepContext[Any]) -> Any:
        return None

    with pytest.raises(WorkflowDefinitionError, match="timeout must be a number of seconds"):
        Step("s", execute, input=dict, output=dict, timeout=bad)
    with pytest.raises(WorkflowDefinitionError, match="timeout must be a number of seconds"):
        Workflow("w", input=dict, output=dict, step_timeout=bad)


def test_time_limits_are_described() -> None:
    described = defaults.describe()
    assert [(s["id"], s["timeout"]) for s in described["steps"]] == [
        ("quick", 0.15),
        ("generous", 5.0),
        ("slow", 0.15),
    ]
    assert [entry["step"]["timeout"] for entry in described["graph"]] == [0.15, 5.0, 0.15]
    outer = outer_no_limit.describe()["graph"]
    assert outer[0]["step"]["timeout"] is None
    assert outer[1]["graph"][0]["step"]["timeout"] == 0.1
    mapped = foreach_timeout.describe()["graph"]
    assert mapped[0]["timeout"] is None and mapped[1]["step"]["step"]["timeout"] == 0.2


# -- over gRPC -----------------------------------------------------------------------------------


@pytest.fixture
async def server(store: Store) -> AsyncIterator[Server]:
    started = await Server.start(
        Settings(host="127.0.0.1", port=0), registry=registry(), store=store
    )
    try:
        yield started
    finally:
        await started.stop(grace=1)


async def test_over_grpc_timeouts_and_crashing_steps_are_results(server: Server) -> None:
    async with await Client.connect(server.target) as client:
        timed = await client.start("timed_out", {}, timeout=BOUND)
        assert timed.status is WireStatus.FAILED and timed.error is not None
        assert timed.error.name == "StepTimeoutError"
        assert timed.error.message == (
            "step 'hangs_forever' did not finish within its timeout of 0.2 s"
        )
        assert timed.error.details == {"details": {"step_id": "hangs_forever", "timeout": 0.2}}
        assert timed.steps["hangs_forever"].attempts == 2

        for kind in ("system_exit", "keyboard_interrupt", "generator_exit"):
            crashed = await client.start("raising", {"kind": kind}, timeout=BOUND)
            assert crashed.status is WireStatus.FAILED and crashed.error is not None
            assert crashed.error.name == EXPECTED[kind][0]

        info = await client.get_workflow("defaults")
        assert [entry["step"]["timeout"] for entry in info.graph] == [0.15, 5.0, 0.15]

        channel = grpc.aio.insecure_channel(server.target)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            raw = await channel.unary_unary(
                "/stepline.v1.WorkflowService/GetExecutionResult",
                request_serializer=pb.GetExecutionResultRequest.SerializeToString,
                response_deserializer=pb.GetExecutionResultResponse.FromString,
            )(pb.GetExecutionResultRequest(run_id=timed.run_id), timeout=BOUND)
            wire = MessageToJson(raw)
            assert "StepTimeoutError" in wire
            assert "Traceback" not in wire and 'File "' not in wire
        finally:
            await channel.close()

        after = await client.start("canary", {"value": 1}, timeout=BOUND)
        assert after.status is WireStatus.SUCCESS and after.result == {"value": 3}


async def test_non_retryable_still_wins_over_retries(engine: Engine) -> None:
    @step(input=Order, output=Order, retries=3, timeout=1.0)
    async def refuses(ctx: StepContext[Order]) -> Order:
        raise NonRetryableError("no", details={"why": "because"})

    flow = Workflow("refusing", input=Order, output=Order, retry=RetryPolicy(attempts=2))
    engine.service.registry.register(flow.then(refuses).commit())
    engine.worker.registry.register(flow)
    run = await engine.run("refusing", {})
    assert run.snapshot.steps["refuses"].attempts == 1
    assert _error(run).details == {"details": {"why": "because"}}
