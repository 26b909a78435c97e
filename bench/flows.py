"""The workflows the benchmark serves (`stepline serve --workflows bench.flows`).

bench/mastra/driver.mjs defines the same graphs for Mastra; keep the two in step.

- `bench_add3`: three steps, each adds 1 (W1, W2, W4 stream, W6, W7).
- `bench_approve`: `gate` suspends until resumed, then `after` adds 1 (W3).
- `bench_steps100`: one hundred steps in sequence, each adds 1 (W5).
- `bench_ticks`: `hold` sleeps, then twenty steps that each sleep `delay` and add 1; long
  enough that a thousand `Watch` subscribers attach while it runs (W4 fan-out).
- `bench_chain10`, `bench_chain50`, `bench_chain1000`: that many steps in sequence, each adds
  1 (W8; 50 is the smoke run's long chain).
- `bench_foreach`: `items` turns `{"count": n}` into n items `{"value": i}`, then a foreach
  adds 1 to each, 16 at a time (W9).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from stepline.server import StepContext, Workflow, step


class Num(BaseModel):
    value: int


class Go(BaseModel):
    ok: bool = True


class Count(BaseModel):
    count: int


class Tick(BaseModel):
    value: int
    delay: float = 0.0
    hold: float = 0.0


async def _add_one(ctx: StepContext[Num]) -> Num:
    return Num(value=ctx.input.value + 1)


bench_add3 = Workflow("bench_add3", input=Num, output=Num, description="3 steps, each adds 1")
for _id in ("add_a", "add_b", "add_c"):
    bench_add3.then(step(_id, input=Num, output=Num)(_add_one))
bench_add3.commit()


@step(input=Num, output=Num, resume=Go)
async def gate(ctx: StepContext[Num]) -> Num:
    if ctx.resume_data is None:
        ctx.suspend({"value": ctx.input.value}, label="gate")
    return Num(value=ctx.input.value)


bench_approve = (
    Workflow("bench_approve", input=Num, output=Num, description="suspend, resume, add 1")
    .then(gate)
    .then(step("after", input=Num, output=Num)(_add_one))
    .commit()
)

STEPS_W5 = 100
bench_steps100 = Workflow(
    "bench_steps100", input=Num, output=Num, description=f"{STEPS_W5} steps, each adds 1"
)
for _i in range(STEPS_W5):
    bench_steps100.then(step(f"s{_i:03d}", input=Num, output=Num)(_add_one))
bench_steps100.commit()


@step(input=Tick, output=Tick)
async def hold(ctx: StepContext[Tick]) -> Tick:
    await asyncio.sleep(ctx.input.hold)
    return ctx.input


async def _tick(ctx: StepContext[Tick]) -> Tick:
    await asyncio.sleep(ctx.input.delay)
    return Tick(value=ctx.input.value + 1, delay=ctx.input.delay, hold=ctx.input.hold)


TICKS_W4 = 20
bench_ticks = Workflow(
    "bench_ticks", input=Tick, output=Tick, description="hold, then 20 slow ticks"
).then(hold)
for _i in range(TICKS_W4):
    bench_ticks.then(step(f"t{_i:02d}", input=Tick, output=Tick)(_tick))
bench_ticks.commit()


def _chain(length: int) -> Workflow:
    chain = Workflow(
        f"bench_chain{length}", input=Num, output=Num, description=f"{length} steps, each adds 1"
    )
    for i in range(length):
        chain.then(step(f"c{i:04d}", input=Num, output=Num)(_add_one))
    return chain.commit()


# The registry finds workflows by module attribute: one name per chain.
bench_chain10 = _chain(10)
bench_chain50 = _chain(50)
bench_chain1000 = _chain(1000)
CHAIN_LENGTHS = (10, 50, 1000)

FOREACH_CONCURRENCY = 16


def _items(ctx: StepContext[Any]) -> list[dict[str, int]]:
    return [{"value": i} for i in range(Count.model_validate(ctx.input).count)]


bench_foreach = (
    Workflow(
        "bench_foreach",
        input=Count,
        output=list,
        description=f"n items, each adds 1, {FOREACH_CONCURRENCY} at a time",
    )
    .map(_items, id="items")
    .foreach(step("add_item", input=Num, output=Num)(_add_one), concurrency=FOREACH_CONCURRENCY)
    .commit()
)
