"""The one command: `python -m reliability {load,soak,chaos,all} [scale flags]`.

Runs the chosen suites one after another (each with its own Redis and replicas), rewrites
their sections of RELIABILITY.md, and exits 1 when any check failed. Everything it starts is
stopped by pid before it returns; every suite is bounded in time.

    python -m reliability all                     # full scale: 20,000 runs; 10 min; ~2.5 min
    python -m reliability load --runs 2000        # one suite, smaller
    python -m reliability all --quick             # the CI sizes, in about a minute or two
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from . import report
from .scenarios import ChaosConfig, LoadConfig, SoakConfig, run_chaos, run_load, run_soak

REPO_ROOT = Path(__file__).resolve().parent.parent

# The sizes of the quick variants (tests/test_reliability_quick.py and --quick).
QUICK_LOAD = LoadConfig(runs=500, callers=40, budget=120)
QUICK_SOAK = SoakConfig(seconds=20, rate=25, callers=12, sample_every=1.0, retention=5, budget=60)
QUICK_CHAOS = ChaosConfig(
    seconds=24,
    callers=30,
    kill_every=12,
    max_down=0.5,
    pause_every=16,
    pause_ms=1500,
    redis_restarts=1,
    budget=60,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reliability",
        description="Load, soak and chaos suites against real replicas and Redis; writes "
        "RELIABILITY.md.",
    )
    p.add_argument("suite", choices=["load", "soak", "chaos", "all"])
    p.add_argument("--quick", action="store_true", help="the CI sizes (seconds, not minutes)")
    p.add_argument("--report", type=Path, default=REPO_ROOT / "RELIABILITY.md")
    p.add_argument("--workdir", type=Path, help="keep Redis data and replica logs here")
    p.add_argument("--replicas", type=int, default=2)

    load = p.add_argument_group("load")
    load.add_argument("--runs", type=int, help="runs to start (default 20000)")
    load.add_argument("--callers", type=int, help="concurrent callers (default 200)")
    load.add_argument("--load-delay-ms", type=int, help="each step sleeps this long (default 0)")

    soak = p.add_argument_group("soak")
    soak.add_argument("--soak-seconds", type=float, help="duration (default 600)")
    soak.add_argument("--soak-rate", type=float, help="operations per second (default 40)")
    soak.add_argument("--soak-callers", type=int, help="concurrent callers (default 32)")
    soak.add_argument("--sample-every", type=float, help="seconds between samples (default 5)")
    soak.add_argument(
        "--retention",
        type=float,
        help="--run-retention passed to the replicas, when they have it (default 60)",
    )

    chaos = p.add_argument_group("chaos")
    chaos.add_argument("--chaos-seconds", type=float, help="traffic and faults (default 150)")
    chaos.add_argument("--chaos-callers", type=int, help="concurrent callers (default 100)")
    chaos.add_argument("--kill-every", type=float, help="seconds between replica kills (5)")
    chaos.add_argument("--pause-every", type=float, help="seconds between Redis pauses (30)")
    chaos.add_argument("--pause-ms", type=int, help="length of a Redis pause (3000)")
    chaos.add_argument("--redis-restarts", type=int, help="Redis restarts (2)")
    return p


def _set(config: object, **values: object) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(config, name, value)


def configs(args: argparse.Namespace) -> tuple[LoadConfig, SoakConfig, ChaosConfig]:
    from dataclasses import replace

    load = replace(QUICK_LOAD) if args.quick else LoadConfig()
    soak = replace(QUICK_SOAK) if args.quick else SoakConfig()
    chaos = replace(QUICK_CHAOS) if args.quick else ChaosConfig()
    for config in (load, soak, chaos):
        config.replicas = args.replicas
    _set(load, runs=args.runs, callers=args.callers, delay_ms=args.load_delay_ms)
    _set(
        soak,
        seconds=args.soak_seconds,
        rate=args.soak_rate,
        callers=args.soak_callers,
        sample_every=args.sample_every,
        retention=args.retention,
    )
    _set(
        chaos,
        seconds=args.chaos_seconds,
        callers=args.chaos_callers,
        kill_every=args.kill_every,
        pause_every=args.pause_every,
        pause_ms=args.pause_ms,
        redis_restarts=args.redis_restarts,
    )
    return load, soak, chaos


async def run(args: argparse.Namespace, command: str) -> bool:
    load, soak, chaos = configs(args)
    suites = ["load", "soak", "chaos"] if args.suite == "all" else [args.suite]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stepline-reliability-"))
    all_held = True
    try:
        for suite in suites:
            print(f"reliability: {suite} …", file=sys.stderr, flush=True)
            if suite == "load":
                loaded = await run_load(load, workdir)
                held = loaded.common.verdict.clean
                section = report.render_load(loaded, command)
            elif suite == "soak":
                soaked = await run_soak(soak, workdir)
                held = soaked.common.verdict.clean and soaked.bounded
                held = held and not soaked.watch_problems
                section = report.render_soak(soaked, command)
            else:
                chaotic = await run_chaos(chaos, workdir)
                held = chaotic.common.verdict.clean
                section = report.render_chaos(chaotic, command)
            report.write(args.report, {suite: section})
            print(f"reliability: {suite} {'held' if held else 'FAILED'}", file=sys.stderr)
            all_held = all_held and held
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"reliability: wrote {args.report}", file=sys.stderr)
    return all_held


def main(argv: list[str] | None = None) -> int:
    if shutil.which("redis-server") is None:
        print("reliability: redis-server is not on PATH", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
    command = shlex.join(["python", "-m", "reliability", *(argv or sys.argv[1:])])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return 0 if asyncio.run(run(args, command)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
