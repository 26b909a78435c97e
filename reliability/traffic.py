"""Callers: drive runs through the typed client the way a real application would.

Every run has a caller-chosen `run_id` and a `request_id`, so a start retried after
UNAVAILABLE (or a deadline) returns the same run instead of starting another (SPEC §2: the
typed client does not retry unary calls itself; it only resumes a broken Watch/Stream from its
last sequence, a bounded number of times). Callers retry with jittered exponential backoff
until the run's budget is spent, spread over every replica through one round-robin channel,
and record what they saw (the caller's view) for the verifier.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stepline.client import (
    Client,
    DeadlineExceeded,
    EventType,
    NotSuspended,
    ResumeAlreadyClaimed,
    RunEvent,
    RunPage,
    RunResult,
    RunStatus,
    SteplineError,
    Unavailable,
)

from . import flows

T = TypeVar("T")

RETRYABLE = (Unavailable, DeadlineExceeded)
BACKOFF_BASE = 0.05
BACKOFF_MAX = 2.0
# Bounds of one blocking call (Start, Resume, GetExecutionResult's wait); a slower run is
# simply asked again, which is what the request_id makes safe.
CALL_TIMEOUT = 30.0
RESULT_WAIT = 10.0

MODES = ("unary", "async", "stream")
# 20 runs: 11 succeed, 3 fail, 4 suspend then are resumed, 2 are canceled.
MIX = (flows.OK,) * 11 + (flows.FAIL,) * 3 + (flows.APPROVAL,) * 4 + (flows.CANCEL,) * 2

CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.lb_policy_name": "round_robin",
    "grpc.use_local_subchannel_pool": 1,
    # Find a restarted replica again quickly (the default backoff grows to two minutes).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class BudgetSpent(Exception):
    """The run did not get where it had to within its budget."""


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    workflow_id: str
    n: int
    request_id: str
    mode: str
    delay_ms: int = 0

    @property
    def job(self) -> dict[str, Any]:
        return {"n": self.n, "delay_ms": self.delay_ms}


def specs(tag: str, *, delay_ms: int = 0, start: int = 0) -> Iterator[RunSpec]:
    """An endless, deterministic stream of runs in the MIX proportions and every mode."""
    for i in itertools.count(start):
        position = i % len(MIX)
        workflow_id = MIX[position]
        yield RunSpec(
            run_id=f"{tag}-{workflow_id.removeprefix('rel_')}-{i:06d}",
            workflow_id=workflow_id,
            n=i,
            request_id=uuid.uuid4().hex,
            mode=MODES[(i // len(MIX) + position) % len(MODES)],
            delay_ms=delay_ms,
        )


@dataclass
class Outcome:
    """What one caller saw of one run."""

    spec: RunSpec
    began: float = 0.0
    ended: float = 0.0
    status: str | None = None
    result: Any = None
    error_message: str | None = None
    # Terminal outcomes the caller was handed (a finished RunResult or a terminal finish
    # event): exactly one is right.
    finals: int = 0
    # Sequences the caller received from streams and watches, in order.
    sequences: list[int] = field(default_factory=list)
    finish_statuses: list[str] = field(default_factory=list)
    retries: int = 0
    # A retried resume found the run already claimed: by its own earlier, lost attempt.
    resume_retried_after_claim: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def latency(self) -> float:
        return self.ended - self.began

    @property
    def completed(self) -> bool:
        return self.status is not None and RunStatus(self.status).finished


class Pool:
    """Clients (one channel each) over every replica; calls spread round-robin."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self._next = itertools.cycle(clients)

    @classmethod
    async def open(cls, target: str, channels: int) -> Pool:
        return cls(
            [await Client.connect(target, options=CHANNEL_OPTIONS) for _ in range(max(1, channels))]
        )

    def pick(self) -> Client:
        return next(self._next)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** min(attempt, 10)) * random.uniform(0.5, 1.0)


class Traffic:
    """Drives runs and other calls; collects per-call latencies and retry counts."""

    def __init__(self, pool: Pool, *, budget: float) -> None:
        self.pool = pool
        self.budget = budget
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.retries: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()

    # -- one call, retried -------------------------------------------------------------------
    async def call(
        self,
        op: str,
        deadline: float,
        invoke: Callable[[Client], Awaitable[T]],
        outcome: Outcome | None = None,
    ) -> T:
        attempt = 0
        while True:
            client = self.pool.pick()
            began = time.perf_counter()
            try:
                value = await invoke(client)
            except RETRYABLE as error:
                attempt += 1
                self.retries[f"{op} {error.code.name}"] += 1
                if outcome is not None:
                    outcome.retries += 1
                if time.monotonic() > deadline:
                    raise BudgetSpent(
                        f"{op}: still {error.code.name} when the budget ran out"
                    ) from error
                await asyncio.sleep(_backoff(attempt))
                continue
            self.latencies[op].append(time.perf_counter() - began)
            return value

    # -- runs ----------------------------------------------------------------------------------
    async def drive(self, spec: RunSpec) -> Outcome:
        """Take `spec` from start to its final status; never raises (problems are recorded)."""
        outcome = Outcome(spec, began=time.monotonic())
        deadline = outcome.began + self.budget
        try:
            if spec.workflow_id == flows.CANCEL:
                await self._canceled(outcome, deadline)
            elif spec.workflow_id == flows.APPROVAL:
                await self._approval(outcome, deadline)
            else:
                await self._plain(outcome, deadline)
        except BudgetSpent as spent:
            outcome.problems.append(f"budget spent: {spent}")
        except SteplineError as error:
            outcome.problems.append(f"unexpected error: {error}")
            self.unexpected[type(error).__name__] += 1
        except Exception as error:  # report everything; a suite must not die on one run
            outcome.problems.append(f"caller crashed: {type(error).__name__}: {error}")
            self.unexpected[type(error).__name__] += 1
        outcome.ended = time.monotonic()
        if outcome.completed:
            self.latencies[f"run {spec.workflow_id}"].append(outcome.latency)
        return outcome

    def _take(self, outcome: Outcome, result: RunResult) -> None:
        outcome.status = str(result.status)
        outcome.result = result.result
        outcome.error_message = result.error.message if result.error else None
        if result.status.finished:
            outcome.finals += 1

    async def _plain(self, outcome: Outcome, deadline: float) -> None:
        spec = outcome.spec
        if spec.mode == "unary":
            result = await self.call(
                "Start",
                deadline,
                lambda c: c.start(
                    spec.workflow_id,
                    spec.job,
                    run_id=spec.run_id,
                    request_id=spec.request_id,
                    timeout=CALL_TIMEOUT,
                ),
                outcome,
            )
            self._take(outcome, result)
            if not result.status.finished:
                await self._settle(outcome, deadline)
        elif spec.mode == "async":
            await self._start_async(outcome, deadline)
            await self._settle(outcome, deadline)
        else:
            await self._follow(outcome, deadline, self._stream_opener(spec))
            await self._settle_from_events(outcome, deadline)

    async def _approval(self, outcome: Outcome, deadline: float) -> None:
        spec = outcome.spec
        data = flows.decision(spec.n)
        # First pass: until it suspends.
        if spec.mode == "stream":
            await self._follow(outcome, deadline, self._stream_opener(spec))
            parked = outcome.finish_statuses[-1:] == ["suspended"]
        else:
            result = await self.call(
                "Start",
                deadline,
                lambda c: c.start(
                    spec.workflow_id,
                    spec.job,
                    run_id=spec.run_id,
                    request_id=spec.request_id,
                    timeout=CALL_TIMEOUT,
                ),
                outcome,
            )
            self._take(outcome, result)
            parked = result.status is RunStatus.SUSPENDED
        if not parked:
            outcome.problems.append(f"first pass ended {outcome.status}, not suspended")
            return
        # Second pass: one resume, retried only on UNAVAILABLE / a deadline. Only this caller
        # resumes the run, so a retry that finds it claimed found its own lost attempt.
        attempts = 0
        claimed = False

        def lost_claim(error: SteplineError) -> None:
            nonlocal claimed
            if attempts == 1:
                raise error
            outcome.resume_retried_after_claim = claimed = True

        if spec.mode == "stream":

            async def resumed(client: Client, after: int) -> AsyncIterator[RunEvent]:
                nonlocal attempts, claimed
                if not claimed:
                    attempts += 1
                    try:
                        async for event in client.resume_stream(spec.run_id, data, label="approve"):
                            claimed = True
                            yield event
                        return
                    except (NotSuspended, ResumeAlreadyClaimed) as error:
                        lost_claim(error)
                async for event in client.watch(spec.run_id, after_sequence=after):
                    yield event

            await self._follow(outcome, deadline, resumed, op="ResumeStream")
            await self._settle_from_events(outcome, deadline)
            return

        async def resume(client: Client) -> RunResult | None:
            nonlocal attempts
            attempts += 1
            try:
                if spec.mode == "unary":
                    return await client.resume(
                        spec.run_id, data, label="approve", timeout=CALL_TIMEOUT
                    )
                await client.resume_async(spec.run_id, data, label="approve", timeout=CALL_TIMEOUT)
            except (NotSuspended, ResumeAlreadyClaimed) as error:
                lost_claim(error)
            return None

        answer = await self.call("Resume", deadline, resume, outcome)
        if answer is not None:
            self._take(outcome, answer)
        if not outcome.completed:
            await self._settle(outcome, deadline)

    async def _canceled(self, outcome: Outcome, deadline: float) -> None:
        spec = outcome.spec
        job = {**spec.job, "hold_seconds": self.budget * 2}
        if spec.mode == "stream":
            # Cancel once the holding step is running: the worker gets the request live.
            def opener(client: Client, after: int) -> AsyncIterator[RunEvent]:
                if after:
                    return client.watch(spec.run_id, after_sequence=after)
                return client.stream(
                    spec.workflow_id, job, run_id=spec.run_id, request_id=spec.request_id
                )

            canceled = False

            async def on_event(event: RunEvent) -> None:
                nonlocal canceled
                if not canceled and event.type is EventType.STEP_START and event.step_id == "hold":
                    canceled = True
                    await self.call("Cancel", deadline, lambda c: c.cancel(spec.run_id), outcome)

            await self._follow(outcome, deadline, opener, on_event=on_event)
            if not canceled:
                outcome.problems.append("the stream ended before the hold step started")
            await self._settle_from_events(outcome, deadline)
            return
        # Otherwise cancel right after the start: usually while it is still queued.
        await self._start_async(outcome, deadline, job)
        await self.call("Cancel", deadline, lambda c: c.cancel(spec.run_id), outcome)
        await self._settle(outcome, deadline)

    async def _start_async(
        self, outcome: Outcome, deadline: float, job: dict[str, Any] | None = None
    ) -> None:
        spec = outcome.spec
        started = await self.call(
            "StartAsync",
            deadline,
            lambda c: c.start_async(
                spec.workflow_id,
                job or spec.job,
                run_id=spec.run_id,
                request_id=spec.request_id,
                timeout=CALL_TIMEOUT,
            ),
            outcome,
        )
        if started.run_id != spec.run_id:
            outcome.problems.append(f"StartAsync answered run {started.run_id!r}")

    async def _settle(self, outcome: Outcome, deadline: float) -> None:
        """GetExecutionResult (waiting) until the run is finished."""
        run_id = outcome.spec.run_id
        while True:
            result = await self.call(
                "GetExecutionResult",
                deadline,
                lambda c: c.get_result(run_id, wait=RESULT_WAIT, timeout=RESULT_WAIT + 5),
                outcome,
            )
            if result.status.finished:
                self._take(outcome, result)
                return
            if time.monotonic() > deadline:
                raise BudgetSpent(f"run still {result.status} when the budget ran out")

    async def _settle_from_events(self, outcome: Outcome, deadline: float) -> None:
        """After a stream: the caller knows the final status from the terminal finish event;
        anything else is a problem, and the result is then read to finish the run's view."""
        if outcome.finals == 0:
            outcome.problems.append(
                f"stream ended without a terminal finish (finishes {outcome.finish_statuses})"
            )
            await self._settle(outcome, deadline)

    # -- event streams -------------------------------------------------------------------------
    def _stream_opener(self, spec: RunSpec) -> Callable[[Client, int], AsyncIterator[RunEvent]]:
        def opener(client: Client, after: int) -> AsyncIterator[RunEvent]:
            if after:
                return client.watch(spec.run_id, after_sequence=after)
            # Before the first event the run may not exist: start it again (idempotent).
            return client.stream(
                spec.workflow_id, spec.job, run_id=spec.run_id, request_id=spec.request_id
            )

        return opener

    async def _follow(
        self,
        outcome: Outcome,
        deadline: float,
        opener: Callable[[Client, int], AsyncIterator[RunEvent]],
        *,
        op: str = "Stream",
        on_event: Callable[[RunEvent], Awaitable[None]] | None = None,
    ) -> None:
        """Consume a stream until it ends, carrying on from the last sequence after
        UNAVAILABLE (on any replica); events already seen are skipped."""
        began = time.perf_counter()
        attempt = 0
        cursor = outcome.sequences[-1] if outcome.sequences else 0
        while True:
            client = self.pool.pick()
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    async for event in opener(client, cursor):
                        if event.sequence <= cursor:
                            continue
                        if event.sequence != cursor + 1:
                            outcome.problems.append(
                                f"stream skipped from {cursor} to {event.sequence}"
                            )
                        cursor = event.sequence
                        self._saw(outcome, event)
                        if on_event is not None:
                            await on_event(event)
                self.latencies[op].append(time.perf_counter() - began)
                return
            except RETRYABLE as error:
                attempt += 1
                outcome.retries += 1
                self.retries[f"{op} {error.code.name}"] += 1
                if time.monotonic() > deadline:
                    raise BudgetSpent(f"{op}: still {error.code.name} at the deadline") from None
                await asyncio.sleep(_backoff(attempt))
            except TimeoutError:
                raise BudgetSpent(f"{op}: no end within the budget (at {cursor})") from None

    def _saw(self, outcome: Outcome, event: RunEvent) -> None:
        outcome.sequences.append(event.sequence)
        if event.run_id != outcome.spec.run_id:
            outcome.problems.append(f"event of run {event.run_id!r} on this run's stream")
        if event.type is not EventType.WORKFLOW_FINISH:
            return
        status = str(event.data.get("status", ""))
        outcome.finish_statuses.append(status)
        outcome.status = status
        if status and RunStatus(status).finished:
            outcome.finals += 1
            outcome.result = event.data.get("result")
            error = event.data.get("error")
            outcome.error_message = getattr(error, "message", None)

    # -- other traffic -------------------------------------------------------------------------
    async def watch_finished(self, run_id: str, deadline: float) -> list[str]:
        """Replay a finished run's log through Watch; returns problems (none is right)."""
        probe = Outcome(RunSpec(run_id, "", 0, "", "watch"), began=time.monotonic())
        await self._follow(
            probe, deadline, lambda c, after: c.watch(run_id, after_sequence=after), op="Watch"
        )
        problems = list(probe.problems)
        if probe.sequences != list(range(1, len(probe.sequences) + 1)):
            problems.append(f"watch replay of {run_id} is not dense from 1")
        if probe.finals != 1 or not probe.finish_statuses:
            problems.append(f"watch replay of {run_id} has {probe.finals} terminal finishes")
        return problems

    async def list_pages(self, workflow_id: str, deadline: float, pages: int = 3) -> int:
        """Read up to `pages` pages of ListRuns; returns how many rows came back."""
        token, rows = "", 0
        for _ in range(pages):

            def page_of(client: Client, after: str = token) -> Awaitable[RunPage]:
                return client.list_runs(workflow_id=workflow_id, page_size=50, page_token=after)

            page = await self.call("ListRuns", deadline, page_of)
            rows += len(page.runs)
            token = page.next_page_token
            if not token:
                break
        return rows
