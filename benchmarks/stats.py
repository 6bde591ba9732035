"""Statistics: percentiles of samples, and the median (with its spread) of repeated runs."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (linear interpolation); NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist_ms(values: Sequence[float], ps: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles of durations given in seconds, as milliseconds."""
    out = {f"p{p:g}": round(pct(values, p) * 1000, 3) for p in ps}
    out["n"] = len(values)
    if values:
        out["max"] = round(max(values) * 1000, 3)
    return out


def median_of(results: Sequence[Any]) -> Any:
    """The element-wise median of ``results``: the same structure from N repetitions of one
    measurement. Numbers become their median (NaN ignored), dicts are merged key by key (the
    first repetition's keys), a flag is true if it was in any repetition (a run stopped at a
    time cap, a memory bound exceeded), anything else is the first repetition's."""
    first = results[0]
    if isinstance(first, bool):
        return any(r is True for r in results)
    if isinstance(first, int | float):
        values = [r for r in results if isinstance(r, int | float) and r == r]
        if not values:
            return float("nan")
        middle = statistics.median(values)
        if all(isinstance(v, int) for v in values) and float(middle).is_integer():
            return int(middle)  # a count stays a count
        return round(middle, 4) if isinstance(middle, float) else middle
    if isinstance(first, dict):
        return {
            key: median_of([r[key] for r in results if isinstance(r, dict) and key in r])
            for key in first
        }
    return first


def spread(values: Iterable[float]) -> tuple[float, float]:
    """(min, max) of the values that are numbers; NaNs when there are none."""
    real = [v for v in values if v == v]
    if not real:
        return float("nan"), float("nan")
    return min(real), max(real)
