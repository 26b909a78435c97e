"""Workflows the tests run. Served in-process by the engine and gRPC tests, and by the
end-to-end tests' `stepline serve --workflows tests.flows`.

Steps record what they saw in `SEEN` (keyed by run id) so tests can assert on what really
executed; `GATES` lets a test hold a step until it releases it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, Field

from stepline.server import (
    ConditionContext,
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    step,
)

SEEN: defaultdict[str, list[Any]] = defaultdict(list)
GATES: dict[str, asyncio.Event] = {}


def gate(run_id: str) -> asyncio.Event:
    return GATES.setdefault(run_id, asyncio.Event())


class Num(BaseModel):
    value: int


class Flag(BaseModel):
    value: int = 0
    bail: bool = False
    abort: bool = False


# -- sequential ------------------------------------------------------------------------------
@step(input=Num, output=Num)
async def add_one(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value + 1)


@step(input=Num, output=Num)
async def double(ctx: StepContext[Num]) -> Num:
    SEEN[ctx.run_id].append(("double", ctx.get_step_result(add_one), ctx.get_init_data()))
    return Num(value=ctx.input.value * 2)


sequence = Workflow("sequence", input=Num, output=Num).then(add_one).then(double).commit()


# -- parallel --------------------------------------------------------------------------------
@step(input=Num, output=Num)
async def slow_ok(ctx: StepContext[Num]) -> Num:
    await asyncio.sleep(0.2)
    return Num(value=ctx.input.value + 10)


@step(input=Num, output=Num)
async def fast_fail(ctx: StepContext[Num]) -> Num:
    raise RuntimeError("fast_fail broke")


@step(input=Num, output=Num)
async def triple(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value * 3)


class Pair(BaseModel):
    slow_ok: Num
    triple: Num


@step(input=Pair, output=Num)
async def join(ctx: StepContext[Pair]) -> Num:
    return Num(value=ctx.input.slow_ok.value + ctx.input.triple.value)


parallel_ok = (
    Workflow("parallel_ok", input=Num, output=Num).parallel([slow_ok, triple]).then(join).commit()
)
parallel_fail = (
    Workflow("parallel_fail", input=Num, output=dict).parallel([slow_ok, fast_fail]).commit()
)


# -- branch ----------------------------------------------------------------------------------
@step(input=Num, output=Num)
async def positive(ctx: StepContext[Num]) -> Num:
    return Num(value=1)


@step(input=Num, output=Num)
async def big(ctx: StepContext[Num]) -> Num:
    return Num(value=100)


@step(input=Num, output=Num)
async def negative(ctx: StepContext[Num]) -> Num:
    return Num(value=-1)


class AnyInput(BaseModel):
    model_config = {"extra": "allow"}


@step(input=Num, output=Num)
async def exploded(ctx: StepContext[Num]) -> Num:
    return Num(value=0)


@step(input=AnyInput, output=dict)
async def summary(ctx: StepContext[AnyInput]) -> dict[str, Any]:
    return {"saw": ctx.input.model_dump()}


def _explodes(_: Any) -> bool:
    raise ValueError("condition exploded")


branching = (
    Workflow("branching", input=Num, output=dict)
    .branch(
        [
            (lambda c: c.input["value"] > 0, positive),
            (lambda c: c.input["value"] > 10, big),
            (lambda c: c.input["value"] < 0, negative),
            (_explodes, exploded),
        ]
    )
    .then(summary)
    .commit()
)


# -- retries and errors ----------------------------------------------------------------------
class Attempts(BaseModel):
    fail_times: int
    non_retryable: bool = False


@step(input=Attempts, output=dict)
async def flaky(ctx: StepContext[Attempts]) -> dict[str, Any]:
    SEEN[ctx.run_id].append((ctx.retry_count, time.monotonic()))
    if ctx.input.non_retryable:
        raise NonRetryableError("permanent failure", details={"code": 42})
    if ctx.retry_count < ctx.input.fail_times:
        raise ConnectionError(f"attempt {ctx.retry_count} failed")
    return {"retry_count": ctx.retry_count}


retrying = (
    Workflow(
        "retrying",
        input=Attempts,
        output=dict,
        retry=RetryPolicy(attempts=3, delay=0.05, backoff=2.0),
    )
    .then(flaky)
    .commit()
)


class DetailedError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.details = {"order": 7}


@step(input=Num, output=Num, retries=0)
async def raises_chained(ctx: StepContext[Num]) -> Num:
    prices: dict[str, int] = {}
    try:
        prices["missing"]
    except KeyError as err:
        raise DetailedError("could not price order") from err
    return ctx.input


@step(input=Num, output=Num)
async def bad_output(ctx: StepContext[Num]) -> Num:
    return {"value": "not a number"}  # type: ignore[return-value]


failing = Workflow("failing", input=Num, output=Num).then(raises_chained).commit()
bad_output_wf = Workflow("bad_output", input=Num, output=Num).then(bad_output).commit()


# -- suspend / resume ------------------------------------------------------------------------
class Ask(BaseModel):
    question: str = "ok?"


class Answer(BaseModel):
    approved: bool
    note: str = "none"


class Decided(BaseModel):
    approved: bool
    note: str
    question: str


@step(input=Ask, output=Decided, resume=Answer, suspend=Ask)
async def approve(ctx: StepContext[Ask]) -> Decided:
    if ctx.resume_data is None:
        ctx.suspend({"question": ctx.input.question}, label="approval")
    SEEN[ctx.run_id].append(("approve", ctx.suspend_data, ctx.resume_data))
    if ctx.run_id in GATES:
        await GATES[ctx.run_id].wait()
    answer = Answer.model_validate(ctx.resume_data)
    return Decided(approved=answer.approved, note=answer.note, question=ctx.input.question)


@step(input=Decided, output=Decided)
async def record(ctx: StepContext[Decided]) -> Decided:
    SEEN[ctx.run_id].append(("record", ctx.input.approved))
    return ctx.input


approval = Workflow("approval", input=Ask, output=Decided).then(approve).then(record).commit()


def _asker(name: str) -> Any:
    @step(name, input=Ask, output=Answer, resume=Answer)
    async def ask(ctx: StepContext[Ask]) -> Answer:
        if ctx.resume_data is None:
            ctx.suspend({"who": name}, label=f"label-{name}")
        return Answer.model_validate(ctx.resume_data)

    return ask


ask_a, ask_b = _asker("ask_a"), _asker("ask_b")
two_approvals = Workflow("two_approvals", input=Ask, output=dict).parallel([ask_a, ask_b]).commit()


# -- state and request context ---------------------------------------------------------------
class Counter(BaseModel):
    count: int = 0


@step(input=Num, output=Num, state=Counter)
async def count_up(ctx: StepContext[Num]) -> Num:
    ctx.set_state({"count": ctx.state.get("count", 0) + ctx.input.value})
    ctx.request_context["seen_by"] = "count_up"
    return ctx.input


@step(input=Num, output=dict, resume=dict)
async def report(ctx: StepContext[Num]) -> dict[str, Any]:
    if ctx.resume_data is None:
        ctx.suspend({"count": ctx.state["count"]})
    return {"state": ctx.state, "context": dict(ctx.request_context), "resume": ctx.resume_data}


stateful = (
    Workflow("stateful", input=Num, output=dict, state=Counter).then(count_up).then(report).commit()
)


# -- bail, abort, cancel, custom events -------------------------------------------------------
@step(input=Flag, output=Flag)
async def maybe_stop(ctx: StepContext[Flag]) -> Flag:
    await ctx.write({"progress": "checking"})
    if ctx.input.bail:
        ctx.bail({"bailed_with": ctx.input.value})
    if ctx.input.abort:
        ctx.abort()
    return ctx.input


@step(input=Flag, output=Flag)
async def after_stop(ctx: StepContext[Flag]) -> Flag:
    SEEN[ctx.run_id].append("after_stop")
    return ctx.input


stoppable = (
    Workflow("stoppable", input=Flag, output=Flag).then(maybe_stop).then(after_stop).commit()
)


class Wait(BaseModel):
    seconds: float = Field(default=10.0, le=60)


@step(input=Wait, output=dict)
async def wait_for_cancel(ctx: StepContext[Wait]) -> dict[str, Any]:
    SEEN[ctx.run_id].append("waiting")
    try:
        await asyncio.wait_for(ctx.wait_canceled(), ctx.input.seconds)
    except TimeoutError:
        return {"canceled": False}
    return {"canceled": ctx.canceled}


@step(input=dict, output=dict)
async def never_after_cancel(ctx: StepContext[dict[str, Any]]) -> dict[str, Any]:
    SEEN[ctx.run_id].append("never_after_cancel")
    return ctx.input


cancellable = (
    Workflow("cancellable", input=Wait, output=dict)
    .then(wait_for_cancel)
    .then(never_after_cancel)
    .commit()
)


# -- loops -------------------------------------------------------------------------------------
@step(input=Num, output=Num)
async def increment(ctx: StepContext[Num]) -> Num:
    SEEN[ctx.run_id].append(("increment", ctx.input.value))
    return Num(value=ctx.input.value + 1)


def _until_three(c: ConditionContext) -> bool:
    SEEN["conditions"].append(c.iteration_count)
    return bool(c.input["value"] >= 3)


def _loop_explodes(c: ConditionContext) -> bool:
    raise ZeroDivisionError("bad condition")


count_until = (
    Workflow("count_until", input=Num, output=Num).dountil(increment, _until_three).commit()
)
count_while = (
    Workflow("count_while", input=Num, output=Num)
    .dowhile(increment, lambda c: c.input["value"] < 3)
    .commit()
)
exploding_loop = (
    Workflow("exploding_loop", input=Num, output=Num).dountil(increment, _loop_explodes).commit()
)


@step(input=Num, output=Num, resume=dict)
async def loop_gate(ctx: StepContext[Num]) -> Num:
    if ctx.resume_data is None:
        ctx.suspend({"at": ctx.input.value}, label="loop")
    SEEN[ctx.run_id].append(("loop_gate", ctx.input.value, ctx.resume_data))
    return Num(value=ctx.input.value + 1)


suspending_loop = (
    Workflow("suspending_loop", input=Num, output=Num)
    .dountil(loop_gate, lambda c: c.input["value"] >= 2)
    .commit()
)


# -- foreach and map ---------------------------------------------------------------------------
IN_FLIGHT: defaultdict[str, int] = defaultdict(int)
PEAK: defaultdict[str, int] = defaultdict(int)


@step(input=Num, output=Num)
async def tracked(ctx: StepContext[Num]) -> Num:
    IN_FLIGHT[ctx.run_id] += 1
    PEAK[ctx.run_id] = max(PEAK[ctx.run_id], IN_FLIGHT[ctx.run_id])
    try:
        await asyncio.sleep(0.02 * (ctx.input.value % 3 + 1))
        if ctx.input.value == 13:
            raise ValueError("13 is unlucky")
        return Num(value=ctx.input.value * 10)
    finally:
        IN_FLIGHT[ctx.run_id] -= 1
        SEEN[ctx.run_id].append(("tracked", ctx.input.value))


class Batch(BaseModel):
    items: list[int]


def _to_nums(ctx: StepContext[Any]) -> list[dict[str, int]]:
    SEEN[ctx.run_id].append(("map", ctx.get_init_data()))
    return [{"value": v} for v in ctx.input["items"]]


fanout = (
    Workflow("fanout", input=Batch, output=list)
    .map(_to_nums)
    .foreach(tracked, concurrency=2)
    .commit()
)


@step(input=Num, output=Num, resume=Answer)
async def item_gate(ctx: StepContext[Num]) -> Num:
    if ctx.resume_data is None:
        ctx.suspend({"item": ctx.input.value}, label=f"item-{ctx.input.value}")
    return Num(value=ctx.input.value * (2 if ctx.resume_data["approved"] else -1))


gated_fanout = (
    Workflow("gated_fanout", input=Batch, output=list)
    .map(_to_nums)
    .foreach(item_gate, concurrency=3)
    .commit()
)
not_a_list = Workflow("not_a_list", input=Num, output=list).foreach(tracked, concurrency=2).commit()


# -- sleep -------------------------------------------------------------------------------------
short_nap = (
    Workflow("short_nap", input=Num, output=Num).then(add_one).sleep(0.2).then(double).commit()
)
long_nap = (
    Workflow("long_nap", input=Num, output=Num).then(add_one).sleep(2.0).then(double).commit()
)
past_nap = Workflow("past_nap", input=Num, output=Num).sleep_until(0.0).then(add_one).commit()


# -- nested workflows --------------------------------------------------------------------------
@step(input=Num, output=Num, resume=Answer, state=Counter)
async def inner_gate(ctx: StepContext[Num]) -> Num:
    if ctx.resume_data is None:
        ctx.suspend({"value": ctx.input.value}, label="inner-approval")
    ctx.set_state({"count": ctx.state.get("count", 0) + 100})
    return Num(value=ctx.input.value if ctx.resume_data["approved"] else 0)


inner_flow = (
    Workflow("inner_flow", input=Num, output=Num, state=Counter)
    .then(add_one)
    .then(inner_gate)
    .commit()
)
outer_flow = (
    Workflow("outer_flow", input=Num, output=Num, state=Counter)
    .then(count_up)
    .then(inner_flow)
    .then(double)
    .commit()
)
failing_inner = Workflow("failing_inner", input=Num, output=Num).then(fast_fail).commit()
outer_failing = (
    Workflow("outer_failing", input=Num, output=Num).then(add_one).then(failing_inner).commit()
)
inner_waits = Workflow("inner_waits", input=Wait, output=dict).then(wait_for_cancel).commit()
outer_cancellable = (
    Workflow("outer_cancellable", input=Wait, output=dict)
    .then(inner_waits)
    .then(never_after_cancel)
    .commit()
)
inner_aborts = Workflow("inner_aborts", input=Flag, output=Flag).then(maybe_stop).commit()
outer_aborted = (
    Workflow("outer_aborted", input=Flag, output=Flag).then(inner_aborts).then(after_stop).commit()
)
