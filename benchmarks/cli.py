"""``python -m benchmarks`` (what ``scripts/bench`` runs): the measurements, a table, a JSON file.

    scripts/bench                     # the seven measurements, 2-3 minutes on 2 cores
    scripts/bench --quick             # smaller sizes, a smoke run (< 60 s)
    scripts/bench --only ttfe,stop    # a subset (names below; `all` adds the firehose)
    scripts/bench --repeat 3          # each measurement 3 times: the median, and min..max
    scripts/bench --json out.json     # where the results go (default ./bench-results.json)
    scripts/bench --only growth --charts docs/benchmarks  # how cost grows, and its PNG charts
    scripts/bench --only growth --growth-runs 1000 --growth-subscribers '' --growth-idle ''
    scripts/bench --only growth --redis-workers 2 --growth-runs 500,800 --growth-subscribers ''
    python -m benchmarks.spy fanout 1000   # where the server's time goes at one size (py-spy)
    scripts/bench --only throughput --profile server.prof   # + cProfile of the server
    scripts/bench --src /tmp/tree     # benchmark the streamctl package found in another checkout
    scripts/bench --only firehose --firehose-tokens 1000000 --rss-limit-mb 3072

The method of each measurement is the docstring of its module (``benchmarks/<name>.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import (
    charts,
    fanout,
    firehose,
    growth,
    growth_rows,
    idle,
    many,
    resume,
    stop,
    throughput,
    ttfe,
)
from benchmarks.baseline import serve_baseline
from benchmarks.options import Options, Sizes
from benchmarks.procfs import machine_busy, own_cpu
from benchmarks.report import Row, combine, render
from benchmarks.servers import ROOT, git_describe, raise_nofile, run_async
from benchmarks.stats import median_of

Measure = Callable[[Options], Awaitable[dict[str, Any]]]
Rows = Callable[[dict[str, Any]], list[Row]]
MEASUREMENTS: dict[str, tuple[Measure, Rows]] = {
    "ttfe": (ttfe.measure, ttfe.rows),
    "throughput": (throughput.measure, throughput.rows),
    "fanout": (fanout.measure, fanout.rows),
    "many": (many.measure, many.rows),
    "idle": (idle.measure, idle.rows),
    "stop": (stop.measure, stop.rows),
    "resume": (resume.measure, resume.rows),
    "growth": (growth.measure, growth_rows.rows),
    "firehose": (firehose.measure, firehose.rows),
}
DEFAULT = ("ttfe", "throughput", "fanout", "many", "idle", "stop", "resume", "growth")
"""What runs without ``--only``: the firehose (minutes, GBs of server memory today) is asked for."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def run_all(
    opts: Options, only: list[str], repeat: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every measurement ``repeat`` times; (results, table rows)."""
    results: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for name in only:
        measure, rows = MEASUREMENTS[name]
        t0 = time.perf_counter()
        repetitions = []
        for i in range(repeat):
            log(f"{name} …" if repeat == 1 else f"{name} {i + 1}/{repeat} …")
            repetitions.append(await measure(opts))
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name} done in {timings[name]} s")
        median = median_of(repetitions)
        results[name] = median
        if repeat > 1:
            results[name + "_repetitions"] = repetitions
        table += combine(rows(median), [rows(r) for r in repetitions])
    if opts.profile is not None:
        log("profile …")
        results["profile"] = await throughput.profile(opts, opts.profile)
    results["step_seconds"] = timings
    return results, table


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description="streamctl against a bare-SSE baseline, in one run"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run (< 60 s)")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}; or all",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (median)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--charts", type=Path, default=Path("bench-charts"), help="where the growth PNGs go"
    )
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose streamctl to run")
    parser.add_argument("--revision", help="what --src is, if not a git checkout (for the JSON)")
    parser.add_argument("--fanout-procs", type=int, default=1, help="client processes (fan-out)")
    parser.add_argument("--profile", type=Path, help="also cProfile the low throughput case")
    for sweep in ("runs", "subscribers", "idle"):
        parser.add_argument(
            f"--growth-{sweep}",
            type=_sizes,
            metavar="N,N,...",
            help=f"growth: the sizes of its {sweep} sweep (empty: skip it)",
        )
    parser.add_argument(
        "--redis-workers",
        type=int,
        default=0,
        metavar="N",
        help="growth: streamctl on a private redis-server with --workers N (default: SQLite)",
    )
    parser.add_argument("--firehose-tokens", type=int, help="tokens of the firehose run")
    parser.add_argument("--firehose-stops", type=int, help="firehose runs stopped (stop latency)")
    parser.add_argument("--firehose-seconds", type=float, help="bound on the firehose run's time")
    parser.add_argument(
        "--rss-limit-mb", type=int, default=3072, help="firehose: kill the server past this RSS"
    )
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        return args
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.only = list(MEASUREMENTS) if only == ["all"] else only
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.redis_workers:
        missing = redis_missing()
        if missing:
            parser.error(f"--redis-workers needs {missing}")
    return args


def redis_missing() -> str:
    """What a Redis sweep lacks here, found before minutes of SQLite sizes run ("" if nothing)."""
    if importlib.util.find_spec("redis") is None:
        return "the redis package: pip install -e '.[bench]' (scripts/bench installs it)"
    if shutil.which("redis-server") is None:
        return "redis-server on PATH (Debian: apt-get install redis-server)"
    return ""


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.replace("_", "").split(",") if n.strip())


def options(args: argparse.Namespace) -> Options:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.firehose_tokens is not None:
        sizes.firehose_tokens = args.firehose_tokens
    if args.firehose_stops is not None:
        sizes.firehose_stops = args.firehose_stops
    if args.firehose_seconds is not None:
        sizes.firehose_seconds = args.firehose_seconds
    for sweep in ("runs", "subscribers", "idle"):
        chosen = getattr(args, f"growth_{sweep}")
        if chosen is not None:
            setattr(sizes, f"growth_{sweep}", chosen)
    profile = None if args.profile is None else args.profile.resolve()
    return Options(
        args.src.resolve(),
        sizes,
        args.fanout_procs,
        profile,
        redis_workers=args.redis_workers,
        rss_limit_mb=args.rss_limit_mb,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.baseline_server:  # the old spelling of `python -m benchmarks.baseline`
        serve_baseline(args.port)
        return 0
    opts = options(args)
    nofile = raise_nofile(max(65536, 2 * opts.sizes.idle_connections + 1000))
    if nofile[0] < opts.sizes.idle_connections + 200:
        print(f"warning: RLIMIT_NOFILE is {nofile[0]}", file=sys.stderr)

    load0 = os.getloadavg()
    busy0, own0, wall0 = machine_busy(), own_cpu(), time.perf_counter()
    results, table = run_async(run_all(opts, args.only, args.repeat))
    wall = time.perf_counter() - wall0
    busy, own = machine_busy() - busy0, own_cpu() - own0
    cpus = os.cpu_count() or 1
    noise: dict[str, Any] = {
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": cpus,
        "wall_seconds": round(wall, 1),
        "machine_busy_cpu_s": round(busy, 1),
        "bench_cpu_s": round(own, 1),
        "other_processes_cpu_s": round(max(0.0, busy - own), 1),
        "other_processes_pct_of_machine": round(100 * max(0.0, busy - own) / (cpus * wall), 1),
    }
    ttfe_result = results.get("ttfe")
    if ttfe_result:
        noise["ttfe_p50_pass2_minus_pass1_ms"] = {
            k: round(ttfe_result[k + "_pass2"]["p50"] - ttfe_result[k]["p50"], 3)
            for k in ("streamctl", "baseline")
        }
    doc = {
        "command": " ".join(["scripts/bench", *(sys.argv[1:] if argv is None else argv)]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(opts.src),
        "revision": args.revision or git_describe(opts.src),
        "python": sys.version.split()[0],
        "quick": args.quick,
        "repeat": args.repeat,
        "sizes": asdict(opts.sizes),
        "noise": noise,
        "table": table,
        "results": results,
    }
    if "growth" in results:
        try:
            drawn = charts.draw(
                results["growth"],
                results.get("growth_repetitions", [results["growth"]]),
                args.charts,
            )
            doc["charts"] = [str(p) for p in drawn]
        except ImportError as exc:
            log(f"no charts ({exc}): pip install -e '.[bench]'")
    args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    print()
    print(render(table))
    print()
    print("ratio = streamctl ÷ baseline (firehose rows: with the firehose ÷ the server idle).")
    if args.repeat > 1:
        print(f"each value: the median of {args.repeat} runs; min..max: their spread.")
    print("Method: the docstring of each module in benchmarks/.")
    if ttfe_result:
        d = noise["ttfe_p50_pass2_minus_pass1_ms"]
        print(
            f"noise: TTFE p50 pass 2 - pass 1: streamctl {d['streamctl']:+.3f} ms, "
            f"baseline {d['baseline']:+.3f} ms."
        )
    print(
        f"noise: load average {' '.join(map(str, noise['loadavg_start']))} at start, "
        f"{' '.join(map(str, noise['loadavg_end']))} at end; other processes used "
        f"{noise['other_processes_cpu_s']} CPU-s of {cpus} x {wall:.0f} s "
        f"({noise['other_processes_pct_of_machine']} % of the machine)."
    )
    if "profile" in results:
        throughput.print_profile(results["profile"])
    print(f"\nrevision {doc['revision']}; {wall:.0f} s; results in {args.json}")
    return 0
