"""Stop latency of a real ``streamctl serve`` (a benchmark, not a test).

For every stop, a run of the demo agent is started and streamed (``POST /v1/runs/stream``) by a
reader thread with a connection of its own. Once the stream shows the run mid-token (a few
``message_chunk`` events arrived) or mid-tool (``tool_start`` arrived, the tool takes a minute), the
main thread sends ``POST /v1/runs/{id}/stop`` on another connection and measures:

* stop -> response: the server answers once the run's task has exited (docs/architecture.md,
  invariant 7);
* stop -> done: the reader thread has parsed the run's ``done`` event off its stream.

Prints a table (milliseconds: p50 / p90 / p99 / max) and, with ``--json PATH``, writes the figures
and raw samples. ``--repeat N`` does it all N times, each on a fresh server: the table then shows
the median of each figure and its min..max.

    scripts/bench-stop                          # 500 stops mid-token and 500 mid-tool
    scripts/bench-stop --stops 50 --repeat 3 --json stop.json
Every stop must answer 200 with status ``cancelled`` and its stream must end with exactly that
``done``; anything else is counted and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from benchmarks.report import Row, combine, render
from benchmarks.servers import ROOT, Server, run_async
from benchmarks.stats import median_of

INPUT = {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]}
SCENARIOS = ("mid-token", "mid-tool")


@dataclass
class Sample:
    scenario: str
    stop_response_ms: float
    stop_to_done_ms: float


class Reader(threading.Thread):
    """Starts one run with ``POST /v1/runs/stream`` and reads the stream to its end."""

    def __init__(self, client: httpx.Client, body: dict[str, Any], scenario: str, chunks: int):
        super().__init__(daemon=True)
        self.client = client
        self.body = body
        self.scenario = scenario
        self.chunks = chunks
        self.run_id = ""
        self.ready = threading.Event()
        """Set when the run is where the scenario stops it (or the stream failed)."""
        self.done_at: float | None = None
        self.done: dict[str, Any] | None = None
        self.dones = 0
        self.error: str | None = None

    def run(self) -> None:
        seen_chunks = 0
        try:
            with connect_sse(self.client, "POST", "/v1/runs/stream", json=self.body) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    raise RuntimeError(
                        f"start: {source.response.status_code} {source.response.text}"
                    )
                self.run_id = source.response.headers["x-run-id"]
                for sse in source.iter_sse():
                    if sse.event == "done":
                        self.done_at = time.perf_counter()
                        self.done = json.loads(sse.data)
                        self.dones += 1
                    elif self.ready.is_set():
                        continue
                    elif sse.event == "message_chunk":
                        seen_chunks += 1
                        if self.scenario == "mid-token" and seen_chunks >= self.chunks:
                            self.ready.set()
                    elif sse.event == "tool_start" and self.scenario == "mid-tool":
                        self.ready.set()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()


def demo_config(scenario: str, tokens: int) -> dict[str, Any]:
    if scenario == "mid-token":
        return {"tokens": tokens, "delay_ms": 5, "tool": False}
    return {"tokens": 5, "delay_ms": 1, "tool": True, "tool_ms": 60_000}


def start_background(url: str, n: int) -> list[tuple[httpx.Client, Reader]]:
    """``n`` slow runs, each streamed by its own client, until ``stop_background``."""
    readers = []
    for _ in range(n):
        client = httpx.Client(base_url=url, timeout=httpx.Timeout(30.0))
        body = {"input": INPUT, "config": {"demo": {"tokens": 4000, "delay_ms": 50, "tool": False}}}
        reader = Reader(client, body, "mid-token", 1)
        reader.start()
        readers.append((client, reader))
    for _, reader in readers:
        if not reader.ready.wait(30.0) or reader.error is not None:
            raise RuntimeError(f"background run did not start: {reader.error}")
    return readers


def stop_background(control: httpx.Client, readers: list[tuple[httpx.Client, Reader]]) -> list[str]:
    failures = []
    for _, reader in readers:
        control.post(f"/v1/runs/{reader.run_id}/stop")
    for client, reader in readers:
        reader.join(30.0)
        if reader.dones != 1 or reader.error is not None:
            failures.append(f"background run {reader.run_id}: {reader.dones} done, {reader.error}")
        client.close()
    return failures


def one_stop(
    control: httpx.Client, stream: httpx.Client, scenario: str, tokens: int, chunks: int
) -> Sample:
    body = {"input": INPUT, "config": {"demo": demo_config(scenario, tokens)}}
    reader = Reader(stream, body, scenario, chunks)
    reader.start()
    if not reader.ready.wait(30.0) or reader.error is not None or not reader.run_id:
        raise RuntimeError(f"{scenario}: the run never got there: {reader.error}")
    sent = time.perf_counter()
    response = control.post(f"/v1/runs/{reader.run_id}/stop")
    answered = time.perf_counter()
    reader.join(30.0)
    problems = []
    if response.status_code != 200 or response.json().get("status") != "cancelled":
        problems.append(f"stop answered {response.status_code} {response.text[:200]}")
    if reader.is_alive() or reader.error is not None:
        problems.append(f"stream did not end cleanly: {reader.error}")
    if reader.dones != 1 or reader.done is None or reader.done["status"] != "cancelled":
        problems.append(f"stream got {reader.dones} done events, last {reader.done}")
    if problems or reader.done_at is None:
        raise RuntimeError(f"{scenario} run {reader.run_id}: " + "; ".join(problems))
    return Sample(scenario, (answered - sent) * 1e3, (reader.done_at - sent) * 1e3)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def start_server() -> Server:
    # Hundreds of runs a minute from one principal: lift the per-principal rate cap (an unknown
    # STREAMCTL_* variable is ignored by versions without it).
    server = Server("streamctl", ROOT, env={"STREAMCTL_RUNS_PER_MINUTE": "1000000"})
    server.start()
    try:
        run_async(server.wait_ready())
    except BaseException:
        server.stop(signal.SIGTERM)
        raise
    return server


def one_pass(args: argparse.Namespace) -> tuple[list[Sample], list[str], float]:
    """Every stop of one repetition, on a fresh server: (samples, failures, seconds)."""
    samples: list[Sample] = []
    failures: list[str] = []
    server = start_server()
    url = f"http://127.0.0.1:{server.port}"
    began = time.monotonic()
    try:
        timeout = httpx.Timeout(30.0)
        with (
            httpx.Client(base_url=url, timeout=timeout) as control,
            httpx.Client(base_url=url, timeout=timeout) as stream,
        ):
            background = start_background(url, args.background)
            # Alternate the scenarios so drift (a warmer cache, a fuller WAL) hits both alike.
            for i in range(args.warmup + args.stops):
                for scenario in SCENARIOS:
                    try:
                        sample = one_stop(control, stream, scenario, args.tokens, args.chunks)
                    except RuntimeError as exc:
                        failures.append(str(exc))
                        continue
                    if i >= args.warmup:
                        samples.append(sample)
            failures += stop_background(control, background)
    finally:
        server.stop(signal.SIGTERM)
    return samples, failures, time.monotonic() - began


MEASURES = (("stop -> response", "stop_response_ms"), ("stop -> done", "stop_to_done_ms"))


def figures(samples: list[Sample]) -> dict[str, Any]:
    """scenario -> measure -> {n, p50, p90, p99, max} (ms)."""
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        for measure, attr in MEASURES:
            values = [getattr(s, attr) for s in samples if s.scenario == scenario]
            if values:
                out.setdefault(scenario, {})[measure] = {
                    "n": len(values),
                    **{f"p{p}": round(percentile(values, p), 2) for p in (50, 90, 99)},
                    "max": round(max(values), 2),
                }
    return out


def rows(result: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"{scenario}, {measure} p50 / p90 / p99 / max (ms)",
            (f["p50"], f["p90"], f["p99"], f["max"]),
        )
        for scenario, measures in result.items()
        for measure, f in measures.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-stop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--stops", type=int, default=500, help="stops per scenario (default 500)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed stops per scenario first")
    parser.add_argument(
        "--tokens",
        type=int,
        default=2000,
        help="words of a mid-token run (default 2000: 10 s at 5 ms, far longer than any stop;"
        " the demo agent builds its whole plan before its first word, ~0.4 s per 100k words)",
    )
    parser.add_argument(
        "--chunks", type=int, default=3, help="message_chunks before a mid-token stop"
    )
    parser.add_argument(
        "--background",
        type=int,
        default=0,
        help="other runs streaming meanwhile (20 events/s each, each read by a client)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions, each on a new server")
    parser.add_argument("--json", type=Path, default=None, help="write results and samples here")
    args = parser.parse_args(argv)

    passes = [one_pass(args) for _ in range(max(1, args.repeat))]
    per_pass = [figures(samples) for samples, _, _ in passes]
    result = median_of(per_pass)
    table = combine(rows(result), [rows(f) for f in per_pass])
    failures = [f for _, fails, _ in passes for f in fails]
    elapsed = sum(seconds for _, _, seconds in passes)
    stops = sum(len(samples) for samples, _, _ in passes)

    print(
        f"stop latency in ms: {stops} stops in {elapsed:.1f} s ({len(passes)} repetition(s)),"
        f" {args.background} other runs streaming; Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, server and client on one machine (loopback TCP)"
    )
    print(render(table))
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)

    if args.json is not None:
        report = {
            "command": ["scripts/bench-stop", *(sys.argv[1:] if argv is None else argv)],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "elapsed_s": round(elapsed, 2),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": result,
            "repetitions": per_pass,
            "table": table,
            "failures": failures,
            "samples": [
                {
                    scenario: {
                        attr: [getattr(s, attr) for s in samples if s.scenario == scenario]
                        for _, attr in MEASURES
                    }
                    for scenario in SCENARIOS
                }
                for samples, _, _ in passes
            ],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
