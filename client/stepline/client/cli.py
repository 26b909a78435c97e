"""The client half of the `stepline` command: run, watch, result, resume, cancel, runs list,
workflows list / show. Everything goes through the typed `Client`.

Every command takes `--target HOST:PORT` (env STEPLINE_TARGET, default 127.0.0.1:50051),
`--token TOKEN` (env STEPLINE_TOKEN), `--tls` / `--ca FILE` / `--cert FILE --key FILE` for
TLS and mutual TLS, and `--json` for machine output: one JSON document, or one JSON event per
line for `watch`. Exit status: 0 done, 1 the run FAILED or was CANCELED, 2 bad usage or a
request the server found invalid, 3 any other failed call (not found, unavailable, refused
credentials...), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import grpc

from .client import Client
from .errors import InvalidArgument, SteplineError, Unavailable
from .models import (
    EventType,
    RunError,
    RunEvent,
    RunResult,
    RunStatus,
    StepResult,
    StepStatus,
    WorkflowInfo,
)

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_CALL_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
COMMANDS = ("run", "watch", "result", "resume", "cancel", "runs", "workflows")


class UsageError(Exception):
    """A bad flag value, reported like argparse does (exit status 2)."""


# -- JSON --------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """Client models as plain JSON values: dataclasses as objects, datetimes as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def dumps(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(plain(value), indent=2 if pretty else None, ensure_ascii=False)


def _json_arg(text: str | None, flag: str) -> Any:
    """A flag's JSON value; `@path` reads it from a file and `-` from stdin."""
    if text is None:
        return None
    source = flag
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as err:
            raise UsageError(f"{flag}: cannot read {source!r}: {err.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not valid JSON ({err.msg} at column {err.colno})") from None


# -- terminal drawing ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Glyphs:
    start: str
    ok: str
    failed: str
    suspended: str
    canceled: str
    waiting: str
    output: str
    bar_full: str
    bar_empty: str
    tee: str
    elbow: str
    pipe: str


UNICODE = Glyphs("▸", "✔", "✘", "⏸", "■", "⏲", "↳", "█", "░", "├── ", "└── ", "│   ")
ASCII = Glyphs(">", "+", "x", "||", "#", "~", "->", "#", ".", "|-- ", "`-- ", "|   ")


def glyphs_for(stream: TextIO) -> Glyphs:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return UNICODE if encoding in ("utf8", "utf8sig") else ASCII


def _duration(started: Any, ended: Any) -> str:
    if not isinstance(started, datetime) or not isinstance(ended, datetime):
        return ""
    seconds = (ended - started).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _error_text(error: Any) -> str:
    if isinstance(error, RunError):
        return f"{error.name}: {error.message}" if error.name else error.message
    return "" if error is None else str(error)


def _when(value: datetime | None) -> str:
    return value.astimezone().isoformat(timespec="seconds") if value else "-"


class EventPrinter:
    """Draws a run's events as they come: a line per step start and result, a progress bar
    for foreach steps (redrawn in place on a terminal, a line per item otherwise), and the
    outcome with the result pretty-printed."""

    BAR_WIDTH = 24

    def __init__(self, out: TextIO, *, sequences: bool = False) -> None:
        self.out = out
        self.glyph = glyphs_for(out)
        self.live = out.isatty()
        self.sequences = sequences
        self.finish: RunEvent | None = None
        self._bar = False

    def _line(self, text: str, event: RunEvent | None = None) -> None:
        if self._bar:
            self.out.write("\n")
            self._bar = False
        prefix = f"{event.sequence:>4} " if self.sequences and event is not None else ""
        self.out.write(f"{prefix}{text}\n")
        self.out.flush()

    def event(self, event: RunEvent) -> None:
        g, data, step, kind = self.glyph, event.data, event.step_id or "", event.type
        if kind is EventType.WORKFLOW_START:
            verb = {"start": "started", "resume": "resumed"}.get(str(data.get("reason")), "")
            verb = verb or f"continued ({data.get('reason') or 'restart'})"
            self._line(f"run {event.run_id} {verb} (workflow {data.get('workflow_id')})", event)
        elif kind is EventType.STEP_START:
            resumed = " (resumed)" if data.get("resume_payload") is not None else ""
            self._line(f"  {g.start} {step} started{resumed}", event)
        elif kind is EventType.STEP_OUTPUT:
            self._line(f"    {g.output} {step}: {dumps(data.get('output'))}", event)
        elif kind is EventType.STEP_PROGRESS:
            self._progress(event)
        elif kind is EventType.STEP_RESULT:
            self._step_result(event)
        elif kind is EventType.STEP_SUSPENDED:
            payload = data.get("suspend_payload")
            shown = f": {dumps(payload)}" if payload is not None else ""
            self._line(f"  {g.suspended} {step} suspended{shown}", event)
        elif kind is EventType.STEP_WAITING:
            wake = data.get("wake_at")
            until = _when(wake) if isinstance(wake, datetime) else "?"
            self._line(f"  {g.waiting} {step} sleeping until {until}", event)
        elif kind is EventType.WORKFLOW_FINISH:
            self.finish = event
            self._line(self._outcome(event), event)
        # workflow-canceled is followed by workflow-finish(canceled), which says it all.

    def _step_result(self, event: RunEvent) -> None:
        g, data, step = self.glyph, event.data, event.step_id or ""
        status = str(data.get("status", ""))
        took = _duration(data.get("started_at"), data.get("ended_at"))
        if status == "success":
            self._line(f"  {g.ok} {step}" + (f" ({took})" if took else ""), event)
        elif status == "failed":
            self._line(f"  {g.failed} {step} failed: {_error_text(data.get('error'))}", event)
        else:
            self._line(f"  {g.canceled} {step} {status}", event)

    def _progress(self, event: RunEvent) -> None:
        data, step = event.data, event.step_id or ""
        done, total = int(data.get("completed_count", 0)), int(data.get("total_count", 0))
        if not self.live:
            item = f"item {data.get('current_index')}: {data.get('iteration_status')}"
            self._line(f"    {step} {done}/{total} ({item})", event)
            return
        filled = self.BAR_WIDTH * done // total if total else self.BAR_WIDTH
        bar = self.glyph.bar_full * filled + self.glyph.bar_empty * (self.BAR_WIDTH - filled)
        self.out.write(f"\r    {step} [{bar}] {done}/{total}")
        self.out.flush()
        self._bar = True

    def _outcome(self, event: RunEvent) -> str:
        g, data = self.glyph, event.data
        status = data.get("status")
        if status is RunStatus.SUCCESS:
            return f"{g.ok} success"
        if status is RunStatus.FAILED:
            return f"{g.failed} failed: {_error_text(data.get('error'))}"
        if status is RunStatus.SUSPENDED:
            where = ", ".join(s.step_id for s in data.get("suspended", ())) or "?"
            return f"{g.suspended} suspended at {where}"
        if status is RunStatus.CANCELED:
            return f"{g.canceled} canceled"
        return f"finished: {status}"

    def summary(self) -> int:
        """The outcome's details (result, how to resume) and the exit status."""
        if self.finish is None:
            self._line("the event stream ended before the run settled")
            return EXIT_CALL_FAILED
        data, run_id = self.finish.data, self.finish.run_id
        status = data.get("status")
        if status is RunStatus.SUCCESS:
            self._line(dumps(data.get("result"), pretty=True))
        elif status is RunStatus.SUSPENDED:
            for suspended in data.get("suspended", ()):
                self._line(
                    f"resume with: stepline resume {run_id} --step {suspended.step_id} --data JSON"
                )
        return exit_status(status)


def exit_status(status: object) -> int:
    return EXIT_RUN_FAILED if status in (RunStatus.FAILED, RunStatus.CANCELED) else EXIT_OK


def draw_graph(workflow: WorkflowInfo, glyphs: Glyphs) -> list[str]:
    """The step graph as a tree, one line per node (shape: docs/graph.md)."""
    descriptions = {step.id: step.description for step in workflow.steps}
    lines = [workflow.id + (f": {workflow.description}" if workflow.description else "")]

    def label(entry: Mapping[str, Any]) -> tuple[str, list[Any]]:
        kind = str(entry.get("type", "?"))
        if kind == "step":
            step = entry.get("step") or {}
            text = str(step.get("id", "?"))
            if step.get("can_suspend"):
                text += f"  [{glyphs.suspended} can suspend]"
            description = step.get("description") or descriptions.get(text, "")
            return text + (f"  - {description}" if description else ""), []
        if kind == "workflow":
            return f"workflow {entry.get('id', '?')}", list(entry.get("graph") or [])
        if kind == "parallel":
            return "parallel", list(entry.get("steps") or [])
        if kind == "conditional":
            conditions = list(entry.get("conditions") or [])
            children = [
                {**child, "_when": _source(conditions[i]) if i < len(conditions) else ""}
                for i, child in enumerate(entry.get("steps") or [])
            ]
            return "branch (every true condition runs)", children
        if kind == "loop":
            loop = str(entry.get("loop_type", "loop"))
            word = "until" if loop == "dountil" else "while"
            condition = _source(entry.get("condition") or {})
            return f"{loop} {word} {condition}".rstrip(), [entry.get("step") or {}]
        if kind == "foreach":
            return f"foreach (concurrency {entry.get('concurrency', 1)})", [entry.get("step") or {}]
        if kind == "mapping":
            return f"map {entry.get('id', '')}".rstrip(), []
        if kind == "sleep":
            return f"sleep {entry.get('id', '')} ({entry.get('seconds')} s)", []
        if kind == "sleep_until":
            until = entry.get("until")
            when = (
                datetime.fromtimestamp(until).astimezone().isoformat(timespec="seconds")
                if isinstance(until, int | float)
                else "?"
            )
            return f"sleep_until {entry.get('id', '')} ({when})", []
        children = list(entry.get("steps") or entry.get("graph") or [])
        if isinstance(entry.get("step"), Mapping):
            children.append(entry["step"])
        return f"{kind} {entry.get('id', '')}".rstrip(), children

    def walk(entries: Sequence[Any], indent: str) -> None:
        shown = [e for e in entries if isinstance(e, Mapping)]
        for i, entry in enumerate(shown):
            last = i == len(shown) - 1
            text, children = label(entry)
            if entry.get("_when"):
                text += f"  when {entry['_when']}"
            lines.append(indent + (glyphs.elbow if last else glyphs.tee) + text)
            walk(children, indent + ("    " if last else glyphs.pipe))

    walk(workflow.graph, "")
    return lines


def _source(condition: Mapping[str, Any]) -> str:
    """A condition's source, shortened for one line: a lambda's body without the code around
    it, a function's name and parameters."""
    source = " ".join(str(condition.get("source", "")).split())
    if "lambda" in source:
        body = source.split("lambda", 1)[1].split(":", 1)[-1].strip()
        depth, end = 0, len(body)
        for i, char in enumerate(body):  # stop where the lambda's expression stops
            if char in "([{":
                depth += 1
            elif char in ")]}" or (char == "," and depth == 0):
                if depth == 0:
                    end = i
                    break
                depth -= 1
        source = body[:end].strip()
    elif source.startswith(("def ", "async def ")):
        source = source.split("def ", 1)[1].split(":", 1)[0].removesuffix(" -> bool")
    return source if len(source) <= 60 else source[:59] + "…"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


# -- commands ------------------------------------------------------------------------------------


async def _follow(events: AsyncIterator[RunEvent], out: TextIO, *, sequences: bool) -> int:
    printer = EventPrinter(out, sequences=sequences)
    async for event in events:
        printer.event(event)
    return printer.summary()


async def cmd_run(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    options: dict[str, Any] = {
        "run_id": args.run_id or "",
        "resource_id": args.resource_id or "",
        "initial_state": _json_arg(args.state, "--state"),
        "request_context": _json_arg(args.context, "--context"),
        "trace_id": args.trace_id or "",
    }
    data = _json_arg(args.input, "--input")
    try:
        if args.json:
            result = await client.start(args.workflow, data, **options)
            out.write(dumps(result, pretty=True) + "\n")
            return exit_status(result.status)
        return await _follow(client.stream(args.workflow, data, **options), out, sequences=False)
    except InvalidArgument as error:
        if args.input is None and any(v.field == "input_data" for v in error.violations):
            raise UsageError(await _input_required(client, args.workflow)) from None
        raise


async def _input_required(client: Client, workflow_id: str) -> str:
    """Why a run without --input was refused: the workflow's input has a schema."""
    try:
        shape = _input_shape(await client.get_workflow(workflow_id))
    except SteplineError:
        shape = ""
    return "--input is required" + (f" (workflow {workflow_id} takes {shape})" if shape else "")


async def cmd_resume(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    data = _json_arg(args.data, "--data")
    options: dict[str, Any] = {"step": args.step, "label": args.label or ""}
    if args.json:
        result = await client.resume(args.run_id, data, **options)
        out.write(dumps(result, pretty=True) + "\n")
        return exit_status(result.status)
    events = client.resume_stream(args.run_id, data, **options)
    return await _follow(events, out, sequences=False)


async def cmd_watch(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.from_sequence < 1:
        raise UsageError("--from must be 1 or more (the first sequence to show)")
    events = client.watch(
        args.run_id, after_sequence=args.from_sequence - 1, keep_open_on_suspend=args.keep_open
    )
    printer = None if args.json else EventPrinter(out, sequences=True)
    status: object = None
    seen = False
    async for event in events:
        seen = True
        if printer is not None:
            printer.event(event)
            continue
        out.write(dumps(event) + "\n")
        out.flush()
        if event.is_finish:
            status = event.data.get("status")
    if not seen and args.from_sequence > 1:
        await _check_within_log(client, args.run_id, args.from_sequence)
    return exit_status(status) if printer is None else printer.summary()


async def _check_within_log(client: Client, run_id: str, first: int) -> None:
    """A watch from past the end of a settled run's log ends at once: say so."""
    result = await client.get_result(run_id)
    if first > result.last_sequence:
        raise UsageError(
            f"run {run_id}'s events end at {result.last_sequence} (status {result.status}):"
            f" nothing to show from --from {first}"
        )


async def cmd_result(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    wait = args.wait or None
    timeout = None if wait is None else wait + 10
    result = await client.get_result(
        args.run_id, include_state=args.state, wait=wait, timeout=timeout
    )
    if args.json:
        out.write(dumps(result, pretty=True) + "\n")
    else:
        print_result(result, out)
    return exit_status(result.status)


def print_result(result: RunResult, out: TextIO) -> None:
    g = glyphs_for(out)
    out.write(f"run {result.run_id}  workflow {result.workflow_id}  status {result.status}\n")
    out.write(f"created {_when(result.created_at)}  updated {_when(result.updated_at)}\n")
    if result.steps:
        mark = {
            StepStatus.SUCCESS: g.ok,
            StepStatus.FAILED: g.failed,
            StepStatus.SUSPENDED: g.suspended,
            StepStatus.WAITING: g.waiting,
            StepStatus.CANCELED: g.canceled,
        }
        rows = [["", "STEP", "STATUS", "TIME", "ATTEMPTS"]]
        for step_id in result.step_execution_path or tuple(result.steps):
            step: StepResult | None = result.steps.get(step_id)
            if step is None:
                continue
            status = _shown_status(step, result.status)
            rows.append(
                [
                    mark.get(status, g.start),
                    step_id,
                    status.value,
                    _duration(step.started_at, step.ended_at) or "-",
                    str(step.attempts),
                ]
            )
        _table(rows, out)
    if result.status is RunStatus.SUCCESS:
        out.write("result:\n" + dumps(result.result, pretty=True) + "\n")
    elif result.error is not None:
        out.write(f"error: {_error_text(result.error)}\n")
    for suspended in result.suspended:
        out.write(f"suspended at {suspended.step_id}: {dumps(suspended.payload)}\n")
    if result.state is not None:
        out.write("state:\n" + dumps(result.state, pretty=True) + "\n")


def _shown_status(step: StepResult, run: RunStatus) -> StepStatus:
    """A step's status as the run's status allows it: a canceled run has no step still
    running, sleeping or waiting for a resume, whatever was stored before the cancel."""
    unsettled = (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.SUSPENDED)
    if run is RunStatus.CANCELED and step.status in unsettled:
        return StepStatus.CANCELED
    return step.status


async def cmd_cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    canceled = await client.cancel(args.run_id)
    if args.json:
        out.write(dumps({"run_id": args.run_id, **plain(canceled)}) + "\n")
    elif canceled.cancel_requested:
        out.write(f"run {args.run_id}: cancel requested; status now {canceled.status}\n")
    else:
        out.write(f"run {args.run_id}: already {canceled.status}, left unchanged\n")
    return EXIT_OK


async def cmd_runs_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    statuses = [s.strip().lower() for value in args.status or () for s in value.split(",")]
    known = {s.value for s in RunStatus} - {"unspecified"}
    for status in statuses:
        if status not in known:
            raise UsageError(f"--status {status!r}: one of {', '.join(sorted(known))}")
    page = await client.list_runs(
        workflow_id=args.workflow or "",
        statuses=statuses,
        resource_id=args.resource or "",
        page_size=args.limit,
        page_token=args.page_token or "",
    )
    if args.json:
        out.write(dumps(page, pretty=True) + "\n")
        return EXIT_OK
    if not page.runs:
        out.write("no runs\n")
    else:
        rows = [["RUN ID", "WORKFLOW", "STATUS", "CREATED"]]
        rows += [
            [run.run_id, run.workflow_id, run.status.value, _when(run.created_at)]
            for run in page.runs
        ]
        _table(rows, out)
    if page.next_page_token:
        out.write(f"more: --page-token {page.next_page_token}\n")
    return EXIT_OK


async def cmd_workflows_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    workflows = await client.list_workflows()
    if args.json:
        out.write(dumps(workflows, pretty=True) + "\n")
        return EXIT_OK
    rows = [["WORKFLOW", "STEPS", "DESCRIPTION"]]
    rows += [[w.id, str(len(w.steps)), w.description] for w in workflows]
    _table(rows, out)
    return EXIT_OK


async def cmd_workflows_show(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    workflow = await client.get_workflow(args.workflow)
    if args.json:
        out.write(dumps(workflow, pretty=True) + "\n")
        return EXIT_OK
    for line in draw_graph(workflow, glyphs_for(out)):
        out.write(line + "\n")
    shape = _input_shape(workflow)
    if shape:
        out.write(f"input: {shape}\n")
    return EXIT_OK


def _input_shape(workflow: WorkflowInfo) -> str:
    """The input's fields and types, `{name: string, count?: integer}`; "" when unknown."""
    fields = (workflow.input_schema or {}).get("properties") or {}
    if not fields:
        return ""
    required = set((workflow.input_schema or {}).get("required") or ())
    described = ", ".join(
        f"{name}{'' if name in required else '?'}: {spec.get('type', 'any')}"
        for name, spec in fields.items()
        if isinstance(spec, Mapping)
    )
    return f"{{{described}}}"


# -- plumbing ------------------------------------------------------------------------------------


def _read(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag}: cannot read {path!r}: {err.strerror}") from None


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together (a client certificate and its key)")
    if not (args.tls or args.ca or args.cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(args.ca, "--ca"),
        private_key=_read(args.key, "--key"),
        certificate_chain=_read(args.cert, "--cert"),
    )


def add_commands(sub: Any) -> None:
    """Add the client commands to the `stepline` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    connection = common.add_argument_group("connection")
    connection.add_argument(
        "--target",
        default=os.environ.get("STEPLINE_TARGET", DEFAULT_TARGET),
        help=f"server HOST:PORT (env STEPLINE_TARGET; default {DEFAULT_TARGET})",
    )
    connection.add_argument(
        "--token",
        default=os.environ.get("STEPLINE_TOKEN") or None,
        help="bearer token to send (env STEPLINE_TOKEN)",
    )
    connection.add_argument("--tls", action="store_true", help="use TLS with the system CAs")
    connection.add_argument("--ca", metavar="FILE", help="CA bundle to verify the server (TLS)")
    connection.add_argument("--cert", metavar="FILE", help="client certificate (mutual TLS)")
    connection.add_argument("--key", metavar="FILE", help="client certificate's private key")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")

    def command(parent: Any, name: str, handler: Callable[..., Any], help: str) -> Any:
        parser = parent.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(handler=handler)
        return parser

    run = command(sub, "run", cmd_run, "start a workflow and follow it live")
    run.add_argument("workflow", help="workflow id")
    run.add_argument("--input", help="input as JSON (@FILE reads a file, - reads stdin)")
    run.add_argument("--run-id", help="choose the run id")
    run.add_argument("--resource-id", help="resource the run belongs to")
    run.add_argument("--state", metavar="JSON", help="initial state")
    run.add_argument("--context", metavar="JSON", help="request context")
    run.add_argument("--trace-id", help="trace id for the run's spans (1 to 32 hex chars)")

    watch = command(sub, "watch", cmd_watch, "follow a run's events (replays, then tails)")
    watch.add_argument("run_id")
    watch.add_argument(
        "--from",
        dest="from_sequence",
        type=int,
        default=1,
        metavar="N",
        help="first event sequence to show (default 1: everything)",
    )
    watch.add_argument("--keep-open", action="store_true", help="keep following across suspensions")

    result = command(sub, "result", cmd_result, "show a run's status, steps and result")
    result.add_argument("run_id")
    result.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long to settle")
    result.add_argument("--state", action="store_true", help="include the run's state")

    resume = command(sub, "resume", cmd_resume, "resume a suspended run and follow it")
    resume.add_argument("run_id")
    resume.add_argument("--step", help="the suspended step (needed when several are)")
    resume.add_argument("--label", help="address the suspended step by its resume label")
    resume.add_argument("--data", help="resume data as JSON (@FILE, - for stdin)")

    cancel = command(sub, "cancel", cmd_cancel, "cancel a run (a finished run is left as is)")
    cancel.add_argument("run_id")

    def group(name: str, help: str) -> Any:
        """A command that only groups others: bare, it prints them (see `main`)."""
        parser = sub.add_parser(name, help=help, description=help)
        parser.set_defaults(handler=None, group=parser)
        return parser.add_subparsers(dest="what", title="commands", metavar="COMMAND")

    runs = group("runs", "list runs")
    runs_list = command(runs, "list", cmd_runs_list, "list runs, newest first")
    runs_list.add_argument(
        "--status", action="append", help="only runs with this status (repeatable, or a,b)"
    )
    runs_list.add_argument("--workflow", help="only runs of this workflow")
    runs_list.add_argument("--resource", help="only runs of this resource id")
    runs_list.add_argument("--limit", type=int, default=20, help="runs per page (default 20)")
    runs_list.add_argument("--page-token", help="the page to show (from a previous listing)")

    workflows = group("workflows", "list or show workflows")
    command(workflows, "list", cmd_workflows_list, "list the workflows the server runs")
    show = command(workflows, "show", cmd_workflows_show, "show a workflow's step graph")
    show.add_argument("workflow")


def _unreachable(error: SteplineError) -> bool:
    """No server answered: the channel failed to connect (a server's own UNAVAILABLE
    always carries a reason)."""
    return isinstance(error, Unavailable) and not error.reason


def _connect_hint(message: str) -> str:
    """What most likely went wrong connecting, and what to try, from gRPC's message."""
    elsewhere = "name another with --target HOST:PORT (env STEPLINE_TARGET)"
    lowered = message.lower()
    if "connection refused" in lowered:
        return f"  connection refused: start one with `stepline serve`, or {elsewhere}"
    if "resolving" in lowered or "domain name not found" in lowered:
        return f"  the host name does not resolve: {elsewhere}"
    if "handshake" in lowered:
        return (
            "  the TLS handshake failed: drop --tls/--ca if the server is plaintext,"
            " or give --ca the CA that signed its certificate"
        )
    return f"  {message}\n  is `stepline serve` running there? Or {elsewhere}"


def _report(error: BaseException, args: argparse.Namespace) -> None:
    if isinstance(error, SteplineError) and _unreachable(error) and not args.json:
        sys.stderr.write(f"stepline: cannot connect to a Stepline server at {args.target}\n")
        sys.stderr.write(_connect_hint(error.message) + "\n")
        return
    if isinstance(error, SteplineError) and args.json:
        code = getattr(error.code, "name", str(error.code))
        detail = {"code": code, "reason": error.reason, "message": error.message}
        if error.metadata:
            detail["metadata"] = error.metadata
        if isinstance(error, InvalidArgument):
            detail["violations"] = plain(error.violations)
        sys.stderr.write(json.dumps({"error": detail}) + "\n")
        return
    sys.stderr.write(f"stepline: {error}\n")
    if isinstance(error, InvalidArgument):
        for violation in error.violations:
            sys.stderr.write(f"  {violation.field}: {violation.description}\n")


async def _call(args: argparse.Namespace, out: TextIO) -> int:
    client = await Client.connect(args.target, token=args.token, tls=credentials(args))
    async with client:
        code: int = await args.handler(client, args, out)
        return code


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the client command `args` describes (parsed by a parser `add_commands` set up).
    A group without its subcommand (`stepline runs`) prints the subcommands it has."""
    if args.handler is None:
        args.group.print_help(out or sys.stdout)
        return EXIT_OK
    try:
        return asyncio.run(_call(args, out or sys.stdout))
    except UsageError as error:
        sys.stderr.write(f"stepline {args.command}: {error}\n")
        return EXIT_USAGE
    except SteplineError as error:
        _report(error, args)
        return EXIT_USAGE if isinstance(error, InvalidArgument) else EXIT_CALL_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("stepline: interrupted (a started run carries on on the server)\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`stepline runs list | head`): stop quietly, as Unix tools do,
        # and keep the interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
