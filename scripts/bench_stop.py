"""Stop latency of a real ``streamctl serve`` (a benchmark, not a test).

For every stop, a run of the demo agent is started and streamed (``POST /v1/runs/stream``) by a
reader thread with a connection of its own. Once the stream shows the run mid-token (a few
``message_chunk`` events arrived) or mid-tool (``tool_start`` arrived, the tool takes a minute), the
main thread sends ``POST /v1/runs/{id}/stop`` on another connection and measures:

* stop -> response: the server answers once the run's task has exited (DESIGN.md invariant 7);
* stop -> done: the reader thread has parsed the run's ``done`` event off its stream.

Prints a table (milliseconds) and, with ``--json PATH``, writes the figures and raw samples.
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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamctl", "serve", "--port", str(port),
        "--db", str(workdir / "bench.db"), "--log-level", "warning",
    ]  # fmt: skip
    # The log goes to a file: a pipe nobody reads would block the server once it is full.
    log = (workdir / "server.log").open("wb")
    # Hundreds of runs a minute from one principal: lift the per-principal rate cap (an unknown
    # STREAMCTL_* variable is ignored by versions without it).
    env = {**os.environ, "STREAMCTL_RUNS_PER_MINUTE": "1000000"}
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)  # still starting: nothing to wait on but time
    process.kill()
    raise RuntimeError("server did not become ready")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--json", type=Path, default=None, help="write results and samples here")
    args = parser.parse_args()

    samples: list[Sample] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp:
        process, url = start_server(Path(tmp))
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
            stop_server(process)
        elapsed = time.monotonic() - began

    rows = []
    for scenario in SCENARIOS:
        for measure, attr in (
            ("stop -> response", "stop_response_ms"),
            ("stop -> done", "stop_to_done_ms"),
        ):
            values = [getattr(s, attr) for s in samples if s.scenario == scenario]
            if not values:
                continue
            rows.append(
                {
                    "scenario": scenario,
                    "measure": measure,
                    "n": len(values),
                    **{f"p{p}": round(percentile(values, p), 2) for p in (50, 90, 99)},
                    "max": round(max(values), 2),
                }
            )

    print(
        f"stop latency in ms: {len(samples)} stops in {elapsed:.1f} s, {args.background} other"
        f" runs streaming; Python {platform.python_version()}, {os.cpu_count()} CPUs, server and"
        " client on one machine (loopback TCP)"
    )
    print(f"{'scenario':<10} {'measure':<17} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for row in rows:
        print(
            f"{row['scenario']:<10} {row['measure']:<17} {row['n']:>4} {row['p50']:>7.2f}"
            f" {row['p90']:>7.2f} {row['p99']:>7.2f} {row['max']:>7.2f}"
        )
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)

    if args.json is not None:
        report = {
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "elapsed_s": round(elapsed, 2),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": rows,
            "failures": failures,
            "samples": {
                scenario: {
                    "stop_response_ms": [
                        s.stop_response_ms for s in samples if s.scenario == scenario
                    ],
                    "stop_to_done_ms": [
                        s.stop_to_done_ms for s in samples if s.scenario == scenario
                    ],
                }
                for scenario in SCENARIOS
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
