"""The workflows the reliability suites run (`stepline serve --workflows reliability.flows`).

Four shapes, so that every run has one expected final status that the store can be checked
against:

- `rel_ok`       prepare → finish                      SUCCESS, result {"n": (n + 1) * 2}
- `rel_fail`     prepare → reject (non-retryable)      FAILED, error "rejected <n>"
- `rel_approval` prepare → approve (suspends) → record SUSPENDED, then after one resume
                                                       SUCCESS, result {"n", "approved", "by"}
- `rel_cancel`   prepare → hold (waits for a cancel) → after_hold
                                                       CANCELED (a hold that times out ends
                                                       SUCCESS, which the suites flag)

`delay_ms` makes each step take that long, so runs are in flight when a replica dies.
The expected outcome of every shape is computed by `expected()` in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pydantic import BaseModel, Field

from stepline.server import NonRetryableError, StepContext, Workflow, step

OK = "rel_ok"
FAIL = "rel_fail"
APPROVAL = "rel_approval"
CANCEL = "rel_cancel"
WORKFLOWS = (OK, FAIL, APPROVAL, CANCEL)


class Job(BaseModel):
    n: int
    delay_ms: int = Field(default=0, ge=0, le=10_000)
    # rel_cancel only: how long `hold` waits for the cancel before giving up.
    hold_seconds: float = Field(default=300.0, ge=0, le=3600)


class Value(BaseModel):
    n: int


class Decision(BaseModel):
    approved: bool
    by: str


class Verdict(BaseModel):
    n: int
    approved: bool
    by: str


async def _work(job: Job) -> None:
    if job.delay_ms:
        await asyncio.sleep(job.delay_ms / 1000)


@step(input=Job, output=Job)
async def prepare(ctx: StepContext[Job]) -> Job:
    await _work(ctx.input)
    return ctx.input.model_copy(update={"n": ctx.input.n + 1})


@step(input=Job, output=Value)
async def finish(ctx: StepContext[Job]) -> Value:
    await _work(ctx.input)
    await ctx.write({"finishing": ctx.input.n})
    return Value(n=ctx.input.n * 2)


@step(input=Job, output=Value, retries=0)
async def reject(ctx: StepContext[Job]) -> Value:
    await _work(ctx.input)
    raise NonRetryableError(f"rejected {ctx.input.n - 1}", details={"n": ctx.input.n - 1})


@step(input=Job, output=Verdict, resume=Decision, suspend=Value)
async def approve(ctx: StepContext[Job]) -> Verdict:
    if ctx.resume_data is None:
        ctx.suspend({"n": ctx.input.n}, label="approve")
    decision = Decision.model_validate(ctx.resume_data)
    return Verdict(n=ctx.input.n, approved=decision.approved, by=decision.by)


@step(input=Verdict, output=Verdict)
async def record(ctx: StepContext[Verdict]) -> Verdict:
    return ctx.input


@step(input=Job, output=Value)
async def hold(ctx: StepContext[Job]) -> Value:
    # Not canceled in time: the run ends SUCCESS, which the suites report as wrong.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.wait_canceled(), ctx.input.hold_seconds)
    return Value(n=ctx.input.n)


@step(input=Value, output=Value)
async def after_hold(ctx: StepContext[Value]) -> Value:
    return ctx.input


rel_ok = Workflow(OK, input=Job, output=Value).then(prepare).then(finish).commit()
rel_fail = Workflow(FAIL, input=Job, output=Value).then(prepare).then(reject).commit()
rel_approval = (
    Workflow(APPROVAL, input=Job, output=Verdict).then(prepare).then(approve).then(record).commit()
)
rel_cancel = (
    Workflow(CANCEL, input=Job, output=Value).then(prepare).then(hold).then(after_hold).commit()
)


# -- for reproductions only (not in the suites' mix) ---------------------------------------------
class Linger(BaseModel):
    seconds: float = Field(default=5.0, ge=0, le=60)


@step(input=Linger, output=dict)
async def linger(ctx: StepContext[Linger]) -> dict[str, Any]:
    await asyncio.sleep(ctx.input.seconds)
    return {"lingered": ctx.input.seconds}


@step(input=Linger, output=dict, retries=0)
async def reject_now(ctx: StepContext[Linger]) -> dict[str, Any]:
    raise NonRetryableError("rejected at once")


# One branch fails at once and is recorded FAILED while the other still runs.
rel_split = Workflow("rel_split", input=Linger, output=dict).parallel([linger, reject_now]).commit()


# -- what each run must end as -----------------------------------------------------------------
def decision(n: int) -> dict[str, Any]:
    """The resume data the suites send to an `rel_approval` run."""
    return {"approved": n % 2 == 0, "by": f"caller-{n % 7}"}


def expected(workflow_id: str, n: int) -> tuple[str, Any]:
    """(final status, result for success or error message for failed) of a run with input n."""
    if workflow_id == OK:
        return "success", {"n": (n + 1) * 2}
    if workflow_id == FAIL:
        return "failed", f"rejected {n}"
    if workflow_id == APPROVAL:
        return "success", {"n": n + 1, **decision(n)}
    if workflow_id == CANCEL:
        return "canceled", None
    raise ValueError(f"unknown reliability workflow {workflow_id!r}")


def required_steps(workflow_id: str) -> tuple[str, ...]:
    """The steps whose result every run of `workflow_id` records (exactly once; no step of
    any run records more than one result). A cancel can land before any step has run."""
    if workflow_id == OK:
        return ("prepare", "finish")
    if workflow_id == FAIL:
        return ("prepare", "reject")
    if workflow_id == APPROVAL:
        return ("prepare", "approve", "record")
    return ()
