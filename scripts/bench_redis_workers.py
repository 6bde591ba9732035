"""``serve --backend redis --workers 2`` against ``--workers 1`` (a benchmark, not a test): run
with ``.venv/bin/python scripts/bench_redis_workers.py [--repeat N] [--json PATH]``; needs
``redis-server`` on PATH.

Events/s of many concurrent runs: ``--runs`` endless runs at zero delay, started at once with
``POST /v1/runs`` (one connection each, so the workers share them; no stream open: the store's
write path); the growth of the sum of the runs' ``last_seq`` over ``--seconds`` while every run is
running, and the CPU per event of the serving processes and of Redis meanwhile (then every run is
stopped). 1 and 2 workers alternate, ``--repeat`` times each, on one Redis emptied each time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
from bench_redis import ROOT, Processes, body, free_port, wait_ready

from benchmarks.procfs import tree_cpu
from streamctl.store import redis_keys as keys


def many_runs(url: str, redis_url: str, runs: int, tokens: int) -> list[str]:
    """Start ``runs`` zero-delay runs at once (one thread and connection each, so ``--workers``
    spreads them; no stream: the write path); their ids."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    payload = json.dumps(body(tokens=tokens, delay_ms=0, tool=False))

    def post(_: int) -> str:
        # http.client, not httpx: a fresh httpx.Client builds an SSL context (5 s of the bench's
        # CPU for 96 runs, on the cores the servers measured need).
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request("POST", "/v1/runs", payload, {"content-type": "application/json"})
            return str(json.loads(conn.getresponse().read())["run_id"])
        finally:
            conn.close()

    with ThreadPoolExecutor(runs) as pool:
        return list(pool.map(post, range(runs)))


def stored_events(store: redis.Redis, run_ids: list[str]) -> int:
    pipe = store.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(keys.meta(run_id), "last_seq")
    return sum(int(n or 0) for n in pipe.execute())


def until_ended(store: redis.Redis, runs: int) -> None:
    """Wait for no run left in ``{sc}:active`` (polling Redis costs the servers nothing)."""
    deadline = time.perf_counter() + 600
    while store.zcard(keys.ACTIVE):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{store.zcard(keys.ACTIVE)} of {runs} runs still active after 600 s")
        time.sleep(0.01)


def steady_rate(url: str, redis_url: str, runs: int, seconds: float, pids: list[int]) -> Any:
    """Events/s stored while ``runs`` endless zero-delay runs are all running (from 1 s after the
    last one started, for ``seconds``), and the CPU seconds of ``pids`` meanwhile; then every
    run is stopped. A window with every run live, not a burst's start and end: the number of runs
    each worker got does not weigh in, since each worker is busy throughout."""
    store = redis.Redis.from_url(redis_url)
    run_ids = many_runs(url, redis_url, runs, 1_000_000)
    time.sleep(1.0)
    cpu, first = [tree_cpu(pid) for pid in pids], stored_events(store, run_ids)
    began = time.perf_counter()
    time.sleep(seconds)
    last, took = stored_events(store, run_ids), time.perf_counter() - began
    cpu = [tree_cpu(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    with httpx.Client(base_url=url, timeout=60) as client:
        for run_id in run_ids:
            client.post(f"/v1/runs/{run_id}/stop?wait=false")
    until_ended(store, runs)
    store.close()
    return (last - first) / took, [c / (last - first) * 1e6 for c in cpu]


def workers_bench(procs: Processes, args: argparse.Namespace) -> dict[str, list[float]]:
    """Workers 1 and 2 alternately, ``--repeat`` times each, on one Redis (emptied each time);
    beside each rate, the CPU µs per event spent by Redis and by the serving processes."""
    redis_url = procs.redis()
    redis_pid = procs.redis_pid
    results: dict[str, list[float]] = {"1": [], "2": []}
    for _ in range(args.repeat):
        for workers in (1, 2):
            redis.Redis.from_url(redis_url).flushall()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port)]
            cmd += ["--log-level", "warning", "--backend", "redis", "--redis-url", redis_url]
            cmd += ["--workers", str(workers)]
            environ = {**os.environ, "STREAMCTL_RUNS_PER_MINUTE": "100000"}
            proc = subprocess.Popen(cmd, env=environ, cwd=ROOT, stderr=subprocess.DEVNULL)
            wait_ready(url, proc)
            many_runs(url, redis_url, 8, 500)  # warm-up (each worker's first runs)
            until_ended(redis.Redis.from_url(redis_url), 8)
            rate, (serve_us, redis_us) = steady_rate(
                url, redis_url, args.runs, args.seconds, [proc.pid, redis_pid]
            )
            results[str(workers)].append(rate)
            results.setdefault(f"{workers}_cpu_us_per_event", []).append(serve_us)
            results.setdefault(f"{workers}_redis_cpu_us_per_event", []).append(redis_us)
            print(
                f"  --workers {workers}: {rate:,.0f} events/s; CPU per event: serving"
                f" {serve_us:.1f} µs, Redis {redis_us:.1f} µs",
                flush=True,
            )
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            results = workers_bench(procs, args)
        finally:
            procs.close()
    for workers, rates in results.items():
        if "cpu" in workers:
            continue
        spread = f"{min(rates):,.0f} to {max(rates):,.0f}"
        print(
            f"--workers {workers}: {statistics.median(rates):>10,.0f} events/s"
            f" (median of {len(rates)}, {spread})"
        )
    ratios = [two / one for one, two in zip(results["1"], results["2"], strict=True)]
    print(
        f"ratio 2/1: {statistics.median(results['2']) / statistics.median(results['1']):.2f}"
        f" (per pair: {', '.join(f'{r:.2f}' for r in ratios)});"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
