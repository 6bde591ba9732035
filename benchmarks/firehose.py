"""Firehose: one run emitting as fast as the demo agent can, and what it does to everyone else.

Against a real ``streamctl serve`` (temporary SQLite) with API-key auth and two principals,
``firehose`` and ``probe``:

1. idle: the probe alone for ``probe_seconds``: a small run started every 100 ms (``POST
   /v1/runs``, 20 tokens 10 ms apart, then ``GET .../stream`` to its ``done``). Its POST latency
   and its event lag (receive time - the event's ``created_at``, read afterwards from the
   server's SQLite file; both wall-clock times on this machine) are the baseline of the ratios.
2. firehose: the firehose principal starts ``{"demo": {"tokens": N, "delay_ms": 0, "tool":
   false}}`` with ``POST /v1/runs``; one reader in another process (so that its parsing does not
   delay the probe's reads) streams it to its ``done``, keeping only the first and last 64 KiB.
   Meanwhile the probe goes on as in 1. The server's VmRSS is read from /proc every 100 ms.
3. stop: ``firehose_stops`` times, on a fresh server each: a firehose run with its reader,
   stopped 0.5 s after its first 100 events were stored: ``POST .../stop`` -> its answer, and
   -> the read holding the ``done`` at the reader.

Bounded so that it always finishes: a server whose RSS passes ``--rss-limit-mb`` is SIGKILLed
(reported as ``exceeded``), and a firehose run not done after ``firehose_seconds`` is cut the same
way (``timed out``). Issue 11's targets: RSS growth < 100 MB and the run completes; the probe's
event lag p99 and POST p99 ≤ 50 ms; stop p99 ≤ 50 ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.client import request, start_run
from benchmarks.options import Options
from benchmarks.principals import Keys, Probe, probe_for, read_stream, ready
from benchmarks.report import Row
from benchmarks.servers import Server, demo_body, running, stored_events
from benchmarks.stats import dist_ms

STOP_AFTER_S = 0.5
"""How long a firehose run streams before it is stopped (stop phase)."""


@dataclass
class RssWatch:
    """VmRSS of a server every 100 ms; SIGKILLs it past ``limit_kib`` (then ``exceeded``)."""

    server: Server
    limit_kib: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    exceeded: bool = False
    _until: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._until.is_set():
            try:
                rss = self.server.rss_kib()
            except (OSError, RuntimeError):
                return  # the process is gone
            self.samples.append((time.perf_counter(), rss))
            if rss > self.limit_kib:
                self.exceeded = True
                self.server.kill()
                return
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._until.set()
        if self._task is not None:
            await self._task

    def mb(self, kib: int) -> float:
        return round(kib / 1024, 1)


def _stored_events(db: Path, run_id: str) -> int | None:
    """Events of a run in the server's SQLite file (read after the run, or after a kill)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return len(stored_events(conn, run_id))
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# ------------------------------------------------------------------------------------------------
# The phases
# ------------------------------------------------------------------------------------------------

Pool = concurrent.futures.ProcessPoolExecutor


def _outcome(exceeded: bool, timed_out: bool, done: dict[str, Any] | None) -> str:
    if exceeded:
        return "exceeded"
    if timed_out:
        return "timed out"
    return "no done" if done is None else str(done.get("status", "?"))


async def _firehose_phase(opts: Options, pool: Pool) -> dict[str, Any]:
    sizes, keys = opts.sizes, Keys()
    loop = asyncio.get_running_loop()
    async with running(
        "streamctl", opts.src, env=keys.env(), headers=Keys.header(keys.probe)
    ) as sc:
        wall_offset = time.time() - time.perf_counter()
        idle = Probe(sc.port, keys.probe)
        await probe_for(idle, sizes.probe_seconds)
        busy = Probe(sc.port, keys.probe)
        watch = RssWatch(sc, opts.rss_limit_mb * 1024)
        watch.start()
        await asyncio.sleep(0.2)
        body = demo_body(sizes.firehose_tokens)
        t0 = time.perf_counter()
        run_id = await start_run(sc.port, body, headers=Keys.header(keys.firehose))
        post_s = time.perf_counter() - t0
        path = f"/v1/runs/{run_id}/stream"
        reader = loop.run_in_executor(
            pool, read_stream, sc.port, keys.firehose, path, sizes.firehose_seconds
        )
        until = asyncio.Event()
        probing = loop.create_task(busy.run(until))
        read = await reader
        timed_out = read["error"] == "time limit"
        if timed_out:
            sc.kill()
        until.set()
        await probing
        await asyncio.sleep(0.5)  # memory after the run (is it given back?)
        await watch.stop()
        rss = [kib for _, kib in watch.samples]
        t_end = read["done_at"] or read["end_at"]
        events = read["last_seq"]
        out = {
            "tokens": sizes.firehose_tokens,
            "outcome": _outcome(watch.exceeded, timed_out, read["done"]),
            "rss_limit_mb": opts.rss_limit_mb,
            "seconds_limit": sizes.firehose_seconds,
            "post_ms": round(post_s * 1000, 3),
            "seconds": round(t_end - read["sent_at"], 3),
            "to_first_chunk_s": round(read["first_chunk_at"] - read["sent_at"], 4),
            "events_delivered": events,
            "events_per_s": None if events is None else round(events / (t_end - read["sent_at"])),
            "events_stored": _stored_events(sc.db, run_id),
            "bytes_delivered": read["bytes"],
            "done": read["done"],
            "reader_error": read["error"],
            "rss_start_mb": watch.mb(rss[0]),
            "rss_peak_mb": watch.mb(max(rss)),
            "rss_end_mb": watch.mb(rss[-1]),
            "rss_growth_mb": watch.mb(max(rss) - rss[0]),
            "rss_mb_every_0_5_s": [
                [round(t - watch.samples[0][0], 1), watch.mb(k)] for t, k in watch.samples[::5]
            ],
            "probe_idle": idle.summary(sc.db, wall_offset),
            "probe_during": busy.summary(sc.db, wall_offset),
        }
    return out


async def _stop_once(opts: Options, pool: Pool) -> dict[str, Any]:
    keys = Keys()
    headers = Keys.header(keys.firehose)
    loop = asyncio.get_running_loop()
    async with running("streamctl", opts.src, env=keys.env(), headers=headers) as sc:
        watch = RssWatch(sc, opts.rss_limit_mb * 1024)
        watch.start()
        run_id = await start_run(sc.port, demo_body(opts.sizes.firehose_tokens), headers=headers)
        path = f"/v1/runs/{run_id}/stream"
        reader = loop.run_in_executor(pool, read_stream, sc.port, keys.firehose, path, 60.0)
        await _until_streaming(sc.port, run_id, headers)
        await asyncio.sleep(STOP_AFTER_S)
        sent = time.perf_counter()
        try:
            status, answer = await asyncio.wait_for(
                request(sc.port, "POST", f"/v1/runs/{run_id}/stop", headers=headers), 60
            )
        except (ConnectionError, OSError, TimeoutError) as exc:
            status, answer = 0, {"error": f"{type(exc).__name__}: {exc}"}
        answered = time.perf_counter()
        read = await reader
        await watch.stop()
    return {
        "answer_s": answered - sent,
        "answer_status": status,
        "stopping": bool(isinstance(answer, dict) and answer.get("stopping")),
        "done_s": None if read["done_at"] is None else read["done_at"] - sent,
        "done_status": None if read["done"] is None else read["done"].get("status"),
        "exceeded": watch.exceeded,
        "rss_peak_mb": watch.mb(max((k for _, k in watch.samples), default=0)),
    }


async def _until_streaming(port: int, run_id: str, headers: dict[str, str]) -> None:
    """Until the run has emitted its first events: the demo agent plans its whole answer first
    (about 0.4 s per 100,000 words), and a stop then would not be a stop mid-firehose."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        status, snap = await request(port, "GET", f"/v1/runs/{run_id}", headers=headers)
        if status != 200 or snap.get("last_seq", 0) >= 100 or snap.get("status") != "running":
            return
        await asyncio.sleep(0.05)


async def _stop_phase(opts: Options, pool: Pool) -> dict[str, Any]:
    stops = [await _stop_once(opts, pool) for _ in range(opts.sizes.firehose_stops)]
    answers = [s["answer_s"] for s in stops if s["answer_status"]]
    dones = [s["done_s"] for s in stops if s["done_s"] is not None]
    statuses: dict[str, int] = {}
    for s in stops:
        key = f"{s['answer_status']}/{s['done_status']}"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "stops": len(stops),
        "stop_after_s": STOP_AFTER_S,
        "answer_ms": dist_ms(answers),
        "done_at_reader_ms": dist_ms(dones),
        "answer_status_done_status": statuses,
        "answered_stopping": sum(1 for s in stops if s["stopping"]),
        "exceeded": sum(1 for s in stops if s["exceeded"]),
        "rss_peak_mb_max": max((s["rss_peak_mb"] for s in stops), default=0.0),
    }


async def measure(opts: Options) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, ready)  # started before timing
        run = await _firehose_phase(opts, pool)
        stop = await _stop_phase(opts, pool)
    return {"run": run, "stop": stop}


def rows(result: dict[str, Any]) -> list[Row]:
    run, stop = result["run"], result["stop"]
    idle, busy = run["probe_idle"], run["probe_during"]
    n = f"firehose {run['tokens']:,}"
    outcome = run["outcome"]
    if outcome == "exceeded":
        outcome = f"exceeded {run['rss_limit_mb']} MB"
    growth = run["rss_growth_mb"]
    lag, post = busy["event_lag_ms"], busy["post_ms"]
    lag0, post0 = idle["event_lag_ms"], idle["post_ms"]
    answer, done = stop["answer_ms"], stop["done_at_reader_ms"]
    return [
        Row(f"{n}: outcome", outcome, None, "completed", run["outcome"] == "completed"),
        Row(f"{n}: server RSS growth (MB)", growth, None, "< 100", growth < 100),
        Row(f"{n}: server RSS peak (MB)", run["rss_peak_mb"]),
        Row(f"{n}: events/s to its reader", run["events_per_s"]),
        Row(f"{n}: other principal, event lag p50 (ms)", lag["p50"], lag0["p50"]),
        Row(
            f"{n}: other principal, event lag p99 (ms)",
            lag["p99"],
            lag0["p99"],
            "≤ 50",
            lag["p99"] <= 50,
        ),
        Row(f"{n}: other principal, POST p50 (ms)", post["p50"], post0["p50"]),
        Row(
            f"{n}: other principal, POST p99 (ms)",
            post["p99"],
            post0["p99"],
            "≤ 50",
            post["p99"] <= 50,
        ),
        Row(f"{n}: stop → answer p50 (ms)", answer["p50"]),
        Row(f"{n}: stop → answer p99 (ms)", answer["p99"], None, "≤ 50", answer["p99"] <= 50),
        Row(f"{n}: stop → done at reader p50 / p99 (ms)", (done["p50"], done["p99"])),
    ]
