"""Structured logs that name their run, redaction of tokens, and settings: errors at start-up,
and limits that take effect."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from stepline.client import Client, ResourceExhausted, RunStatus
from stepline.server import cli, logs
from stepline.server.app import server_options
from stepline.server.settings import Settings
from tests.ops_support import BOUND, eventually, running

pytestmark = pytest.mark.timeout(60)

TOKEN = "very-secret-token-42"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record (DEBUG and up) as a JSON line, as `--log-format json` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter([TOKEN]))
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_every_line_about_a_run_names_it(json_lines: io.StringIO) -> None:
    async with running() as server, await Client.connect(server.target) as client:
        done = await client.start("chain", {"value": 1}, trace_id="c0ffee", timeout=BOUND)
        failed = await client.start("broken", {"value": 1}, timeout=BOUND)
        assert (done.status, failed.status) == (RunStatus.SUCCESS, RunStatus.FAILED)
        await eventually(lambda: "finished: failed" in json_lines.getvalue())

    records = _records(json_lines)
    for run in (done, failed):
        about = [r for r in records if run.run_id in r["message"]]
        assert about, f"nothing was logged about {run.run_id}"
        for record in about:
            assert record["run_id"] == run.run_id
            assert record["workflow_id"] == run.workflow_id
    # A step's own log line carries the run, and the step's span in the run's trace.
    step_lines = [r for r in records if r["message"] == "adding one to 1"]
    assert {(r["run_id"], r["workflow_id"]) for r in step_lines} == {
        (done.run_id, "chain"),
        (failed.run_id, "broken"),
    }
    (step_line,) = [r for r in step_lines if r["run_id"] == done.run_id]
    assert step_line["trace_id"] == done.trace_id and len(step_line["span_id"]) == 16
    (failure,) = [r for r in records if r["message"].startswith("step explode failed")]
    assert failure["level"] == "INFO" and failure["step_id"] == "explode"
    assert "NonRetryableError: cannot handle 2" in failure["message"]
    for record in records:
        assert set(record) >= {"ts", "level", "logger", "message"}


async def test_the_log_says_when_a_run_suspends_and_when_it_is_canceled(
    json_lines: io.StringIO,
) -> None:
    async with running() as server, await Client.connect(server.target) as client:
        # Canceled while suspended: no worker holds the run, the cancel settles it.
        asking = await client.start("approval", {"value": 1}, timeout=BOUND)
        assert asking.status is RunStatus.SUSPENDED
        await client.cancel(asking.run_id)
        # Canceled while a step runs: the worker holding the run stops it.
        busy = await client.start_async("holding", {"value": 1})
        await eventually(lambda: "step held started" in json_lines.getvalue())
        assert (await client.cancel(busy.run_id)).status is RunStatus.CANCELED

    def outcomes(run_id: str) -> list[str]:
        return [
            r["message"]
            for r in _records(json_lines)
            if r.get("run_id") == run_id
            and r["level"] == "INFO"
            and r["logger"] == logs.RUNS_LOGGER
        ]

    assert outcomes(asking.run_id) == [
        f"run {asking.run_id} suspended at review",
        f"run {asking.run_id} canceled",
    ]
    assert outcomes(busy.run_id)[-1] == f"run {busy.run_id} canceled"
    assert not any("finished: suspended" in r["message"] for r in _records(json_lines))


def test_tokens_never_reach_the_output(json_lines: io.StringIO) -> None:
    logging.getLogger("tests").warning("header was Bearer %s", TOKEN, extra={"peer": TOKEN})
    (record,) = _records(json_lines)
    assert TOKEN not in json_lines.getvalue()
    assert record["message"] == f"header was Bearer {logs.REDACTED}"


def test_console_format_names_the_run() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.console")
    handler = logs.configure(level="info", format="console", stream=stream)
    root = logging.getLogger()
    try:
        with logs.run_context("run-7", "chain"):
            logger.info("hello")
        logger.info("outside")
    finally:
        root.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO tests.console: hello  run_id=run-7 workflow_id=chain")
    assert second.endswith("INFO tests.console: outside")


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--port", "70000"], {}, "--port / STEPLINE_PORT: Input should be less than or equal"),
        (["--log-format", "xml"], {}, "invalid choice: 'xml'"),
        ([], {"STEPLINE_MAX_CONCURRENT_STREAMS": "0"}, "--max-concurrent-streams / STEPLINE_MAX"),
        ([], {"STEPLINE_KEEPALIVE_TIME": "soon"}, "--keepalive-time / STEPLINE_KEEPALIVE_TIME"),
        ([], {"STEPLINE_LOG_LEVEL": "chatty"}, "--log-level / STEPLINE_LOG_LEVEL"),
        (["--tls-key", "/etc/hostname"], {}, "tls_cert and tls_key go together"),
        (["--auth-token", "has space " + TOKEN], {}, "--auth-token / STEPLINE_AUTH_TOKENS: a"),
    ],
)
def test_bad_settings_stop_serve_with_a_clear_error(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _serve_status(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert TOKEN not in err


def _serve_status(argv: list[str]) -> int:
    try:
        return cli.main(["serve", *argv])
    except SystemExit as exit:  # argparse rejects a bad choice itself
        return int(str(exit.code))


def test_server_options_follow_the_settings() -> None:
    settings = Settings(
        max_message_bytes=2048,
        max_concurrent_streams=7,
        keepalive_time=12,
        keepalive_timeout=3.5,
        keepalive_min_ping_interval=1,
        max_connection_age=60,
        max_connection_age_grace=5,
    )
    assert dict(server_options(settings)) == {
        "grpc.max_receive_message_length": 2048,
        "grpc.max_send_message_length": 2048,
        "grpc.max_concurrent_streams": 7,
        "grpc.keepalive_time_ms": 12_000,
        "grpc.keepalive_timeout_ms": 3_500,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 1_000,
        "grpc.max_connection_age_ms": 60_000,
        "grpc.max_connection_age_grace_ms": 5_000,
    }


async def test_a_message_over_the_limit_is_resource_exhausted() -> None:
    async with running(max_message_bytes=1024) as server, await Client.connect(server.target) as c:
        with pytest.raises(ResourceExhausted):
            await c.start("chain", {"value": 1, "padding": "x" * 2000}, timeout=BOUND)
        assert (await c.start("chain", {"value": 1}, timeout=BOUND)).status is RunStatus.SUCCESS
