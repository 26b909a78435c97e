"""Real processes for tests, on loopback only and stopped by pid: a private `redis-server`, and
`stepline serve` replicas started the way a user starts them. Every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_SECONDS = 20.0  # start-up deadline of a process
STOP_SECONDS = 10.0  # SIGTERM → exit deadline before SIGKILL
START_ATTEMPTS = 3  # a probed free port can be taken before the process binds it


def free_port(taken: set[int] | None = None) -> int:
    """A loopback port free right now and not in `taken` (which it joins). gRPC binds with
    SO_REUSEPORT, so two replicas handed one port would both start: reserve it."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if taken is None:
            return port
        if port not in taken:
            taken.add(port)
            return port


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> int:
    """SIGTERM by pid and wait; SIGKILL if it has not exited by `timeout`. Returns the exit
    code (negative for a signal, as subprocess reports it)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    return process.returncode


# -- redis-server ------------------------------------------------------------------------------


def redis_binary() -> str:
    """The redis-server binary; skips the test without it, unless STEPLINE_REQUIRE_REDIS=1."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("STEPLINE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and STEPLINE_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH (set STEPLINE_REQUIRE_REDIS=1 to fail instead)")
    return binary


def start_redis(
    workdir: Path, port: int | None = None, *, appendonly: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on 127.0.0.1 (on `port`, else a free one, retried), ready when this
    returns. Without persistence, or with an append-only file in `workdir` (fsync every
    second, as in production) that a restart on the same `workdir` reloads."""
    binary = redis_binary()
    for _attempt in range(1 if port else START_ATTEMPTS):
        chosen = port or free_port()
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(chosen),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _redis_ready(process, chosen):
            return process, chosen
        stop_process(process)
    pytest.fail(f"redis-server did not start; see {workdir / 'redis.log'}")


def _redis_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + READY_SECONDS
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


# -- stepline serve ----------------------------------------------------------------------------


def stepline_command() -> list[str]:
    """The `stepline` console script installed with this interpreter, or the module."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("stepline", path=search)
    return [script] if script else [sys.executable, "-m", "stepline.server.cli"]


def environment(**extra: str) -> dict[str, str]:
    """This environment without STEPLINE_* settings, with the repo root importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def healthy(target: str, limit: float = 1.0) -> bool:
    """grpc.health.v1 Check("") answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=limit
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Replica:
    """One `stepline serve` process."""

    process: subprocess.Popen[bytes]
    target: str
    stderr_path: Path

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        return stop_process(self.process, timeout)


@dataclass
class Launcher:
    """Starts `stepline serve` replicas on free loopback ports, each returned once its health
    check says SERVING; `stop_all` stops every one it started."""

    tmp_path: Path
    replicas: list[Replica] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)  # replicas start in threads

    def __call__(self, *flags: str) -> Replica:
        for attempt in range(START_ATTEMPTS):
            with self.lock:
                port = free_port(self.ports)
                stderr_path = self.tmp_path / f"serve-{port}-{attempt}.stderr"
            command = [*stepline_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            with stderr_path.open("wb") as stderr:
                process = subprocess.Popen(
                    [*command, *flags],
                    cwd=REPO_ROOT,
                    env=environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            replica = Replica(process, f"127.0.0.1:{port}", stderr_path)
            with self.lock:
                self.replicas.append(replica)
            deadline = time.monotonic() + READY_SECONDS
            while time.monotonic() < deadline and process.poll() is None:
                if healthy(replica.target):
                    return replica
                time.sleep(0.05)
            replica.stop(timeout=2)
            if "bind" not in replica.log.lower():  # only a lost port race is worth a retry
                break
        pytest.fail(f"`{' '.join(command)}` did not become ready:\n{replica.log}")

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for replica in self.replicas:
            try:
                replica.stop()
            except Exception as error:  # stop the others anyway
                errors.append(error)
        if errors:
            raise errors[0]
