"""Workflows the console's browser test (tests/test_console_browser.py) runs: an order that
is prepared, checked by a nested workflow, then waits for a reviewer (a resume schema the
console turns into a form), and one that holds until it is canceled."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from stepline.server import StepContext, Workflow, step

# How long `hold` waits for a cancel before it gives up (the test cancels it well before).
HOLD_SECONDS = 60.0


class Order(BaseModel):
    item: str = Field(min_length=1)
    quantity: int = Field(default=1, ge=1)
    note: str = ""


class Verdict(BaseModel):
    approved: bool
    score: int = Field(ge=1, le=5, description="1 (poor) to 5 (great)")
    reviewer: str = Field(min_length=1)


class Reviewed(BaseModel):
    item: str
    approved: bool
    score: int
    reviewer: str


class Published(BaseModel):
    item: str
    published: bool


@step(input=Order, output=Order)
async def prepare(ctx: StepContext[Order]) -> Order:
    """Normalises the order."""
    return Order(item=ctx.input.item.strip(), quantity=ctx.input.quantity, note=ctx.input.note)


@step(input=Order, output=Order)
async def reserve(ctx: StepContext[Order]) -> Order:
    """Reserves the stock."""
    return ctx.input


stock = Workflow("stock", input=Order, output=Order).then(reserve).commit()


@step(input=Order, output=Reviewed, resume=Verdict, suspend=Order)
async def review(ctx: StepContext[Order]) -> Reviewed:
    """Waits for a reviewer's verdict."""
    if ctx.resume_data is None:
        ctx.suspend(ctx.input, label="review")
    verdict = Verdict.model_validate(ctx.resume_data)
    return Reviewed(
        item=ctx.input.item,
        approved=verdict.approved,
        score=verdict.score,
        reviewer=verdict.reviewer,
    )


@step(input=Reviewed, output=Published)
async def publish(ctx: StepContext[Reviewed]) -> Published:
    """Publishes an approved order."""
    return Published(item=ctx.input.item, published=ctx.input.approved)


reviewed_order = (
    Workflow(
        "reviewed_order",
        input=Order,
        output=Published,
        description="Prepare, reserve stock, wait for a reviewer, publish.",
    )
    .then(prepare)
    .then(stock)
    .then(review)
    .then(publish)
    .commit()
)


@step(input=Order, output=dict)
async def wait_for_cancel(ctx: StepContext[Order]) -> dict[str, bool]:
    """Holds until the run is canceled."""
    try:
        await asyncio.wait_for(ctx.wait_canceled(), HOLD_SECONDS)
    except TimeoutError:
        return {"canceled": False}
    return {"canceled": True}


hold = (
    Workflow("hold", input=Order, output=dict, description="Runs until canceled.")
    .then(wait_for_cancel)
    .commit()
)


class Batch(BaseModel):
    skus: list[str]


class Line(BaseModel):
    sku: str


def _lines(ctx: StepContext[Any]) -> list[dict[str, str]]:
    return [{"sku": sku} for sku in ctx.input["skus"]]


@step(input=Line, output=Line)
async def check_line(ctx: StepContext[Line]) -> Line:
    """Checks one catalog line."""
    return ctx.input


@step(input=list, output=dict, retries=1)
async def upload(ctx: StepContext[list[Any]]) -> dict[str, int]:
    """Uploads the checked lines (the catalog service always refuses them here)."""
    raise ValueError(f"the catalog service refused {len(ctx.input)} lines")


sync_catalog = (
    Workflow("sync_catalog", input=Batch, output=dict, description="Check each line, upload.")
    .map(_lines, id="split_lines")
    .foreach(check_line, concurrency=2)
    .then(upload)
    .commit()
)
