"""Small statistics: percentiles of latencies, least-squares slopes of resource samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        return cls(
            count=len(seconds),
            p50=percentile(seconds, 50),
            p99=percentile(seconds, 99),
            max=max(seconds) if seconds else math.nan,
        )


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (units of y per unit of x); 0 for < 2 points."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


@dataclass(frozen=True)
class Series:
    """One sampled quantity over time: its range and trend."""

    name: str
    unit: str
    first: float
    last: float
    min: float
    max: float
    # Per minute, over the samples after warm-up.
    slope_per_min: float
    # Mean of the last quarter minus mean of the second quarter (after warm-up).
    late_growth: float

    @classmethod
    def of(cls, name: str, unit: str, times: Sequence[float], values: Sequence[float]) -> Series:
        if not values:
            return cls(name, unit, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0)
        start = len(values) // 4  # the first quarter is warm-up
        steady_t, steady_v = times[start:], values[start:]
        quarter = max(1, len(values) // 4)
        second = values[quarter : 2 * quarter] or values
        last = values[-quarter:]
        return cls(
            name=name,
            unit=unit,
            first=values[0],
            last=values[-1],
            min=min(values),
            max=max(values),
            slope_per_min=slope(steady_t, steady_v) * 60,
            late_growth=sum(last) / len(last) - sum(second) / len(second),
        )
