"""The `stepline` client commands, run as subprocesses against `stepline serve` subprocesses
(loopback, free ports; servers stopped by pid)."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stepline.client import (
    EventType,
    RunEvent,
    RunResult,
    RunStatus,
    StepResult,
    StepStatus,
    WorkflowInfo,
)
from stepline.client.cli import UNICODE, EventPrinter, draw_graph, print_result
from tests.ops_support import BOUND, serve
from tests.processes import REPO_ROOT, environment, free_port, healthy, stepline_command
from tests.processes import Replica as Serving

pytestmark = pytest.mark.timeout(90)

TOKEN = "cli-test-token-5f1e"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    started = serve(tmp_path_factory.mktemp("cli"), "--log-format", "json")
    try:
        yield started
    finally:
        started.stop()


def stepline(*args: str, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a client command; UTF-8 output unless the test says otherwise."""
    return subprocess.run(
        [*stepline_command(), *args],
        cwd=REPO_ROOT,
        env=environment(**{"STEPLINE_TARGET": target, "PYTHONIOENCODING": "utf-8", **env}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stdout.splitlines()


def test_workflows_list_and_show(server: Serving) -> None:
    listed = stepline("workflows", "list", target=server.target)
    assert listed.returncode == 0, listed.stderr
    assert lines(listed)[0].split() == ["WORKFLOW", "STEPS", "DESCRIPTION"]
    assert any(line.split()[:2] == ["fork", "3"] for line in lines(listed))

    shown = stepline("workflows", "show", "fork", target=server.target)
    assert shown.returncode == 0, shown.stderr
    assert lines(shown) == [
        "fork: Double and triple, then add.",
        "├── parallel",
        "│   ├── double",
        "│   └── triple",
        "└── total",
        "input: {value: integer}",
    ]
    # Where the output can't carry box-drawing characters, the tree is drawn in ASCII.
    ascii = stepline("workflows", "show", "squares", target=server.target, PYTHONIOENCODING="ascii")
    assert lines(ascii)[1:] == [
        "|-- explode_list",
        "`-- foreach (concurrency 2)",
        "    `-- slow_square",
        "input: {values: array}",
    ]

    as_json = json.loads(
        stepline("workflows", "show", "fork", "--json", target=server.target).stdout
    )
    assert as_json["id"] == "fork"
    assert [entry["type"] for entry in as_json["graph"]] == ["parallel", "step"]
    assert [step["id"] for step in as_json["steps"]] == ["double", "triple", "total"]


def test_run_follows_the_steps_and_prints_the_result(server: Serving) -> None:
    done = stepline("run", "chain", "--input", '{"value": 1}', target=server.target)
    assert done.returncode == 0, done.stderr
    out = lines(done)
    assert out[0].startswith("run ") and out[0].endswith(" started (workflow chain)")
    assert out[1:] == [
        "  ▸ add_one started",
        out[2],
        "  ▸ double started",
        '    ↳ double: {"doubling": 2}',
        out[5],
        "✔ success",
        "{",
        '  "value": 4',
        "}",
    ]
    for finished, step in ((out[2], "add_one"), (out[5], "double")):
        assert finished.startswith(f"  ✔ {step} (") and finished.endswith(" ms)")


def test_a_failed_run_exits_non_zero(server: Serving) -> None:
    done = stepline("run", "broken", "--input", '{"value": 1}', target=server.target)
    assert done.returncode == 1
    assert "  ✘ explode failed: NonRetryableError: cannot handle 2" in lines(done)
    assert lines(done)[-1] == "✘ failed: NonRetryableError: cannot handle 2"

    as_json = stepline("run", "broken", "--input", '{"value": 1}', "--json", target=server.target)
    assert as_json.returncode == 1
    result = json.loads(as_json.stdout)
    assert result["status"] == "failed"
    assert result["error"] == {
        "message": "cannot handle 2",
        "name": "NonRetryableError",
        "details": None,
    }


def test_foreach_progress(server: Serving) -> None:
    done = stepline("run", "squares", "--input", '{"values": [1, 2, 3]}', target=server.target)
    assert done.returncode == 0, done.stderr
    progress = [line.split("(")[0].strip() for line in lines(done) if "/3" in line]
    assert progress == ["slow_square 1/3", "slow_square 2/3", "slow_square 3/3"]
    assert json.loads("\n".join(lines(done)[lines(done).index("✔ success") + 1 :])) == [
        {"value": 1},
        {"value": 4},
        {"value": 9},
    ]


def test_suspend_resume_watch_result_and_cancel(server: Serving) -> None:
    target = server.target
    run_id = "cli-approval-1"
    started = stepline(
        "run", "approval", "--input", '{"value": 1}', "--run-id", run_id, target=target
    )
    assert started.returncode == 0, started.stderr
    assert lines(started)[-2:] == [
        "⏸ suspended at review",
        f"resume with: stepline resume {run_id} --step review --data JSON",
    ]

    resumed = stepline(
        "resume", run_id, "--step", "review", "--data", '{"approved": true}', target=target
    )
    assert resumed.returncode == 0, resumed.stderr
    assert lines(resumed)[0] == f"run {run_id} resumed (workflow approval)"
    assert "  ▸ review started (resumed)" in lines(resumed)
    assert lines(resumed)[-4:] == ["✔ success", "{", '  "value": 4', "}"]

    watched = stepline("watch", run_id, "--json", target=target)
    assert watched.returncode == 0, watched.stderr
    events: list[dict[str, Any]] = [json.loads(line) for line in lines(watched)]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert {e["run_id"] for e in events} == {run_id}
    finishes = [e["data"]["status"] for e in events if e["type"] == "workflow-finish"]
    assert finishes == ["suspended", "success"]

    tail = stepline("watch", run_id, "--from", str(len(events) - 1), target=target)
    assert [line.split()[0] for line in lines(tail)[:2]] == [str(len(events) - 1), str(len(events))]
    assert lines(tail)[1].endswith("✔ success")

    result = stepline("result", run_id, "--json", target=target)
    assert json.loads(result.stdout)["result"] == {"value": 4}
    human = stepline("result", run_id, target=target)
    assert lines(human)[0] == f"run {run_id}  workflow approval  status success"
    assert [line.split()[1] for line in lines(human)[3:6]] == ["add_one", "review", "double"]

    canceled = stepline("cancel", run_id, target=target)
    assert lines(canceled) == [f"run {run_id}: already success, left unchanged"]

    listed = json.loads(
        stepline("runs", "list", "--status", "success", "--json", target=target).stdout
    )
    assert run_id in [run["run_id"] for run in listed["runs"]]
    assert {run["status"] for run in listed["runs"]} == {"success"}


def test_errors_and_exit_statuses(server: Serving) -> None:
    target = server.target
    missing = stepline("result", "no-such-run", target=target)
    assert missing.returncode == 3
    assert missing.stderr.strip() == "stepline: RUN_NOT_FOUND: run 'no-such-run' does not exist"

    missing_json = stepline("result", "no-such-run", "--json", target=target)
    error = json.loads(missing_json.stderr)["error"]
    assert (error["code"], error["reason"]) == ("NOT_FOUND", "RUN_NOT_FOUND")

    not_json = stepline("run", "chain", "--input", "{value", target=target)
    assert not_json.returncode == 2
    assert "--input is not valid JSON" in not_json.stderr

    invalid = stepline("run", "chain", "--input", '{"value": "x"}', target=target)
    assert invalid.returncode == 2
    assert "  input_data.value: Input should be a valid integer" in invalid.stderr.splitlines()[1]

    bad_status = stepline("runs", "list", "--status", "bogus", target=target)
    assert bad_status.returncode == 2 and "--status 'bogus'" in bad_status.stderr


def test_tokens_through_the_cli(tmp_path: Path) -> None:
    guarded = serve(tmp_path, "--auth-token", TOKEN, "--log-format", "json", "--log-level", "debug")
    try:
        refused = stepline("workflows", "list", target=guarded.target)
        assert refused.returncode == 3
        assert "MISSING_CREDENTIALS" in refused.stderr
        flag = stepline("workflows", "list", "--token", TOKEN, target=guarded.target)
        assert flag.returncode == 0, flag.stderr
        env = stepline(
            "run", "chain", "--input", '{"value": 5}', target=guarded.target, STEPLINE_TOKEN=TOKEN
        )
        assert env.returncode == 0, env.stderr
        run_id = lines(env)[0].split()[1]
    finally:
        assert guarded.stop() == 0
    log = guarded.log
    assert TOKEN not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    about = [r for r in records if run_id in r["message"]]
    assert about and all(r["run_id"] == run_id and r["workflow_id"] == "chain" for r in about)


# -- rough edges of a first try ------------------------------------------------------------------


def test_a_bare_group_prints_its_commands(server: Serving) -> None:
    for group, commands in (("workflows", ["list", "show"]), ("runs", ["list"])):
        bare = stepline(group, target=server.target)
        assert bare.returncode == 0, bare.stderr
        assert lines(bare)[0].startswith(f"usage: stepline {group} ")
        listed = [line.split()[0] for line in lines(bare) if line.startswith("    ")]
        assert listed == commands
    everything = stepline(target=server.target)
    assert everything.returncode == 0, everything.stderr
    assert "    serve     run a Stepline server replica" in lines(everything)


def test_a_run_without_input_says_input_is_required(server: Serving) -> None:
    for flags in ((), ("--json",)):
        done = stepline("run", "chain", *flags, target=server.target)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            "stepline run: --input is required (workflow chain takes {value: integer})"
        ]
    # Input that is there but wrong is still reported field by field.
    wrong = stepline("run", "chain", "--input", "[1]", target=server.target)
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines()[1].startswith("  input_data: Input should be a valid")


def test_a_watch_from_past_the_end_says_where_the_log_ends(server: Serving) -> None:
    run_id = "cli-past-the-end"
    done = stepline(
        "run", "chain", "--input", '{"value": 1}', "--run-id", run_id, target=server.target
    )
    assert done.returncode == 0, done.stderr
    last = json.loads(stepline("result", run_id, "--json", target=server.target).stdout)[
        "last_sequence"
    ]
    for flags in ((), ("--json",)):
        past = stepline("watch", run_id, "--from", str(last + 1), *flags, target=server.target)
        assert past.returncode == 2
        assert past.stdout == ""
        assert past.stderr.splitlines() == [
            f"stepline watch: run {run_id}'s events end at {last} (status success):"
            f" nothing to show from --from {last + 1}"
        ]
    at_the_end = stepline("watch", run_id, "--from", str(last), target=server.target)
    assert at_the_end.returncode == 0
    assert lines(at_the_end)[0] == f"{last:>4} ✔ success"


def test_no_server_names_the_address_and_suggests_serve() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["workflows", "list"], ["run", "chain", "--input", "{}"], ["watch", "r"]):
        done = stepline(*command, target=nobody)
        assert done.returncode == 3
        assert done.stderr.splitlines() == [
            f"stepline: cannot connect to a Stepline server at {nobody}",
            "  connection refused: start one with `stepline serve`, or name another with"
            " --target HOST:PORT (env STEPLINE_TARGET)",
        ]
    # --json keeps the machine-readable error.
    as_json = stepline("workflows", "list", "--json", target=nobody)
    assert json.loads(as_json.stderr)["error"]["code"] == "UNAVAILABLE"


def test_a_canceled_suspended_run_shows_no_step_suspended(server: Serving) -> None:
    target = server.target
    run_id = "cli-approval-canceled"
    started = stepline(
        "run", "approval", "--input", '{"value": 1}', "--run-id", run_id, target=target
    )
    assert lines(started)[-2] == "⏸ suspended at review"
    canceled = stepline("cancel", run_id, target=target)
    assert lines(canceled) == [f"run {run_id}: cancel requested; status now canceled"]

    shown = stepline("result", run_id, target=target)
    assert shown.returncode == 1
    assert lines(shown)[0] == f"run {run_id}  workflow approval  status canceled"
    steps = {line.split()[1]: line.split()[:3] for line in lines(shown)[3:]}
    assert steps["add_one"][0] == "✔"
    assert steps["review"] == ["■", "review", "canceled"]
    assert "suspended" not in shown.stdout

    # The server's log says the run suspended, then that it was canceled.
    records = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    about = [r["message"] for r in records if r.get("run_id") == run_id and r["level"] == "INFO"]
    assert about[-2:] == [f"run {run_id} suspended at review", f"run {run_id} canceled"]


# -- drawing, in process -------------------------------------------------------------------------


def test_the_graph_tree_draws_every_entry_type() -> None:
    def step(step_id: str, **extra: Any) -> dict[str, Any]:
        return {"type": "step", "step": {"id": step_id, "description": "", **extra}}

    graph = [
        step("ask", can_suspend=True, description="Asks a human."),
        {"type": "workflow", "id": "child", "graph": [step("inner")]},
        {
            "type": "conditional",
            "steps": [step("big"), step("small")],
            "conditions": [
                {"id": "big-condition", "source": ".branch([(lambda c: c.input > 10, big),"},
                {"id": "small-condition", "source": "lambda c: c.input <= 10"},
            ],
        },
        {
            "type": "loop",
            "loop_type": "dountil",
            "step": step("bump"),
            "condition": {"source": "async def done(c):\n    return c.iteration_count > 3"},
        },
        {"type": "foreach", "concurrency": 4, "step": step("each")},
        {"type": "mapping", "id": "map_demo_1", "source": "..."},
        {"type": "sleep", "id": "sleep_demo_1", "seconds": 1.5},
        {"type": "someday", "id": "x", "steps": [step("later")]},
    ]
    workflow = WorkflowInfo(id="demo", description="Everything.", graph=graph)
    assert draw_graph(workflow, UNICODE) == [
        "demo: Everything.",
        "├── ask  [⏸ can suspend]  - Asks a human.",
        "├── workflow child",
        "│   └── inner",
        "├── branch (every true condition runs)",
        "│   ├── big  when c.input > 10",
        "│   └── small  when c.input <= 10",
        "├── dountil until done(c)",
        "│   └── bump",
        "├── foreach (concurrency 4)",
        "│   └── each",
        "├── map map_demo_1",
        "├── sleep sleep_demo_1 (1.5 s)",
        "└── someday x",
        "    └── later",
    ]


class _Terminal(io.TextIOWrapper):
    """An in-memory UTF-8 stream that says it is a terminal."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", newline="\n")

    def isatty(self) -> bool:
        return True

    def getvalue(self) -> str:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue().decode()


def test_the_progress_bar_redraws_in_place_on_a_terminal() -> None:
    now = datetime.now(UTC)

    def event(sequence: int, kind: EventType, **data: Any) -> RunEvent:
        return RunEvent("r1", sequence, now, kind, data)

    out = _Terminal()
    printer = EventPrinter(out)
    printer.event(event(1, EventType.STEP_START, step_id="each"))
    for done in (1, 2):
        progress = {"completed_count": done, "total_count": 2, "current_index": done - 1}
        printer.event(event(1 + done, EventType.STEP_PROGRESS, step_id="each", **progress))
    printer.event(
        event(
            4, EventType.STEP_RESULT, step_id="each", status="success", started_at=now, ended_at=now
        )
    )
    printer.event(event(5, EventType.WORKFLOW_FINISH, status=RunStatus.SUCCESS, result=[1, 2]))
    assert printer.summary() == 0
    half, full = "█" * 12 + "░" * 12, "█" * 24
    assert out.getvalue() == (
        "  ▸ each started\n"
        f"\r    each [{half}] 1/2"
        f"\r    each [{full}] 2/2\n"
        "  ✔ each (0 ms)\n"
        "✔ success\n"
        "[\n  1,\n  2\n]\n"
    )


def test_a_canceled_run_draws_no_step_as_still_going() -> None:
    """Whatever the store kept of a step's last state, a canceled run's steps are drawn
    settled."""
    now = datetime.now(UTC)
    steps = {
        step_id: StepResult(status=status, started_at=now, attempts=1)
        for step_id, status in (
            ("done", StepStatus.SUCCESS),
            ("asking", StepStatus.SUSPENDED),
            ("napping", StepStatus.WAITING),
            ("busy", StepStatus.RUNNING),
        )
    }
    result = RunResult(
        run_id="r1",
        workflow_id="demo",
        status=RunStatus.CANCELED,
        steps=steps,
        step_execution_path=tuple(steps),
    )
    out = _Terminal()
    print_result(result, out)
    rows = [line.split()[:3] for line in out.getvalue().splitlines()[3:]]
    assert rows == [
        ["✔", "done", "success"],
        ["■", "asking", "canceled"],
        ["■", "napping", "canceled"],
        ["■", "busy", "canceled"],
    ]


def test_serve_names_a_workflows_module_it_cannot_import(tmp_path: Path) -> None:
    missing = subprocess.run(
        [*stepline_command(), "serve", "--port", str(free_port()), "--workflows", "nope.flows"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert missing.returncode == 2
    assert "--workflows nope.flows: no module named 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_serve_imports_workflows_beside_the_user(tmp_path: Path) -> None:
    (tmp_path / "myflows.py").write_text(
        "from pydantic import BaseModel\n"
        "from stepline.server import StepContext, Workflow, step\n\n\n"
        "class N(BaseModel):\n    n: int\n\n\n"
        "@step(input=N, output=N)\nasync def inc(ctx: StepContext[N]) -> N:\n"
        "    return N(n=ctx.input.n + 1)\n\n\n"
        'mine = Workflow("mine", input=N, output=N).then(inc).commit()\n'
    )
    env = {k: v for k, v in environment().items() if k != "PYTHONPATH"}
    port = free_port()
    server = subprocess.Popen(
        [*stepline_command(), "serve", "--port", str(port), "--workflows", "myflows"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + BOUND
        while not healthy(f"127.0.0.1:{port}") and time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.05)
        listed = subprocess.run(
            [*stepline_command(), "run", "mine", "--input", '{"n": 1}', "--json"],
            env=dict(env, STEPLINE_TARGET=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
    finally:
        server.terminate()
        server.wait(timeout=BOUND)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["result"] == {"n": 2}
