"""Helpers of the operations tests: servers in process and as `stepline serve` subprocesses
(see tests/processes.py), and TLS certificates made on the spot. Loopback only; every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.sdk.trace.export import SpanExporter

from stepline.server.app import Server
from stepline.server.settings import Settings
from stepline.server.store import MemoryStore, Store
from tests.processes import Launcher, Replica

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


def serve(tmp_path: Path, *flags: str) -> Replica:
    """`stepline serve` serving tests.ops_flows on a free loopback port, once it is SERVING;
    the caller stops it."""
    return Launcher(tmp_path)("--workflows", FLOWS, *flags)


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
