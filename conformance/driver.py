"""Run conformance/scenario.json against a live server with the Python client.

    python conformance/driver.py --target 127.0.0.1:50051 [--scenario conformance/scenario.json]

Prints one line per step ("ok <id>" or "FAIL <id>: why") and "python: N passed, N failed";
exits 1 when a step failed. For a `restart_server` step it prints the line "@@restart" (with
`crash`: "@@restart crash") and waits for one line on stdin: conformance/run.py restarts the
server, then answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from stepline.client import Client, RunEvent, RunResult, SteplineError

HERE = Path(__file__).resolve().parent
RESTART_REQUEST = "@@restart"


class Mismatch(Exception):
    """A step's outcome differs from what the scenario expects."""


def _check(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def _check_error(error: SteplineError, want: Mapping[str, Any]) -> None:
    _check("code", error.code.name, want["code"])
    if "reason" in want:
        _check("reason", error.reason, want["reason"])
    if "field_violations" in want:
        violations = getattr(error, "violations", [])
        _check("field violations", [v.field for v in violations], want["field_violations"])


def _check_result(result: RunResult, want: Mapping[str, Any]) -> None:
    if "status" in want:
        _check("status", result.status.name, want["status"])
    if "result" in want:
        _check("result", result.result, want["result"])
    if "suspended" in want:
        got = [{"path": list(s.path), "labels": list(s.labels)} for s in result.suspended]
        _check("suspended", got, want["suspended"])


def _check_events(events: list[RunEvent], want: list[Mapping[str, Any]]) -> None:
    _check("event count", len(events), len(want))
    for event, expected in zip(events, want, strict=True):
        label = f"event {event.sequence}"
        _check(f"{label} sequence", event.sequence, expected["sequence"])
        _check(f"{label} type", event.type.value, expected["type"])
        if "step" in expected:
            _check(f"{label} step", event.step_id, expected["step"])
        if "status" in expected:
            _check(f"{label} status", event.data["status"].name, expected["status"])
        if "result" in expected:
            _check(f"{label} result", event.data.get("result"), expected["result"])


class Driver:
    """Executes scenario steps; `runs` maps saved names to run ids, `watches` open watches."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.runs: dict[str, str] = {}
        self.watches: dict[str, AsyncIterator[RunEvent]] = {}

    def run_id(self, step: Mapping[str, Any]) -> str:
        if "run_id" in step:
            return str(step["run_id"])
        name = step["run"]
        if name not in self.runs:
            raise Mismatch(f"no run saved as {name!r} (an earlier step failed)")
        return self.runs[name]

    async def execute(self, step: Mapping[str, Any]) -> None:
        want: Mapping[str, Any] = step.get("expect", {})
        try:
            await self._dispatch(step, want)
        except SteplineError as error:
            if "error" not in want:
                raise Mismatch(f"unexpected error {error}") from error
            _check_error(error, want["error"])
            return
        if "error" in want:
            raise Mismatch(f"expected {want['error']['code']}, the call succeeded")

    async def _dispatch(self, step: Mapping[str, Any], want: Mapping[str, Any]) -> None:
        do = step["do"]
        if do == "start":
            result = await self.client.start(step["workflow"], step.get("input"))
            self._save(step, result.run_id)
            _check_result(result, want)
        elif do == "start_async":
            started = await self.client.start_async(step["workflow"], step.get("input"))
            self._save(step, started.run_id)
            if "created" in want:
                _check("created", started.created, want["created"])
        elif do == "get_result":
            result = await self.client.get_result(self.run_id(step), wait=step.get("wait_seconds"))
            _check_result(result, want)
        elif do == "resume":
            result = await self.client.resume(
                self.run_id(step), step.get("data"), label=step.get("label", "")
            )
            _check_result(result, want)
        elif do == "resume_async":
            resumed = await self.client.resume_async(
                self.run_id(step), step.get("data"), label=step.get("label", "")
            )
            if "after_sequence" in want:
                _check("after_sequence", resumed.after_sequence, want["after_sequence"])
        elif do == "cancel":
            canceled = await self.client.cancel(self.run_id(step))
            _check("status", canceled.status.name, want["status"])
            if "cancel_requested" in want:
                _check("cancel_requested", canceled.cancel_requested, want["cancel_requested"])
        elif do == "stream":
            events = [e async for e in self.client.stream(step["workflow"], step.get("input"))]
            if events:
                self._save(step, events[0].run_id)
            _check_events(events, want.get("events", []))
        elif do == "watch":
            watch = self.client.watch(
                self.run_id(step), after_sequence=step.get("after_sequence", 0)
            )
            _check_events([e async for e in watch], want.get("events", []))
        elif do == "watch_open":
            watch = self.client.watch(
                self.run_id(step),
                after_sequence=step.get("after_sequence", 0),
                keep_open_on_suspend=step.get("keep_open_on_suspend", False),
            )
            self.watches[step["name"]] = watch
            await self._next_events(watch, want)
        elif do == "watch_next":
            if step["name"] not in self.watches:
                raise Mismatch(f"no open watch {step['name']!r} (an earlier step failed)")
            await self._next_events(self.watches[step["name"]], want)
        elif do == "restart_server":
            await _request_restart(crash=step.get("crash", False))
        else:
            raise Mismatch(f"unknown step kind {do!r}")

    def _save(self, step: Mapping[str, Any], run_id: str) -> None:
        if "save" in step:
            self.runs[step["save"]] = run_id

    async def _next_events(self, watch: AsyncIterator[RunEvent], want: Mapping[str, Any]) -> None:
        """Read as many events as expected; with `end`, the watch must then be over."""
        expected: list[Mapping[str, Any]] = want.get("events", [])
        events: list[RunEvent] = []
        for _ in expected:
            try:
                events.append(await anext(watch))
            except StopAsyncIteration:
                break
        _check_events(events, expected)
        if want.get("end"):
            try:
                extra = await anext(watch)
            except StopAsyncIteration:
                return
            raise Mismatch(f"watch went on after the expected events: {extra.sequence}")


async def _request_restart(*, crash: bool) -> None:
    print(f"{RESTART_REQUEST} crash" if crash else RESTART_REQUEST, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    if answer.strip() != "ok":
        raise Mismatch(f"the runner did not restart the server: {answer.strip()!r}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the server")
    parser.add_argument("--scenario", type=Path, default=HERE / "scenario.json")
    opts = parser.parse_args()
    scenario = json.loads(opts.scenario.read_text())
    passed = failed = 0
    async with await Client.connect(opts.target) as client:
        driver = Driver(client)
        for step in scenario["steps"]:
            try:
                await asyncio.wait_for(driver.execute(step), timeout=60)
            except (Mismatch, SteplineError, TimeoutError) as error:
                failed += 1
                print(f"FAIL {step['id']}: {error or type(error).__name__}", flush=True)
            else:
                passed += 1
                print(f"ok   {step['id']}", flush=True)
    print(f"python: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
