"""Workflows of the storage upgrade fixture (tests/fixtures/redis-v1/, tests/test_upgrade.py).

The fixture was written by an earlier release serving this module; the upgrade test serves it
again with the current code on a Redis loaded from that dump. Keep every workflow id, step
id and schema here unchanged: they are what the stored runs refer to.

`UPGRADE_HOLD_SECONDS` makes `hold` block (the fixture kills the replica while it does, to
leave a run mid-step); the upgrade test leaves it unset, so the recovered step returns at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from stepline.server import NonRetryableError, StepContext, Workflow, step


class Num(BaseModel):
    value: int


class Answer(BaseModel):
    approved: bool


class Batch(BaseModel):
    items: list[int]


@step(input=Num, output=Num)
async def add_one(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value + 1)


@step(input=Num, output=Num)
async def double(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value * 2)


@step(input=Num, output=Num)
async def square(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value**2)


chain = Workflow("up_chain", input=Num, output=Num).then(add_one).then(double).then(square).commit()


@step(input=Num, output=Num)
async def refuse(ctx: StepContext[Num]) -> Num:
    raise NonRetryableError(f"refused {ctx.input.value}")


failing = Workflow("up_failing", input=Num, output=Num).then(add_one).then(refuse).commit()


@step(input=Num, output=Num, resume=Answer)
async def gate(ctx: StepContext[Num]) -> Num:
    if ctx.resume_data is None:
        ctx.suspend({"asked": ctx.input.value}, label="gate")
    answer = Answer.model_validate(ctx.resume_data)
    return Num(value=ctx.input.value if answer.approved else -ctx.input.value)


gated = Workflow("up_gated", input=Num, output=Num).then(add_one).then(gate).then(double).commit()


@step(input=Num, output=Num, resume=Answer)
async def item_gate(ctx: StepContext[Num]) -> Num:
    if ctx.input.value % 2 == 1 and ctx.resume_data is None:
        ctx.suspend({"item": ctx.input.value}, label=f"item-{ctx.input.value}")
    return Num(value=ctx.input.value * 10)


def _to_nums(ctx: StepContext[Any]) -> list[dict[str, int]]:
    return [{"value": v} for v in ctx.input["items"]]


fanout = (
    Workflow("up_fanout", input=Batch, output=list)
    .map(_to_nums, id="to_nums")
    .foreach(item_gate, concurrency=4)
    .commit()
)

inner = Workflow("up_inner", input=Num, output=Num).then(square).then(gate).commit()
outer = Workflow("up_outer", input=Num, output=Num).then(add_one).then(inner).then(double).commit()

napping = (
    Workflow("up_napping", input=Num, output=Num)
    .then(add_one)
    .sleep(60, id="nap")
    .then(double)
    .commit()
)


@step(input=Num, output=Num)
async def hold(ctx: StepContext[Num]) -> Num:
    await asyncio.sleep(float(os.environ.get("UPGRADE_HOLD_SECONDS", "0")))
    return Num(value=ctx.input.value + 100)


holding = (
    Workflow("up_holding", input=Num, output=Num).then(add_one).then(hold).then(double).commit()
)


@step(input=Num, output=Num)
async def wait_cancel(ctx: StepContext[Num]) -> Num:
    await ctx.wait_canceled()
    return ctx.input


cancelable = Workflow("up_cancelable", input=Num, output=Num).then(wait_cancel).commit()
