"""`stepline.v1.WorkflowService` over a RunService: decode, call, encode. No business rules.

Long waits (Start, Resume, streams) end when the client goes away: grpc.aio cancels the handler
task and the CancelledError propagates. That only stops the waiting; the run itself lives in the
store and carries on.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from stepline.v1 import event_pb2, workflow_service_pb2_grpc
from stepline.v1 import workflow_service_pb2 as pb

from ..runs import RunService
from . import convert
from .errors import streaming, unary

# Seconds kept back from the caller's deadline so a bounded wait still answers normally.
# Redis wakes a timed-out blocking read on its timer tick (every 100 ms at the default hz),
# so the margin must cover that on top of the reply's way back.
DEADLINE_MARGIN_MIN = 0.25
DEADLINE_MARGIN_MAX = 1.0
DEADLINE_MARGIN_FRACTION = 0.1


def _wait_bound(requested: float, remaining: float | None) -> float:
    """The wait allowed by the request and the call's remaining deadline (None = none)."""
    if remaining is None:
        return requested
    margin = min(
        DEADLINE_MARGIN_MAX, max(DEADLINE_MARGIN_MIN, remaining * DEADLINE_MARGIN_FRACTION)
    )
    return min(requested, remaining - margin)


class WorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """Implements every RPC of WorkflowService on top of `service`."""

    def __init__(self, service: RunService) -> None:
        self._service = service

    async def _events(
        self,
        run_id: str,
        *,
        after_sequence: int,
        keep_open_on_suspend: bool,
        fresh: bool = False,
    ) -> AsyncGenerator[event_pb2.RunEvent, None]:
        events = self._service.watch(
            run_id,
            after_sequence=after_sequence,
            keep_open_on_suspend=keep_open_on_suspend,
            fresh=fresh,
        )
        async for event in events:
            yield convert.run_event(run_id, event)

    # -- start ---------------------------------------------------------------------------------

    @unary
    async def StartAsync(
        self, request: pb.StartAsyncRequest, context: Any
    ) -> pb.StartAsyncResponse:
        started = await self._service.start(convert.start_params(request))
        return pb.StartAsyncResponse(
            run_id=started.run_id,
            created=started.created,
            status=convert.run_status(started.status),
        )

    @unary
    async def Start(self, request: pb.StartRequest, context: Any) -> pb.StartResponse:
        started = await self._service.start(convert.start_params(request))
        run = await self._service.wait(started.run_id)
        include_state = request.output_options.include_state
        return pb.StartResponse(result=convert.run_result(run, include_state=include_state))

    @streaming
    async def Stream(
        self, request: pb.StreamRequest, context: Any
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        started = await self._service.start(convert.start_params(request))
        events = self._events(
            started.run_id,
            after_sequence=0,
            keep_open_on_suspend=request.keep_open_on_suspend,
            fresh=started.created,
        )
        async for event in events:
            yield pb.StreamResponse(event=event)

    # -- resume --------------------------------------------------------------------------------

    @unary
    async def Resume(self, request: pb.ResumeRequest, context: Any) -> pb.ResumeResponse:
        resumed = await self._service.resume(convert.resume_params(request))
        run = await self._service.wait(resumed.run_id, after_sequence=resumed.after_sequence)
        include_state = request.output_options.include_state
        return pb.ResumeResponse(result=convert.run_result(run, include_state=include_state))

    @unary
    async def ResumeAsync(
        self, request: pb.ResumeAsyncRequest, context: Any
    ) -> pb.ResumeAsyncResponse:
        resumed = await self._service.resume(convert.resume_params(request))
        return pb.ResumeAsyncResponse(
            run_id=resumed.run_id,
            status=convert.run_status(resumed.status),
            after_sequence=resumed.after_sequence,
        )

    @streaming
    async def ResumeStream(
        self, request: pb.ResumeStreamRequest, context: Any
    ) -> AsyncGenerator[pb.ResumeStreamResponse, None]:
        resumed = await self._service.resume(convert.resume_params(request))
        events = self._events(
            resumed.run_id,
            after_sequence=resumed.after_sequence,
            keep_open_on_suspend=request.keep_open_on_suspend,
            fresh=True,
        )
        async for event in events:
            yield pb.ResumeStreamResponse(event=event)

    # -- control -------------------------------------------------------------------------------

    @unary
    async def Cancel(self, request: pb.CancelRequest, context: Any) -> pb.CancelResponse:
        canceled = await self._service.cancel(convert.require_id(request.run_id, "run_id"))
        return pb.CancelResponse(
            status=convert.run_status(canceled.status),
            cancel_requested=canceled.cancel_requested,
        )

    @unary
    async def Restart(self, request: pb.RestartRequest, context: Any) -> pb.RestartResponse:
        run = await self._service.restart(convert.restart_params(request))
        include_state = request.output_options.include_state
        return pb.RestartResponse(result=convert.run_result(run, include_state=include_state))

    @unary
    async def TimeTravel(
        self, request: pb.TimeTravelRequest, context: Any
    ) -> pb.TimeTravelResponse:
        traveled = await self._service.time_travel(convert.time_travel_params(request))
        run = await self._service.wait(traveled.run_id, after_sequence=traveled.after_sequence)
        include_state = request.output_options.include_state
        return pb.TimeTravelResponse(result=convert.run_result(run, include_state=include_state))

    @streaming
    async def TimeTravelStream(
        self, request: pb.TimeTravelStreamRequest, context: Any
    ) -> AsyncGenerator[pb.TimeTravelStreamResponse, None]:
        traveled = await self._service.time_travel(convert.time_travel_params(request))
        events = self._events(
            traveled.run_id,
            after_sequence=traveled.after_sequence,
            keep_open_on_suspend=False,
            fresh=True,
        )
        async for event in events:
            yield pb.TimeTravelStreamResponse(event=event)

    # -- reading -------------------------------------------------------------------------------

    @unary
    async def GetExecutionResult(
        self, request: pb.GetExecutionResultRequest, context: Any
    ) -> pb.GetExecutionResultResponse:
        wait = _wait_bound(convert.wait_timeout(request), context.time_remaining())
        run = await self._service.get(request.run_id)
        if wait > 0 and not run.snapshot.status.settled:
            # Waiting past the current log end means an earlier finish (before a resume)
            # does not count as settling.
            run = await self._service.wait(
                request.run_id, after_sequence=run.last_sequence, timeout=wait
            )
        return pb.GetExecutionResultResponse(
            result=convert.run_result(run, include_state=request.include_state)
        )

    @streaming
    async def Watch(
        self, request: pb.WatchRequest, context: Any
    ) -> AsyncGenerator[pb.WatchResponse, None]:
        events = self._events(
            request.run_id,
            after_sequence=convert.watch_cursor(request),
            keep_open_on_suspend=request.keep_open_on_suspend,
        )
        async for event in events:
            yield pb.WatchResponse(event=event)

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        query = convert.run_query(request)
        page = await self._service.list_runs(
            query.filter, page_size=query.page_size, page_token=query.page_token
        )
        return pb.ListRunsResponse(
            runs=[convert.run_summary(row) for row in page.rows],
            next_page_token=page.next_cursor,
        )

    @unary
    async def DeleteRun(self, request: pb.DeleteRunRequest, context: Any) -> pb.DeleteRunResponse:
        await self._service.delete(convert.require_id(request.run_id, "run_id"))
        return pb.DeleteRunResponse()

    # -- workflows -----------------------------------------------------------------------------

    @unary
    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Any
    ) -> pb.ListWorkflowsResponse:
        workflows = self._service.list_workflows()
        return pb.ListWorkflowsResponse(
            workflows=[convert.workflow_info(wf.describe()) for wf in workflows]
        )

    @unary
    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Any
    ) -> pb.GetWorkflowResponse:
        workflow_id = convert.require_id(request.workflow_id, "workflow_id")
        workflow = self._service.get_workflow(workflow_id)
        return pb.GetWorkflowResponse(workflow=convert.workflow_info(workflow.describe()))
