"""Idle streams: K open streams, and the server memory each one costs.

streamctl: a few runs parked on ``delay_ms=60000`` (100 streams each); baseline: K
``StreamingResponse`` streams whose generators sleep. KiB per connection = (VmRSS with the
streams open - VmRSS before) / K, once every stream has received its first event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import cycle
from typing import Any

from benchmarks.client import Conn, check, start_run
from benchmarks.options import Options
from benchmarks.report import Row
from benchmarks.response import Response
from benchmarks.servers import Server, demo_body, running
from benchmarks.ttfe import ttfe_pass


async def _hold_streams(
    server: Server, n: int, open_one: Callable[[Conn], Response]
) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    rss0 = server.rss_kib()
    sem = asyncio.Semaphore(200)
    held: list[tuple[Conn, Response]] = []

    async def one() -> None:
        async with sem:
            conn = await Conn.open(server.port)
            resp = open_one(conn)
            held.append((conn, resp))
            await resp.wait_count(1)
            check(resp, "idle")

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    opened = time.perf_counter() - t0
    await asyncio.sleep(2.0)
    rss1 = server.rss_kib()
    still_open = sum(1 for c, r in held if not c.closed and not r.done.done())
    for conn, _ in held:
        conn.close()
    return {
        "connections": n,
        "open_at_measurement": still_open,
        "rss_before_kib": rss0,
        "rss_with_streams_kib": rss1,
        "kib_per_connection": round((rss1 - rss0) / n, 2),
        "open_seconds": round(opened, 2),
    }


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes = opts.src, opts.sizes
    n = sizes.idle_connections
    out: dict[str, Any] = {}
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        runs = []
        for _ in range(max(1, -(-n // sizes.idle_per_run))):
            runs.append(await start_run(sc.port, demo_body(10, delay_ms=60_000)))
        paths = cycle(f"/v1/runs/{r}/stream" for r in runs)
        out["streamctl"] = await _hold_streams(sc, n, lambda c: c.send("GET", next(paths)))
        out["streamctl"]["runs"] = len(runs)
    async with running("baseline", src) as base:
        await ttfe_pass(base.port, 0, 3)
        body = demo_body(10, delay_ms=60_000)
        out["baseline"] = await _hold_streams(
            base, n, lambda c: c.send("POST", "/v1/runs/stream", body)
        )
    return out


def rows(result: dict[str, Any]) -> list[Row]:
    sc, base = result["streamctl"], result["baseline"]
    ours = sc["kib_per_connection"]
    label = f"idle stream, {sc['connections']} open (KiB/conn)"
    return [Row(label, ours, base["kib_per_connection"], "≤ 40", ours <= 40)]
