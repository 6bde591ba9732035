"""The two principals of the firehose measurement: keys, the firehose's reader, the probe.

The firehose principal's run is read by ``read_stream`` in a process of its own (so that parsing
millions of events does not delay the probe's reads); the probe principal starts small runs at a
fixed pace and measures its POST latency and event lag.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from benchmarks.client import Conn
from benchmarks.servers import STREAMCTL_ENV, created_at, demo_body, run_async
from benchmarks.stats import dist_ms

PROBE_BODY = demo_body(20, delay_ms=10)
"""A probe run: 20 tokens 10 ms apart."""


@dataclass(frozen=True)
class Keys:
    """Two principals with API keys of their own (random per server)."""

    firehose: str = field(default_factory=lambda: secrets.token_hex(16))
    probe: str = field(default_factory=lambda: secrets.token_hex(16))

    def env(self) -> dict[str, str]:
        keys = f"firehose:{self.firehose},probe:{self.probe}"
        return {**STREAMCTL_ENV, "STREAMCTL_AUTH": "api-key", "STREAMCTL_API_KEYS": keys}

    @staticmethod
    def header(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------------------------------------
# The reader of a firehose run: in a process of its own.
# ------------------------------------------------------------------------------------------------


def read_stream(port: int, key: str, path: str, limit_s: float) -> dict[str, Any]:
    """Stream ``path`` to its end (at most ``limit_s``) keeping only its first and last bytes."""
    return run_async(_read(port, key, path, limit_s))


async def _read(port: int, key: str, path: str, limit_s: float) -> dict[str, Any]:
    conn = await Conn.open(port, Keys.header(key))
    resp = conn.send("GET", path, mode="count")
    error = None
    try:
        await asyncio.wait_for(resp.done, limit_s)
    except TimeoutError:
        error = "time limit"
    except (ConnectionError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    done = resp.tail_done()
    return {
        "status": resp.status,
        "sent_at": resp.sent_at,
        "first_chunk_at": resp.first_raw(b"event: message_chunk\n"),
        "done_at": resp.done_seen_at,
        "end_at": resp.end_at or time.perf_counter(),
        "bytes": resp.raw_bytes,
        "last_seq": None if done is None else done[0],
        "done": None if done is None else done[1],
        "error": error,
    }


def ready() -> bool:
    """Nothing: run in a new worker process, it makes the process start before any timing."""
    return True


# ------------------------------------------------------------------------------------------------
# The other principal: small runs at a fixed pace
# ------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """Another principal's small runs, started at a fixed pace whatever the server's speed (so a
    slow server does not lower the number of samples it is judged on): each one ``POST /v1/runs``
    on a new keep-alive connection (timed from the send), then ``GET .../stream`` on it to the
    ``done``. At most ``MAX_IN_FLIGHT`` at once; a start skipped for that is counted."""

    port: int
    key: str
    every_s: float = 0.1
    post_s: list[float] = field(default_factory=list)
    streams: list[tuple[str, list[int], list[float]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: int = 0

    MAX_IN_FLIGHT = 50

    async def one(self, record: bool = True) -> None:
        try:
            conn = await Conn.open(self.port, Keys.header(self.key))
            try:
                post = conn.send("POST", "/v1/runs", PROBE_BODY)
                await asyncio.wait_for(post.done, 60)
                if post.status != 201:
                    raise RuntimeError(f"POST /v1/runs answered {post.status}: {post.body[:200]!r}")
                run_id = post.json()["run_id"]
                resp = conn.send("GET", f"/v1/runs/{run_id}/stream")
                await asyncio.wait_for(resp.done, 60)
            finally:
                conn.close()
        except (ConnectionError, OSError, TimeoutError, RuntimeError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")  # the server killed, or stuck
            return
        if record:
            self.post_s.append(post.end_at - post.sent_at)
            chunks = [i for i, ty in enumerate(resp.types) if ty == b"message_chunk"]
            ids, times = [resp.ids[i] for i in chunks], [resp.times[i] for i in chunks]
            self.streams.append((run_id, ids, times))

    async def run(self, until: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()
        while not until.is_set() and not self.errors:
            if len(in_flight) < self.MAX_IN_FLIGHT:
                task = loop.create_task(self.one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                self.skipped += 1
            next_at += self.every_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*in_flight)

    def summary(self, db: Path, wall_offset: float) -> dict[str, Any]:
        lags: list[float] = []
        gaps: list[float] = []
        for run_id, ids, times in self.streams:
            try:
                created = created_at(db, run_id)
            except sqlite3.Error as exc:
                self.errors.append(f"reading created_at: {exc}")
                continue
            lags += [t + wall_offset - created[s] for s, t in zip(ids, times, strict=True)]
            gaps += [b - a - 0.010 for a, b in pairwise(times)]
        return {
            "runs": len(self.streams),
            "starts_skipped": self.skipped,
            "post_ms": dist_ms(self.post_s),
            "event_lag_ms": dist_ms(lags),
            "gap_minus_10ms_ms": dist_ms(gaps),
            "errors": self.errors[:5],
        }


async def probe_for(probe: Probe, seconds: float) -> None:
    for _ in range(3):  # warm-up, not recorded
        await probe.one(record=False)
    until = asyncio.Event()
    task = asyncio.get_running_loop().create_task(probe.run(until))
    await asyncio.sleep(seconds)
    until.set()
    await task
