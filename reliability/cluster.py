"""The processes a suite runs against: one `redis-server` (append-only file, fsync every
second) and N `stepline serve` replicas sharing it, all on loopback.

Replicas keep their port across a kill and restart, so callers reach them again through the
same multi-address channel a real load balancer would give them. Everything is stopped by
pid (`stop()`, always called from a `finally`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.processes import (
    READY_SECONDS,
    REPO_ROOT,
    environment,
    free_port,
    healthy,
    start_redis,
    stepline_command,
    stop_process,
)

WORKFLOWS_MODULE = "reliability.flows"


class ClusterError(RuntimeError):
    """A process would not start or stop as asked."""


def serve_supports(flag: str) -> bool:
    """True when `stepline serve --help` lists `flag` (e.g. --run-retention)."""
    done = subprocess.run(
        [*stepline_command(), "serve", "--help"],
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return flag in done.stdout


@dataclass
class ReplicaProcess:
    """One replica slot: a fixed gRPC and metrics port, and the process in it right now."""

    index: int
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def metrics(self, timeout: float = 2.0) -> dict[str, float]:
        """The replica's unlabelled Prometheus samples (name -> value); {} when unreachable."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                text = reply.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or "{" in line:
                continue
            name, _, value = line.partition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
        return samples


class Cluster:
    """Redis plus `replicas` replicas. Use as a context manager or call start() / stop()."""

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 2,
        prefix: str,
        flags: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.flags = list(flags)
        self.redis_dir = workdir / "redis"
        self.redis_process: subprocess.Popen[bytes] | None = None
        self.redis_port = 0
        self.redis_restarts = 0
        taken: set[int] = set()
        self.replicas = [
            ReplicaProcess(index=i, port=free_port(taken), metrics_port=free_port(taken))
            for i in range(replicas)
        ]
        self._lock = threading.Lock()

    # -- addresses -------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def target(self) -> str:
        """One gRPC target naming every replica (use with the round_robin policy)."""
        return "ipv4:" + ",".join(r.target for r in self.replicas)

    def admin(self) -> Redis:
        """A fresh asyncio Redis client (decoded responses); the caller closes it."""
        return Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=30)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_process, self.redis_port = start_redis(self.redis_dir, appendonly=True)
        errors: list[BaseException] = []

        def boot(replica: ReplicaProcess) -> None:
            try:
                self.start_replica(replica.index)
            except BaseException as error:  # reported below, after every thread is done
                errors.append(error)

        threads = [threading.Thread(target=boot, args=(r,)) for r in self.replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def replica_command(self, replica: ReplicaProcess) -> list[str]:
        return [
            *stepline_command(),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(replica.port),
            "--metrics-port", str(replica.metrics_port),
            "--redis-url", self.redis_url,
            "--redis-prefix", self.prefix,
            "--workflows", WORKFLOWS_MODULE,
            *self.flags,
        ]  # fmt: skip

    def start_replica(self, index: int, *, ready_seconds: float = READY_SECONDS) -> None:
        """(Re)start replica `index` on its port; returns once its health check is SERVING."""
        replica = self.replicas[index]
        if replica.pid is not None:
            raise ClusterError(f"replica {index} is already running (pid {replica.pid})")
        with self._lock:
            replica.starts += 1
            log = self.workdir / f"replica-{index}-{replica.starts}.stderr"
            replica.logs.append(log)
        with log.open("wb") as stderr:
            replica.process = subprocess.Popen(
                self.replica_command(replica),
                cwd=REPO_ROOT,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + ready_seconds
        while time.monotonic() < deadline and replica.process.poll() is None:
            if healthy(replica.target):
                return
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-4000:]
        raise ClusterError(f"replica {index} did not become ready on {replica.target}:\n{tail}")

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica `index` by pid and reap it."""
        replica = self.replicas[index]
        process = replica.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart_redis(self, *, key_load_delay_us: int = 0) -> None:
        """SIGTERM redis-server (it writes its append-only file out) and start it again on the
        same port and directory, so it reloads every acknowledged write; returns once it
        answers PING (not LOADING any more).

        `key_load_delay_us` (Redis' own test setting) slows loading the append-only file's
        RDB base by that much per key, to hold Redis in its LOADING state for a while."""
        if self.redis_process is not None:
            stop_process(self.redis_process)
        self.redis_restarts += 1
        command = [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.redis_port),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(self.redis_dir),
            "--logfile", str(self.redis_dir / "redis.log"),
        ]  # fmt: skip
        if key_load_delay_us:  # and answer (LOADING) between keys, not only every 2 MB
            command += ["--key-load-delay", str(key_load_delay_us)]
            command += ["--loading-process-events-interval-bytes", "1024"]
        self.redis_process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not _answers_ping(self.redis_process, self.redis_port, READY_SECONDS * 3):
            raise ClusterError(f"redis-server did not come back; see {self.redis_dir}/redis.log")

    async def pause_redis(self, milliseconds: int) -> None:
        """CLIENT PAUSE <ms> ALL: every client's commands wait until the pause ends."""
        admin = self.admin()
        try:
            await admin.client_pause(milliseconds, all=True)
        finally:
            await admin.aclose()

    def stop(self) -> None:
        """SIGTERM every replica and Redis by pid (SIGKILL after a deadline)."""
        errors: list[BaseException] = []
        for replica in self.replicas:
            if replica.process is not None:
                try:
                    stop_process(replica.process)
                except Exception as error:  # stop the others anyway
                    errors.append(error)
        if self.redis_process is not None:
            try:
                stop_process(self.redis_process)
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    # -- observation -----------------------------------------------------------------------
    def replica_resources(self) -> list[tuple[int, int, int]]:
        """(rss bytes, open fds, threads) of each live replica process."""
        found: list[tuple[int, int, int]] = []
        for replica in self.replicas:
            pid = replica.pid
            if pid is None:
                continue
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    found.append((proc.memory_info().rss, proc.num_fds(), proc.num_threads()))
            except psutil.Error:
                continue
        return found

    def log_text(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for replica in self.replicas
            for path in replica.logs
            if path.exists()
        )

    def log_errors(self, limit: int = 5) -> list[str]:
        """The first ERROR lines of the replicas' logs, each with the exception it logged."""
        found: list[str] = []
        lines = self.log_text().splitlines()
        for i, line in enumerate(lines):
            if " ERROR " not in line:
                continue
            message = line.split(" ERROR ", 1)[1].split("  run_id=", 1)[0]
            for follow in lines[i + 1 : i + 60]:
                if follow and not follow.startswith((" ", "Traceback", "The above", "During")):
                    if follow != line and " INFO " not in follow and " WARNING " not in follow:
                        message += f" -> {follow.strip()}"
                    break
            found.append(message)
            if len(found) == limit:
                break
        return found

    def log_counts(self) -> dict[str, int]:
        """How often the replicas' logs mention the things worth reporting."""
        text = self.log_text()
        return {
            "tracebacks": text.count("Traceback"),
            "engine errors": text.count("engine error"),
            "recovered runs": text.count("recovering run"),
            "lost leases": text.count("lost the lease"),
            "store unavailable": text.count("store unavailable") + text.count("store unreachable"),
        }


def _answers_ping(process: subprocess.Popen[bytes], port: int, seconds: float) -> bool:
    """PING until it answers (a loading Redis answers LOADING, or not at all for a while)."""
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.02)
        return False
    finally:
        client.close()
