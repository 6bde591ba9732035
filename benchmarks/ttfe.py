"""Time to first event: ``POST /v1/runs/stream`` until the read holding the first chunk.

Demo agent, ``delay_ms=0``, ``tool=false``; sequential runs on one keep-alive connection, after
a warm-up; p50/p90/p99. Done twice (pass 1 and pass 2, interleaved with the baseline): the table
quotes pass 1, the noise note the difference.
"""

from __future__ import annotations

from typing import Any

from benchmarks.client import Conn, check
from benchmarks.options import Options
from benchmarks.report import Row
from benchmarks.servers import demo_body, running
from benchmarks.stats import dist_ms


async def ttfe_pass(port: int, runs: int, warmup: int) -> list[float]:
    """``warmup`` untimed runs then ``runs`` timed ones (``ttfe_pass(port, 0, 3)`` warms a server
    up)."""
    conn = await Conn.open(port)
    body = demo_body(tokens=5)
    samples: list[float] = []
    try:
        for i in range(warmup + runs):
            resp = conn.send("POST", "/v1/runs/stream", body)
            await resp.done
            check(resp, "ttfe")
            if resp.types[-1] != b"done":
                raise RuntimeError(f"ttfe: stream ended without done: {resp.types}")
            if i >= warmup:
                samples.append(resp.first(b"message_chunk") - resp.sent_at)
    finally:
        conn.close()
    return samples


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes = opts.src, opts.sizes
    async with running("streamctl", src) as sc, running("baseline", src) as base:
        passes: dict[str, list[list[float]]] = {"streamctl": [], "baseline": []}
        for _ in range(2):
            for name, server in (("streamctl", sc), ("baseline", base)):
                samples = await ttfe_pass(server.port, sizes.ttfe_runs, sizes.ttfe_warmup)
                passes[name].append(samples)
    out: dict[str, Any] = {}
    for name, (first, second) in passes.items():
        out[name] = dist_ms(first)
        out[name + "_pass2"] = dist_ms(second)
    return out


def rows(result: dict[str, Any]) -> list[Row]:
    sc, base = result["streamctl"], result["baseline"]
    return [
        Row(
            "time to first event p50 (ms)",
            sc["p50"],
            base["p50"],
            "≤ baseline + 1 ms",
            sc["p50"] - base["p50"] <= 1.0,
        ),
        Row("time to first event p90 (ms)", sc["p90"], base["p90"]),
        Row("time to first event p99 (ms)", sc["p99"], base["p99"]),
    ]
