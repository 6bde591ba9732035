"""How cost grows: three sweeps, each size measured on streamctl and on the bare baseline in turn.

- **runs**: R concurrent runs x 20 tokens/s (``delay_ms=50``), each streamed to its own client
  (``POST /v1/runs/stream``; the baseline's ``POST /v1/runs/stream``).
- **fanout**: one run at 50 events/s (``delay_ms=20``) to S subscribers, in ``--fanout-procs``
  client processes (streamctl: ``GET /v1/runs/{id}/stream``; the baseline: its broadcaster,
  ``GET /v1/broadcasts/{id}/stream``).
- **idle**: K open streams of runs parked for a minute (100 streams per run), held for
  ``idle_hold_seconds`` with ``ping_interval`` set to ``idle_ping_seconds``.

Both servers are asked for the same schedule: event k of a run is due at t0 + k x delay (the
streamctl servers run ``benchmarks.paced_agent``, the baseline paces its generators alike). The
figures, over a steady window (every stream connected and its run going, 0.5 s settled):

- *lag*: receive time - the event's place in its schedule (t0 estimated per run as the earliest
  ``receive - k x delay``: the best delivery defines "on time"). A server that keeps the pace has
  a flat lag; one that falls behind, a growing one (its p99 shows it).
- *achieved rate*: events received per stream per second in the window, against the nominal.
- *server CPU per event*: the server's CPU seconds in the window (/proc, every thread) / events
  delivered in it (for fan-out, per delivery).
- *memory*: (VmRSS in the window - VmRSS before the streams opened) / runs, subscribers or
  streams: KiB each.
- *pings* (idle, streamctl): the gap between two pings of a stream (and from its opening to its
  first ping), against ``ping_interval``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable
from itertools import cycle, pairwise
from typing import Any

from benchmarks.client import Conn, check, request, start_run
from benchmarks.fanout import _subscribe_worker
from benchmarks.growth_rows import KINDS
from benchmarks.options import Options
from benchmarks.procfs import CpuSampler, RssSampler, connections
from benchmarks.response import Response
from benchmarks.servers import STREAMCTL_ENV, Server, demo_body, running
from benchmarks.stats import dist_ms, pct
from benchmarks.ttfe import ttfe_pass

PACED = {**STREAMCTL_ENV, "STREAMCTL_AGENT": "benchmarks.paced_agent:paced_agent"}
_SETTLE = 0.5


def schedule_lags(pairs: list[tuple[int, float]], delay: float) -> list[float]:
    """Lag of each (index in the schedule, receive time): the earliest sets t0."""
    if not pairs:
        return []
    t0 = min(t - k * delay for k, t in pairs)
    return [t - t0 - k * delay for k, t in pairs]


def _summary(
    lags: list[float],
    rates: list[float],
    nominal: float,
    cpu_s: float,
    events: int,
    rss_kib: float,
    units: int,
) -> dict[str, Any]:
    return {
        "lag_ms": dist_ms(lags),
        "rate_median": round(pct(rates, 50), 2) if rates else float("nan"),
        "rate_min": round(min(rates), 2) if rates else float("nan"),
        "rate_pct_of_nominal": round(100 * pct(rates, 50) / nominal, 1) if rates else 0.0,
        "rate_min_pct_of_nominal": round(100 * min(rates) / nominal, 1) if rates else 0.0,
        "events": events,
        "cpu_us_per_event": round(1e6 * cpu_s / events, 2) if events else float("nan"),
        "rss_kib_per_unit": round(rss_kib / units, 2),
    }


# -- concurrent runs --------------------------------------------------------------------------


async def _runs(server: Server, n: int, steady: float) -> dict[str, Any]:
    """Every run starts (its first event streamed) before any word: their agents wait for a
    start file, then run i for i/n of a period more, so their words are spread over it."""
    delay = 0.05
    tokens = int(steady / delay)
    start = server.tmp / "start"
    await ttfe_pass(server.port, 0, 3)
    sem = asyncio.Semaphore(200)
    conns: list[Conn] = []

    async def connect() -> None:
        async with sem:
            conns.append(await Conn.open(server.port))

    await asyncio.gather(*(connect() for _ in range(n)))
    await asyncio.sleep(0.5)
    # ``--workers N``: how many of the streams each worker holds (a run lives where it started).
    split = connections(server.pid, server.port) if server.workers > 1 else []
    rss0 = server.rss_kib()
    sampler = CpuSampler(server.pid, every=0.1, read=server.cpu)
    sampler.start()
    memory = RssSampler(server.pid, read=server.rss_kib)
    memory.start()
    streams = []
    for i, c in enumerate(conns):
        body = demo_body(tokens, delay_ms=delay * 1000)
        body["config"]["paced"] = {"start_file": str(start), "offset_ms": 1000 * delay * i / n}
        streams.append(c.send("POST", "/v1/runs/stream", body))
    await asyncio.gather(*(r.wait_count(1) for r in streams))
    start.touch()
    started = time.perf_counter() + delay + _SETTLE
    capped = False
    try:
        await asyncio.wait_for(asyncio.gather(*(r.done for r in streams)), 3 * tokens * delay + 30)
    except TimeoutError:
        capped = True
    await sampler.stop()
    await memory.stop()
    for c in conns:
        c.close()
    if not capped:
        for r in streams:
            check(r, "runs")
    ended = min((r.first(b"done") for r in streams if b"done" in r.types), default=started + 1)
    lags: list[float] = []
    rates: list[float] = []
    for r in streams:
        pairs = [
            (seq, t)
            for seq, t, ty in zip(r.ids, r.times, r.types, strict=True)
            if ty == b"message_chunk"
        ]
        inside = [
            lag
            for lag, (_, t) in zip(schedule_lags(pairs, delay), pairs, strict=True)
            if started <= t <= ended
        ]
        lags += inside
        rates.append(len(inside) / max(ended - started, 1e-9))
    _, server_pct, _ = sampler.window(started, ended)
    cpu_s = sampler.server_at(ended) - sampler.server_at(started)
    events = sum(1 for r in streams for t in r.times if started <= t <= ended)
    out = _summary(lags, rates, 1 / delay, cpu_s, events, memory.peak(started, ended) - rss0, n)
    out.update(
        units=n,
        window_seconds=round(ended - started, 2),
        server_cpu_pct=round(server_pct, 1),
        stopped_at_time_cap=capped,
    )
    if split:
        out["connections_by_worker"] = split
    return out


# -- fan-out ----------------------------------------------------------------------------------


async def _fanout(server: Server, n: int, steady: float, procs: int) -> dict[str, Any]:
    """Every subscriber connects (in ``procs`` client processes) before the run's first word:
    its agent waits for a start file, created once each process has made its ready file."""
    delay = 0.02
    tokens = int(steady / delay)
    await ttfe_pass(server.port, 0, 3)
    start = server.tmp / "start"
    body = demo_body(tokens, delay_ms=delay * 1000)
    body["config"]["paced"] = {"start_file": str(start)}
    if server.kind == "streamctl":
        path = f"/v1/runs/{await start_run(server.port, body)}/stream"
    else:
        status, made = await request(server.port, "POST", "/v1/broadcasts", body)
        assert status == 201, made
        path = f"/v1/broadcasts/{made['run_id']}/stream"
    rss0 = server.rss_kib()
    sampler = CpuSampler(server.pid, every=0.1, read=server.cpu)
    sampler.start()
    memory = RssSampler(server.pid, read=server.rss_kib)
    memory.start()
    loop = asyncio.get_running_loop()
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    ready = [server.tmp / f"ready-{i}" for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        work = asyncio.gather(
            *(
                loop.run_in_executor(pool, _subscribe_worker, server.port, path, share, str(r))
                for share, r in zip(shares, ready, strict=True)
            )
        )
        while not all(r.exists() for r in ready) and not work.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        start.touch()
        went = time.perf_counter()
        results = await work
    await sampler.stop()
    await memory.stop()
    # The window, by event: those first delivered (to anyone) from 0.5 s after the start to the
    # run's last word; each delivery of them counts, however late (a cut-off subscriber's
    # missing ones lower its rate).
    started = went + _SETTLE
    subs = [s for r in results for s in r[2]]
    first: dict[int, float] = {}
    for ids, times in subs:
        for seq, t in zip(ids, times, strict=True):
            if t < first.get(seq, float("inf")):
                first[seq] = t
    ended = max(first.values(), default=started + 1)
    inside = {seq for seq, t in first.items() if started <= t <= ended}
    pairs = [(seq, t) for ids, times in subs for seq, t in zip(ids, times, strict=True)]
    lags = [
        lag
        for lag, (seq, _) in zip(schedule_lags(pairs, delay), pairs, strict=True)
        if seq in inside
    ]
    span = max(ended - started, 1e-9)
    rates = [sum(1 for seq in ids if seq in inside) / span for ids, _ in subs]
    cpu_s = sampler.server_at(ended) - sampler.server_at(started)
    _, server_pct, _ = sampler.window(started, ended)
    out = _summary(lags, rates, 1 / delay, cpu_s, len(lags), memory.peak(started, ended) - rss0, n)
    out.update(
        units=n,
        window_seconds=round(ended - started, 2),
        server_cpu_pct=round(server_pct, 1),
        client_processes=max(1, procs),
    )
    return out


# -- idle streams -----------------------------------------------------------------------------


async def _idle(server: Server, n: int, hold: float, ping: float) -> dict[str, Any]:
    await ttfe_pass(server.port, 0, 3)
    body = demo_body(10, delay_ms=60_000)
    open_one: Callable[[Conn], Response]
    if server.kind == "streamctl":
        runs = [await start_run(server.port, body) for _ in range(max(1, -(-n // 100)))]
        paths = cycle(f"/v1/runs/{r}/stream" for r in runs)
        open_one = lambda c: c.send("GET", next(paths))  # noqa: E731
    else:
        open_one = lambda c: c.send("POST", "/v1/runs/stream", body)  # noqa: E731
    await asyncio.sleep(1.0)
    rss0 = server.rss_kib()
    sem = asyncio.Semaphore(200)
    held: list[tuple[Conn, Response, float]] = []

    async def one() -> None:
        async with sem:
            conn = await Conn.open(server.port)
            resp = open_one(conn)
            await resp.wait_count(1)
            check(resp, "idle")
            held.append((conn, resp, time.perf_counter()))

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    opened = time.perf_counter() - t0
    sampler = CpuSampler(server.pid, every=0.5, read=server.cpu)
    sampler.start()
    await asyncio.sleep(hold)
    rss1 = server.rss_kib()
    await sampler.stop()
    end = time.perf_counter()
    still_open = sum(1 for c, r, _ in held if not c.closed and not r.done.done())
    gaps: list[float] = []
    late = 0
    for _, resp, at in held:
        marks = [at, *resp.pings, end]
        gaps += [b - a for a, b in pairwise(marks)]
        late += any(b - a > 2 * ping for a, b in pairwise(marks))
    for conn, _, _ in held:
        conn.close()
    _, server_pct, _ = sampler.window(0, float("inf"))
    return {
        "units": n,
        "open_at_measurement": still_open,
        "open_seconds": round(opened, 2),
        "rss_kib_per_unit": round((rss1 - rss0) / n, 2),
        "server_cpu_pct": round(server_pct, 1),
        "ping_gap_ms": dist_ms(gaps) if server.kind == "streamctl" else {},
        "streams_with_a_late_ping": late if server.kind == "streamctl" else 0,
    }


# -- the sweeps -------------------------------------------------------------------------------


async def measure(opts: Options) -> dict[str, Any]:
    sizes = opts.sizes
    steady, hold, ping = sizes.growth_seconds, sizes.idle_hold_seconds, sizes.idle_ping_seconds
    idle_env = {**PACED, "STREAMCTL_PING_INTERVAL": str(ping)}
    out: dict[str, Any] = {"runs": {}, "fanout": {}, "idle": {}}
    for n in sizes.growth_runs:
        out["runs"][str(n)] = {
            kind: await _on(kind, opts, PACED, _runs, n, steady) for kind in KINDS
        }
    for n in sizes.growth_subscribers:
        procs = max(opts.fanout_procs, 1 if n <= 1000 else 2)  # the client is CPU-bound too
        out["fanout"][str(n)] = {
            kind: await _on(kind, opts, PACED, _fanout, n, steady, procs) for kind in KINDS
        }
    for n in sizes.growth_idle:
        out["idle"][str(n)] = {
            kind: await _on(kind, opts, idle_env, _idle, n, hold, ping) for kind in KINDS
        }
    return out


async def _on(
    kind: str, opts: Options, env: dict[str, str], what: Any, *args: Any
) -> dict[str, Any]:
    """``what(server, *args)`` on a fresh server of ``kind``; a size that fails is recorded as
    ``{"error": ...}`` and the sweep goes on (a 10,000-stream size must not cost the others)."""
    try:
        async with running(kind, opts.src, env=env, workers=opts.redis_workers) as server:
            result: dict[str, Any] = await what(server, *args)
            return result
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        # A server's exit carries its log's tail, whose last line is the cause: keep both ends.
        return {"error": text if len(text) <= 500 else f"{text[:200]} … {text[-300:]}"}
