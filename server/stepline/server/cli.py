"""The `stepline` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from .app import Server
from .settings import Settings

log = logging.getLogger("stepline")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepline", description="Durable workflows over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a Stepline server replica")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 50051; 0 picks one)")
    serve.add_argument("--redis-url", help="Redis URL; without it runs are kept in memory")
    serve.add_argument("--redis-prefix", help="prefix of every Redis key (default stepline)")
    serve.add_argument(
        "--workflows",
        action="append",
        metavar="MODULE",
        help="module whose committed workflows to serve (repeatable; default stepline_examples)",
    )
    serve.add_argument("--max-concurrent-runs", type=int, help="runs executed at once")
    serve.add_argument("--lease-ttl", type=float, help="seconds a run lease lasts unrenewed")
    serve.add_argument("--shutdown-grace", type=float, help="seconds in-flight runs get on stop")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    return Settings(**given)


async def _serve(settings: Settings) -> None:
    server = await Server.start(settings)
    durable = (
        "redis (durable)"
        if settings.redis_url
        else "in-memory (NOT durable: runs are lost on exit)"
    )
    log.info(
        "stepline serving %s on %s; store: %s; workflows: %s",
        "stepline.v1.WorkflowService",
        server.target,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as err:
        print(f"stepline: invalid settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
