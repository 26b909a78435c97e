"""Workflows for the edges of the run API: time travel into nested workflows, sleeps, foreach
and parallel blocks; resume of one foreach iteration; cancel of waiting, suspended and nested
runs. Served next to `tests.flows` by tests/test_grpc_run_api.py.

Steps record what they ran on in `flows.SEEN` (keyed by run id).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from stepline.server import StepContext, Workflow, step
from tests.flows import SEEN, Answer


class X(BaseModel):
    x: int


class Wrapped(BaseModel):
    wrapped: int


class Items(BaseModel):
    items: list[int]


@step(input=X, output=X)
async def prepare(ctx: StepContext[X]) -> X:
    return X(x=ctx.input.x + 1)


@step(input=X, output=X)
async def square(ctx: StepContext[X]) -> X:
    SEEN[ctx.run_id].append(("square", ctx.input.x))
    return X(x=ctx.input.x * ctx.input.x)


@step(input=X, output=X)
async def negate(ctx: StepContext[X]) -> X:
    return X(x=-ctx.input.x)


@step(input=X, output=Wrapped)
async def wrap(ctx: StepContext[X]) -> Wrapped:
    return Wrapped(wrapped=ctx.input.x)


def _spread(ctx: StepContext[Any]) -> list[dict[str, int]]:
    return [{"x": v} for v in ctx.input["items"]]


# -- time travel targets ---------------------------------------------------------------------------
inner = Workflow("inner", input=X, output=X).then(square).then(negate).commit()
nested_chain = (
    Workflow("nested_chain", input=X, output=Wrapped).then(prepare).then(inner).then(wrap).commit()
)
napping_chain = (
    Workflow("napping_chain", input=X, output=Wrapped)
    .then(prepare)
    .sleep(0.01, id="nap")
    .then(wrap)
    .commit()
)
squares = (
    Workflow("squares", input=Items, output=list)
    .map(_spread, id="spread")
    .foreach(square, concurrency=2)
    .commit()
)


@step(input=X, output=X)
async def left(ctx: StepContext[X]) -> X:
    SEEN[ctx.run_id].append(("left", ctx.input.x))
    return X(x=ctx.input.x + 10)


@step(input=X, output=X)
async def right(ctx: StepContext[X]) -> X:
    """Fails the first time it runs in a run whose request context sets `fail_right_once`."""
    ran_before = ("right", ctx.input.x) in SEEN[ctx.run_id]
    SEEN[ctx.run_id].append(("right", ctx.input.x))
    if ctx.request_context.get("fail_right_once") and not ran_before:
        raise RuntimeError("right fails once")
    return X(x=ctx.input.x * 100)


class Sides(BaseModel):
    left: X
    right: X


@step(input=Sides, output=Wrapped)
async def join_sides(ctx: StepContext[Sides]) -> Wrapped:
    return Wrapped(wrapped=ctx.input.left.x + ctx.input.right.x)


forked = (
    Workflow("forked", input=X, output=Wrapped)
    .then(prepare)
    .parallel([left, right])
    .then(join_sides)
    .commit()
)


# -- resume by iteration ---------------------------------------------------------------------------
@step(input=X, output=X, resume=Answer)
async def hold_item(ctx: StepContext[X]) -> X:
    if ctx.resume_data is None:
        ctx.suspend({"item": ctx.input.x}, label=f"hold-{ctx.input.x}")
    return X(x=ctx.input.x * 2)


held_in_turn = (
    Workflow("held_in_turn", input=Items, output=list)
    .map(_spread, id="spread")
    .foreach(hold_item, concurrency=1)
    .commit()
)


# -- cancel ----------------------------------------------------------------------------------------
@step(input=X, output=X)
async def stubborn(ctx: StepContext[X]) -> X:
    """Runs until the run is canceled, then fails: its record ends CANCELED."""
    SEEN[ctx.run_id].append(("stubborn", ctx.input.x))
    await ctx.wait_canceled()
    raise RuntimeError("stopped by the cancel")


@step(input=X, output=X, resume=Answer)
async def asker(ctx: StepContext[X]) -> X:
    if ctx.resume_data is None:
        ctx.suspend({"asking": ctx.input.x}, label="asker")
    return ctx.input


@step(input=X, output=X, resume=Answer)
async def hold_or_stop(ctx: StepContext[X]) -> X:
    """Item 0 suspends; any other item behaves like `stubborn`."""
    if ctx.input.x == 0 and ctx.resume_data is None:
        ctx.suspend({"item": 0}, label="hold-0")
    if ctx.input.x != 0:
        SEEN[ctx.run_id].append(("stubborn", ctx.input.x))
        await ctx.wait_canceled()
        raise RuntimeError("stopped by the cancel")
    return ctx.input


long_inner_nap = (
    Workflow("long_inner_nap", input=X, output=X)
    .then(prepare)
    .sleep(30.0, id="inner_nap")
    .then(negate)
    .commit()
)
outer_nap = Workflow("outer_nap", input=X, output=Wrapped).then(long_inner_nap).then(wrap).commit()
ask_or_stop = Workflow("ask_or_stop", input=X, output=dict).parallel([asker, stubborn]).commit()
nap_or_stop = (
    Workflow("nap_or_stop", input=X, output=dict).parallel([long_inner_nap, stubborn]).commit()
)
hold_or_stop_each = (
    Workflow("hold_or_stop_each", input=Items, output=list)
    .map(_spread, id="spread")
    .foreach(hold_or_stop, concurrency=2)
    .commit()
)
