"""The Stepline load driver: a separate client process that runs the workloads against one
`stepline serve` over the generated async gRPC stubs, and prints one JSON object (the last
stdout line) with each workload's figures and counts.

    python -m bench.driver --target 127.0.0.1:P --redis-url redis://127.0.0.1:R/0 \
        --server-pid PID --config '{"workloads": ["W1"], ...}'

bench/run.py starts it; the counts come from its --config (see `Config`). Everything runs on
loopback and every loop is bounded by its count and by `--deadline` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, cast

import grpc
import psutil
import redis.asyncio as aioredis
from google.protobuf import duration_pb2, struct_pb2

from bench.long_runs import LongRuns
from stepline.v1 import run_pb2, workflow_service_pb2_grpc
from stepline.v1 import workflow_service_pb2 as pb

if TYPE_CHECKING:
    from stepline.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

SUCCESS = run_pb2.RUN_STATUS_SUCCESS
SUSPENDED = run_pb2.RUN_STATUS_SUSPENDED
MB = 1024 * 1024
STREAMS_PER_CHANNEL = 250  # well under the server's 1,000 streams per connection
# W9 reads the result of a 100,000-item foreach: several MB (bench/run.py raises the server's
# --max-message-bytes to match).
MAX_MESSAGE_BYTES = 256 * MB
# W7 measures Redis once housekeeping has compacted the finished runs (their `compact` set is
# empty), waiting at most this long.
COMPACTION_WAIT = 300.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Each channel gets its own connection (the global pool would share one).
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass
class Config:
    """How much of each workload to run (bench/run.py scales these)."""

    workloads: list[str]
    concurrency: int = 64
    w1_seq_runs: int = 2000
    w1_seq_warmup: int = 200
    w1_conc_runs: int = 10000
    w1_conc_warmup: int = 1000
    w2_runs: int = 20000
    w3_cycles: int = 5000
    w3_warmup: int = 500
    w4_stream_runs: int = 500
    w4_stream_warmup: int = 50
    w4_subscribers: int = 1000
    w4_tick_delay: float = 0.02
    w4_hold: float = 1.0
    w5_runs: int = 50
    w5_warmup: int = 5
    w7_runs: int = 100000
    populate_concurrency: int = 256
    # W8: chain lengths (bench_chain<n> in bench/flows.py); the shortest runs w8_runs times
    # after w8_warmup, each longer one w8_long_runs times after one warm-up run.
    w8_steps: list[int] = field(default_factory=lambda: [10, 1000])
    w8_runs: int = 50
    w8_warmup: int = 5
    w8_long_runs: int = 3
    # W9: foreach sizes, one run each, smallest first; a size that does not finish within
    # w9_limit seconds is canceled and the larger ones are not run.
    w9_sizes: list[int] = field(default_factory=lambda: [1000, 10000, 100000])
    w9_limit: float = 600.0
    w9_rss_cap_mb: float = 6144.0  # a run whose process passes this is stopped likewise

    @classmethod
    def from_json(cls, text: str) -> Config:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SystemExit(f"driver: unknown config keys {sorted(unknown)}")
        return cls(**data)


class BenchError(RuntimeError):
    """A workload could not run at all (not: some calls failed — those are counted)."""


# -- helpers -----------------------------------------------------------------------------------


def num(value: int) -> struct_pb2.Value:
    return struct_pb2.Value(struct_value=struct_pb2.Struct(fields={"value": num_value(value)}))


def num_value(value: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=value)


def result_value(result: run_pb2.RunResult) -> float | None:
    """`result.value` of a run result, if it has one."""
    if not result.HasField("result"):
        return None
    field = result.result.struct_value.fields.get("value")
    return None if field is None else field.number_value


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of unsorted samples; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def wall(ts: Any) -> float:
    """A protobuf Timestamp as epoch seconds."""
    return float(ts.seconds) + float(ts.nanos) / 1e9


async def pool(count: int, concurrency: int, task: Callable[[int], Awaitable[None]]) -> float:
    """Run task(0..count-1) with at most `concurrency` in flight; returns elapsed seconds."""
    counter = iter(range(count))

    async def worker() -> None:
        for index in counter:
            await task(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return time.perf_counter() - started


class Errors:
    """Failed calls by kind; a workload keeps going and reports them."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, detail[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def rpc_detail(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


# -- the driver --------------------------------------------------------------------------------


async def _compacted(client: aioredis.Redis) -> float | None:
    """Wait until every `compact` set (one per key prefix) is empty; the seconds waited, or
    None when the wait ran out (a server without compaction has no such set)."""
    started = time.monotonic()
    while time.monotonic() - started < COMPACTION_WAIT:
        waiting = 0
        async for key in client.scan_iter(match="*:compact", _type="zset"):
            waiting += int(await client.zcard(key))
        if not waiting:
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.5)
    return None


class Driver:
    def __init__(self, target: str, redis_url: str, server_pid: int, config: Config) -> None:
        self.target = target
        self.redis_url = redis_url
        self.server_pid = server_pid
        self.config = config
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[WorkflowServiceAsyncStub] = []
        self.errors = Errors()
        self.stored_runs = 0  # finished runs this driver has left in the store
        self.add3_start = pb.StartRequest(workflow_id="bench_add3", input_data=num(1))

    async def __aenter__(self) -> Driver:
        # A few connections so one HTTP/2 connection is not the bottleneck under 64+ in flight.
        for _ in range(4):
            self.channels.append(self._channel())
        self.stubs = [self._stub(ch) for ch in self.channels]
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self.channels:
            await channel.close()

    def _channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)

    @staticmethod
    def _stub(channel: grpc.aio.Channel) -> WorkflowServiceAsyncStub:
        # grpc is untyped here, so the stub's aio overload can't be picked from the argument.
        return cast(
            "WorkflowServiceAsyncStub", workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        )

    def stub(self, index: int) -> WorkflowServiceAsyncStub:
        return self.stubs[index % len(self.stubs)]

    # -- building blocks ---------------------------------------------------------------------

    async def start_add3(self, index: int, latencies: list[float] | None) -> bool:
        began = time.perf_counter()
        try:
            reply = await self.stub(index).Start(self.add3_start)
        except grpc.aio.AioRpcError as error:
            self.errors.add("Start", rpc_detail(error))
            return False
        if latencies is not None:
            latencies.append(time.perf_counter() - began)
        self.stored_runs += 1
        if reply.result.status != SUCCESS or result_value(reply.result) != 4:
            self.errors.add("Start result", f"{reply.result.status} {reply.result.result}")
            return False
        return True

    async def start_sequential(self, runs: int, warmup: int) -> tuple[list[float], int]:
        for i in range(warmup):
            await self.start_add3(i, None)
        latencies: list[float] = []
        ok = 0
        for _ in range(runs):
            if await self.start_add3(0, latencies):
                ok += 1
        return latencies, ok

    async def start_concurrent(self, runs: int, warmup: int) -> tuple[float, int]:
        concurrency = self.config.concurrency
        ok = 0

        async def one(index: int) -> None:
            nonlocal ok
            # Not `ok += await ...`: that reads `ok` before awaiting and loses updates.
            if await self.start_add3(index, None):
                ok += 1

        await pool(warmup, concurrency, one)
        ok = 0
        elapsed = await pool(runs, concurrency, one)
        return elapsed, ok

    async def backlog(self, runs: int, concurrency: int) -> dict[str, Any]:
        """StartAsync `runs` runs of bench_add3 with `concurrency` in flight, then wait for all
        of them to settle. Drain time runs from the first submission to the latest
        `updated_at` among the runs (server clock, same machine)."""
        request = pb.StartAsyncRequest(workflow_id="bench_add3", input_data=num(1))
        run_ids: list[str] = []
        began_wall = time.time()

        async def submit(index: int) -> None:
            try:
                reply = await self.stub(index).StartAsync(request)
            except grpc.aio.AioRpcError as error:
                self.errors.add("StartAsync", rpc_detail(error))
                return
            run_ids.append(reply.run_id)

        accept_s = await pool(runs, concurrency, submit)
        accepted_wall = time.time()
        if run_ids:  # the last one accepted is (about) the last one the queue hands out
            await self.settled(run_ids[-1], 0)
        finished = 0
        latest = began_wall

        async def check(index: int) -> None:
            nonlocal finished, latest
            result = await self.settled(run_ids[index], index)
            if result is None:
                return
            if result.status == SUCCESS and result_value(result) == 4:
                finished += 1
                latest = max(latest, wall(result.updated_at))
            else:
                self.errors.add("backlog result", f"{result.status} {result.result}")

        await pool(len(run_ids), self.config.concurrency, check)
        self.stored_runs += finished
        drain_s = latest - began_wall
        return {
            "accepted": len(run_ids),
            "finished": finished,
            "accept_s": round(accept_s, 4),
            "accepted_per_s": round(len(run_ids) / accept_s, 2) if accept_s else math.nan,
            "drain_s": round(drain_s, 4),
            "drain_after_accept_s": round(max(0.0, latest - accepted_wall), 4),
            "drain_runs_per_s": round(finished / drain_s, 2) if drain_s > 0 else math.nan,
        }

    async def settled(self, run_id: str, index: int) -> run_pb2.RunResult | None:
        """The run's result once it has settled (waits up to 10 minutes in 30 s calls)."""
        request = pb.GetExecutionResultRequest(
            run_id=run_id, wait_timeout=duration_pb2.Duration(seconds=30)
        )
        for _ in range(20):
            try:
                reply = await self.stub(index).GetExecutionResult(request, timeout=40)
            except grpc.aio.AioRpcError as error:
                self.errors.add("GetExecutionResult", rpc_detail(error))
                return None
            result: run_pb2.RunResult = reply.result
            if result.status in (SUCCESS, SUSPENDED, run_pb2.RUN_STATUS_FAILED):
                return result
        self.errors.add("GetExecutionResult", f"{run_id} did not settle")
        return None

    # -- workloads ---------------------------------------------------------------------------

    async def w1(self) -> dict[str, Any]:
        c = self.config
        latencies, seq_ok = await self.start_sequential(c.w1_seq_runs, c.w1_seq_warmup)
        elapsed, conc_ok = await self.start_concurrent(c.w1_conc_runs, c.w1_conc_warmup)
        return {
            "seq_p50_ms": ms(percentile(latencies, 0.50)),
            "seq_p99_ms": ms(percentile(latencies, 0.99)),
            "seq_runs": seq_ok,
            "conc_runs_per_s": round(conc_ok / elapsed, 2),
            "conc_runs": conc_ok,
        }

    async def w2(self) -> dict[str, Any]:
        return await self.backlog(self.config.w2_runs, self.config.concurrency)

    async def w3(self) -> dict[str, Any]:
        c = self.config
        ok = 0
        latencies: list[float] = []
        resume_data = struct_pb2.Value(
            struct_value=struct_pb2.Struct(fields={"ok": struct_pb2.Value(bool_value=True)})
        )
        start = pb.StartRequest(workflow_id="bench_approve", input_data=num(1))

        async def cycle(index: int) -> None:
            nonlocal ok
            stub = self.stub(index)
            began = time.perf_counter()
            try:
                started = await stub.Start(start)
                if started.result.status != SUSPENDED:
                    self.errors.add("W3 start", f"status {started.result.status}")
                    return
                resumed = await stub.Resume(
                    pb.ResumeRequest(
                        run_id=started.result.run_id, step=["gate"], resume_data=resume_data
                    )
                )
            except grpc.aio.AioRpcError as error:
                self.errors.add("W3 call", rpc_detail(error))
                return
            latencies.append(time.perf_counter() - began)
            self.stored_runs += 1
            if resumed.result.status == SUCCESS and result_value(resumed.result) == 2:
                ok += 1
            else:
                self.errors.add("W3 resume", f"status {resumed.result.status}")

        await pool(c.w3_warmup, c.concurrency, cycle)
        ok, latencies = 0, []
        elapsed = await pool(c.w3_cycles, c.concurrency, cycle)
        return {
            "cycles_per_s": round(ok / elapsed, 2),
            "cycle_p50_ms": ms(percentile(latencies, 0.50)),
            "cycles": ok,
        }

    async def w4(self) -> dict[str, Any]:
        c = self.config
        first: list[float] = []
        finish: list[float] = []
        complete = 0
        request = pb.StreamRequest(workflow_id="bench_add3", input_data=num(1))

        async def stream_once(record: bool) -> None:
            nonlocal complete
            began = time.perf_counter()
            got_first = None
            events = 0
            finished = False
            try:
                async for reply in self.stub(0).Stream(request):
                    if got_first is None:
                        got_first = time.perf_counter() - began
                    events += 1
                    if reply.event.WhichOneof("payload") == "workflow_finish":
                        finished = reply.event.workflow_finish.status == SUCCESS
            except grpc.aio.AioRpcError as error:
                self.errors.add("Stream", rpc_detail(error))
                return
            self.stored_runs += 1
            if not record:
                return
            if got_first is not None:
                first.append(got_first)
            if finished and events == 8:  # start, 3 x (step-start, step-result), finish
                finish.append(time.perf_counter() - began)
                complete += 1
            else:
                self.errors.add("Stream events", f"{events} events, finished={finished}")

        for _ in range(c.w4_stream_warmup):
            await stream_once(False)
        for _ in range(c.w4_stream_runs):
            await stream_once(True)
        out: dict[str, Any] = {
            "first_event_p50_ms": ms(percentile(first, 0.50)),
            "first_event_p99_ms": ms(percentile(first, 0.99)),
            "finish_p50_ms": ms(percentile(finish, 0.50)),
            "finish_p99_ms": ms(percentile(finish, 0.99)),
            "streams": complete,
        }
        out.update(await self.fan_out())
        return out

    async def fan_out(self) -> dict[str, Any]:
        """`w4_subscribers` Watch streams on one bench_ticks run, opened while it holds."""
        c = self.config
        ticks = pb.StartAsyncRequest(
            workflow_id="bench_ticks",
            input_data=struct_pb2.Value(
                struct_value=struct_pb2.Struct(
                    fields={
                        "value": num_value(0),
                        "delay": num_value(c.w4_tick_delay),
                        "hold": num_value(c.w4_hold),
                    }
                )
            ),
        )
        channels = [
            self._channel()
            for _ in range(max(1, math.ceil(c.w4_subscribers / STREAMS_PER_CHANNEL)))
        ]
        stubs = [self._stub(ch) for ch in channels]
        try:
            for channel in channels:
                await asyncio.wait_for(channel.channel_ready(), timeout=20)
            run_id = (await self.stub(0).StartAsync(ticks)).run_id
            received: list[list[int]] = [[] for _ in range(c.w4_subscribers)]
            finish_at: list[float] = []
            failures = 0
            opened = time.perf_counter()

            async def subscribe(index: int) -> None:
                nonlocal failures
                seen = received[index]
                call = stubs[index % len(stubs)].Watch(pb.WatchRequest(run_id=run_id))
                try:
                    async for reply in call:
                        seen.append(reply.event.sequence)
                        if reply.event.WhichOneof("payload") == "workflow_finish":
                            finish_at.append(time.perf_counter())
                except grpc.aio.AioRpcError as error:
                    failures += 1
                    self.errors.add("Watch", rpc_detail(error))

            limit = c.w4_hold + 21 * c.w4_tick_delay + 120
            tasks = [asyncio.create_task(subscribe(i)) for i in range(c.w4_subscribers)]
            _done, hung = await asyncio.wait(tasks, timeout=limit)
            for task in hung:  # counted below as incomplete
                task.cancel()
            await asyncio.gather(*hung, return_exceptions=True)
            all_done_s = time.perf_counter() - opened
            final = await self.settled(run_id, 0)
            self.stored_runs += 1
        finally:
            for channel in channels:
                await channel.close()
        expected = final.last_sequence if final is not None else 0
        want = list(range(1, expected + 1))
        complete = sum(1 for seen in received if seen == want)
        lost = sum(len(set(want) - set(seen)) for seen in received)
        duplicated = sum(len(seen) - len(set(seen)) for seen in received)
        return {
            "watch_subscribers": c.w4_subscribers,
            "watch_events_expected": expected,
            "watch_complete": complete,
            "watch_lost_events": lost,
            "watch_duplicate_events": duplicated,
            "watch_failed_streams": failures,
            "watch_hung_streams": len(hung),
            "watch_finish_spread_ms": ms(max(finish_at) - min(finish_at))
            if finish_at
            else math.nan,
            "watch_all_done_s": round(all_done_s, 3),
        }

    async def w5(self) -> dict[str, Any]:
        c = self.config
        request = pb.StartRequest(workflow_id="bench_steps100", input_data=num(0))
        latencies: list[float] = []
        ok = 0
        for i in range(c.w5_warmup + c.w5_runs):
            began = time.perf_counter()
            try:
                reply = await self.stub(0).Start(request)
            except grpc.aio.AioRpcError as error:
                self.errors.add("W5 Start", rpc_detail(error))
                continue
            self.stored_runs += 1
            if reply.result.status != SUCCESS or result_value(reply.result) != 100:
                self.errors.add("W5 result", f"{reply.result.status}")
                continue
            if i >= c.w5_warmup:
                latencies.append(time.perf_counter() - began)
                ok += 1
        p50 = percentile(latencies, 0.50)
        return {
            "run_p50_ms": ms(p50),
            "per_step_us": round(p50 / 100 * 1e6, 2),
            "runs": ok,
        }

    async def w7(self) -> dict[str, Any]:
        """Populate `w7_runs` finished runs; server RSS and Redis memory before and after."""
        c = self.config
        server = psutil.Process(self.server_pid)
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            rss_before = server.memory_info().rss
            info = await client.info("memory")
            persistence = await client.info("persistence")
            used_before = int(info["used_memory"])
            aof_before = int(persistence.get("aof_current_size", 0))
            rewrites_before = persistence.get("aof_rewrites")
            stored_before = self.stored_runs
            filled = await self.backlog(c.w7_runs, c.populate_concurrency)
            compaction_wait = await _compacted(client)
            rss_after = server.memory_info().rss
            info = await client.info("memory")
            persistence = await client.info("persistence")
            used_after = int(info["used_memory"])
            aof_after = int(persistence.get("aof_current_size", 0))
            # An automatic AOF rewrite compacts the file: the size delta means nothing then.
            rewritten = persistence.get("aof_rewrites") != rewrites_before
            dbsize = int(await client.dbsize())
        finally:
            await client.aclose()
        runs = max(1, filled["finished"])
        return {
            "runs": filled["finished"],
            "populate_runs_per_s": filled["drain_runs_per_s"],
            "compaction_wait_s": compaction_wait,
            "rss_before_mb": round(rss_before / MB, 2),
            "rss_after_mb": round(rss_after / MB, 2),
            "rss_growth_mb": round((rss_after - rss_before) / MB, 2),
            "store_bytes_per_run": round((used_after - used_before) / runs, 1),
            "aof_bytes_per_run": None if rewritten else round((aof_after - aof_before) / runs, 1),
            "aof_rewritten": rewritten,
            "redis_used_mb": round(used_after / MB, 2),
            "redis_keys": dbsize,
            "stored_runs": stored_before + filled["finished"],
        }

    async def run(self) -> dict[str, Any]:
        wanted = self.config.workloads
        out: dict[str, Any] = {}
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("W1", self.w1),
            ("W2", self.w2),
            ("W3", self.w3),
            ("W4", self.w4),
            ("W5", self.w5),
        ]
        for name, workload in steps:
            if name in wanted:
                out[name] = await self.timed(name, workload)
        if "W7" in wanted or "W6" in wanted:
            populated = await self.timed("W7", self.w7)
            if "W7" in wanted:
                out["W7"] = populated
        if "W6" in wanted:
            stored = self.stored_runs
            out["W6"] = await self.timed("W6", self.w1)
            out["W6"]["stored_runs"] = stored
        # Last: a W9 size over its limit leaves the server busy until its run is canceled.
        long_runs = LongRuns(self.stub(0), self.errors, self.config, self.server_pid)
        if "W8" in wanted:
            out["W8"] = await self.timed("W8", long_runs.w8)
        if "W9" in wanted:
            out["W9"] = await self.timed("W9", long_runs.w9)
        self.stored_runs += long_runs.runs
        return out

    async def timed(
        self, name: str, workload: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        before = self.errors.total
        began = time.perf_counter()
        print(f"driver: {name} ...", file=sys.stderr, flush=True)
        result = await workload()
        result["errors"] = self.errors.total - before
        result["wall_s"] = round(time.perf_counter() - began, 2)
        print(f"driver: {name} done in {result['wall_s']} s", file=sys.stderr, flush=True)
        return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    config = Config.from_json(args.config)
    async with Driver(args.target, args.redis_url, args.server_pid, config) as driver:
        results = await asyncio.wait_for(driver.run(), timeout=args.deadline)
        return {
            "engine": "stepline",
            "config": asdict(config),
            "workloads": results,
            "errors": driver.errors.counts,
            "first_errors": driver.errors.first,
        }


def run_loop(main: Coroutine[Any, Any, dict[str, Any]], *, uvloop_ok: bool) -> dict[str, Any]:
    if uvloop_ok:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def clean(value: Any) -> Any:
    """NaN (a percentile of nothing) as null, so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--config", required=True, help="JSON object of Config fields")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds, whole run")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    result = run_loop(main_async(args), uvloop_ok=not args.no_uvloop)
    print(json.dumps(clean(result), allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
