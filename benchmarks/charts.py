"""The charts of "How cost grows" (``growth.py``): one PNG per sweep, streamctl beside the
baseline measured in the same run, each point the median of the repetitions with its min..max
as an error bar. Needs matplotlib (``pip install -e '.[bench]'``; ``scripts/bench`` installs it).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PANELS: dict[str, list[tuple[str, str, str]]] = {
    "runs": [
        ("lag p99 (ms)", "lag_ms.p99", "log"),
        ("slowest run's rate (% of 20 tok/s)", "rate_min_pct_of_nominal", "linear"),
        ("server CPU per token (µs)", "cpu_us_per_event", "linear"),
        ("memory per run (KiB)", "rss_kib_per_unit", "linear"),
    ],
    "fanout": [
        ("lag p99 (ms)", "lag_ms.p99", "log"),
        ("median subscriber's rate (% of 50 ev/s)", "rate_pct_of_nominal", "linear"),
        ("server CPU per delivery (µs)", "cpu_us_per_event", "linear"),
        ("memory per subscriber (KiB)", "rss_kib_per_unit", "linear"),
    ],
    "idle": [
        ("memory per stream (KiB)", "rss_kib_per_unit", "linear"),
        ("server CPU (% of a core)", "server_cpu_pct", "linear"),
    ],
}
TITLES = {
    "runs": "Concurrent runs x 20 tokens/s, one subscriber each",
    "fanout": "One run at 50 events/s to N subscribers",
    "idle": "Idle open streams",
}
TARGETS: dict[tuple[str, str], float] = {
    ("runs", "lag_ms.p99"): 50,
    ("runs", "rate_min_pct_of_nominal"): 95,
    ("runs", "rss_kib_per_unit"): 100,
    ("fanout", "lag_ms.p99"): 50,
    ("fanout", "rate_pct_of_nominal"): 95,
    ("idle", "rss_kib_per_unit"): 20,
}


def value(result: dict[str, Any], key: str) -> float:
    found: Any = result
    if "error" in result:
        return float("nan")
    if result.get("stopped_at_time_cap") and not key.startswith("rate"):
        # Its runs never all went (the window fell back to 1 s): only its rate means anything.
        return float("nan")
    for part in key.split("."):
        found = found.get(part, float("nan")) if isinstance(found, dict) else float("nan")
    return float(found)


def draw(growth: dict[str, Any], repetitions: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``growth-<sweep>.png`` into ``out``; the paths written."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sweep, panels in PANELS.items():
        sizes = list(growth.get(sweep, {}))
        if not sizes:
            continue
        xs = [int(n) for n in sizes]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
        for ax, (label, key, scale) in zip(axes, panels, strict=True):
            for kind, style in (("streamctl", "o-"), ("baseline", "s--")):
                ys = [value(growth[sweep][n][kind], key) for n in sizes]
                spans = [
                    [value(r[sweep][n][kind], key) for r in repetitions if n in r.get(sweep, {})]
                    for n in sizes
                ]
                low = [y - min(s, default=y) for y, s in zip(ys, spans, strict=True)]
                high = [max(s, default=y) - y for y, s in zip(ys, spans, strict=True)]
                ax.errorbar(xs, ys, yerr=[low, high], fmt=style, capsize=3, label=kind)
            target = TARGETS.get((sweep, key))
            if target is not None:
                ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="target")
            ax.set_xscale("log")
            ax.set_yscale(scale)
            ax.set_xticks(xs, [f"{x:,}" for x in xs])
            ax.tick_params(axis="x", which="minor", labelbottom=False)
            ax.set_title(label, fontsize=10)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(TITLES[sweep])
        fig.tight_layout()
        path = out / f"growth-{sweep}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
