"""Where a streamctl server's CPU goes per thread under one size of the runs sweep:

    python -m benchmarks.threads 800              # 800 runs x 20 tokens/s, one process

Starts a server with the sweep's paced agent, puts ``N`` runs on it as ``growth.py`` does, and
while they go reads each thread's CPU time from ``/proc`` twice, 4 s apart (after 4 s of
warm-up), then the store's commit counters from ``/metrics``. Prints each thread's share of a
core, the commits, their events and seconds (with the histograms of their durations and of
their events' waits, ``streamctl_commit_wait_seconds``), and the load's own figures.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request

from benchmarks import growth
from benchmarks.procfs import thread_cpu, tree
from benchmarks.servers import ROOT, raise_nofile, run_async, running

COMMIT_METRICS = (
    "streamctl_commit_seconds_bucket",
    "streamctl_commit_seconds_sum",
    "streamctl_commit_seconds_count",
    "streamctl_commit_batch_events_sum",
    "streamctl_commit_wait_seconds",
)


async def measure(n: int, warmup: float = 4.0, window: float = 4.0) -> None:
    raise_nofile(65536)
    async with running("streamctl", ROOT, env=growth.PACED) as server:

        async def sample() -> None:
            await asyncio.sleep(warmup)
            pids = tree(server.pid)
            before = {pid: thread_cpu(pid) for pid in pids}
            began = time.perf_counter()
            await asyncio.sleep(window)
            after = {pid: thread_cpu(pid) for pid in pids}
            seconds = time.perf_counter() - began
            for pid in pids:
                for name, cpu in after[pid].items():
                    share = (cpu - before[pid].get(name, 0.0)) / seconds
                    if share > 0.005:
                        print(f"  {pid} {name:30s} {100 * share:5.1f} % of a core")
            url = f"http://127.0.0.1:{server.port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
            for line in text.splitlines():
                if line.startswith(COMMIT_METRICS):
                    print("  " + line)

        sampler = asyncio.create_task(sample())
        result = await growth._runs(server, n, warmup + window)
        await sampler
        print(
            f"{n} runs: slowest rate {result['rate_min_pct_of_nominal']} %,"
            f" lag p50 / p99 {result['lag_ms']['p50']} / {result['lag_ms']['p99']} ms,"
            f" CPU per token {result['cpu_us_per_event']} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=int)
    args = parser.parse_args()
    run_async(measure(args.runs))


if __name__ == "__main__":
    main()
