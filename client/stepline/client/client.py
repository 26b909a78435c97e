"""The async Stepline client.

async with await Client.connect("localhost:50051") as client:
    result = await client.start("greet", {"name": "Ada"})
    async for event in client.watch(result.run_id):
        ...
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from stepline.v1 import run_pb2, workflow_service_pb2_grpc
from stepline.v1 import workflow_service_pb2 as pb

from ._wire import to_duration, to_struct, to_timestamp, to_value
from .errors import Unavailable, translate_errors
from .models import (
    CancelResult,
    ResumedRun,
    RunEvent,
    RunPage,
    RunResult,
    RunStatus,
    StartedRun,
    StepStatus,
    WorkflowInfo,
)

MiB = 1024 * 1024

# Keepalive finds dead connections under long waits and idle watches. gRPC sends at most two
# pings between data frames, so even a server with the default 5-minute ping policy never
# counts enough strikes to close the connection. Results with many steps can exceed gRPC's
# 4 MiB default message size.
DEFAULT_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.max_receive_message_length": 64 * MiB,
    "grpc.max_send_message_length": 64 * MiB,
}

# Watch reconnects: bounded, jittered exponential backoff, reset by every delivered event.
RECONNECT_ATTEMPTS = 5
RECONNECT_BASE_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0


def _reconnect_delay(attempt: int) -> float:
    delay = min(RECONNECT_MAX_DELAY, RECONNECT_BASE_DELAY * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


def _request_id(given: str) -> str:
    """The caller's idempotency key, or a new one: every start carries a key, so that sending
    it again (the client's own retry of a stream that dropped before its first event, or a
    caller's retry with the same key) answers the run the first one started."""
    return given or uuid.uuid4().hex


def _step_path(step: str | Sequence[str] | None) -> list[str]:
    if step is None:
        return []
    if isinstance(step, str):
        return [step]
    return list(step)


def _time_travel_fields(
    run_id: str,
    step: str | Sequence[str],
    input_data: Any,
    initial_state: Mapping[str, Any] | None,
    resume_data: Any,
    context: Mapping[str, Mapping[str, Any]] | None,
    request_context: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The fields TimeTravelRequest and TimeTravelStreamRequest share."""
    return {
        "run_id": run_id,
        "step": _step_path(step),
        "input_data": None if input_data is None else to_value(input_data),
        "initial_state": _struct_or_none(initial_state),
        "resume_data": None if resume_data is None else to_value(resume_data),
        "context": {
            step_id: run_pb2.StepResult(
                status=StepStatus(result.get("status", "success"))._to_proto(),
                payload=to_value(result.get("payload")),
                output=to_value(result.get("output")),
            )
            for step_id, result in (context or {}).items()
        },
        "request_context": _struct_or_none(request_context),
    }


def _struct_or_none(data: Mapping[str, Any] | None) -> Any:
    return None if data is None else to_struct(data)


class Client:
    """An async connection to a Stepline server. Create it with `Client.connect`.

    Every method raises a `stepline.client.errors.SteplineError` subclass when the call fails.
    """

    def __init__(self, channel: grpc.aio.Channel, *, token: str | None = None) -> None:
        self._channel = channel
        self._stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
        options: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    ) -> Client:
        """Open a channel to `target` ("host:port").

        `token` is sent as `authorization: Bearer <token>` on every call; `tls` makes the
        channel secure (`grpc.ssl_channel_credentials(...)`); `options` are gRPC channel
        options that override the client's defaults. The connection itself is made lazily
        by the first call.
        """
        merged = {**DEFAULT_CHANNEL_OPTIONS, **dict(options)}
        channel_options = list(merged.items())
        if tls is None:
            channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            channel = grpc.aio.secure_channel(target, tls, options=channel_options)
        return cls(channel, token=token)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled (the runs carry on)."""
        await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- start ---------------------------------------------------------------------------------

    async def start(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        run_id: str = "",
        resource_id: str = "",
        initial_state: Mapping[str, Any] | None = None,
        request_context: Mapping[str, Any] | None = None,
        trace_id: str = "",
        trace_metadata: Mapping[str, Any] | None = None,
        request_id: str = "",
        include_state: bool = False,
        per_step: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Start a run and wait until it settles (success, failed, canceled, suspended or
        paused).

        `run_id` lets the caller choose the id. `request_id` is the start's idempotency key
        (one is made up when it is left out): a start retried with the same key, on any
        server, returns the run the first one started instead of starting another, for as
        long as that run is kept. `include_state` returns the run's state,
        and the run remembers it: every later result and finish event of the run carries the
        state. `per_step` runs only the first top-level step, then the run is PAUSED;
        continue it one step at a time with `time_travel(run_id, next_step, per_step=True)`.
        `timeout` bounds the call, not the run.
        """
        request = pb.StartRequest(
            workflow_id=workflow_id,
            run_id=run_id,
            resource_id=resource_id,
            input_data=to_value(input),
            initial_state=_struct_or_none(initial_state),
            request_context=_struct_or_none(request_context),
            tracing_options=run_pb2.TracingOptions(
                trace_id=trace_id, metadata=_struct_or_none(trace_metadata)
            ),
            request_id=_request_id(request_id),
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        with translate_errors():
            response = await self._stub.Start(request, timeout=timeout, metadata=self._metadata)
        return RunResult._from_proto(response.result)

    async def start_async(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        run_id: str = "",
        resource_id: str = "",
        initial_state: Mapping[str, Any] | None = None,
        request_context: Mapping[str, Any] | None = None,
        trace_id: str = "",
        trace_metadata: Mapping[str, Any] | None = None,
        request_id: str = "",
        include_state: bool = False,
        per_step: bool = False,
        timeout: float | None = None,
    ) -> StartedRun:
        """Start a run and return as soon as it is recorded durably (not when it finishes).
        `request_id`, `include_state` and `per_step` as for `start`; `created` is False when
        the key had already started the run."""
        request = pb.StartAsyncRequest(
            workflow_id=workflow_id,
            run_id=run_id,
            resource_id=resource_id,
            input_data=to_value(input),
            initial_state=_struct_or_none(initial_state),
            request_context=_struct_or_none(request_context),
            tracing_options=run_pb2.TracingOptions(
                trace_id=trace_id, metadata=_struct_or_none(trace_metadata)
            ),
            request_id=_request_id(request_id),
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        with translate_errors():
            response = await self._stub.StartAsync(
                request, timeout=timeout, metadata=self._metadata
            )
        return StartedRun._from_proto(response)

    def stream(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        run_id: str = "",
        resource_id: str = "",
        initial_state: Mapping[str, Any] | None = None,
        request_context: Mapping[str, Any] | None = None,
        trace_id: str = "",
        trace_metadata: Mapping[str, Any] | None = None,
        request_id: str = "",
        keep_open_on_suspend: bool = False,
        include_state: bool = False,
        per_step: bool = False,
        reconnect: bool = True,
    ) -> AsyncIterator[RunEvent]:
        """Start a run and yield its events until it settles (or, with
        `keep_open_on_suspend`, until it finishes). `request_id`, `include_state` and
        `per_step` as for `start`.

        A dropped connection (when `reconnect`) is picked up with `watch` from the last event
        seen, so no event is missed or repeated; before the first event, the same start is
        sent again: its request id makes it answer the same run.
        """
        request = pb.StreamRequest(
            workflow_id=workflow_id,
            run_id=run_id,
            resource_id=resource_id,
            input_data=to_value(input),
            initial_state=_struct_or_none(initial_state),
            request_context=_struct_or_none(request_context),
            tracing_options=run_pb2.TracingOptions(
                trace_id=trace_id, metadata=_struct_or_none(trace_metadata)
            ),
            request_id=_request_id(request_id),
            keep_open_on_suspend=keep_open_on_suspend,
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )

        def open_stream() -> Any:
            return self._stub.Stream(request, metadata=self._metadata)

        return self._follow(
            open_stream,
            after_sequence=0,
            keep_open_on_suspend=keep_open_on_suspend,
            reconnect=reconnect,
            resend=open_stream,
        )

    # -- resume --------------------------------------------------------------------------------

    async def resume(
        self,
        run_id: str,
        data: Any = None,
        *,
        step: str | Sequence[str] | None = None,
        label: str = "",
        request_context: Mapping[str, Any] | None = None,
        for_each_index: int | None = None,
        include_state: bool = False,
        per_step: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Resume a suspended run with `data` and wait until it settles again.

        `step` names the suspended step (a str is one step id; a sequence is a path through
        nested workflows); leave it out when exactly one step is suspended, or use `label`.
        `per_step` stops the run (PAUSED) after the top-level step that holds it.
        """
        request = pb.ResumeRequest(
            run_id=run_id,
            step=_step_path(step),
            label=label,
            resume_data=to_value(data),
            request_context=_struct_or_none(request_context),
            output_options=run_pb2.OutputOptions(include_state=include_state),
            for_each_index=for_each_index,
            per_step=per_step,
        )
        with translate_errors():
            response = await self._stub.Resume(request, timeout=timeout, metadata=self._metadata)
        return RunResult._from_proto(response.result)

    async def resume_async(
        self,
        run_id: str,
        data: Any = None,
        *,
        step: str | Sequence[str] | None = None,
        label: str = "",
        request_context: Mapping[str, Any] | None = None,
        for_each_index: int | None = None,
        include_state: bool = False,
        per_step: bool = False,
        timeout: float | None = None,
    ) -> ResumedRun:
        """Resume a suspended run and return at once; watch from `after_sequence` to follow."""
        request = pb.ResumeAsyncRequest(
            run_id=run_id,
            step=_step_path(step),
            label=label,
            resume_data=to_value(data),
            request_context=_struct_or_none(request_context),
            for_each_index=for_each_index,
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        with translate_errors():
            response = await self._stub.ResumeAsync(
                request, timeout=timeout, metadata=self._metadata
            )
        return ResumedRun._from_proto(response)

    def resume_stream(
        self,
        run_id: str,
        data: Any = None,
        *,
        step: str | Sequence[str] | None = None,
        label: str = "",
        request_context: Mapping[str, Any] | None = None,
        for_each_index: int | None = None,
        keep_open_on_suspend: bool = False,
        include_state: bool = False,
        per_step: bool = False,
        reconnect: bool = True,
    ) -> AsyncIterator[RunEvent]:
        """Resume a suspended run and yield the continuation's events until it settles."""
        request = pb.ResumeStreamRequest(
            run_id=run_id,
            step=_step_path(step),
            label=label,
            resume_data=to_value(data),
            request_context=_struct_or_none(request_context),
            for_each_index=for_each_index,
            keep_open_on_suspend=keep_open_on_suspend,
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        return self._follow(
            lambda: self._stub.ResumeStream(request, metadata=self._metadata),
            after_sequence=0,
            keep_open_on_suspend=keep_open_on_suspend,
            reconnect=reconnect,
        )

    # -- time travel ---------------------------------------------------------------------------

    async def time_travel(
        self,
        run_id: str,
        step: str | Sequence[str],
        *,
        input_data: Any = None,
        initial_state: Mapping[str, Any] | None = None,
        resume_data: Any = None,
        context: Mapping[str, Mapping[str, Any]] | None = None,
        request_context: Mapping[str, Any] | None = None,
        include_state: bool = False,
        per_step: bool = False,
        timeout: float | None = None,
    ) -> RunResult:
        """Re-execute a settled run from `step` (an id, a dotted path, or a path) and wait
        until it settles again. `context` supplies prior step results by step id, each a
        mapping with `output` (and optionally `payload`, `status`, default "success").
        `per_step` stops the run (PAUSED) after the top-level step holding `step`: time
        travel to the next step with `per_step` continues a paused run one step at a time."""
        request = pb.TimeTravelRequest(
            **_time_travel_fields(
                run_id, step, input_data, initial_state, resume_data, context, request_context
            ),
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        with translate_errors():
            response = await self._stub.TimeTravel(
                request, timeout=timeout, metadata=self._metadata
            )
        return RunResult._from_proto(response.result)

    def time_travel_stream(
        self,
        run_id: str,
        step: str | Sequence[str],
        *,
        input_data: Any = None,
        initial_state: Mapping[str, Any] | None = None,
        resume_data: Any = None,
        context: Mapping[str, Mapping[str, Any]] | None = None,
        request_context: Mapping[str, Any] | None = None,
        include_state: bool = False,
        per_step: bool = False,
        reconnect: bool = True,
    ) -> AsyncIterator[RunEvent]:
        """Like `time_travel`, yielding the re-execution's events until it settles."""
        request = pb.TimeTravelStreamRequest(
            **_time_travel_fields(
                run_id, step, input_data, initial_state, resume_data, context, request_context
            ),
            output_options=run_pb2.OutputOptions(include_state=include_state),
            per_step=per_step,
        )
        return self._follow(
            lambda: self._stub.TimeTravelStream(request, metadata=self._metadata),
            after_sequence=0,
            keep_open_on_suspend=False,
            reconnect=reconnect,
        )

    # -- control -------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> CancelResult:
        """Ask the run to stop. Idempotent; a finished run is left as it is."""
        with translate_errors():
            response = await self._stub.Cancel(
                pb.CancelRequest(run_id=run_id), metadata=self._metadata
            )
        return CancelResult._from_proto(response)

    async def restart(
        self,
        run_id: str,
        *,
        include_state: bool = False,
        request_context: Mapping[str, Any] | None = None,
        trace_id: str = "",
        trace_metadata: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Re-drive an active run that no server holds, and wait until it settles; a finished
        run returns its result. A run whose server died is `FailedPrecondition` ("RUN_HELD")
        until that server's lease expires; the server whose recovery then took it over
        answers with that pass's result.

        `request_context` is merged over the stored one (its keys win); `trace_id` and
        `trace_metadata` replace the run's, from this re-drive on.
        """
        request = pb.RestartRequest(
            run_id=run_id,
            output_options=run_pb2.OutputOptions(include_state=include_state),
            request_context=_struct_or_none(request_context),
            tracing_options=run_pb2.TracingOptions(
                trace_id=trace_id, metadata=_struct_or_none(trace_metadata)
            ),
        )
        with translate_errors():
            response = await self._stub.Restart(request, metadata=self._metadata)
        return RunResult._from_proto(response.result)

    # -- reading -------------------------------------------------------------------------------

    async def get_result(
        self,
        run_id: str,
        *,
        include_state: bool = False,
        wait: float | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """The run's current result. With `wait` (seconds), wait up to that long for it to
        settle first; a run still going after that is returned as it is, not as an error.
        The server keeps the wait inside `timeout`, so a short timeout also answers normally.
        """
        request = pb.GetExecutionResultRequest(
            run_id=run_id,
            include_state=include_state,
            wait_timeout=to_duration(wait) if wait else None,
        )
        with translate_errors():
            response = await self._stub.GetExecutionResult(
                request, timeout=timeout, metadata=self._metadata
            )
        return RunResult._from_proto(response.result)

    def watch(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        keep_open_on_suspend: bool = False,
        reconnect: bool = True,
    ) -> AsyncIterator[RunEvent]:
        """Yield the run's events after `after_sequence` (0 = from the start), then follow it
        live until it settles (or, with `keep_open_on_suspend`, until it finishes).

        When the connection drops (UNAVAILABLE) and `reconnect` is set, the watch resumes
        from the last event delivered after a short backoff, a bounded number of times.
        """
        return self._follow(
            lambda: self._watch_call(run_id, after_sequence, keep_open_on_suspend),
            run_id=run_id,
            after_sequence=after_sequence,
            keep_open_on_suspend=keep_open_on_suspend,
            reconnect=reconnect,
        )

    async def list_runs(
        self,
        *,
        workflow_id: str = "",
        statuses: Iterable[RunStatus | str] = (),
        resource_id: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> RunPage:
        """One page of runs, newest first. `page_size` 0 means the server default (100)."""
        request = pb.ListRunsRequest(
            workflow_id=workflow_id,
            statuses=[RunStatus(status)._to_proto() for status in statuses],
            resource_id=resource_id,
            created_after=to_timestamp(created_after) if created_after else None,
            created_before=to_timestamp(created_before) if created_before else None,
            page_size=page_size,
            page_token=page_token,
        )
        with translate_errors():
            response = await self._stub.ListRuns(request, metadata=self._metadata)
        return RunPage._from_proto(response)

    async def delete_run(self, run_id: str) -> None:
        """Delete the run's snapshot and events."""
        with translate_errors():
            await self._stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), metadata=self._metadata)

    async def list_workflows(self) -> list[WorkflowInfo]:
        """Every workflow the server runs."""
        with translate_errors():
            response = await self._stub.ListWorkflows(
                pb.ListWorkflowsRequest(), metadata=self._metadata
            )
        return [WorkflowInfo._from_proto(w) for w in response.workflows]

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """One workflow's schemas, steps and graph."""
        with translate_errors():
            response = await self._stub.GetWorkflow(
                pb.GetWorkflowRequest(workflow_id=workflow_id), metadata=self._metadata
            )
        return WorkflowInfo._from_proto(response.workflow)

    # -- event streams -------------------------------------------------------------------------

    def _watch_call(self, run_id: str, after_sequence: int, keep_open_on_suspend: bool) -> Any:
        request = pb.WatchRequest(
            run_id=run_id,
            after_sequence=after_sequence,
            keep_open_on_suspend=keep_open_on_suspend,
        )
        return self._stub.Watch(request, metadata=self._metadata)

    async def _follow(
        self,
        open_call: Callable[[], Any],
        *,
        run_id: str | None = None,
        after_sequence: int,
        keep_open_on_suspend: bool,
        reconnect: bool,
        resend: Callable[[], Any] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Yield events from the stream `open_call` opens; on UNAVAILABLE, carry on with a
        Watch from the last delivered sequence, so the caller sees no gap and no repeat.

        `run_id` is None while the run is not known to exist yet (a stream before its first
        event): then there is nothing to watch, and the call is sent again with `resend` (a
        start, which its request id makes safe to repeat) or the error is raised (a resume
        or time travel, which may or may not have been applied).
        """
        cursor = after_sequence
        attempt = 0
        call = open_call()
        while True:
            try:
                with translate_errors():
                    async for response in call:
                        event = RunEvent._from_proto(response.event)
                        if event.sequence <= cursor:
                            continue  # already delivered before a reconnect
                        cursor, run_id, attempt = event.sequence, event.run_id, 0
                        yield event
                return
            except Unavailable:
                again = (
                    resend
                    if run_id is None
                    else functools.partial(self._watch_call, run_id, cursor, keep_open_on_suspend)
                )
                if not reconnect or again is None or attempt >= RECONNECT_ATTEMPTS:
                    raise
                attempt += 1
            finally:
                call.cancel()  # a no-op once the call is done; ends it if the caller stopped early
            await asyncio.sleep(_reconnect_delay(attempt))
            call = again()
