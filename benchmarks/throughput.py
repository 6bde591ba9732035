"""One stream as fast as it goes: a run of N chunks at zero delay, at ``low`` and ``batched``.

Events/s at the client = last ``id`` received / (request sent -> terminal chunk read); merged
chunks cover many seqs, so events are counted by ids, not frames. Server CPU us/event = CPU
delta / events. The client stores the raw bytes and decodes them after the clock stops. Also
reported: the time to the first chunk (a zero-delay demo agent never awaits, so a server that
commits before it sends emits much of the run before the first chunk leaves), and the server CPU
split by thread (SQLite's writer thread vs the event loop).

``--profile PATH`` runs the ``low`` case once more against a streamctl server under cProfile
(enabled only around the run, main thread only: SQLite's writer thread is not in it) and prints
the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import asyncio
import signal
from itertools import pairwise
from pathlib import Path
from typing import Any

from benchmarks.client import Conn, check
from benchmarks.options import Options
from benchmarks.procfs import CpuSampler, thread_cpu
from benchmarks.report import Row
from benchmarks.servers import Server, demo_body, running
from benchmarks.ttfe import ttfe_pass


async def throughput_run(server: Server, tokens: int, granularity: str) -> dict[str, Any]:
    conn = await Conn.open(server.port)
    body = demo_body(tokens=tokens, granularity=granularity)
    await asyncio.sleep(0.3)  # let the server settle (CPU baseline)
    sampler = CpuSampler(server.pid, every=0.02)
    threads0 = thread_cpu(server.pid)
    cpu0 = server.cpu()
    sampler.start()
    resp = conn.send("POST", "/v1/runs/stream", body, mode="raw")
    await resp.done
    elapsed = resp.end_at - resp.sent_at
    await asyncio.sleep(0.1)  # the run's final row is written after its `done`
    await sampler.stop()
    cpu1 = server.cpu()
    threads1 = thread_cpu(server.pid)
    conn.close()
    first_chunk = resp.first_raw(b"event: message_chunk\n")
    cpu_first = sampler.server_at(first_chunk)
    check(resp, "throughput")
    ids, types = resp.decode_raw()
    if not ids or types[-1] != b"done":
        raise RuntimeError(f"throughput: stream ended without done ({len(ids)} events)")
    if any(b <= a for a, b in pairwise(ids)):
        raise RuntimeError("throughput: ids not increasing")
    events = ids[-1]
    streamed = events - ids[types.index(b"message_chunk")] + 1
    streaming = resp.end_at - first_chunk
    by_thread = {
        name: round(threads1[name] - threads0.get(name, 0.0), 3)
        for name in threads1
        if threads1[name] - threads0.get(name, 0.0) > 0
    }
    return {
        "events": events,
        "frames_received": len(ids),
        "seconds": round(elapsed, 4),
        "events_per_s": round(events / elapsed),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_us_per_event": round((cpu1 - cpu0) / events * 1e6, 2),
        "server_cpu_s_by_thread": by_thread,
        "to_first_chunk_s": round(first_chunk - resp.sent_at, 4),
        "streaming": {
            "what": "from the read holding the first message_chunk to the end (with the demo"
            " agent at zero delay, streamctl emits and commits the run before the first chunk"
            " leaves, so for streamctl this is delivery of a backlog, not the pipeline)",
            "events": streamed,
            "seconds": round(streaming, 4),
            "events_per_s": round(streamed / streaming),
            "server_cpu_us_per_event": round((cpu1 - cpu_first) / streamed * 1e6, 2),
        },
    }


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes = opts.src, opts.sizes
    out: dict[str, Any] = {}
    for granularity in ("low", "batched"):
        async with running("streamctl", src) as sc:
            await ttfe_pass(sc.port, 0, 3)  # warm up
            out[f"streamctl_{granularity}"] = await throughput_run(
                sc, sizes.throughput_tokens, granularity
            )
    async with running("baseline", src) as base:
        await ttfe_pass(base.port, 0, 3)
        out["baseline_low"] = await throughput_run(base, sizes.throughput_tokens, "low")
    return out


async def profile(opts: Options, path: Path) -> dict[str, Any]:
    """The ``low`` case under cProfile; the top functions by own and cumulative time."""
    import pstats

    src, sizes = opts.src, opts.sizes
    async with running("streamctl", src, profile=path) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
        result = await throughput_run(sc, sizes.throughput_tokens, "low")
        sc.send_signal(signal.SIGUSR2)
        await asyncio.sleep(0.2)
    stats = pstats.Stats(str(path))
    rows: dict[str, list[dict[str, Any]]] = {}
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key)
        top = []
        for func in stats.fcn_list[:15]:  # type: ignore[attr-defined]
            _, nc, tt, ct, _ = stats.stats[func]  # type: ignore[attr-defined]
            filename, line, name = func
            short = filename.replace(str(src) + "/", "").split("site-packages/")[-1]
            top.append(
                {
                    "function": f"{short}:{line}({name})",
                    "calls": nc,
                    "tottime_s": round(tt, 4),
                    "cumtime_s": round(ct, 4),
                }
            )
        rows[key] = top
    return {"profile": str(path), "run_under_profiler": result, "top": rows}


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    base = result["baseline_low"]
    targets = {"low": (50_000, 10.0), "batched": (200_000, None)}
    for gran in ("low", "batched"):
        ours = result[f"streamctl_{gran}"]
        rate, cpu = targets[gran]
        out.append(
            Row(
                f"one stream, {gran} (events/s)",
                ours["events_per_s"],
                base["events_per_s"],
                f"≥ {rate:,}",
                ours["events_per_s"] >= rate,
            )
        )
        out.append(
            Row(
                f"server CPU per event, {gran} (µs)",
                ours["server_cpu_us_per_event"],
                base["server_cpu_us_per_event"],
                "" if cpu is None else f"≤ {cpu:g}",
                None if cpu is None else ours["server_cpu_us_per_event"] <= cpu,
            )
        )
        out.append(
            Row(
                f"one stream, {gran}: request → first chunk (ms)",
                round(ours["to_first_chunk_s"] * 1000, 1),
                round(base["to_first_chunk_s"] * 1000, 1),
            )
        )
    return out


def print_profile(result: dict[str, Any]) -> None:
    for key in ("tottime", "cumulative"):
        print(f"\nserver profile, low throughput, top 15 by {key} ({result['profile']}):")
        for r in result["top"][key]:
            print(f"  {r['tottime_s']:8.3f} {r['cumtime_s']:8.3f} {r['calls']:>9}  {r['function']}")
