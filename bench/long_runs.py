"""W8 and W9 of the Stepline driver: does one step cost more when the run is bigger?

- **W8**: chains of `w8_steps` lengths (`bench_chain<n>` in bench/flows.py), one `Start` at a
  time. Per step = median wall time of a run / its steps; the ratio is per step of each
  longer chain / per step of the shortest.
- **W9**: one `bench_foreach` run per size in `w9_sizes`, smallest first (16 items in flight,
  each adds 1). `Start` carries a deadline of `w9_limit` seconds: a run that does not finish
  by then is canceled, reported over the limit, and the larger sizes are not run. The same
  happens when the server's RSS (sampled twice a second; its peak is reported) passes
  `w9_rss_cap_mb`: the machine is shared. A finished run is then read once more with
  `GetExecutionResult`, whose message size is recorded.

bench/driver.py runs these after the other workloads; bench/mastra/driver.mjs reports the same
figure names.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import psutil
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from stepline.v1 import run_pb2
from stepline.v1 import workflow_service_pb2 as pb

if TYPE_CHECKING:
    from bench.driver import Config, Errors
    from stepline.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

SUCCESS = run_pb2.RUN_STATUS_SUCCESS
SETTLE_AFTER_CANCEL_S = 120  # how long an over-limit run may take to stop after Cancel
RSS_EVERY_S = 0.5
MB = 1024 * 1024


@dataclass(frozen=True)
class ChainTiming:
    """W8: the wall time of each successful run of one chain length."""

    steps: int
    seconds: list[float]

    @property
    def per_step_us(self) -> float | None:
        if not self.seconds:
            return None
        return statistics.median(self.seconds) / self.steps * 1e6


@dataclass(frozen=True)
class ForeachTiming:
    """W9: one foreach run of `items` items (times are None when it did not finish)."""

    items: int
    total_s: float | None = None  # client: Start sent → result received
    server_s: float | None = None  # server: created_at → updated_at
    read_s: float | None = None  # a GetExecutionResult of the finished run
    result_bytes: int | None = None  # that reply's serialized size
    checked_items: int = 0  # outputs that came back right
    rss_peak_mb: float | None = None  # the server's, while the run ran
    over_limit: bool = False
    over_memory: bool = False  # stopped: the server's RSS passed the cap
    not_run: bool = False  # a smaller size was over the limit or the cap

    @property
    def per_item_us(self) -> float | None:
        return None if self.total_s is None else self.total_s / self.items * 1e6


def chain_figures(timings: list[ChainTiming]) -> dict[str, float]:
    """`chain<n>_per_step_us`, `_run_p50_ms`, `_runs`, and `chain<n>_vs_chain<shortest>`."""
    out: dict[str, float] = {}
    base = timings[0] if timings else None
    for timing in timings:
        name = f"chain{timing.steps}"
        out[f"{name}_runs"] = len(timing.seconds)
        per_step = timing.per_step_us
        if per_step is None:
            continue
        out[f"{name}_per_step_us"] = round(per_step, 2)
        out[f"{name}_run_p50_ms"] = round(statistics.median(timing.seconds) * 1000, 3)
        if base is not None and timing is not base and base.per_step_us:
            out[f"{name}_vs_chain{base.steps}"] = round(per_step / base.per_step_us, 3)
    return out


def foreach_figures(
    timings: list[ForeachTiming], limit_s: float, rss_cap_mb: float
) -> dict[str, float]:
    """Per size `n<items>_total_s`, `_per_item_us`, `_server_s`, `_result_bytes`,
    `_result_read_ms`, `_items` (outputs checked), `_rss_peak_mb`, `_over_limit`,
    `_over_memory` and `_not_run` (0 or 1), and `n<items>_vs_n<smallest>` (per item, against
    the smallest size). A size over the time limit has lower bounds instead: `_total_s_above`,
    `_per_item_us_above`, `_vs_n<smallest>_above`.
    """
    out: dict[str, float] = {"limit_s": limit_s, "rss_cap_mb": rss_cap_mb}
    base = timings[0] if timings else None
    base_item = None if base is None else base.per_item_us
    for timing in timings:
        name = f"n{timing.items}"
        out[f"{name}_over_limit"] = int(timing.over_limit)
        out[f"{name}_over_memory"] = int(timing.over_memory)
        out[f"{name}_not_run"] = int(timing.not_run)
        if timing.rss_peak_mb is not None:
            out[f"{name}_rss_peak_mb"] = round(timing.rss_peak_mb, 1)
        if timing.over_limit:
            above = limit_s / timing.items * 1e6
            out[f"{name}_total_s_above"] = limit_s
            out[f"{name}_per_item_us_above"] = round(above, 2)
            if base is not None and timing is not base and base_item:
                out[f"{name}_vs_n{base.items}_above"] = round(above / base_item, 3)
        if timing.total_s is None:
            continue
        out[f"{name}_items"] = timing.checked_items
        out[f"{name}_total_s"] = round(timing.total_s, 3)
        per_item = timing.per_item_us
        if per_item is not None:
            out[f"{name}_per_item_us"] = round(per_item, 2)
        if timing.server_s is not None:
            out[f"{name}_server_s"] = round(timing.server_s, 3)
        if timing.result_bytes is not None:
            out[f"{name}_result_bytes"] = timing.result_bytes
        if timing.read_s is not None:
            out[f"{name}_result_read_ms"] = round(timing.read_s * 1000, 3)
        if base is not None and timing is not base and per_item is not None and base_item:
            out[f"{name}_vs_n{base.items}"] = round(per_item / base_item, 3)
    return out


def _num(value: int) -> struct_pb2.Value:
    return struct_pb2.Value(
        struct_value=struct_pb2.Struct(fields={"value": struct_pb2.Value(number_value=value)})
    )


def _count(items: int) -> struct_pb2.Value:
    return struct_pb2.Value(
        struct_value=struct_pb2.Struct(fields={"count": struct_pb2.Value(number_value=items)})
    )


def _detail(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {error.details()}"


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def _checked_outputs(result: run_pb2.RunResult) -> int:
    """How many of the foreach's outputs are their index + 1, in order."""
    values = result.result.list_value.values
    good = 0
    for index, value in enumerate(values):
        field = value.struct_value.fields.get("value")
        if field is not None and field.number_value == index + 1:
            good += 1
    return good


def _note(message: str) -> None:
    print(f"driver: {message}", file=sys.stderr, flush=True)


class PeakRss:
    """The peak RSS of a process, sampled every RSS_EVERY_S while `over_cap` runs."""

    def __init__(self, pid: int, cap_mb: float) -> None:
        self.process = psutil.Process(pid)
        self.cap_mb = cap_mb
        self.peak_mb = 0.0

    def sample(self) -> float:
        with contextlib.suppress(psutil.Error):
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / MB)
        return self.peak_mb

    async def over_cap(self) -> None:
        """Returns once the RSS passes the cap (else runs until canceled)."""
        while True:
            if self.sample() > self.cap_mb:
                return
            await asyncio.sleep(RSS_EVERY_S)


class LongRuns:
    """Runs W8 and W9 on one stub; failed calls go to the driver's `errors`."""

    def __init__(
        self, stub: WorkflowServiceAsyncStub, errors: Errors, config: Config, server_pid: int
    ) -> None:
        self.stub = stub
        self.errors = errors
        self.config = config
        self.server_pid = server_pid
        self.runs = 0  # runs this left in the store

    # -- W8 ------------------------------------------------------------------------------------

    async def chain_once(self, steps: int) -> float | None:
        """Wall seconds of one run of bench_chain<steps>, or None if it failed."""
        request = pb.StartRequest(workflow_id=f"bench_chain{steps}", input_data=_num(0))
        began = time.perf_counter()
        try:
            reply = await self.stub.Start(request)
        except grpc.aio.AioRpcError as error:
            self.errors.add("W8 Start", _detail(error))
            return None
        elapsed = time.perf_counter() - began
        self.runs += 1
        result = reply.result
        value = result.result.struct_value.fields.get("value")
        if result.status != SUCCESS or value is None or value.number_value != steps:
            self.errors.add("W8 result", f"bench_chain{steps}: status {result.status}")
            return None
        return elapsed

    async def w8(self) -> dict[str, float]:
        c = self.config
        timings: list[ChainTiming] = []
        for position, steps in enumerate(sorted(c.w8_steps)):
            warmup, runs = (c.w8_warmup, c.w8_runs) if position == 0 else (1, c.w8_long_runs)
            for _ in range(warmup):
                await self.chain_once(steps)
            seconds = [await self.chain_once(steps) for _ in range(runs)]
            timings.append(ChainTiming(steps, [s for s in seconds if s is not None]))
        return chain_figures(timings)

    # -- W9 ------------------------------------------------------------------------------------

    async def foreach_once(self, items: int) -> ForeachTiming:
        limit = self.config.w9_limit
        run_id = f"bench-w9-{items}-{uuid.uuid4().hex[:12]}"
        request = pb.StartRequest(
            workflow_id="bench_foreach", run_id=run_id, input_data=_count(items)
        )
        rss = PeakRss(self.server_pid, self.config.w9_rss_cap_mb)
        watch = asyncio.ensure_future(rss.over_cap())
        began = time.perf_counter()
        call = asyncio.ensure_future(self.stub.Start(request, timeout=limit))
        try:
            await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not call.done():
            call.cancel()
            _note(f"W9: {items} items: server RSS {rss.peak_mb:.0f} MB; canceling {run_id}")
            await self.abandon(run_id)
            return ForeachTiming(items, rss_peak_mb=rss.peak_mb, over_memory=True)
        try:
            reply = call.result()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                self.errors.add("W9 Start", _detail(error))
                return ForeachTiming(items, rss_peak_mb=rss.peak_mb)
            _note(f"W9: {items} items did not finish in {limit:g} s; canceling {run_id}")
            await self.abandon(run_id)
            return ForeachTiming(items, rss_peak_mb=rss.peak_mb, over_limit=True)
        total = time.perf_counter() - began
        self.runs += 1
        result = reply.result
        checked = _checked_outputs(result)
        if result.status != SUCCESS or checked != items:
            self.errors.add("W9 result", f"{items} items: status {result.status}, {checked} ok")
        server_s = _seconds(result.updated_at) - _seconds(result.created_at)
        read = pb.GetExecutionResultRequest(run_id=run_id)
        began = time.perf_counter()
        try:
            again = await self.stub.GetExecutionResult(read, timeout=limit)
        except grpc.aio.AioRpcError as error:
            self.errors.add("W9 GetExecutionResult", _detail(error))
            return ForeachTiming(items, total, server_s, checked_items=checked)
        read_s = time.perf_counter() - began
        return ForeachTiming(
            items, total, server_s, read_s, again.ByteSize(), checked, rss.sample()
        )

    async def abandon(self, run_id: str) -> None:
        """Cancel an over-limit run and wait (bounded) until it stops using the server."""
        try:
            await self.stub.Cancel(pb.CancelRequest(run_id=run_id), timeout=30)
            await self.stub.GetExecutionResult(
                pb.GetExecutionResultRequest(
                    run_id=run_id,
                    wait_timeout=duration_pb2.Duration(seconds=SETTLE_AFTER_CANCEL_S),
                ),
                timeout=SETTLE_AFTER_CANCEL_S + 30,
            )
        except grpc.aio.AioRpcError as error:
            _note(f"W9: canceling {run_id}: {_detail(error)}")
        self.runs += 1

    async def w9(self) -> dict[str, float]:
        timings: list[ForeachTiming] = []
        over: str | None = None  # the field that stopped a smaller size
        for items in sorted(self.config.w9_sizes):
            if over is not None:
                timings.append(
                    ForeachTiming(
                        items,
                        over_limit=over == "over_limit",
                        over_memory=over == "over_memory",
                        not_run=True,
                    )
                )
                continue
            timing = await self.foreach_once(items)
            if timing.total_s is not None:
                _note(f"W9: {items} items in {timing.total_s:.3f} s")
            if timing.over_limit or timing.over_memory:
                over = "over_limit" if timing.over_limit else "over_memory"
            timings.append(timing)
        return foreach_figures(timings, self.config.w9_limit, self.config.w9_rss_cap_mb)
