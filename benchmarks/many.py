"""Many runs: R concurrent runs x 20 tokens/s (``delay_ms=50``), each streamed to its own client.

Lag = gap between consecutive chunks at the client - the nominal 50 ms (p99), over gaps after
every run had started; also end-to-end (receive - created_at); server CPU % in that window; the
achieved tokens/s per run. The runs are stopped at a time cap.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from typing import Any

from benchmarks.client import Conn, check, stop_later
from benchmarks.options import Options
from benchmarks.procfs import CpuSampler
from benchmarks.report import Row
from benchmarks.servers import created_at, demo_body, running
from benchmarks.stats import dist_ms
from benchmarks.ttfe import ttfe_pass


async def measure(opts: Options) -> dict[str, Any]:
    src, n, tokens = opts.src, opts.sizes.many_runs, opts.sizes.many_tokens
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sem = asyncio.Semaphore(200)
        conns: list[Conn] = []

        async def connect() -> None:
            async with sem:
                conns.append(await Conn.open(sc.port))

        await asyncio.gather(*(connect() for _ in range(n)))
        wall_offset = time.time() - time.perf_counter()
        sampler = CpuSampler(sc.pid, every=0.1)
        sampler.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        body = demo_body(tokens, delay_ms=50)
        streams = [c.send("POST", "/v1/runs/stream", body) for c in conns]
        cap = 2 * tokens * 0.05 + 10
        capper = asyncio.get_running_loop().create_task(
            stop_later(
                sc.port, lambda: [r.headers["x-run-id"] for r in streams if not r.done.done()], cap
            )
        )
        await asyncio.gather(*(r.wait_count(1) for r in streams))
        started = max(r.times[0] for r in streams)
        await asyncio.gather(*(r.done for r in streams))
        t1 = time.perf_counter()
        capped = capper.done()
        capper.cancel()
        client_cpu = time.process_time() - cpu0
        await sampler.stop()
        for c in conns:
            c.close()
        for r in streams:
            check(r, "many")
        first_done = min(r.first(b"done") for r in streams)
        gaps: list[float] = []
        e2e: list[float] = []
        chunks = 0
        for r in streams:
            chunk_times = [
                t for t, ty in zip(r.times, r.types, strict=True) if ty == b"message_chunk"
            ]
            gaps += [
                b - a - 0.050 for a, b in pairwise(chunk_times) if a >= started and b <= first_done
            ]
            chunks += sum(1 for t in chunk_times if started <= t <= first_done)
            created = created_at(sc.db, r.headers["x-run-id"])
            e2e += [
                t + wall_offset - created[seq]
                for seq, t, ty in zip(r.ids, r.times, r.types, strict=True)
                if ty == b"message_chunk" and started <= t <= first_done
            ]
    _, server_pct, client_pct = sampler.window(started, first_done)
    return {
        "runs": n,
        "tokens_per_run": tokens,
        "start_seconds": round(started - t0, 3),
        "steady_seconds": round(first_done - started, 2),
        "tokens_per_s_per_run_achieved": round(chunks / n / max(first_done - started, 1e-9), 2),
        "stopped_at_time_cap": capped,
        "gap_minus_50ms_ms": dist_ms(gaps),
        "end_to_end_ms": dist_ms(e2e),
        "server_cpu_pct": round(server_pct, 1),
        "client_cpu_pct": round(client_pct, 1),
        "client_cpu_pct_whole": round(100 * client_cpu / (t1 - t0), 1),
        "total_seconds": round(t1 - t0, 2),
    }


def rows(result: dict[str, Any]) -> list[Row]:
    label = f"{result['runs']} runs x 20 tok/s"
    gap, e2e = result["gap_minus_50ms_ms"], result["end_to_end_ms"]
    achieved = result["tokens_per_s_per_run_achieved"]
    return [
        Row(f"{label}, gap - 50 ms p99 (ms)", gap["p99"], None, "≤ 100", gap["p99"] <= 100),
        Row(f"{label}, lag end-to-end p99 (ms)", e2e["p99"]),
        Row(f"{label}, server CPU (%)", result["server_cpu_pct"]),
        Row(f"{label}, tokens/s per run achieved", achieved, None, "20", achieved >= 18),
    ]
