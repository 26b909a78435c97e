"""Workflows for the multi-process tests (tests/test_distributed.py), served by real
`stepline serve --workflows tests.distributed_flows` replicas.

Every step reports the pid of the process that executed it, so a test can tell which replica
recorded each step of a run (and that a killed or stalled replica recorded nothing after it
lost the run). Results are otherwise deterministic: `expected_acc` gives the final value.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel, Field

from stepline.server import Step, StepContext, Workflow, step


class Job(BaseModel):
    n: int
    # Seconds each hop sleeps: long enough that a replica dies with runs mid-step.
    delay: float = Field(default=0.08, ge=0, le=10)


class Carry(BaseModel):
    n: int
    delay: float
    acc: int
    # The process that executed the step that produced this value.
    pid: int


def hop_value(acc: int, index: int) -> int:
    return acc * 2 + index


def expected_acc(n: int, hops: int) -> int:
    """The `acc` a run of `hops` hops ends with, for input `n`."""
    acc = n
    for index in range(1, hops + 1):
        acc = hop_value(acc, index)
    return acc


def _hop(index: int, *, first: bool) -> Step[Any, Any]:
    if first:

        @step(f"hop{index}", input=Job, output=Carry)
        async def first_hop(ctx: StepContext[Job]) -> Carry:
            await asyncio.sleep(ctx.input.delay)
            job = ctx.input
            return Carry(n=job.n, delay=job.delay, acc=hop_value(job.n, index), pid=os.getpid())

        return first_hop

    @step(f"hop{index}", input=Carry, output=Carry)
    async def next_hop(ctx: StepContext[Carry]) -> Carry:
        await asyncio.sleep(ctx.input.delay)
        c = ctx.input
        return Carry(n=c.n, delay=c.delay, acc=hop_value(c.acc, index), pid=os.getpid())

    return next_hop


RELAY_HOPS = 4
LONG_RELAY_HOPS = 8


def _chain(workflow_id: str, hops: int) -> Workflow:
    flow = Workflow(workflow_id, input=Job, output=Carry)
    for index in range(1, hops + 1):
        flow = flow.then(_hop(index, first=index == 1))
    return flow.commit()


# Four short hops: the batch workflow (SIGKILL, drain, Redis restart).
relay = _chain("relay", RELAY_HOPS)
# Eight hops: a run long enough to follow with a Stream across a replica kill.
long_relay = _chain("long_relay", LONG_RELAY_HOPS)


# -- a step that outlives its lease when its process is stopped (fencing) --------------------
class Stall(BaseModel):
    seconds: float = Field(le=30)


class Stalled(BaseModel):
    seconds: float
    pid: int


class Done(BaseModel):
    stalled_pid: int
    pid: int


@step(input=Stall, output=Stalled, retries=0)
async def stall(ctx: StepContext[Stall]) -> Stalled:
    await asyncio.sleep(ctx.input.seconds)
    return Stalled(seconds=ctx.input.seconds, pid=os.getpid())


@step(input=Stalled, output=Done)
async def after_stall(ctx: StepContext[Stalled]) -> Done:
    return Done(stalled_pid=ctx.input.pid, pid=os.getpid())


stalling = Workflow("stalling", input=Stall, output=Done).then(stall).then(after_stall).commit()


# -- one suspension, many concurrent resumes --------------------------------------------------
class Hold(BaseModel):
    # Seconds the step keeps running after the resume, so every racing resume arrives
    # while the continuation is still in progress.
    hold: float = Field(default=1.0, le=10)


class Decision(BaseModel):
    voter: int


class Decided(BaseModel):
    voter: int
    pid: int


@step(input=Hold, output=Decided, resume=Decision, suspend=dict)
async def ballot(ctx: StepContext[Hold]) -> Decided:
    if ctx.resume_data is None:
        ctx.suspend({"hold": ctx.input.hold}, label="ballot")
    await asyncio.sleep(ctx.input.hold)
    decision = Decision.model_validate(ctx.resume_data)
    return Decided(voter=decision.voter, pid=os.getpid())


@step(input=Decided, output=Decided)
async def tally(ctx: StepContext[Decided]) -> Decided:
    return ctx.input


balloting = Workflow("balloting", input=Hold, output=Decided).then(ballot).then(tally).commit()
