"""Resume: a new connection with ``Last-Event-ID: n`` (n < last seq, random) -> the read holding
event n+1 (checked). Against live runs (``delay_ms=10``, the in-memory tail) and against finished
runs (replay from SQLite). Connect time excluded.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from benchmarks.client import Conn, check, request, start_run
from benchmarks.options import Options
from benchmarks.report import Row
from benchmarks.servers import demo_body, running
from benchmarks.stats import dist_ms
from benchmarks.ttfe import ttfe_pass


async def _resume_once(port: int, run_id: str, cursor: int) -> float:
    conn = await Conn.open(port)
    try:
        resp = conn.send("GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(cursor)})
        t = await resp.wait_count(1)
        check(resp, "resume")
        if resp.ids[0] != cursor + 1:
            raise RuntimeError(f"resume after {cursor}: first id {resp.ids[0]}")
        return t - resp.sent_at
    finally:
        conn.close()


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes = opts.src, opts.sizes
    rng = random.Random(6)
    live: list[float] = []
    stored: list[float] = []
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        ctl = await Conn.open(sc.port)
        live_runs = []
        for _ in range(10):
            live_runs.append(await start_run(sc.port, demo_body(20_000, delay_ms=10), ctl))
        finished_runs = []
        for _ in range(5):
            finished_runs.append(await start_run(sc.port, demo_body(5_000), ctl))
        await asyncio.sleep(1.5)  # backlogs build up; the zero-delay runs finish
        for i in range(sizes.resumes):
            run_id = live_runs[i % len(live_runs)]
            _, snap = await request(sc.port, "GET", f"/v1/runs/{run_id}", conn=ctl)
            cursor = rng.randint(1, max(1, snap["last_seq"] - 10))
            live.append(await _resume_once(sc.port, run_id, cursor))
        for i in range(sizes.resumes):
            run_id = finished_runs[i % len(finished_runs)]
            _, snap = await request(sc.port, "GET", f"/v1/runs/{run_id}", conn=ctl)
            if snap["status"] == "running":
                raise RuntimeError("resume: a zero-delay run has not finished")
            cursor = rng.randint(1, snap["last_seq"] - 1)
            stored.append(await _resume_once(sc.port, run_id, cursor))
        ctl.close()
    return {"live_run_ms": dist_ms(live), "finished_run_ms": dist_ms(stored)}


def rows(result: dict[str, Any]) -> list[Row]:
    live, stored = result["live_run_ms"], result["finished_run_ms"]
    return [
        Row("resume, live run → first missed p50 / p99 (ms)", (live["p50"], live["p99"])),
        Row("resume, finished run (SQLite) p50 / p99 (ms)", (stored["p50"], stored["p99"])),
    ]
