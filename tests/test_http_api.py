"""The HTTP/JSON API against real servers (memory and Redis): every RPC at its route, errors
as google.rpc.Status JSON with their HTTP codes, tokens and scopes, CORS, Server-Sent Events,
the OpenAPI document, and an SSE reconnect with Last-Event-ID across a restart on Redis."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from grpc_status import rpc_status

from stepline.server.app import Server
from stepline.server.settings import Settings
from stepline.server.store import Store
from stepline.v1 import workflow_service_pb2 as pb
from stepline.v1 import workflow_service_pb2_grpc
from tests.http_support import BOUND, ROUTES, SERVICE, Api, kinds, run_events
from tests.ops_support import eventually
from tests.processes import Launcher, free_port, start_redis, stop_process

pytestmark = pytest.mark.timeout(60)

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
TOKEN_FILE = f"{READER} read\n{WRITER} read write\n"


async def _server(store: Store, **settings: Any) -> Server:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,
        "workflows": ["tests.flows"],
    }
    return await Server.start(Settings(**{**options, **settings}), store=store)


@pytest.fixture
async def server(store: Store) -> AsyncIterator[Server]:
    started = await _server(store)
    try:
        yield started
    finally:
        await started.stop(grace=1)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def api(server: Server, session: aiohttp.ClientSession) -> Api:
    assert server.http_url is not None
    return Api(session, server.http_url)


async def _suspended(api: Api, question: str = "ship it?") -> str:
    """A run of `approval` suspended at its `approve` step; its id."""
    started = await api.post(
        "/v1/workflows/approval/runs:start", {"inputData": {"question": question}}
    )
    assert started.status == 200, started.body
    assert started.body["result"]["status"] == "RUN_STATUS_SUSPENDED"
    run_id: str = started.body["result"]["runId"]
    return run_id


# -- every RPC -----------------------------------------------------------------------------------


async def test_every_rpc_over_http_json(api: Api) -> None:
    """A tour of the whole service, each call checked as a user would read its answer."""
    listed = await api.get("/v1/workflows")
    assert listed.status == 200
    assert "sequence" in [w["id"] for w in listed.body["workflows"]]
    described = await api.get("/v1/workflows/sequence")
    assert [s["id"] for s in described.body["workflow"]["steps"]] == ["add_one", "double"]

    done = await api.post(
        "/v1/workflows/sequence/runs:start", {"inputData": {"value": 2}, "runId": "tour-1"}
    )
    assert done.status == 200
    assert done.body["result"]["status"] == "RUN_STATUS_SUCCESS"
    assert done.body["result"]["result"] == {"value": 6}  # whole numbers stay whole

    queued = await api.post(
        "/v1/workflows/sequence/runs", {"inputData": {"value": 5}, "resourceId": "tenant-7"}
    )
    assert queued.status == 200 and queued.body["created"] is True
    run_id = queued.body["runId"]
    result = await api.get(f"/v1/runs/{run_id}?waitTimeout=5s&includeState=true")
    assert result.body["result"]["status"] == "RUN_STATUS_SUCCESS"
    assert result.body["result"]["result"] == {"value": 12}

    streamed, end = await api.events(
        "POST", "/v1/workflows/sequence/runs:stream", {"inputData": {"value": 1}, "runId": "tour-2"}
    )
    assert end == {"code": 0, "message": "OK", "details": []}
    assert kinds(streamed)[0] == "workflowStart"
    assert kinds(streamed)[-1] == "workflowFinish"
    assert [e.id for e in streamed] == [str(n) for n in range(1, len(streamed) + 1)]

    watched, _ = await api.events("GET", "/v1/runs/tour-2:watch?afterSequence=2")
    assert [e.id for e in watched] == [e.id for e in streamed[2:]]

    page = await api.get("/v1/runs?statuses=RUN_STATUS_SUCCESS&resourceId=tenant-7")
    assert [r["runId"] for r in page.body["runs"]] == [run_id]
    by_workflow = await api.get("/v1/workflows/sequence/runs?pageSize=1")
    assert len(by_workflow.body["runs"]) == 1 and by_workflow.body["nextPageToken"]
    rest = await api.get(
        f"/v1/workflows/sequence/runs?pageSize=10&pageToken={quote(by_workflow.body['nextPageToken'])}"
    )
    assert len(rest.body["runs"]) == 2

    suspended = await _suspended(api)
    later = await api.post(f"/v1/runs/{suspended}:resumeAsync", {"resumeData": {"approved": False}})
    assert later.status == 200 and int(later.body["afterSequence"]) > 0
    settled = await api.get(f"/v1/runs/{suspended}?waitTimeout=5s")
    assert settled.body["result"]["result"]["approved"] is False

    second = await _suspended(api)
    resumed = await api.post(
        f"/v1/runs/{second}:resume", {"label": "approval", "resumeData": {"approved": True}}
    )
    assert resumed.body["result"]["status"] == "RUN_STATUS_SUCCESS"
    assert resumed.body["result"]["result"] == {
        "approved": True,
        "note": "none",
        "question": "ship it?",
    }

    third = await _suspended(api)
    continued, _ = await api.events(
        "POST", f"/v1/runs/{third}:resumeStream", {"resumeData": {"approved": True, "note": "ok"}}
    )
    assert kinds(continued)[0] == "workflowStart" and kinds(continued)[-1] == "workflowFinish"
    assert run_events(continued)[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUCCESS"

    again = await api.post(
        "/v1/runs/tour-1:timeTravel", {"step": ["double"], "inputData": {"value": 10}}
    )
    assert again.body["result"]["result"] == {"value": 20}
    traveled, _ = await api.events(
        "POST",
        "/v1/runs/tour-1:timeTravelStream",
        {
            "step": ["double"],
            "context": {"add_one": {"status": "STEP_STATUS_SUCCESS", "output": {"value": 7}}},
        },
    )
    assert run_events(traveled)[-1]["workflowFinish"]["result"] == {"value": 14}
    assert int(traveled[0].id or 0) == int(again.body["result"]["lastSequence"]) + 1

    waiting = await api.post("/v1/workflows/cancellable/runs", {"inputData": {"seconds": 30}})
    canceled = await api.post(f"/v1/runs/{waiting.body['runId']}:cancel")
    assert canceled.status == 200 and canceled.body["cancelRequested"] is True
    final = await api.get(f"/v1/runs/{waiting.body['runId']}?waitTimeout=5s")
    assert final.body["result"]["status"] == "RUN_STATUS_CANCELED"

    restarted = await api.post("/v1/runs/tour-1:restart")  # a finished run comes back as it is
    assert restarted.body["result"]["status"] == "RUN_STATUS_SUCCESS"

    deleted = await api.delete("/v1/runs/tour-1")
    assert deleted.status == 200 and deleted.body == {}
    assert (await api.get("/v1/runs/tour-1")).status == 404

    assert api.called == {m.name for m in SERVICE.methods}


async def test_ids_with_reserved_characters_travel_percent_encoded(api: Api) -> None:
    run_id = "tenant/7:order#42 ü"
    started = await api.post(
        "/v1/workflows/sequence/runs:start", {"runId": run_id, "inputData": {"value": 1}}
    )
    assert started.body["result"]["runId"] == run_id
    fetched = await api.get(f"/v1/runs/{quote(run_id, safe='')}")
    assert fetched.status == 200 and fetched.body["result"]["runId"] == run_id
    watched, _ = await api.events("GET", f"/v1/runs/{quote(run_id, safe='')}:watch")
    assert run_events(watched)[0]["runId"] == run_id


# -- errors --------------------------------------------------------------------------------------


async def test_invalid_input_is_400_with_the_field_named(api: Api) -> None:
    reply = await api.post("/v1/workflows/sequence/runs", {"inputData": {"value": "x"}})
    assert reply.status == 400
    assert reply.body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.reason == "INVALID_ARGUMENT"
    violations = reply.detail("BadRequest")["fieldViolations"]
    assert [v["field"] for v in violations] == ["input_data.value"]


async def test_unknown_run_and_workflow_are_404_with_the_resource(api: Api) -> None:
    run = await api.get("/v1/runs/no-such-run")
    assert run.status == 404 and run.reason == "RUN_NOT_FOUND"
    assert run.detail("ResourceInfo")["resourceName"] == "no-such-run"
    workflow = await api.post("/v1/workflows/nope/runs", {"inputData": {}})
    assert workflow.status == 404 and workflow.reason == "WORKFLOW_NOT_FOUND"


async def test_state_conflicts_are_400_409_with_their_details(api: Api) -> None:
    done = await api.post(
        "/v1/workflows/sequence/runs:start", {"runId": "c-1", "inputData": {"value": 1}}
    )
    assert done.status == 200
    not_suspended = await api.post("/v1/runs/c-1:resume", {"resumeData": {}})
    assert not_suspended.status == 400
    assert not_suspended.body["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not_suspended.detail("PreconditionFailure")["violations"][0]["subject"] == "run/c-1"
    taken = await api.post(
        "/v1/workflows/sequence/runs", {"runId": "c-1", "inputData": {"value": 1}}
    )
    assert taken.status == 409 and taken.reason == "RUN_ALREADY_EXISTS"


async def test_requests_that_are_not_valid_json_are_refused_with_the_field(api: Api) -> None:
    unknown = await api.post("/v1/workflows/sequence/runs", {"input": {"value": 1}})
    assert unknown.status == 400 and unknown.reason == "MALFORMED_REQUEST"
    assert unknown.detail("BadRequest")["fieldViolations"][0]["field"] == "input"
    wrong_type = await api.get("/v1/runs?pageSize=many")
    assert wrong_type.status == 400
    assert wrong_type.detail("BadRequest")["fieldViolations"][0]["field"] == "pageSize"
    bad_enum = await api.get("/v1/runs?statuses=RUN_STATUS_NOPE")
    assert bad_enum.status == 400
    empty = await api.call(
        "POST", "/v1/workflows/sequence/runs", headers={"Content-Type": "application/json"}
    )
    # an empty body is an empty request: it parses, then the workflow's input check refuses it
    assert empty.status == 400 and empty.reason == "INVALID_ARGUMENT"
    assert empty.detail("BadRequest")["fieldViolations"][0]["field"] == "input_data"
    raw = await api.session.post(
        str(api.base / "v1/workflows/sequence/runs"),
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    body = await raw.json()
    assert raw.status == 400 and body["details"][0]["reason"] == "MALFORMED_REQUEST"
    text = await api.session.post(str(api.base / "v1/workflows/sequence/runs"), data=b"{}")
    assert text.status == 415  # a form post from another site can't reach a write


async def test_no_route_is_404_and_a_wrong_method_405(api: Api) -> None:
    missing = await api.get("/v1/nothing-here")
    assert missing.status == 404 and missing.reason == "NO_ROUTE"
    wrong = await api.call("PUT", "/v1/runs/some-run", {})
    assert wrong.status == 405 and wrong.reason == "METHOD_NOT_ALLOWED"
    assert wrong.headers["Allow"] == "DELETE, GET"


async def test_errors_are_the_statuses_grpc_sends(server: Server, api: Api) -> None:
    """The same failing request over gRPC and over HTTP: the same google.rpc.Status."""
    body = {"inputData": {"value": "x"}, "requestContext": {"tenant": 7}}
    request = json_format.ParseDict({**body, "workflowId": "sequence"}, pb.StartAsyncRequest())
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.StartAsync(request, timeout=BOUND)
    status = rpc_status.from_call(failed.value)
    assert status is not None
    reply = await api.post("/v1/workflows/sequence/runs", body)
    assert reply.body == json_format.MessageToDict(status)


async def test_http_calls_are_counted_like_grpc_calls(server: Server, api: Api) -> None:
    await api.get("/v1/runs/no-such-run")
    labels = {
        "grpc_service": SERVICE.full_name,
        "grpc_method": "GetExecutionResult",
        "grpc_type": "unary",
        "grpc_code": "NOT_FOUND",
    }
    count = server.metrics.registry.get_sample_value("grpc_server_handled_total", labels)
    assert count == 1


async def test_a_grpc_timeout_header_is_the_call_deadline(api: Api) -> None:
    run_id = await _suspended(api)
    # A bounded wait answers normally just before the deadline, as over gRPC...
    waited = await api.get(f"/v1/runs/{run_id}?waitTimeout=60s", headers={"grpc-timeout": "1S"})
    assert waited.status == 200
    assert waited.body["result"]["status"] == "RUN_STATUS_SUSPENDED"
    # ...and a call the deadline cuts short ends with DEADLINE_EXCEEDED.
    slow = await api.post(
        "/v1/workflows/cancellable/runs:start",
        {"inputData": {"seconds": 30}, "runId": "slow-1"},
        headers={"grpc-timeout": "500m"},
    )
    assert slow.status == 504 and slow.reason == "DEADLINE_EXCEEDED"
    await api.post("/v1/runs/slow-1:cancel")
    bad = await api.get("/v1/runs", headers={"grpc-timeout": "soon"})
    assert bad.status == 400 and bad.reason == "BAD_HEADER"


async def test_message_and_concurrency_limits_apply(
    store: Store, session: aiohttp.ClientSession
) -> None:
    server = await _server(store, max_message_bytes=4096, max_concurrent_rpcs=1)
    try:
        assert server.http_url is not None
        api = Api(session, server.http_url)
        large = await api.post("/v1/workflows/sequence/runs", {"inputData": {"pad": "x" * 5000}})
        assert large.status == 413 and large.reason == "BODY_TOO_LARGE"
        assert large.body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        run_id = await _suspended(api)
        async with api.stream("GET", f"/v1/runs/{run_id}:watch?keepOpenOnSuspend=true") as open_:
            await open_.take(1)  # this call holds the one slot
            busy = await api.get("/v1/workflows")
            assert busy.status == 429 and busy.reason == "TOO_MANY_REQUESTS"
    finally:
        await server.stop(grace=1)


# -- tokens and scopes ---------------------------------------------------------------------------


@pytest.fixture
async def secured(store: Store, tmp_path: Path) -> AsyncIterator[Server]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN_FILE)
    started = await _server(store, auth_token_file=tokens)
    try:
        yield started
    finally:
        await started.stop(grace=1)


def _example_path(raw_template: str) -> str:
    """A concrete path for a route template: every variable becomes `x`."""
    path, depth = "", 0
    for char in raw_template:
        if char == "{":
            depth += 1
            path += "x"
        elif char == "}":
            depth -= 1
        elif depth == 0:
            path += char
    return path


async def test_tokens_and_scopes_apply_to_every_route(
    secured: Server, session: aiohttp.ClientSession
) -> None:
    assert secured.http_url is not None
    anonymous = Api(session, secured.http_url)
    reader = anonymous.with_token(READER)
    read_only = {"GetExecutionResult", "Watch", "ListRuns", "ListWorkflows", "GetWorkflow"}
    for route in ROUTES.routes:
        path = _example_path(route.template.text)
        body: dict[str, Any] | None = {} if route.body else None
        refused = await anonymous.call(route.http_method, path, body)
        assert refused.status == 401, (route.method.name, refused.body)
        assert refused.reason == "MISSING_CREDENTIALS"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        answered = await reader.call(route.http_method, path, body)
        if route.method.name in read_only:
            assert answered.status != 403, (route.method.name, answered.body)
        else:
            assert answered.status == 403, (route.method.name, answered.body)
            assert answered.body["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    wrong = anonymous.with_token("not-a-token")
    assert (await wrong.get("/v1/runs")).reason == "INVALID_CREDENTIALS"
    writer = anonymous.with_token(WRITER)
    started = await writer.post("/v1/workflows/sequence/runs:start", {"inputData": {"value": 1}})
    assert started.status == 200
    assert (await reader.get(f"/v1/runs/{started.body['result']['runId']}")).status == 200
    document = await anonymous.get("/v1/openapi.json")  # like reflection: no token needed
    assert document.status == 200 and "bearer" in document.body["securityDefinitions"]


# -- CORS ----------------------------------------------------------------------------------------


async def test_cors_is_off_by_default(api: Api) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    plain = await api.get("/v1/workflows", headers=origin)
    assert plain.status == 200 and "Access-Control-Allow-Origin" not in plain.headers
    preflight = await api.call(
        "OPTIONS",
        "/v1/workflows/sequence/runs",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert preflight.status == 405


async def test_cors_allows_only_the_configured_origins(
    store: Store, session: aiohttp.ClientSession
) -> None:
    allowed = "https://ops.example"
    server = await _server(store, http_cors_origins=[allowed])
    try:
        assert server.http_url is not None
        api = Api(session, server.http_url)
        preflight = await api.call(
            "OPTIONS",
            "/v1/workflows/sequence/runs",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == allowed
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        ok = await api.get("/v1/workflows", headers={"Origin": allowed})
        assert ok.headers["Access-Control-Allow-Origin"] == allowed
        other = await api.get("/v1/workflows", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        async with api.stream("GET", "/v1/workflows/x", headers={"Origin": allowed}) as stream:
            assert stream.response.headers["Access-Control-Allow-Origin"] == allowed
    finally:
        await server.stop(grace=1)


# -- Server-Sent Events --------------------------------------------------------------------------


async def test_stream_errors_before_the_first_event_are_http_errors(api: Api) -> None:
    async with api.stream("GET", "/v1/runs/no-such-run:watch") as stream:
        assert stream.response.status == 404
        body = await stream.response.json()
        assert body["details"][0]["reason"] == "RUN_NOT_FOUND"
    bad = await api.get("/v1/runs/x:watch", headers={"Last-Event-ID": "yesterday"})
    assert bad.status == 400
    assert bad.detail("BadRequest")["fieldViolations"][0]["field"] == "Last-Event-ID"


async def test_watch_continues_after_last_event_id(api: Api) -> None:
    await api.post("/v1/workflows/sequence/runs:start", {"runId": "w-1", "inputData": {"value": 1}})
    everything, _ = await api.events("GET", "/v1/runs/w-1:watch")
    rest, end = await api.events("GET", "/v1/runs/w-1:watch", headers={"Last-Event-ID": "3"})
    assert [e.id for e in rest] == [e.id for e in everything[3:]]
    assert end["code"] == 0


async def test_a_stream_retried_with_last_event_id_skips_what_was_seen(api: Api) -> None:
    """A Stream retried with the same run id and request id starts nothing new; Last-Event-ID
    drops the events the client already has."""
    request = {"runId": "s-1", "requestId": "try", "inputData": {"value": 1}}
    first, _ = await api.events("POST", "/v1/workflows/sequence/runs:stream", request)
    retry, _ = await api.events(
        "POST", "/v1/workflows/sequence/runs:stream", request, headers={"Last-Event-ID": "2"}
    )
    assert [e.id for e in retry] == [e.id for e in first[2:]]


async def test_watch_kept_open_follows_a_resume_live(api: Api) -> None:
    run_id = await _suspended(api)
    path = f"/v1/runs/{run_id}:watch?keepOpenOnSuspend=true"
    async with api.stream("GET", path) as stream:
        seen = await stream.take(4)  # start, step start, suspended, finish
        assert [e.data["event"].get("workflowFinish", {}).get("status") for e in seen][-1] == (
            "RUN_STATUS_SUSPENDED"
        )
        await api.post(f"/v1/runs/{run_id}:resumeAsync", {"resumeData": {"approved": True}})
        more, end = await stream.until_status()
    assert run_events(more)[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUCCESS"
    assert int(more[0].id or 0) == int(seen[-1].id or 0) + 1
    assert end["code"] == 0


async def test_a_client_that_leaves_ends_its_call(server: Server, api: Api) -> None:
    run_id = await _suspended(api)
    async with api.stream("GET", f"/v1/runs/{run_id}:watch?keepOpenOnSuspend=true") as stream:
        await stream.take(1)
    labels = {
        "grpc_service": SERVICE.full_name,
        "grpc_method": "Watch",
        "grpc_type": "server_stream",
        "grpc_code": "CANCELLED",
    }

    await eventually(
        lambda: server.metrics.registry.get_sample_value("grpc_server_handled_total", labels)
    )


# -- OpenAPI -------------------------------------------------------------------------------------


async def test_openapi_document_describes_every_route(api: Api) -> None:
    reply = await api.get("/v1/openapi.json")
    assert reply.status == 200 and reply.body["swagger"] == "2.0"
    paths = reply.body["paths"]
    for route in ROUTES.routes:
        path = _json_named(route.template.text, route.method.input_type.fields_by_name)
        operation = paths[path][route.http_method.lower()]
        if route.method.server_streaming:
            assert operation["produces"] == ["text/event-stream"]
    assert "securityDefinitions" not in reply.body  # no tokens configured


def _json_named(template: str, fields: Any) -> str:
    """The template with its variables named as the document names them (JSON names)."""
    return re.sub(r"\{(\w+)\}", lambda m: "{" + fields[m.group(1)].json_name + "}", template)


# -- a restart on Redis --------------------------------------------------------------------------


def test_sse_reconnects_with_last_event_id_after_a_restart(tmp_path: Path) -> None:
    """A browser's EventSource reconnects with Last-Event-ID when its server went away: the
    replica that comes back (same Redis, same port) continues after that event, and the run
    resumed meanwhile streams to the end without a gap or a repeat."""
    (tmp_path / "redis").mkdir()
    redis, redis_port = start_redis(tmp_path / "redis")
    launch = Launcher(tmp_path)
    http_port = free_port(launch.ports)
    flags = (
        "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
        "--workflows", "tests.flows",
        "--http-port", str(http_port),
    )  # fmt: skip
    try:
        asyncio.run(_reconnect_across_restart(launch, flags, f"http://127.0.0.1:{http_port}"))
    finally:
        launch.stop_all()
        stop_process(redis)


async def _reconnect_across_restart(launch: Launcher, flags: tuple[str, ...], base: str) -> None:
    first = launch(*flags)
    await eventually(lambda: f"HTTP/JSON API on {base}" in first.log)  # the start-up line
    async with aiohttp.ClientSession() as session:
        api = Api(session, base)
        run_id = await _suspended(api, "restart?")
        watch = f"/v1/runs/{run_id}:watch?keepOpenOnSuspend=true"
        async with api.stream("GET", watch) as stream:
            seen = await stream.take(4)
            last_id = seen[-1].id
            assert last_id is not None
            stopping = asyncio.get_running_loop().run_in_executor(None, first.stop)
            rest, status = await stream.until_status()
            assert rest == []  # the replica drained: nothing new, just why the stream ended
            assert status["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert await stopping == 0
        launch(*flags)  # the same ports, the same Redis
        resumed = await api.post(
            f"/v1/runs/{run_id}:resumeAsync", {"resumeData": {"approved": True}}
        )
        assert resumed.status == 200, resumed.body
        continued, end = await api.events("GET", watch, headers={"Last-Event-ID": last_id})
    assert int(continued[0].id or 0) == int(last_id) + 1
    ids = [int(e.id or 0) for e in continued]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert run_events(continued)[-1]["workflowFinish"]["status"] == "RUN_STATUS_SUCCESS"
    assert end["code"] == 0
