"""Helpers of the operations tests: servers in process and as `stepline serve` subprocesses,
a private redis-server, and TLS certificates made on the spot. Loopback only; every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter

from stepline.server.app import Server
from stepline.server.settings import Settings
from stepline.server.store import MemoryStore, Store

REPO_ROOT = Path(__file__).resolve().parent.parent
BOUND = 10.0  # every wait in these tests ends within this many seconds
FLOWS = "tests.ops_flows"

T = TypeVar("T")


@asynccontextmanager
async def running(
    *,
    store: Store | None = None,
    span_exporter: SpanExporter | None = None,
    **settings: Any,
) -> AsyncIterator[Server]:
    """A server on 127.0.0.1:0 serving tests.ops_flows (memory store unless given)."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "workflows": [FLOWS]}
    server = await Server.start(
        Settings(**{**options, **settings}),
        store=store or MemoryStore(),
        span_exporter=span_exporter,
    )
    try:
        yield server
    finally:
        await server.stop(grace=1)


async def eventually(check: Callable[[], T | None], *, limit: float = BOUND) -> T:
    """Poll `check` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.02)


async def eventually_async(check: Callable[[], Awaitable[T | None]], *, limit: float = BOUND) -> T:
    """Like `eventually`, for a check that has to await."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- `stepline serve` as a subprocess -----------------------------------------------------------


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


def healthy(target: str, *, limit: float = 0.5) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=limit
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Serving:
    """One `stepline serve` process."""

    process: subprocess.Popen[bytes]
    target: str
    stderr_path: Path

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM by pid, SIGKILL if it has not exited within the bound."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


def serve(tmp_path: Path, *flags: str) -> Serving:
    """Start `stepline serve` on a free loopback port; return once health says SERVING."""
    for attempt in range(3):  # the probed port can be taken before the server binds it
        port = free_port()
        stderr_path = tmp_path / f"serve-{port}.stderr"
        command = [*stepline_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [*command, "--workflows", FLOWS, *flags],
                cwd=REPO_ROOT,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        serving = Serving(process, f"127.0.0.1:{port}", stderr_path)
        deadline = time.monotonic() + BOUND * 2
        while time.monotonic() < deadline and process.poll() is None:
            if healthy(serving.target):
                return serving
            time.sleep(0.05)
        serving.stop()
        if "bind" not in serving.log.lower() or attempt == 2:
            pytest.fail(f"stepline serve did not become ready:\n{serving.log}")
    raise AssertionError("unreachable")


# -- a private redis-server ---------------------------------------------------------------------


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("STEPLINE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not on PATH and STEPLINE_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not on PATH")
    return binary


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server without persistence on 127.0.0.1:`port`, ready when this returns."""
    command = [redis_binary(), "--bind", "127.0.0.1", "--port", str(port)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.ping():
                    return process
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
    finally:
        client.close()
    stop_process(process)
    pytest.fail(f"redis-server did not start on port {port}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, a server certificate for 127.0.0.1 / localhost signed by it, a client
    certificate signed by it, and a client certificate signed by an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(directory: Path) -> Certs:
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write(name: str, cert: x509.Certificate, private: ec.EllipticCurvePrivateKey) -> Path:
        (directory / f"{name}.key").write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path = directory / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, rogue_ca_key = key(), key()
    ca = _certificate("stepline test CA", ca_key, None, ca=True)
    rogue_ca = _certificate("rogue CA", rogue_ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server_key, client_key, rogue_key = key(), key(), key()
    return Certs(
        ca=write("ca", ca, ca_key),
        server_cert=write(
            "server", _certificate("127.0.0.1", server_key, issuer, server=True), server_key
        ),
        server_key=directory / "server.key",
        client_cert=write("client", _certificate("client", client_key, issuer), client_key),
        client_key=directory / "client.key",
        rogue_cert=write(
            "rogue", _certificate("rogue", rogue_key, (rogue_ca.subject, rogue_ca_key)), rogue_key
        ),
        rogue_key=directory / "rogue.key",
    )
