"""Fan-out: one run at 50 events/s (``delay_ms=20``) to N subscribers (``GET .../stream``).

The subscribers are in one or more client processes (``--fanout-procs``). Two lags per
(subscriber, event), over events created after every subscriber was connected: *end-to-end* =
receive time - the event's ``created_at`` (the server's emit time, read afterwards from the
benchmark's own SQLite file; both are wall-clock times on this machine), and *spread* = receive
time - the earliest receive time of that id over all subscribers. The achieved event rate is
reported too (the demo's 20 ms sleeps run late when the event loop is busy); the run is stopped
at a time cap.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.client import Conn, check, start_run, stop_later
from benchmarks.options import Options
from benchmarks.procfs import CpuSampler
from benchmarks.report import Row
from benchmarks.response import Response
from benchmarks.servers import created_at, demo_body, run_async, running
from benchmarks.stats import dist_ms
from benchmarks.ttfe import ttfe_pass

Streams = list[tuple[list[int], list[float]]]
"""Per subscriber: (ids, receive times) of its message_chunk events."""


def _fanout_lags(
    subs: Streams,
    created: dict[int, float],
    from_wall: float,
    wall_offset: float,
) -> dict[str, Any]:
    first: dict[int, float] = {}
    for ids, times in subs:
        for seq, t in zip(ids, times, strict=True):
            if t < first.get(seq, float("inf")):
                first[seq] = t
    measured = {seq for seq, at in created.items() if at >= from_wall}
    e2e: list[float] = []
    spread: list[float] = []
    missing = 0
    for ids, times in subs:
        got = set()
        for seq, t in zip(ids, times, strict=True):
            if seq in measured:
                got.add(seq)
                e2e.append(t + wall_offset - created[seq])
                spread.append(t - first[seq])
        missing += len(measured - got)
    return {
        "events_measured": len(measured),
        "deliveries": len(e2e),
        "missing_deliveries": missing,
        "end_to_end_ms": dist_ms(e2e),
        "spread_ms": dist_ms(spread),
    }


async def _subscribe(
    port: int, path: str, n: int, concurrency: int = 200, ready: str | None = None
) -> tuple[float, float, Streams]:
    """Open ``n`` streams of ``path``; return (all connected at, client CPU s, per-stream
    (ids, receive times) of its message_chunk events) once every stream has ended. ``ready``:
    a file created once all are connected (the growth sweep starts its run then)."""
    cpu0 = time.process_time()
    sem = asyncio.Semaphore(concurrency)
    streams: list[tuple[Conn, Response]] = []

    async def one() -> None:
        async with sem:
            conn = await Conn.open(port)
            resp = conn.send("GET", path)
            streams.append((conn, resp))
            await resp.wait_count(1)
            check(resp, "subscribe")

    await asyncio.gather(*(one() for _ in range(n)))
    connected = time.perf_counter()
    if ready is not None:
        with open(ready, "w"):  # noqa: ASYNC230 (an empty file, once)
            pass
    await asyncio.gather(*(resp.done for _, resp in streams))
    out = []
    for conn, resp in streams:
        conn.close()
        chunks = [i for i, ty in enumerate(resp.types) if ty == b"message_chunk"]
        out.append(([resp.ids[i] for i in chunks], [resp.times[i] for i in chunks]))
    return connected, time.process_time() - cpu0, out


def _subscribe_worker(
    port: int, path: str, n: int, ready: str | None = None
) -> tuple[float, float, Streams]:
    return run_async(_subscribe(port, path, n, ready=ready))


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes, procs = opts.src, opts.sizes, opts.fanout_procs
    n = sizes.fanout_subscribers
    connect_allowance = max(2.0, n / 300)
    tokens = int(50 * (connect_allowance + sizes.fanout_seconds))
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        run_id = await start_run(sc.port, demo_body(tokens, delay_ms=20))
        path = f"/v1/runs/{run_id}/stream"
        wall_offset = time.time() - time.perf_counter()
        sampler = CpuSampler(sc.pid)
        sampler.start()
        t0 = time.perf_counter()
        cap = 2 * connect_allowance + sizes.fanout_seconds + 5
        capper = asyncio.get_running_loop().create_task(stop_later(sc.port, lambda: [run_id], cap))
        if procs <= 1:
            results = [await _subscribe(sc.port, path, n)]
        else:
            import concurrent.futures
            import multiprocessing

            loop = asyncio.get_running_loop()
            shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
                results = await asyncio.gather(
                    *(
                        loop.run_in_executor(pool, _subscribe_worker, sc.port, path, share)
                        for share in shares
                    )
                )
        t1 = time.perf_counter()
        capped = capper.done()
        capper.cancel()
        await sampler.stop()
        created = created_at(sc.db, run_id)
    connected = max(r[0] for r in results)
    made = sorted(at for at in created.values() if at >= connected + wall_offset + 0.25)
    rate = (len(made) - 1) / (made[-1] - made[0]) if len(made) > 1 else float("nan")
    subs = [s for r in results for s in r[2]]
    # Events created from 0.25 s after the last subscriber connected.
    lags = _fanout_lags(subs, created, connected + wall_offset + 0.25, wall_offset)
    _, server_pct, _ = sampler.window(connected + 0.25, t1)
    window = t1 - connected
    return {
        "subscribers": n,
        "client_processes": max(1, procs),
        "connect_seconds": round(connected - t0, 3),
        "events_per_s_nominal": 50,
        "events_per_s_achieved": round(rate, 1),
        "stopped_at_time_cap": capped,
        **lags,
        "server_cpu_pct": round(server_pct, 1),
        "client_cpu_pct": round(100 * sum(r[1] for r in results) / (t1 - t0), 1),
        "window_seconds": round(window, 2),
    }


def rows(result: dict[str, Any]) -> list[Row]:
    n = result["subscribers"]
    e2e, spread = result["end_to_end_ms"], result["spread_ms"]
    achieved = result["events_per_s_achieved"]
    return [
        Row(f"fan-out {n} subs, lag end-to-end p50 (ms)", e2e["p50"]),
        Row(
            f"fan-out {n} subs, lag end-to-end p99 (ms)", e2e["p99"], None, "≤ 50", e2e["p99"] <= 50
        ),
        Row(f"fan-out {n} subs, spread p50 / p99 (ms)", (spread["p50"], spread["p99"])),
        Row(f"fan-out {n} subs, server CPU (%)", result["server_cpu_pct"]),
        Row(
            f"fan-out {n} subs, events/s achieved (nominal 50)",
            achieved,
            None,
            "50",
            achieved >= 45,
        ),
    ]
