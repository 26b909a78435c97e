"""Workflows the operations tests (tests/test_ops_*.py) serve, in process and through
`stepline serve --workflows tests.ops_flows`.

`GATES` holds a step until the test opens its run's gate (in-process servers only).
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel

from stepline.server import NonRetryableError, StepContext, Workflow, step

GATES: dict[str, asyncio.Event] = {}
log = logging.getLogger("tests.ops_flows")


def gate(run_id: str) -> asyncio.Event:
    return GATES.setdefault(run_id, asyncio.Event())


class Num(BaseModel):
    value: int


class Nums(BaseModel):
    values: list[int]


class Decision(BaseModel):
    approved: bool


@step(input=Num, output=Num)
async def add_one(ctx: StepContext[Num]) -> Num:
    """Adds one."""
    log.info("adding one to %s", ctx.input.value)  # a step's own log line
    return Num(value=ctx.input.value + 1)


@step(input=Num, output=Num)
async def double(ctx: StepContext[Num]) -> Num:
    await ctx.write({"doubling": ctx.input.value})
    return Num(value=ctx.input.value * 2)


@step(input=Num, output=Num)
async def triple(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value * 3)


class Both(BaseModel):
    double: Num
    triple: Num


@step(input=Both, output=Num)
async def total(ctx: StepContext[Both]) -> Num:
    return Num(value=ctx.input.double.value + ctx.input.triple.value)


@step(input=Num, output=Num)
async def explode(ctx: StepContext[Num]) -> Num:
    raise NonRetryableError(f"cannot handle {ctx.input.value}")


@step(input=Num, output=Num, resume=Decision)
async def review(ctx: StepContext[Num]) -> Num:
    """Waits for {"approved": bool}."""
    if ctx.resume_data is None:
        ctx.suspend({"value": ctx.input.value}, label="review")
    decision = Decision.model_validate(ctx.resume_data)
    return Num(value=ctx.input.value if decision.approved else -1)


@step(input=Num, output=Num)
async def held(ctx: StepContext[Num]) -> Num:
    """Waits for its run's gate to open, or for the run to be canceled."""
    waits = {
        asyncio.ensure_future(gate(ctx.run_id).wait()),
        asyncio.ensure_future(ctx.wait_canceled()),
    }
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return ctx.input


@step(input=Num, output=Num)
async def slow_square(ctx: StepContext[Num]) -> Num:
    await asyncio.sleep(0.02)
    return Num(value=ctx.input.value**2)


@step(input=Nums, output=list)
async def explode_list(ctx: StepContext[Nums]) -> list[dict[str, int]]:
    return [{"value": v} for v in ctx.input.values]


chain = (
    Workflow("chain", input=Num, output=Num, description="Add one, then double.")
    .then(add_one)
    .then(double)
    .commit()
)
fork = (
    Workflow("fork", input=Num, output=Num, description="Double and triple, then add.")
    .parallel([double, triple])
    .then(total)
    .commit()
)
broken = Workflow("broken", input=Num, output=Num).then(add_one).then(explode).commit()
approval = (
    Workflow("approval", input=Num, output=Num).then(add_one).then(review).then(double).commit()
)
holding = Workflow("holding", input=Num, output=Num).then(held).commit()
squares = (
    Workflow("squares", input=Nums, output=list, description="Square every number.")
    .then(explode_list)
    .foreach(slow_square, concurrency=2)
    .commit()
)
nested = Workflow("nested", input=Num, output=Num).then(chain).then(triple).commit()
# Long enough that the run is handed to a durable timer and woken by a second pass.
napping = Workflow("napping", input=Num, output=Num).sleep(1.2).then(add_one).commit()
