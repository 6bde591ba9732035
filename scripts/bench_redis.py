"""The Redis backend's figures (a benchmark, not a test): run with ``.venv/bin/python
scripts/bench_redis.py [--json PATH]``; needs ``redis-server`` on PATH.

Starts a private ``redis-server`` (no persistence) and ``streamctl serve`` processes, and
measures:

1. one stream's events/s: a demo run of ``--tokens`` chunks at zero delay, streamed by
   ``POST /v1/runs/stream``, on SQLite and on Redis (events = the last id received / time from
   the request to the ``done`` event);
2. stop latency from a node that does not own the run: run on A (``delay_ms=5``) streamed from A;
   once 5 events arrived, ``POST .../stop`` on B; the time until B answers (after the owner
   stored the final record) and until the ``done`` is read on A's stream; the same stop sent to
   the owner for comparison;
3. takeover after ``kill -9``: run on A followed from B (lease ``--lease`` s, the issue's 3 s);
   kill -9 A; the time until B's stream reads the ``done`` (status ``interrupted``);
The events/s of ``--workers 2`` vs 1 are ``scripts/bench_redis_workers.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.client import Conn
from benchmarks.fanout import _fanout_lags
from benchmarks.response import Response
from benchmarks.servers import Redis, run_async
from streamctl.store import redis_keys as keys

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 120  # a busy machine starts Python processes slowly
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit("server not ready")


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redises: list[Redis] = []
        self.redis_pid = 0

    def redis(self) -> str:
        """Start a private ``redis-server``; its URL (its pid: ``self.redis_pid``)."""
        server = Redis()
        self.redises.append(server)
        self.redis_pid = server.pid
        return server.url

    def serve(self, *args: str, env: dict[str, str] | None = None) -> tuple[str, Any]:
        port = free_port()
        cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port)]
        cmd += ["--log-level", "warning", *args]
        environ = {**os.environ, "STREAMCTL_RUNS_PER_MINUTE": "100000", **(env or {})}
        proc = subprocess.Popen(cmd, env=environ, cwd=ROOT, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        return url, proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in self.redises:  # after the servers that use them
            server.stop()


def body(**demo: Any) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": "go"}]}, "config": {"demo": demo}}


def one_stream(url: str, tokens: int) -> float:
    """Events/s of one zero-delay run, as its own streaming client receives them."""
    with httpx.Client(timeout=120) as client:
        began = time.perf_counter()
        tail = b""
        with client.stream(
            "POST", url + "/v1/runs/stream", json=body(tokens=tokens, delay_ms=0, tool=False)
        ) as response:
            for chunk in response.iter_bytes():
                tail = (tail + chunk)[-4096:]
        took = time.perf_counter() - began
    last_id = int(tail.rsplit(b"\nid: ", 1)[-1].split(b"\n", 1)[0])
    return last_id / took


def follow(url: str, run_id: str, marks: dict[str, float], after_events: threading.Event) -> None:
    """Stream a run; note when the 5th event and the ``done`` arrive."""
    seen = 0
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", f"{url}/v1/runs/{run_id}/stream") as response,
    ):
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            seen += chunk.count(b"\nevent: ")
            if seen >= 5:
                after_events.set()
            if b"event: done" in buffer[-2048:]:
                marks["done"] = time.perf_counter()
                marks["done_status"] = float(b'"interrupted"' in buffer[-2048:])
                return
            buffer = buffer[-4096:]


def stop_latency(owner: str, stopper: str, samples: int) -> dict[str, list[float]]:
    answer, done = [], []
    with httpx.Client(timeout=60) as client:
        for _ in range(samples):
            run_id = client.post(
                owner + "/v1/runs", json=body(tokens=100000, delay_ms=5, tool=False)
            ).json()["run_id"]
            marks: dict[str, float] = {}
            ready = threading.Event()
            reader = threading.Thread(target=follow, args=(owner, run_id, marks, ready))
            reader.start()
            ready.wait(30)
            began = time.perf_counter()
            response = client.post(f"{stopper}/v1/runs/{run_id}/stop")
            answered = time.perf_counter()
            reader.join(30)
            assert response.json()["status"] == "cancelled", response.text
            answer.append((answered - began) * 1000)
            done.append((marks["done"] - began) * 1000)
    return {"answer_ms": answer, "done_ms": done}


def takeover(procs: Processes, redis_url: str, lease: float, samples: int) -> list[float]:
    env = {"STREAMCTL_REDIS_LEASE_SECONDS": str(lease)}
    args = ("--backend", "redis", "--redis-url", redis_url)
    follower, _ = procs.serve(*args, env=env)
    times = []
    for _ in range(samples):
        owner, proc = procs.serve(*args, env=env)
        with httpx.Client(timeout=60) as client:
            run_id = client.post(
                owner + "/v1/runs", json=body(tokens=100000, delay_ms=20, tool=False)
            ).json()["run_id"]
        marks: dict[str, float] = {}
        ready = threading.Event()
        reader = threading.Thread(target=follow, args=(follower, run_id, marks, ready))
        reader.start()
        ready.wait(30)
        killed = time.perf_counter()
        proc.send_signal(signal.SIGKILL)
        reader.join(lease * 3 + 30)
        assert marks.get("done_status") == 1.0, "not finalised as interrupted"
        times.append(marks["done"] - killed)
    return times


async def _subscribe(port: int, path: str, n: int) -> tuple[float, list[Any], list[str]]:
    """Open ``n`` streams of ``path`` (200 connecting at once); once every one has ended: the
    time all were open, per stream (ids, receive times) of its message_chunk events, and the
    failures (a stream that answered no event)."""
    sem = asyncio.Semaphore(200)
    streams: list[tuple[Conn, Response]] = []
    failures: list[str] = []

    async def one() -> None:
        async with sem:
            conn = await Conn.open(port)
            resp = conn.send("GET", path)
            try:
                await resp.wait_count(1)
                streams.append((conn, resp))
            except ConnectionError as exc:
                failures.append(f"HTTP {resp.status}: {exc} {bytes(resp.body[:200])!r}")
                conn.close()

    await asyncio.gather(*(one() for _ in range(n)))
    connected = time.perf_counter()
    await asyncio.gather(*(resp.done for _, resp in streams), return_exceptions=True)
    out = []
    for conn, resp in streams:
        conn.close()
        chunks = [i for i, ty in enumerate(resp.types) if ty == b"message_chunk"]
        out.append(([resp.ids[i] for i in chunks], [resp.times[i] for i in chunks]))
    return connected, out, failures


def _subscribe_worker(port: int, path: str, n: int) -> tuple[float, list[Any], list[str]]:
    return run_async(_subscribe(port, path, n))


def open_streams(client: httpx.Client, node: str) -> int:
    """SSE streams open on ``node`` (its ``streamctl_subscribers`` gauge)."""
    for line in client.get(node + "/metrics").text.splitlines():
        if line.startswith("streamctl_subscribers "):
            return int(float(line.split()[1]))
    return 0


def cross_node_lag(procs: Processes, redis_url: str, subscribers: int, seconds: float) -> Any:
    """One run at 50 events/s on node A, ``subscribers`` streams spread evenly over nodes A, B
    and C (one client process per node, ``benchmarks.fanout``'s subscriber). The lag of each
    (stream, event): receive time - the event's ``created_at`` as stored in Redis (the owner's
    emit time; both clocks are this machine's), over the events created from 0.25 s after the
    last stream connected; split into the owner's streams and the other nodes'."""
    nodes = [procs.serve("--backend", "redis", "--redis-url", redis_url)[0] for _ in range(3)]
    ports = [int(url.rsplit(":", 1)[1]) for url in nodes]
    with httpx.Client(timeout=60) as client:
        demo = body(tokens=1_000_000, delay_ms=20, tool=False)
        run_id = client.post(nodes[0] + "/v1/runs", json=demo).json()["run_id"]
        path = f"/v1/runs/{run_id}/stream"
        shares = [subscribers // 3 + (1 if i < subscribers % 3 else 0) for i in range(3)]
        wall_offset = time.time() - time.perf_counter()
        with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(_subscribe_worker, p, path, n)
                for p, n in zip(ports, shares, strict=True)
            ]
            # The client processes start and connect (seconds on a busy machine); the run is
            # stopped ``seconds`` after every stream is open, which ends them all.
            counts: list[int] = []
            while not counts or counts[-1] < subscribers:
                counts.append(sum(open_streams(client, node) for node in nodes))
                if len(counts) > 10 and counts[-1] == counts[-11] > 0:
                    break  # no stream opened for 2 s: some failed (reported below)
                time.sleep(0.2)
            time.sleep(seconds)
            client.post(f"{nodes[1]}/v1/runs/{run_id}/stop")
            results = [future.result() for future in futures]
    store = redis.Redis.from_url(redis_url)
    entries: Any = store.xrange(keys.events(run_id))
    store.close()
    frames = [keys.frame_of(entry_id, fields) for entry_id, fields in entries]
    created = {f.seq: f.created_at for f in frames if f.type == "message_chunk"}
    since = max(r[0] for r in results) + wall_offset + 0.25
    out = {"all": _fanout_lags([s for r in results for s in r[1]], created, since, wall_offset)}
    out["owner_node"] = _fanout_lags(results[0][1], created, since, wall_offset)
    others = [s for r in results[1:] for s in r[1]]
    out["other_nodes"] = _fanout_lags(others, created, since, wall_offset)
    failures = [f for r in results for f in r[2]]
    out["failed_streams"] = {"n": len(failures), "first": failures[:3]}
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--takeovers", type=int, default=3)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lag-only", action="store_true")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.lag_only:
        with tempfile.TemporaryDirectory() as tmp:
            procs = Processes(Path(tmp))
            try:
                lags = cross_node_lag(procs, procs.redis(), args.subscribers, args.lag_seconds)
            finally:
                procs.close()
        print(f"{args.subscribers} subscribers over 3 nodes, one run at 50 events/s on the first:")
        print(f"  streams that failed to open: {lags.pop('failed_streams')}")
        for name, lag in lags.items():
            e2e = lag["end_to_end_ms"]
            print(
                f"  {name:11s} lag p50 {e2e['p50']:.1f} ms, p99 {e2e['p99']:.1f} ms"
                f" ({lag['deliveries']} deliveries, {lag['missing_deliveries']} missing)"
            )
        print(f"load average {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(lags, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        try:
            redis_url = procs.redis()
            sqlite, _ = procs.serve("--db", str(Path(tmp) / "bench.db"))
            a, _ = procs.serve("--backend", "redis", "--redis-url", redis_url)
            b, _ = procs.serve("--backend", "redis", "--redis-url", redis_url)
            one_stream(sqlite, 2000)  # warm-up
            one_stream(a, 2000)
            results["one_stream_events_per_s"] = {
                "sqlite": [one_stream(sqlite, args.tokens) for _ in range(3)],
                "redis": [one_stream(a, args.tokens) for _ in range(3)],
            }
            results["stop_redis_from_non_owner"] = stop_latency(a, b, args.stops)
            results["stop_redis_from_owner"] = stop_latency(a, a, args.stops)
            results["takeover_s"] = takeover(procs, redis_url, args.lease, args.takeovers)
        finally:
            procs.close()
    streams = results["one_stream_events_per_s"]
    print(f"one stream, {args.tokens} events at zero delay (events/s, median of 3):")
    for name in ("sqlite", "redis"):
        print(f"  {name:7s} {statistics.median(streams[name]):>10,.0f}")
    for key in ("stop_redis_from_non_owner", "stop_redis_from_owner"):
        figures = results[key]
        print(
            f"{key}: answer p50 {pct(figures['answer_ms'], 0.5):.1f} ms"
            f" p99 {pct(figures['answer_ms'], 0.99):.1f} ms;"
            f" done on the stream p50 {pct(figures['done_ms'], 0.5):.1f} ms"
        )
    takeovers = ", ".join(f"{t:.2f}" for t in results["takeover_s"])
    print(f"takeover after kill -9 with a {args.lease:g} s lease: {takeovers} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
