"""The cost of one event through the pipeline, in one process, without HTTP:

    python -m benchmarks.pipeline                      # 6 runs of 100,000 tokens, zero delay
    python -m benchmarks.pipeline --follow --runs 10   # and a `low` subscriber reading them

A ``Supervisor`` on a temporary SQLite file runs the demo agent at zero delay (one warm-up run,
then ``--runs``), with the collector tuned as under ``streamctl serve``, on uvloop. Per run it
reads the event loop thread's CPU time (``time.thread_time``: the agent, ``Run.emit``, the write
queue, the delivery of commits to the run's log) and the process's (the SQLite writer's thread
as well), divided by the run's events, and the events per second from the start to the run's
end. Prints the median of each with its min..max.

With no server, client or socket in the way, run-to-run noise is far smaller than the HTTP
benchmarks' on this machine: compare two revisions by running this from each checkout in turn
(``PYTHONPATH=CHECKOUT python -m benchmarks.pipeline``), alternating, several times.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from benchmarks.servers import QUESTION
from streamctl.agents.demo import demo_agent
from streamctl.http.embedding import GC_THRESHOLDS
from streamctl.inputs import RunCreate
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor


async def one_run(sup: Supervisor, tokens: int, follow: bool) -> tuple[float, float, float]:
    """Loop thread µs per event, process µs per event, events per second."""
    body = RunCreate.model_validate(
        {"input": QUESTION, "config": {"demo": {"tokens": tokens, "delay_ms": 0, "tool": False}}}
    )
    wall, loop, process = time.perf_counter(), time.thread_time(), time.process_time()
    run = await sup.control.start(body, "bench")
    if follow:
        stream = await sup.reads.subscribe(run.run_id, "bench", 0)
        if stream is not None:
            async for _ in stream:
                pass
    await run.finished.wait()
    events = run.last_seq
    return (
        (time.thread_time() - loop) / events * 1e6,
        (time.process_time() - process) / events * 1e6,
        events / (time.perf_counter() - wall),
    )


async def measure(runs: int, tokens: int, follow: bool) -> list[tuple[float, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "pipeline.db"
        settings = Settings.from_env({}, db=db)
        async with Store(db) as store, Supervisor(store, demo_agent, settings) as sup:
            await one_run(sup, tokens, follow)  # warm-up
            return [await one_run(sup, tokens, follow) for _ in range(runs)]


def summary(results: Sequence[tuple[float, float, float]]) -> str:
    def figure(values: list[float], digits: int) -> str:
        median = statistics.median(values)
        return f"{median:,.{digits}f} ({min(values):,.{digits}f}..{max(values):,.{digits}f})"

    loop, process, rate = (list(column) for column in zip(*results, strict=True))
    return (
        f"event loop thread {figure(loop, 2)} µs/event | all threads {figure(process, 2)}"
        f" µs/event | {figure(rate, 0)} events/s | median (min..max) of {len(results)} runs"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    parser.add_argument("--runs", type=int, default=6, help="measured runs (after one warm-up)")
    parser.add_argument("--tokens", type=int, default=100_000, help="tokens per run")
    parser.add_argument("--follow", action="store_true", help="a `low` subscriber reads each run")
    args = parser.parse_args(argv)
    gc.freeze()  # as `streamctl serve` does
    gc.set_threshold(*GC_THRESHOLDS)
    print(summary(uvloop.run(measure(args.runs, args.tokens, args.follow))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
