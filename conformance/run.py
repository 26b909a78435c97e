"""Run the conformance scenario in every language against one live server.

    python conformance/run.py [--lang python --lang typescript --lang go] [--no-build]
                              [--scenario conformance/scenario.json]

Builds the TypeScript and Go drivers (unless --no-build), starts a private `redis-server` and
`stepline serve --redis-url ...` on free loopback ports, and runs each driver in turn. A driver
asks for a server restart by printing "@@restart" (or "@@restart crash"); this runner then stops
the server (SIGTERM: a graceful drain, as in a deploy; SIGKILL for a crash), starts it again on
the same port and Redis, waits until it is healthy and answers "ok" on the driver's stdin.
Every process started here is stopped by its pid.
Ends with "N passed, N failed" over all languages' steps; exits 1 when any step failed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LANGUAGES = ("python", "typescript", "go")
GO_DRIVER = ROOT / ".cache" / "conformance" / "stepline-conformance-go"
RESTART_REQUEST = "@@restart"
STARTUP_SECONDS = 30.0
STOP_SECONDS = 20.0
DRIVER_SECONDS = 300.0
SUMMARY = re.compile(r"^\w+: (\d+) passed, (\d+) failed$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[Any], *, timeout: float = STOP_SECONDS) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def _redis(workdir: Path) -> Iterator[str]:
    """A private redis-server without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    port = _free_port()
    log = workdir / "redis.log"
    command = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _redis_ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start:\n{_tail(log)}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class StepLineServer:
    """`stepline serve` on a fixed loopback port, restartable on the same port and Redis."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.port = _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.redis_url = redis_url
        self.log = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "stepline.server.cli", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--redis-url", self.redis_url,
            "--workflows", "stepline_examples",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def restart(self, *, crash: bool = False) -> None:
        """SIGTERM (a drain, as in a deploy), or SIGKILL with `crash`; then start again."""
        if crash and self.process is not None:
            self.process.kill()  # no drain: the connections just drop
            self.process.wait()
        self.stop()
        self.start()

    def _wait_healthy(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + STARTUP_SECONDS
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"stepline serve did not become healthy:\n{_tail(self.log)}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)


@dataclass
class Outcome:
    language: str
    exit_code: int
    passed: int = 0
    failed: int = 0


def _driver_command(language: str, target: str) -> list[str]:
    if language == "python":
        return [sys.executable, str(HERE / "driver.py"), "--target", target]
    if language == "typescript":
        return ["node", str(HERE / "typescript" / "dist" / "driver.js"), "--target", target]
    return [str(GO_DRIVER), "--target", target]


def _run_driver(language: str, server: StepLineServer, scenario: Path) -> Outcome:
    """Run one driver, echoing its lines and serving its restart requests."""
    command = [*_driver_command(language, server.target), "--scenario", str(scenario)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=ROOT,
    )
    # A hung driver must not hang CI: kill it (by its pid) after DRIVER_SECONDS.
    watchdog = threading.Timer(DRIVER_SECONDS, process.kill)
    watchdog.start()
    outcome = Outcome(language, exit_code=1)
    try:
        assert process.stdout is not None and process.stdin is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            if line.startswith(RESTART_REQUEST):
                crash = line.split()[1:] == ["crash"]
                how = "SIGKILL" if crash else "SIGTERM"
                print(
                    f"[{language}] -- restarting the server ({how}, start, health check)",
                    flush=True,
                )
                server.restart(crash=crash)
                process.stdin.write("ok\n")
                process.stdin.flush()
                continue
            print(f"[{language}] {line}", flush=True)
            if match := SUMMARY.match(line):
                outcome.passed, outcome.failed = int(match[1]), int(match[2])
        outcome.exit_code = process.wait()
    finally:
        watchdog.cancel()
        _stop(process, timeout=5)
    return outcome


def _build(languages: Sequence[str]) -> None:
    """Build the drivers (and the TypeScript client they link to)."""
    npm = ["npm", "--silent", "--no-audit", "--no-fund"]
    if "typescript" in languages:
        for package in (ROOT / "client" / "typescript", HERE / "typescript"):
            installed = package / "node_modules" / ".package-lock.json"
            lock = package / "package-lock.json"
            if not installed.exists() or lock.stat().st_mtime > installed.stat().st_mtime:
                subprocess.run([*npm, "ci"], cwd=package, check=True)
            subprocess.run([*npm, "run", "build"], cwd=package, check=True)
    if "go" in languages:
        GO_DRIVER.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(GO_DRIVER), "."], cwd=HERE / "go", check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lang", action="append", choices=LANGUAGES, help="repeatable; default: all three"
    )
    parser.add_argument("--no-build", action="store_true", help="use the drivers as built")
    parser.add_argument("--scenario", type=Path, default=HERE / "scenario.json")
    opts = parser.parse_args()
    languages: list[str] = opts.lang or list(LANGUAGES)
    if not opts.no_build:
        _build(languages)
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory(prefix="stepline-conformance-") as tmp,
        _redis(Path(tmp)) as url,
    ):
        server = StepLineServer(url, Path(tmp))
        server.start()
        try:
            for language in languages:
                outcomes.append(_run_driver(language, server, opts.scenario.resolve()))
        finally:
            server.stop()
            if any(o.exit_code != 0 for o in outcomes):
                print(f"-- server log (tail):\n{_tail(server.log)}")
    for o in outcomes:
        verdict = "ok" if o.exit_code == 0 else f"FAILED (exit {o.exit_code})"
        print(f"conformance {o.language}: {verdict}, {o.passed} passed, {o.failed} failed")
    passed = sum(o.passed for o in outcomes)
    # A driver that died before its summary line counts as one failure at least.
    failed = sum(max(o.failed, 1 if o.exit_code else 0) for o in outcomes)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
