"""The `stepline` command: `serve` runs a replica; the other commands are a client
(stepline.client.cli).

Every `serve` flag is also an environment variable: `--max-concurrent-runs 8` is
`STEPLINE_MAX_CONCURRENT_RUNS=8`; a flag wins. Settings are checked before anything starts;
a bad one exits with status 2 and says which flag (or variable) to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from stepline.client import cli as client_cli

from . import auth, logs
from .settings import ConfigError, Settings

log = logging.getLogger("stepline")

# Allocations (minus deallocations) between two young-generation collections (default 700).
_GC_THRESHOLD = 20_000
# Flags whose values must not be echoed back in error messages.
_SECRET_FIELDS = frozenset({"auth_tokens"})
# Settings fields whose flag is not simply the field name with dashes.
_FLAGS = {"auth_tokens": "auth-token", "http_cors_origins": "http-cors-origin"}


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run a Stepline server replica",
        description="Run a Stepline server replica. Every flag is also a STEPLINE_* variable.",
    )

    def flag(group: Any, name: str, help: str, **kwargs: Any) -> None:
        group.add_argument(f"--{name}", help=help, **kwargs)

    g = serve.add_argument_group("server")
    flag(g, "host", "address to bind (default 127.0.0.1)")
    flag(g, "port", "port to bind (default 50051; 0 picks one)", type=int)
    flag(g, "redis-url", "Redis URL; without it runs are kept in memory")
    flag(g, "redis-prefix", "prefix of every Redis key (default stepline)")
    flag(
        g,
        "redis-timeout",
        "seconds a Redis command may go unanswered before a call fails UNAVAILABLE (default 5)",
        type=float,
    )
    flag(
        g,
        "workflows",
        "module whose committed workflows to serve (repeatable; default stepline_examples)",
        action="append",
        metavar="MODULE",
    )
    flag(g, "max-concurrent-runs", "runs this replica executes at once (default 64)", type=int)
    flag(g, "lease-ttl", "seconds a run lease lasts unrenewed (default 5)", type=float)
    flag(g, "shutdown-grace", "seconds in-flight runs get on stop (default 10)", type=float)
    flag(
        g,
        "run-retention",
        "seconds a finished run is kept after its last change (default 7 days; 0 keeps all)",
        type=float,
    )
    flag(
        g,
        "max-events-per-run",
        "events kept per run; older ones are trimmed (default 100000)",
        type=int,
    )
    flag(
        g,
        "example-runs",
        "start the sample runs of the --workflows modules (their EXAMPLE_RUNS) when the "
        "store is empty (default off; scripts/serve.sh turns it on)",
        action=argparse.BooleanOptionalAction,
        default=None,
    )
    flag(
        g,
        "reflection",
        "serve gRPC reflection (default on)",
        action=argparse.BooleanOptionalAction,
        default=None,
    )

    g = serve.add_argument_group("limits and keepalive (seconds)")
    flag(g, "max-message-bytes", "largest request or response (default 4 MiB)", type=int)
    flag(g, "max-concurrent-streams", "open RPCs per connection (default 1000)", type=int)
    flag(g, "max-concurrent-rpcs", "RPCs in flight server-wide (default: no cap)", type=int)
    flag(g, "keepalive-time", "ping an idle connection after (default 30)", type=float)
    flag(g, "keepalive-timeout", "drop it when a ping is unanswered for (default 10)", type=float)
    flag(
        g,
        "keepalive-min-ping-interval",
        "reject clients pinging more often than (default 5)",
        type=float,
    )
    flag(g, "max-connection-age", "recycle connections after (default 1800)", type=float)
    flag(g, "max-connection-age-grace", "time calls get to finish then (default 60)", type=float)

    g = serve.add_argument_group("security")
    flag(
        g,
        "auth-token",
        "accept this bearer token, with every scope (repeatable)",
        dest="auth_tokens",
        action="append",
        metavar="TOKEN",
    )
    flag(g, "auth-token-file", "file of tokens and their scopes (see stepline.server.auth)")
    flag(g, "tls-cert", "PEM server certificate (chain); enables TLS")
    flag(g, "tls-key", "PEM private key of --tls-cert")
    flag(g, "tls-client-ca", "PEM CA bundle client certificates are checked against")
    flag(
        g,
        "tls-require-client-auth",
        "refuse clients without a valid certificate (mutual TLS)",
        action=argparse.BooleanOptionalAction,
        default=None,
    )

    g = serve.add_argument_group("HTTP/JSON API (docs/http.md)")
    flag(
        g,
        "http-port",
        "also serve the API as HTTP/JSON on this port of --host (0 picks one; default off)",
        type=int,
    )
    flag(
        g,
        "http-cors-origin",
        "browser origin allowed to call the HTTP API, e.g. https://ops.example.com, or * "
        "(repeatable; default: none, CORS off)",
        dest="http_cors_origins",
        action="append",
        metavar="ORIGIN",
    )

    g = serve.add_argument_group("observability")
    flag(g, "log-level", "DEBUG, INFO, WARNING or ERROR (default INFO)")
    flag(g, "log-format", "console or json (default console)", choices=["console", "json"])
    flag(g, "metrics-port", "serve Prometheus metrics on this port (0 picks one)", type=int)
    flag(g, "metrics-host", "address of the metrics endpoint (default: --host)")
    flag(
        g,
        "trace-exporter",
        "where OpenTelemetry spans go (default none)",
        choices=["none", "console", "otlp"],
    )
    flag(g, "otlp-endpoint", "OTLP/gRPC collector address (default: OTEL_EXPORTER_OTLP_*)")
    flag(g, "service-name", "service.name of the spans (default stepline)")
    flag(g, "health-probe-interval", "seconds between store health probes (default 2)", type=float)
    flag(
        g,
        "trace-url-template",
        "the console links trace ids here: an http(s) URL with {trace_id} in it",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepline",
        description="Durable workflows over gRPC: a server (`serve`) and a client.",
        epilog="Client exit status: 0 done, 1 run failed or canceled, 2 bad usage, 3 call failed.",
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    _serve_parser(sub)
    client_cli.add_commands(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return Settings(**given)


def describe(error: ValidationError) -> str:
    """One line per problem, naming the flag and variable to fix; never echoes a token."""
    lines = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        loc = problem.get("loc") or ()
        if not loc:
            lines.append(f"  {message}")
            continue
        name = str(loc[0])
        flag = _FLAGS.get(name, name.replace("_", "-"))
        where = f"--{flag} / STEPLINE_{name.upper()}"
        value = problem.get("input")
        shown = (
            f" (got {value!r})"
            if name not in _SECRET_FIELDS and isinstance(value, str | int | float)
            else ""
        )
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


async def _serve(settings: Settings) -> int:
    from .app import Server  # the server stack loads only for `serve`

    try:
        server = await Server.start(settings)
    except ConfigError as err:
        log.error("stepline: invalid settings: %s", err)
        return 2
    except OSError as err:
        log.error("stepline could not start: %s", err)
        return 1
    durable = (
        "redis (durable)"
        if settings.redis_url
        else "in-memory (NOT durable: runs are lost on exit)"
    )
    extras = [
        "tls" + (" (client certificates required)" if settings.tls_require_client_auth else "")
        if settings.tls
        else "plaintext",
        "bearer-token auth" if server.tokens is not None else "no auth",
    ]
    if server.http_url is not None:
        extras.append(f"HTTP/JSON API on {server.http_url} (console: {server.http_url}/)")
    if server.metrics_port is not None:
        host = settings.metrics_host or settings.host
        extras.append(f"metrics on http://{host}:{server.metrics_port}/metrics")
    if settings.trace_exporter != "none":
        extras.append(f"traces to {settings.trace_exporter}")
    log.info(
        "stepline serving %s on %s (%s); store: %s; workflows: %s",
        "stepline.v1.WorkflowService",
        server.target,
        ", ".join(extras),
        durable,
        ", ".join(w.id for w in server.registry) or "none",
    )
    if not settings.redis_url:
        log.warning("no --redis-url given: using the in-memory store; runs are not durable")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight runs")
    await server.stop()
    log.info("stopped")
    return 0


def _tune_gc() -> None:
    """Everything loaded so far (modules, workflows, compiled schemas) lives as long as the
    process: move it out of the collector's sight, and collect young objects less often. A
    server allocates many short-lived objects per request, and the default thresholds make
    the collector re-scan the whole long-lived heap far more often than it finds garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD, 20, 20)


def serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ValidationError as err:
        print(f"stepline: invalid settings:\n{describe(err)}", file=sys.stderr)
        return 2
    except SettingsError as err:  # an environment variable that is not valid JSON
        print(f"stepline: invalid settings: {err}", file=sys.stderr)
        return 2
    logs.configure(
        level=settings.log_level,
        format=settings.log_format,
        secrets=auth.settings_secrets(settings),
    )
    # `--workflows mypkg.flows` names a module beside the user, as `python -m` would find it;
    # the console script's sys.path starts at its own bin directory instead.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `stepline`: what it can do
        parser.print_help()
        return 0
    if args.command == "serve":
        return serve(args)
    return client_cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
