"""Writes or checks the Python lock: hashed requirements files in requirements/.

    python scripts/lock.py            # add what pyproject.toml asks for, keep every other pin
    python scripts/lock.py --upgrade  # move every pin to the newest version that fits
    python scripts/lock.py --check    # fail when pyproject.toml or a .in file and the lock disagree

The lock is four files, each resolved once for every platform with uv (`uv pip compile
--universal --generate-hashes`) and installed with `--require-hashes`:
  runtime.txt  what `stepline serve` needs (the project's dependencies and the `fast` extra)
  dev.txt      runtime.txt plus the `dev` dependency group (tests, linters, generators)
  build.txt    the wheel build backend, from build.in
  uv.txt       the installer itself, from uv.in (bootstrapped with pip)
runtime.txt and dev.txt must pin shared packages to the same versions; --check verifies it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
UV = ROOT / ".cache" / "uv" / "bin" / "uv"


@dataclass(frozen=True)
class LockFile:
    name: str
    inputs: tuple[str, ...]

    def command(self, uv: Path, output: Path, upgrade: bool) -> list[str]:
        args = [str(uv), "pip", "compile", *self.inputs, "--universal", "--python-version"]
        args += ["3.11", "--generate-hashes", "--quiet", "--output-file", str(output)]
        args += ["--custom-compile-command", "python scripts/lock.py"]
        return [*args, "--upgrade"] if upgrade else args


LOCKS = (
    LockFile("runtime.txt", ("pyproject.toml", "--extra", "fast")),
    LockFile("dev.txt", ("pyproject.toml", "--extra", "fast", "--group", "dev")),
    LockFile("build.txt", ("requirements/build.in",)),
    LockFile("uv.txt", ("requirements/uv.in",)),
)

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", re.MULTILINE)


def pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(text)}


def compile_into(directory: Path, upgrade: bool) -> None:
    for lock in LOCKS:
        target = directory / lock.name
        subprocess.run(lock.command(UV, target, upgrade), cwd=ROOT, check=True)


def sets_agree() -> bool:
    """runtime.txt and dev.txt pin every package they share to the same version."""
    runtime = pins((REQUIREMENTS / "runtime.txt").read_text())
    dev = pins((REQUIREMENTS / "dev.txt").read_text())
    problems = [
        f"{n}: runtime.txt {v}, dev.txt {dev[n]}" for n, v in runtime.items() if dev.get(n, v) != v
    ]
    for problem in problems:
        print(f"runtime and dev locks disagree: {problem}", file=sys.stderr)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail when the lock is stale")
    mode.add_argument("--upgrade", action="store_true", help="upgrade every pin")
    options = parser.parse_args()
    if not UV.exists():
        print(f"{UV} is missing: run `bash scripts/bootstrap.sh` first", file=sys.stderr)
        return 2
    if not options.check:
        compile_into(REQUIREMENTS, options.upgrade)
        return 0 if sets_agree() else 1
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for lock in LOCKS:  # start from the current pins: only a real change moves them
            shutil.copy(REQUIREMENTS / lock.name, work / lock.name)
        compile_into(work, upgrade=False)
        stale = False
        for lock in LOCKS:
            old = (REQUIREMENTS / lock.name).read_text().splitlines(keepends=True)
            new = (work / lock.name).read_text().splitlines(keepends=True)
            if old != new:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(old, new, f"requirements/{lock.name}", "resolved now")
                )
    if stale:
        print("the lock is stale: run `python scripts/lock.py`", file=sys.stderr)
    return 0 if sets_agree() and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
