"""Chaos: many clients disconnect, resume and stop runs at random; nothing may be lost or doubled.

    scripts/chaos                       # 200 clients against a fresh server, seed from the clock
    scripts/chaos --clients 20 --seed 7 --deadline 60
    scripts/chaos --url http://127.0.0.1:8000   # an already running server (no auth)

Unless ``--url`` is given, it starts ``python -m streamctl serve`` on a free port with a temporary
SQLite file, a small in-memory tail (so resumes also read SQLite) and raised per-owner limits.
Each client starts a demo run (50-400 tokens, 1-5 ms apart, some with the tool call) with
``POST /v1/runs/stream``, at granularity ``low`` or ``batched``, and reads it; it drops the
connection after a random number of events or a random time (also mid-event), and resumes:
with ``Last-Event-ID``, with ``?after=`` or, having "lost everything", by rendering the snapshot of
``GET /v1/runs/{id}`` and streaming ``?after=last_seq``. About 15 % of runs are stopped at a
random moment. At the end each client's record is checked against ``GET /v1/runs/{id}/events``:
every event must cover the log's seqs (previous id, its id], a merged chunk being adjacent chunks
of one message joined (``batched`` only), and the text must equal the run's final text.

Prints ``clients=… stopped=… reconnects=… events_checked=… events_logged=… lost=… duplicated=…
mismatched=… elapsed=…s`` and exits 1 if lost, duplicated or mismatched is not 0 (2 if the
deadline passed first).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from httpx_sse import aconnect_sse

from benchmarks.servers import free_port

TERMINAL = {"completed", "cancelled", "failed", "timed_out", "interrupted"}


@dataclass(frozen=True)
class Ev:
    seq: int
    type: str
    data: Any


@dataclass
class Record:
    """What one client holds: a rendered snapshot (up to ``base_seq``) and the events after it."""

    granularity: str = "low"
    run_id: str = ""
    base_seq: int = 0
    base_text: str = ""
    snapshot_behind: int = 0
    """Snapshots whose last_seq was behind an id the client had already received."""
    events: list[Ev] = field(default_factory=list)
    duplicated: int = 0
    reconnects: int = 0
    done: bool = False

    @property
    def cursor(self) -> int:
        return self.events[-1].seq if self.events else self.base_seq


@dataclass
class Counts:
    clients: int = 0
    reconnects: int = 0
    events_checked: int = 0
    """Events the clients received, each checked against the log."""
    events_logged: int = 0
    """Events in the runs' stored logs: each one covered (or counted lost) by a client."""
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0

    def add(self, other: Counts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def text(events: list[Ev]) -> str:
    return "".join(e.data["content"] for e in events if e.type == "message_chunk")


def verify(record: Record, log: list[Ev], final_text: str) -> Counts:
    """Count what ``record`` lost, got twice or got wrong, against the run's log."""
    counts = Counts(clients=1, reconnects=record.reconnects, duplicated=record.duplicated)
    counts.events_logged = len(log)
    if [e.seq for e in log] != list(range(1, len(log) + 1)) or not log or log[-1].type != "done":
        counts.mismatched += 1  # the log itself is broken
    counts.mismatched += record.snapshot_behind
    if record.base_text != text(log[: record.base_seq]):
        counts.mismatched += 1
    prev = record.base_seq
    for event in record.events:
        counts.events_checked += 1
        segment = log[prev : event.seq]
        if event.type != "message_chunk" or record.granularity == "low":
            if not segment or segment[-1] != event:
                counts.mismatched += 1
            counts.lost += max(len(segment) - 1, 0)
        else:
            covered = _merged_cover(segment, event)
            if covered is None:
                counts.mismatched += 1
            else:
                counts.lost += len(segment) - covered
        prev = max(prev, event.seq)
    counts.lost += max(len(log) - prev, 0)
    if not record.done or record.base_text + text(record.events) != final_text:
        counts.mismatched += 1
    if final_text != text(log):
        counts.mismatched += 1
    return counts


def _merged_cover(segment: list[Ev], event: Ev) -> int | None:
    """How many trailing chunks of ``segment`` the merged ``event`` stands for (None: none fit)."""
    content, parts = event.data["content"], ""
    for k in range(len(segment) - 1, -1, -1):
        part = segment[k]
        if part.type != "message_chunk" or part.data["message_id"] != event.data["message_id"]:
            return None
        parts = part.data["content"] + parts
        if parts == content and set(event.data) == set(part.data):
            return len(segment) - k
    return None


async def fetch_log(client: httpx.AsyncClient, run_id: str) -> list[Ev]:
    log: list[Ev] = []
    while True:
        params = {"after": str(len(log)), "limit": "1000"}
        page = (await client.get(f"/v1/runs/{run_id}/events", params=params)).json()
        log += [Ev(e["seq"], e["type"], e["data"]) for e in page["events"]]
        if len(log) >= page["last_seq"] or not page["events"]:
            return log


class Chaos:
    def __init__(self, client: httpx.AsyncClient, seed: int, stop_fraction: float) -> None:
        self.client = client
        self.seed = seed
        self.stop_fraction = stop_fraction
        self.totals = Counts()
        self.statuses: dict[str, int] = {}
        self.stops = 0

    async def one(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        record = Record(granularity="batched" if rng.random() < 0.3 else "low")
        await anyio.sleep(rng.uniform(0, 1.0))  # spread the starts a little
        demo = {
            "tokens": rng.randint(50, 400),
            "delay_ms": rng.randint(1, 5),
            "tool": rng.random() < 0.3,
            "tool_ms": rng.randint(0, 50),
        }
        body = {
            "input": {"messages": [{"role": "user", "content": f"Weather in Paris? ({index})"}]},
            "config": {"demo": demo},
            "granularity": record.granularity,
        }
        stop_after = rng.uniform(0, 0.5) if rng.random() < self.stop_fraction else None
        async with anyio.create_task_group() as tg:

            def started(run_id: str) -> None:
                if stop_after is not None:
                    tg.start_soon(self._stop_later, stop_after, run_id)

            await self._read(rng, record, "POST", "/v1/runs/stream", started, json=body)
            while not record.done:
                record.reconnects += 1
                await self._resume(rng, record)
        log = await fetch_log(self.client, record.run_id)
        final = (await self.client.get(f"/v1/runs/{record.run_id}")).json()
        if log and log[-1].type == "done" and final["status"] != log[-1].data["status"]:
            self.totals.mismatched += 1
        self.statuses[final["status"]] = self.statuses.get(final["status"], 0) + 1
        self.totals.add(verify(record, log, final["output"]["text"]))

    async def _stop_later(self, delay: float, run_id: str) -> None:
        await anyio.sleep(delay)  # a random moment: that is the point here
        self.stops += 1
        response = await self.client.post(f"/v1/runs/{run_id}/stop")
        if response.status_code != 200 or response.json()["status"] not in TERMINAL:
            self.totals.mismatched += 1

    async def _resume(self, rng: random.Random, record: Record) -> None:
        url = f"/v1/runs/{record.run_id}/stream"
        params = {"granularity": record.granularity}
        how = rng.random()
        if how < 0.45:
            await self._read(
                rng,
                record,
                "GET",
                url,
                params=params,
                headers={"Last-Event-ID": str(record.cursor)},
            )
            return
        if how >= 0.7:  # lost everything: render the snapshot, then stream after its last_seq
            snap = (await self.client.get(f"/v1/runs/{record.run_id}")).json()
            if snap["last_seq"] < record.cursor:
                record.snapshot_behind += 1
            record.base_seq, record.base_text = snap["last_seq"], snap["output"]["text"]
            record.events = []
        await self._read(rng, record, "GET", url, params={**params, "after": str(record.cursor)})

    async def _read(
        self,
        rng: random.Random,
        record: Record,
        method: str,
        url: str,
        started: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """One connection: read until done, or until a random cut (events or time)."""
        cut = rng.random()
        limit = rng.randint(1, 30) if cut < 0.5 else None
        seconds = rng.uniform(0.001, 0.15) if 0.5 <= cut < 0.95 else 60.0
        try:
            async with aconnect_sse(self.client, method, url, **kwargs) as source:
                response = source.response
                if response.status_code == 204:  # nothing after the cursor: the run is over
                    if not (record.base_seq > 0 and record.cursor == record.base_seq):
                        self.totals.mismatched += 1  # 204 although the client lacks events
                    record.done = True
                    return
                if response.status_code != 200:
                    raise RuntimeError(f"{method} {url}: {response.status_code}")
                if not record.run_id:
                    record.run_id = response.headers["x-run-id"]
                    if started is not None:
                        started(record.run_id)
                with anyio.move_on_after(seconds):  # a cut by time falls anywhere, mid-event too
                    await self._events(source.aiter_sse(), record, limit)
        except httpx.TransportError:
            pass  # a dropped connection is one more reason to resume

    async def _events(self, events: Any, record: Record, limit: int | None) -> None:
        got = 0
        async for sse in events:
            if sse.data == "":  # the retry line; a comment after an event
                continue
            event = Ev(int(sse.id), sse.event, orjson.loads(sse.data))
            if event.seq <= record.cursor:
                record.duplicated += 1
                continue
            record.events.append(event)
            got += 1
            if event.type == "done":
                record.done = True
                return
            if limit is not None and got >= limit:
                return


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "STREAMCTL_TAIL_EVENTS": "64"}
    for name in ("MAX_RUNS", "MAX_RUNS_PER_OWNER", "RUNS_PER_MINUTE", "MAX_STREAMS_PER_OWNER"):
        env[f"STREAMCTL_{name}"] = "1000000"
    cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port)]
    cmd += ["--db", str(tmp / "chaos.db"), "--log-level", "warning"]
    with open(tmp / "server.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("server did not become ready")


async def run_clients(url: str, clients: int, seed: int, stop_fraction: float) -> Chaos:
    limits = httpx.Limits(max_connections=clients * 3, max_keepalive_connections=clients * 3)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        chaos = Chaos(client, seed, stop_fraction)
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(chaos.one, index)
        return chaos


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (from the clock)")
    parser.add_argument(
        "--stop-fraction", type=float, default=0.15, help="share of runs stopped (0.15)"
    )
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="seconds for everything (300)"
    )
    parser.add_argument("--url", help="use this running server instead of starting one")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamctl-chaos-") as tmp:
        process, url = (None, args.url) if args.url else start_server(Path(tmp))
        try:
            chaos = None
            with anyio.move_on_after(args.deadline):
                chaos = await run_clients(url, args.clients, seed, args.stop_fraction)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                if process.wait(30) != 0:
                    print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
    elapsed = time.monotonic() - started
    if chaos is None:
        print(f"chaos: deadline of {args.deadline}s passed (seed={seed})", file=sys.stderr)
        return 2
    t = chaos.totals
    statuses = dict(sorted(chaos.statuses.items()))
    print(f"seed={seed} stops={chaos.stops} statuses={statuses}", file=sys.stderr, flush=True)
    print(
        f"clients={t.clients} stopped={chaos.stops} reconnects={t.reconnects}"
        f" events_checked={t.events_checked} events_logged={t.events_logged} lost={t.lost}"
        f" duplicated={t.duplicated} mismatched={t.mismatched}"
        f" elapsed={elapsed:.1f}s",
        flush=True,
    )
    return 1 if (t.lost or t.duplicated or t.mismatched or t.clients != args.clients) else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
