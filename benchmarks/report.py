"""The table every benchmark prints: streamctl against a baseline measured in the same run.

A measurement module turns its result into ``Row``s. With N repetitions, the table shows the
rows of the element-wise median result, each value with the min..max of that row over the
repetitions, and the ratio as the median of the per-repetition ratios (each repetition measures
its own baseline, so a ratio is only taken within one repetition).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import spread

Value = int | float | str | tuple[float, ...] | None
"""A cell: a number, a few numbers shown as ``a / b`` (e.g. p50 / p99), a word, or nothing."""


@dataclass
class Row:
    measurement: str
    streamctl: Value
    baseline: Value = None
    target: str = ""
    met: bool | None = None
    ratio: bool = True
    """Whether streamctl ÷ baseline means something for this row."""

    def ratio_value(self) -> float | None:
        ours, base = self.streamctl, self.baseline
        if self.ratio and isinstance(ours, int | float) and isinstance(base, int | float) and base:
            return ours / base
        return None


def _spread_of(values: Sequence[Value]) -> Value:
    """(min, max) of one cell over the repetitions, as a pair per number in the cell."""
    if all(isinstance(v, int | float) for v in values):
        return spread(float(v) for v in values if isinstance(v, int | float))
    if all(isinstance(v, tuple) for v in values):
        tuples = [v for v in values if isinstance(v, tuple)]
        lows, highs = zip(*(spread(column) for column in zip(*tuples, strict=True)), strict=True)
        return (*lows, *highs)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def combine(median_rows: list[Row], repetitions: list[list[Row]]) -> list[dict[str, Any]]:
    """The table: the median's rows, with spreads and per-repetition ratios when N > 1."""
    out: list[dict[str, Any]] = []
    for i, row in enumerate(median_rows):
        same = [rows[i] for rows in repetitions if i < len(rows)]
        ratios = [r for r in (s.ratio_value() for s in same) if r is not None]
        cell: dict[str, Any] = {
            "measurement": row.measurement,
            "streamctl": row.streamctl,
            "baseline": row.baseline,
            "ratio": _round(statistics.median(ratios) if ratios else row.ratio_value()),
            "target": row.target,
            "met": row.met,
            "repetitions": len(same),
        }
        if len(same) > 1:
            cell["streamctl_spread"] = _spread_of([s.streamctl for s in same])
            cell["baseline_spread"] = _spread_of([s.baseline for s in same])
            cell["ratio_spread"] = tuple(map(_round, spread(ratios))) if ratios else None
        out.append(cell)
    return out


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return " / ".join(fmt(v, digits) for v in value)
    if value != value:  # NaN
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _fmt_spread(value: Any) -> str:
    """``lo..hi`` for a pair, ``lo1..hi1 / lo2..hi2`` for the pairs of a multi-number cell."""
    if not isinstance(value, tuple | list) or not value:
        return "-"
    half = len(value) // 2
    return " / ".join(
        f"{fmt(lo)}..{fmt(hi)}" for lo, hi in zip(value[:half], value[half:], strict=True)
    )


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table; min..max columns only when some row has more than one repetition."""
    spreads = any(r.get("repetitions", 1) > 1 for r in rows)
    head = ["measurement", "streamctl"]
    head += ["min..max", "baseline", "min..max"] if spreads else ["baseline"]
    head += ["ratio", "target", "met"]
    body = []
    for r in rows:
        cells = [r["measurement"], fmt(r["streamctl"])]
        if spreads:
            cells += [_fmt_spread(r.get("streamctl_spread")), fmt(r["baseline"])]
            cells += [_fmt_spread(r.get("baseline_spread"))]
        else:
            cells += [fmt(r["baseline"])]
        cells += [
            fmt(r["ratio"]),
            r["target"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        ]
        body.append(cells)
    # A column with nothing in any row (e.g. no baseline in this table) is left out.
    keep = [i for i in range(len(head)) if i < 2 or any(cells[i] != "-" for cells in body)]
    numeric = {head[i] for i in range(1, len(head) - 2)}  # right-aligned: values up to the ratio
    head = [head[i] for i in keep]
    body = [[cells[i] for i in keep] for cells in body]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for cells in body:
        padded = [
            c.rjust(w) if h in numeric else c.ljust(w)
            for h, c, w in zip(head, cells, widths, strict=True)
        ]
        lines.append("| " + " | ".join(padded) + " |")
    return "\n".join(lines)
