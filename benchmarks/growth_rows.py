"""The table rows of the growth sweeps (``growth.py``): each size judged against its target,
beside the baseline measured in the same run; a size that failed, as such."""

from __future__ import annotations

from typing import Any

from benchmarks.report import Row

KINDS = ("streamctl", "baseline")


def _failed(sweep: str, n: str, pair: dict[str, Any]) -> list[Row]:
    errors = [f"{kind}: {_cause(pair[kind]['error'])}" for kind in KINDS if "error" in pair[kind]]
    return [Row(f"{sweep} {int(n):,}: failed", "; ".join(errors)[:160])] if errors else []


def _cause(error: str) -> str:
    """The last line of an error (a server's traceback ends with its exception); whole if one."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1] if len(lines) > 1 else error


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for sweep in ("runs", "fanout", "idle"):
        for n, pair in result[sweep].items():
            out += _failed(sweep, n, pair)
    ok = {
        sweep: {n: p for n, p in result[sweep].items() if not _failed(sweep, n, p)}
        for sweep in ("runs", "fanout", "idle")
    }
    for n, pair in ok["runs"].items():
        sc, base = pair["streamctl"], pair["baseline"]
        label = f"{int(n):,} runs x 20 tok/s"
        out += [
            Row(f"{label}, lag p50 / p99 (ms)", _p(sc), _p(base), ratio=False),
            Row(
                f"{label}, rate (% of nominal, slowest run)",
                sc["rate_min_pct_of_nominal"],
                base["rate_min_pct_of_nominal"],
                "≥ 95",
                sc["rate_min_pct_of_nominal"] >= 95,
            ),
            Row(
                f"{label}, server CPU per token (µs)",
                sc["cpu_us_per_event"],
                base["cpu_us_per_event"],
            ),
            Row(
                f"{label}, memory per run (KiB)",
                sc["rss_kib_per_unit"],
                base["rss_kib_per_unit"],
                "≤ 100",
                sc["rss_kib_per_unit"] <= 100,
            ),
        ]
    for n, pair in ok["fanout"].items():
        sc, base = pair["streamctl"], pair["baseline"]
        label = f"1 run → {int(n):,} subs at 50 ev/s"
        out += [
            Row(
                f"{label}, lag p50 / p99 (ms)",
                _p(sc),
                _p(base),
                "p99 ≤ 50",
                sc["lag_ms"]["p99"] <= 50,
                ratio=False,
            ),
            Row(
                f"{label}, rate (% of nominal, median sub)",
                sc["rate_pct_of_nominal"],
                base["rate_pct_of_nominal"],
                "≥ 95",
                sc["rate_pct_of_nominal"] >= 95,
            ),
            Row(
                f"{label}, server CPU per delivery (µs)",
                sc["cpu_us_per_event"],
                base["cpu_us_per_event"],
            ),
        ]
    for n, pair in ok["idle"].items():
        sc, base = pair["streamctl"], pair["baseline"]
        label = f"{int(n):,} idle streams"
        ping = sc["ping_gap_ms"]
        out += [
            Row(
                f"{label}, memory per stream (KiB)",
                sc["rss_kib_per_unit"],
                base["rss_kib_per_unit"],
                "≤ 20",
                sc["rss_kib_per_unit"] <= 20,
            ),
            Row(
                f"{label}, ping gap p99 / max (ms); streams late",
                (ping.get("p99", float("nan")), ping.get("max", float("nan"))),
                None,
                "none late",
                sc["streams_with_a_late_ping"] == 0,
            ),
        ]
    return out


def _p(result: dict[str, Any]) -> tuple[float, float]:
    return (result["lag_ms"]["p50"], result["lag_ms"]["p99"])
