"""Where a profiled server spent its time: the top frames of a py-spy raw profile.

    python bench/run.py --profile --profile-format raw --workloads W9 --w9-sizes 10000 --no-mastra
    python bench/profile_top.py .cache/bench-profiles/stepline-rep1.txt --top 25

A raw profile has one line per distinct stack, `frame;frame;...;frame count`, outermost frame
first. "self" is the share of samples whose innermost frame is this one; "total" the share
whose stack holds it anywhere (counted once per stack); "self by file" adds up the self
shares of each source file.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shares:
    samples: int
    own: Counter[str]  # samples with the frame innermost
    within: Counter[str]  # samples with the frame anywhere on the stack
    own_files: Counter[str]  # `own` added up per source file


def read_raw(path: Path) -> Shares:
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    own_files: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        own_files[source_file(frames[-1])] += count
        for frame in set(frames):
            within[frame] += count
    return Shares(samples, own, within, own_files)


def source_file(frame: str) -> str:
    """`name (path/to/file.py:12)` → `path/to/file.py` (site-packages and the repo trimmed)."""
    _, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rpartition(":")[0] or frame
    for marker in ("site-packages/", "/server/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def report(shares: Shares, top: int) -> str:
    lines = [f"{shares.samples} samples"]
    views = (("self", shares.own), ("total", shares.within), ("self by file", shares.own_files))
    for title, counter in views:
        lines.append(f"-- top {top} by {title} --")
        for frame, count in counter.most_common(top):
            lines.append(f"{100.0 * count / max(1, shares.samples):5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="a py-spy --format raw file")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    print(report(read_raw(args.profile), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
