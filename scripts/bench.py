"""Benchmarks: streamctl against a bare-SSE baseline, side by side, in one run.

How to run (from anywhere; the wrapper uses the project's .venv):

    scripts/bench                     # everything, 2-3 minutes on 2 cores
    scripts/bench --quick             # smaller sizes, a smoke run (< 60 s)
    scripts/bench --only ttfe,stop    # a subset: ttfe, throughput, fanout, many, idle, stop, resume
    scripts/bench --json out.json     # where the results go (default ./bench-results.json)
    scripts/bench --only throughput --profile server.prof   # + cProfile of the server (see below)
    scripts/bench --src /tmp/tree     # benchmark the streamctl package found in another checkout

What runs where. Every server is a subprocess on a free port with its own temporary SQLite file:
streamctl as ``python -m streamctl serve --port P --db PATH --log-level warning`` (limits raised
through STREAMCTL_* variables so that the benchmark, not a cap, is what is measured), and the
BASELINE as ``python scripts/bench.py --baseline-server --port P``: a bare Starlette app served by
the same uvicorn (uvloop + httptools), whose ``StreamingResponse`` yields the same SSE frames
(``id: n\\nevent: message_chunk\\ndata: {orjson}\\n\\n``, same headers, same ``retry:`` line) from a
generator, with no persistence: the ceiling of the stack. The client is this process: a small raw
HTTP/1.1 client on asyncio streams (uvloop), keep-alive, chunked decoding and SSE parsing done by
hand so that the client costs as little CPU as possible. Times are ``time.perf_counter`` (Linux
CLOCK_MONOTONIC, the same clock in every process) taken when the bytes are read from the socket.
Server CPU is utime + stime from /proc/<pid>/stat (all threads, so SQLite's writer thread
counts); server memory is VmRSS from /proc/<pid>/status.

Measurements (streamctl, and the baseline where the issue asks for a ratio: 1, 2, 5):

1. ttfe: ``POST /v1/runs/stream`` (demo agent, ``delay_ms=0``, ``tool=false``) until the read
   holding the first ``message_chunk``; sequential runs on one keep-alive connection, after a
   warm-up; p50/p90/p99. Done twice (pass 1 and pass 2, interleaved with the baseline): the
   table quotes pass 1, the noise note the difference.
2. throughput: one run of 100,000 chunks at zero delay, at ``low`` and at ``batched``. Events/s at
   the client = last ``id`` received / (request sent -> terminal chunk read); merged chunks cover
   many seqs, so events are counted by ids, not frames. Server CPU us/event = CPU delta / events.
   The client stores the raw bytes and decodes them after the clock stops. Also reported: the
   time to the first chunk (a zero-delay demo agent never awaits, so streamctl's run task emits
   its whole run in one go and the first chunk leaves only after it is committed), and the
   server CPU split by thread (SQLite's writer thread vs the event loop).
3. fanout: one run at 50 events/s (``delay_ms=20``), N subscribers (``GET .../stream``), in one or
   more client processes (``--fanout-procs``). Two lags per (subscriber, event), over events
   created after every subscriber was connected: *end-to-end* = receive time - the event's
   ``created_at`` (the server's emit time, read afterwards from the benchmark's own SQLite file;
   both are wall-clock times on this machine), and *spread* = receive time - the earliest receive
   time of that id over all subscribers. The achieved event rate is reported too (the demo's
   20 ms sleeps run late when the event loop is busy); the run is stopped at a time cap.
4. many: R concurrent runs x 20 tokens/s (``delay_ms=50``), each streamed to its own client.
   Lag = gap between consecutive chunks at the client - the nominal 50 ms (p99), over gaps after
   every run had started; also end-to-end (receive - created_at); server CPU % in that window;
   the achieved tokens/s per run. The runs are stopped at a time cap.
5. idle: K open streams. streamctl: a few runs parked on ``delay_ms=60000`` (100 streams each);
   baseline: K ``StreamingResponse`` streams whose generators sleep. KiB per connection =
   (VmRSS with the streams open - VmRSS before) / K, once every stream has received its first event.
6. stop: a run streaming at ``delay_ms=5``; once 5 events have arrived, ``POST .../stop`` on a
   second keep-alive connection; time until the ``done`` event is read on the stream (and until
   the stop answer). Sequential.
7. resume: a new connection with ``Last-Event-ID: n`` (n < last seq, random) -> the read holding
   event n+1 (checked). Against live runs (``delay_ms=10``, the in-memory tail) and against
   finished runs (replay from SQLite). Connect time excluded.

The noise note gives the load average at start and end and how much CPU other processes used
during the run (machine busy time from /proc/stat minus this process and its children): this
machine has 2 cores, and other processes may be using them.

``--profile PATH`` runs the ``low`` throughput case once more against a streamctl server under
cProfile (enabled only around the run, main thread only: SQLite's writer thread is not in it)
and prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, cycle, islice, pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
HOST = "127.0.0.1"
QUESTION = {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]}
ALL = ("ttfe", "throughput", "fanout", "many", "idle", "stop", "resume")

# Limits raised so that the benchmark measures speed, not a cap (unknown names are ignored).
STREAMCTL_ENV = {
    "STREAMCTL_MAX_RUNS": "100000",
    "STREAMCTL_MAX_RUNS_PER_OWNER": "100000",
    "STREAMCTL_RUNS_PER_MINUTE": "10000000",
    "STREAMCTL_MAX_STREAMS_PER_OWNER": "10000000",
    "STREAMCTL_STALL_SECONDS": "3600",
    "STREAMCTL_MAX_RUN_SECONDS": "3600",
    "STREAMCTL_DRAIN_GRACE": "0",
    "STREAMCTL_RETENTION_DAYS": "0",
}


def demo_body(
    tokens: int, delay_ms: float = 0, granularity: str = "low", **extra: Any
) -> dict[str, Any]:
    demo = {"tokens": tokens, "delay_ms": delay_ms, "tool": False, "tool_ms": 0}
    return {"input": QUESTION, "config": {"demo": demo}, "granularity": granularity, **extra}


# ================================================================================================
# The baseline server: a bare Starlette StreamingResponse, no persistence.
# ================================================================================================

_WORDS = (
    "Sunny and 22°C in Tokyo right now. The forecast says it stays like this for the rest of "
    "the day, with a light breeze in the afternoon and a slightly cooler evening."
).split()


def baseline_app() -> Any:
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def frame(seq: int, type: bytes, payload: dict[str, Any]) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type, orjson.dumps(payload))

    async def run_stream(request: Request) -> StreamingResponse:
        body = orjson.loads(await request.body())
        demo = (body.get("config") or {}).get("demo") or {}
        tokens = int(demo.get("tokens", 40))
        delay = float(demo.get("delay_ms", 30)) / 1000
        run_id = uuid.uuid4().hex
        thread_id = body.get("thread_id") or uuid.uuid4().hex

        async def frames() -> Any:
            yield b"retry: 2000\n\n"
            yield frame(1, b"run", {"run_id": run_id, "thread_id": thread_id, "status": "running"})
            message_id = uuid.uuid4().hex[:12]
            seq = 1
            # Like the demo agent without its tool: two intro words, then `tokens` words.
            for word in islice(chain(("About", "Tokyo:"), cycle(_WORDS)), tokens + 2):
                if delay:
                    await asyncio.sleep(delay)
                seq += 1
                chunk = {"role": "assistant", "content": word + " ", "message_id": message_id}
                yield frame(seq, b"message_chunk", chunk)
            done = {
                "run_id": run_id,
                "thread_id": thread_id,
                "status": "completed",
                "reason": "the agent finished",
                "tokens": tokens + 2,
            }
            yield frame(seq + 1, b"done", done)

        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Run-Id": run_id,
            "X-Thread-Id": thread_id,
        }
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/runs/stream", run_stream, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(
        baseline_app(),
        host=HOST,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=3,
    )


# ================================================================================================
# Server processes
# ================================================================================================

# A streamctl server under cProfile, profiling only between SIGUSR1 and SIGUSR2.
_PROFILED_SERVER = """
import cProfile, signal, sys
from streamctl.cli import main
out, args = sys.argv[1], sys.argv[2:]
prof = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
signal.signal(signal.SIGUSR2, lambda *_: prof.disable())
try:
    main(args)
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed ``name/tid``."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the servers, the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def git_describe(src: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes)" if dirty else "")


class Server:
    """A server subprocess on a free port with its own temporary directory and SQLite file."""

    def __init__(self, kind: str, src: Path, profile: Path | None = None) -> None:
        self.kind = kind
        self.src = src
        self.profile = profile
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        self.db = self.tmp / "bench.db"
        self.log = self.tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = dict(os.environ)
        if self.kind == "streamctl":
            args = ["serve", "--port", str(self.port), "--db", str(self.db)]
            args += ["--log-level", "warning"]
            if self.profile is not None:
                cmd = [sys.executable, "-c", _PROFILED_SERVER, str(self.profile), *args]
            else:
                cmd = [sys.executable, "-m", "streamctl", *args]
            env.update(STREAMCTL_ENV)
            env["PYTHONPATH"] = str(self.src)
            cwd = self.src
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-server"]
            cmd += ["--port", str(self.port)]
            cwd = self.tmp
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)

    async def wait_ready(self, limit_s: float = 30.0) -> None:
        path = "/readyz" if self.kind == "streamctl" else "/healthz"
        deadline = time.perf_counter() + limit_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited:\n{self.log_tail()}")
            try:
                status, _ = await request(self.port, "GET", path)
                if status == 200:
                    return
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.kind} server not ready in {limit_s} s")
            await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in sorted(self.tmp.iterdir(), reverse=True):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.tmp.rmdir()


@contextlib.asynccontextmanager
async def running(kind: str, src: Path, profile: Path | None = None) -> Any:
    server = Server(kind, src, profile)
    server.start()
    try:
        await server.wait_ready()
        yield server
    finally:
        server.stop()


def created_at(db: Path, run_id: str) -> dict[int, float]:
    """seq -> created_at (the server's emit time, wall clock) of a run's message_chunk events."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT seq, created_at FROM events WHERE run_id = ? AND type = 'message_chunk'",
            (run_id,),
        )
        return {int(seq): float(at) for seq, at in rows}
    finally:
        conn.close()


# ================================================================================================
# A raw HTTP/1.1 client: keep-alive, chunked decoding, SSE parsing, receive times per read.
# ================================================================================================

_HEAD, _LENGTH, _SIZE, _DATA, _CRLF, _TRAILER, _RAW, _UNTIL_CLOSE, _IDLE = range(9)


class Response:
    """One response. ``mode``: "auto" (SSE parsed if text/event-stream, else body kept),
    or "raw" (the raw chunked bytes are kept and decoded after the clock stops)."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.status = 0
        self.headers: dict[str, str] = {}
        self.sse = False
        self.body = bytearray()
        self.raw: list[bytes] = []
        self._tail = b""
        self.reads: list[tuple[float, int]] = []
        """Raw mode: (receive time, bytes received so far) per read."""
        self._raw_bytes = 0
        self.sent_at = 0.0
        self.headers_at = 0.0
        self.end_at = 0.0
        self.ids: list[int] = []
        self.types: list[bytes] = []
        self.times: list[float] = []
        self.done_data: bytes | None = None
        self._pending = b""
        self._count_wait: tuple[int, asyncio.Future[float]] | None = None
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def wait_count(self, n: int) -> asyncio.Future[float]:
        """A future set (to the receive time) once ``n`` SSE events have been read."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if len(self.ids) >= n:
            fut.set_result(self.times[n - 1])
        elif self.done.done():
            fut.set_exception(ConnectionError(f"stream ended after {len(self.ids)} events"))
        else:
            self._count_wait = (n, fut)
        return fut

    def feed(self, data: bytes, t: float) -> None:
        if not self.sse:
            self.body += data
            return
        pending = self._pending + data if self._pending else data
        start = 0
        while True:
            end = pending.find(b"\n\n", start)
            if end < 0:
                break
            self._block(pending[start:end], t)
            start = end + 2
        self._pending = pending[start:]

    def _block(self, block: bytes, t: float) -> None:
        seq = -1
        type = b"message"
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                seq = int(line[4:])
            elif line.startswith(b"event: "):
                type = line[7:]
            elif line.startswith(b"data: ") and type == b"done":
                self.done_data = line[6:]
        if seq < 0:
            return  # `retry:` or a `: ping` comment
        self.ids.append(seq)
        self.types.append(type)
        self.times.append(t)
        waiting = self._count_wait
        if waiting is not None and len(self.ids) >= waiting[0]:
            self._count_wait = None
            if not waiting[1].done():
                waiting[1].set_result(t)

    def finish(self, t: float, error: BaseException | None = None) -> None:
        self.end_at = t
        waiting, self._count_wait = self._count_wait, None
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(ConnectionError(f"stream ended after {len(self.ids)} events"))
            waiting[1].exception()  # retrieved: whoever awaits it still gets it
        if not self.done.done():
            if error is not None:
                self.done.set_exception(error)
            else:
                self.done.set_result(t)

    def first(self, type: bytes) -> float:
        return self.times[self.types.index(type)]

    def json(self) -> Any:
        return json.loads(self.body)

    def first_raw(self, needle: bytes) -> float:
        """Raw mode: receive time of the read that completed the first ``needle``."""
        end = b"".join(self.raw).find(needle) + len(needle)
        return next(t for t, total in self.reads if total >= end)

    def decode_raw(self) -> tuple[list[int], list[bytes]]:
        """Ids and types of the events in a "raw" response (after the clock stopped)."""
        data = b"".join(self.raw)
        out = bytearray()
        pos = 0
        while True:
            nl = data.index(b"\r\n", pos)
            size = int(data[pos:nl].split(b";")[0], 16)
            if size == 0:
                break
            out += data[nl + 2 : nl + 2 + size]
            pos = nl + 2 + size + 2
        ids: list[int] = []
        types: list[bytes] = []
        for block in bytes(out).split(b"\n\n"):
            if block.startswith(b"id: "):
                head, _, rest = block.partition(b"\n")
                ids.append(int(head[4:]))
                types.append(rest.partition(b"\n")[0][7:])
        return ids, types


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.resp: Response | None = None
        self.state = _IDLE
        self.left = 0
        self.closed = False
        self.closing = False
        """We closed it: a response cut short then is not an error."""

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, HOST, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.resp
        if resp is not None:
            self.resp = None
            if self.state == _UNTIL_CLOSE or self.closing:
                resp.finish(time.perf_counter())
            else:
                resp.finish(time.perf_counter(), ConnectionError("connection closed"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        mode: str = "auto",
    ) -> Response:
        assert self.resp is None and self.transport is not None, "one request at a time"
        resp = Response(mode)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Accept: text/event-stream"]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            lines.append("Content-Type: application/json")
        if body is not None or method == "POST":
            lines.append(f"Content-Length: {len(payload)}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        self.resp = resp
        self.state = _HEAD
        resp.sent_at = time.perf_counter()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        return resp

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        resp = self.resp
        if resp is None:
            return
        if self.state == _RAW:
            self._raw(resp, data, t)
            return
        self.buf += data
        self._parse(resp, t)

    def _raw(self, resp: Response, data: bytes, t: float) -> None:
        resp.raw.append(data)
        resp._raw_bytes += len(data)
        resp.reads.append((t, resp._raw_bytes))
        resp._tail = (resp._tail + data[-5:])[-5:]
        if resp._tail == b"0\r\n\r\n":  # the last chunk (a data chunk ends "\n\n\r\n")
            self._done(resp, t)

    def _done(self, resp: Response, t: float) -> None:
        self.resp = None
        self.state = _IDLE
        resp.finish(t)

    def _parse(self, resp: Response, t: float) -> None:
        buf = self.buf
        pos = 0
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                lines = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
                pos = end + 4
                resp.status = int(lines[0].split(" ", 2)[1])
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    resp.headers[key.strip().lower()] = value.strip()
                resp.headers_at = t
                resp.sse = resp.headers.get("content-type", "").startswith("text/event-stream")
                chunked = resp.headers.get("transfer-encoding", "").lower() == "chunked"
                if resp.status in (204, 304):
                    self._done(resp, t)
                elif chunked and resp.mode == "raw":
                    self.state = _RAW
                    rest = bytes(buf[pos:])
                    del buf[:]
                    if rest:
                        self._raw(resp, rest, t)
                    return
                elif chunked:
                    self.state = _SIZE
                elif "content-length" in resp.headers:
                    self.left = int(resp.headers["content-length"])
                    self.state = _LENGTH
                    if self.left == 0:
                        self._done(resp, t)
                else:
                    self.state = _UNTIL_CLOSE
            elif state == _LENGTH:
                n = min(self.left, len(buf) - pos)
                if n == 0:
                    break
                resp.feed(bytes(buf[pos : pos + n]), t)
                pos += n
                self.left -= n
                if self.left == 0:
                    self._done(resp, t)
            elif state == _SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                pos = nl + 2
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.left = size
                    self.state = _DATA
            elif state == _DATA:
                n = min(self.left, len(buf) - pos)
                if n == 0:
                    break
                resp.feed(bytes(buf[pos : pos + n]), t)
                pos += n
                self.left -= n
                if self.left == 0:
                    self.state = _CRLF
            elif state == _CRLF:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.state = _SIZE
            elif state == _TRAILER:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                empty = nl == pos
                pos = nl + 2
                if empty:
                    self._done(resp, t)
            elif state == _UNTIL_CLOSE:
                if pos < len(buf):
                    resp.feed(bytes(buf[pos:]), t)
                pos = len(buf)
                break
            else:
                pos = len(buf)  # nothing expected: drop
                break
            if self.resp is None:
                pos = len(buf)
                break
        del buf[:pos]


async def request(
    port: int, method: str, path: str, body: Any = None, conn: Conn | None = None
) -> tuple[int, Any]:
    """A plain request (JSON answer); on a fresh connection unless one is given."""
    own = conn is None
    c = conn or await Conn.open(port)
    try:
        resp = c.send(method, path, body)
        await resp.done
        return resp.status, resp.json() if resp.body else None
    finally:
        if own:
            c.close()


async def start_run(port: int, body: dict[str, Any], conn: Conn | None = None) -> str:
    """Start a run in the background (``POST /v1/runs``); its id."""
    status, run = await request(port, "POST", "/v1/runs", body, conn=conn)
    if status != 201:
        raise RuntimeError(f"POST /v1/runs answered {status}: {run}")
    run_id: str = run["run_id"]
    return run_id


async def stop_later(port: int, run_ids: Callable[[], list[str]], after: float) -> int:
    """After ``after`` seconds, stop the runs ``run_ids()`` names (a cap on a step's time when
    the server cannot keep the agent's pace). Returns how many stops were sent."""
    await asyncio.sleep(after)
    ids = run_ids()
    sem = asyncio.Semaphore(20)

    async def one(run_id: str) -> None:
        async with sem:
            await request(port, "POST", f"/v1/runs/{run_id}/stop?wait=false")

    await asyncio.gather(*(one(r) for r in ids))
    return len(ids)


def check(resp: Response, what: str) -> None:
    if resp.status != 200:
        raise RuntimeError(f"{what}: HTTP {resp.status} {bytes(resp.body[:300])!r}")


# ================================================================================================
# Statistics
# ================================================================================================


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (linear interpolation); NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist_ms(values: Sequence[float], ps: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """Percentiles of durations given in seconds, as milliseconds."""
    out = {f"p{p:g}": round(pct(values, p) * 1000, 3) for p in ps}
    out["n"] = len(values)
    if values:
        out["max"] = round(max(values) * 1000, 3)
    return out


@dataclass
class CpuSampler:
    """Samples (time, server CPU, client CPU) in the background, to read a window afterwards."""

    server: Server
    every: float = 0.2
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples.append((time.perf_counter(), self.server.cpu(), time.process_time()))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()

    def server_at(self, t: float) -> float:
        """Server CPU seconds at ``t``, interpolated between samples."""
        for a, b in pairwise(self.samples):
            if a[0] <= t <= b[0]:
                return a[1] + (b[1] - a[1]) * (t - a[0]) / max(b[0] - a[0], 1e-9)
        return self.samples[0][1] if t < self.samples[0][0] else self.samples[-1][1]

    def window(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(seconds, server CPU %, client CPU %) over the samples inside [t0, t1]."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, float("nan"), float("nan")
        a, b = inside[0], inside[-1]
        wall = b[0] - a[0]
        return wall, 100 * (b[1] - a[1]) / wall, 100 * (b[2] - a[2]) / wall


# ================================================================================================
# Measurements
# ================================================================================================


@dataclass
class Sizes:
    ttfe_runs: int = 300
    ttfe_warmup: int = 30
    throughput_tokens: int = 100_000
    fanout_subscribers: int = 1000
    fanout_seconds: float = 10.0
    many_runs: int = 500
    many_tokens: int = 200
    idle_connections: int = 5000
    idle_per_run: int = 100
    stops: int = 300
    resumes: int = 300

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            ttfe_runs=60,
            ttfe_warmup=10,
            throughput_tokens=20_000,
            fanout_subscribers=100,
            fanout_seconds=3.0,
            many_runs=100,
            many_tokens=40,
            idle_connections=500,
            stops=40,
            resumes=40,
        )


async def ttfe_pass(port: int, runs: int, warmup: int) -> list[float]:
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


async def bench_ttfe(src: Path, sizes: Sizes) -> dict[str, Any]:
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


async def throughput_run(server: Server, tokens: int, granularity: str) -> dict[str, Any]:
    conn = await Conn.open(server.port)
    body = demo_body(tokens=tokens, granularity=granularity)
    await asyncio.sleep(0.3)  # let the server settle (CPU baseline)
    sampler = CpuSampler(server, every=0.02)
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


async def bench_throughput(src: Path, sizes: Sizes) -> dict[str, Any]:
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


async def profile_throughput(src: Path, sizes: Sizes, path: Path) -> dict[str, Any]:
    import pstats

    async with running("streamctl", src, profile=path) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sc.signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
        result = await throughput_run(sc, sizes.throughput_tokens, "low")
        sc.signal(signal.SIGUSR2)
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


def _fanout_lags(
    subs: list[tuple[list[int], list[float]]],
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
    port: int, path: str, n: int, concurrency: int = 200
) -> tuple[float, float, list[tuple[list[int], list[float]]]]:
    """Open ``n`` streams of ``path``; return (all connected at, client CPU s, per-stream
    (ids, receive times) of its message_chunk events) once every stream has ended."""
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
    await asyncio.gather(*(resp.done for _, resp in streams))
    out = []
    for conn, resp in streams:
        conn.close()
        chunks = [i for i, ty in enumerate(resp.types) if ty == b"message_chunk"]
        out.append(([resp.ids[i] for i in chunks], [resp.times[i] for i in chunks]))
    return connected, time.process_time() - cpu0, out


def _subscribe_worker(
    port: int, path: str, n: int
) -> tuple[float, float, list[tuple[list[int], list[float]]]]:
    return run_async(_subscribe(port, path, n))


async def bench_fanout(src: Path, sizes: Sizes, procs: int) -> dict[str, Any]:
    n = sizes.fanout_subscribers
    connect_allowance = max(2.0, n / 300)
    tokens = int(50 * (connect_allowance + sizes.fanout_seconds))
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        run_id = await start_run(sc.port, demo_body(tokens, delay_ms=20))
        path = f"/v1/runs/{run_id}/stream"
        wall_offset = time.time() - time.perf_counter()
        sampler = CpuSampler(sc)
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


async def bench_many(src: Path, sizes: Sizes) -> dict[str, Any]:
    n, tokens = sizes.many_runs, sizes.many_tokens
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sem = asyncio.Semaphore(200)
        conns: list[Conn] = []

        async def connect() -> None:
            async with sem:
                conns.append(await Conn.open(sc.port))

        await asyncio.gather(*(connect() for _ in range(n)))
        wall_offset = time.time() - time.perf_counter()
        sampler = CpuSampler(sc, every=0.1)
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


async def bench_idle(src: Path, sizes: Sizes) -> dict[str, Any]:
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


async def bench_stop(src: Path, sizes: Sizes) -> dict[str, Any]:
    to_done: list[float] = []
    to_answer: list[float] = []
    statuses: dict[str, int] = {}
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sub = await Conn.open(sc.port)
        ctl = await Conn.open(sc.port)
        # Not more tokens than needed: the demo agent builds its whole plan before the first one.
        body = demo_body(2_000, delay_ms=5)
        for _ in range(sizes.stops):
            stream = sub.send("POST", "/v1/runs/stream", body)
            await stream.wait_count(5)
            run_id = stream.headers["x-run-id"]
            answer = ctl.send("POST", f"/v1/runs/{run_id}/stop")
            await stream.done
            await answer.done
            if answer.status != 200 or stream.types[-1] != b"done":
                raise RuntimeError(f"stop: answered {answer.status}, last {stream.types[-1]!r}")
            status = json.loads(stream.done_data or b"{}").get("status", "?")
            statuses[status] = statuses.get(status, 0) + 1
            to_done.append(stream.first(b"done") - answer.sent_at)
            to_answer.append(answer.end_at - answer.sent_at)
        sub.close()
        ctl.close()
    return {
        "stop_to_done_ms": dist_ms(to_done),
        "stop_answer_ms": dist_ms(to_answer),
        "done_statuses": statuses,
    }


async def _resume_once(port: int, run_id: str, cursor: int) -> float:
    conn = await Conn.open(port)
    try:
        resp = conn.send("GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(cursor)})
        t = await resp.wait_count(1)
        check(resp, "resume")
        if resp.ids[0] != cursor + 1:
            raise RuntimeError(f"resume after {cursor}: first id {resp.ids[0]}")
        return t - resp.sent_at
    finally:
        conn.close()


async def bench_resume(src: Path, sizes: Sizes) -> dict[str, Any]:
    rng = random.Random(6)
    live: list[float] = []
    stored: list[float] = []
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        ctl = await Conn.open(sc.port)
        live_runs = []
        for _ in range(10):
            live_runs.append(await start_run(sc.port, demo_body(20_000, delay_ms=10), ctl))
        finished_runs = []
        for _ in range(5):
            finished_runs.append(await start_run(sc.port, demo_body(5_000), ctl))
        await asyncio.sleep(1.5)  # backlogs build up; the zero-delay runs finish
        for i in range(sizes.resumes):
            run_id = live_runs[i % len(live_runs)]
            _, snap = await request(sc.port, "GET", f"/v1/runs/{run_id}", conn=ctl)
            cursor = rng.randint(1, max(1, snap["last_seq"] - 10))
            live.append(await _resume_once(sc.port, run_id, cursor))
        for i in range(sizes.resumes):
            run_id = finished_runs[i % len(finished_runs)]
            _, snap = await request(sc.port, "GET", f"/v1/runs/{run_id}", conn=ctl)
            if snap["status"] == "running":
                raise RuntimeError("resume: a zero-delay run has not finished")
            cursor = rng.randint(1, snap["last_seq"] - 1)
            stored.append(await _resume_once(sc.port, run_id, cursor))
        ctl.close()
    return {"live_run_ms": dist_ms(live), "finished_run_ms": dist_ms(stored)}


# ================================================================================================
# Report
# ================================================================================================


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: measurement, streamctl, baseline, ratio (streamctl / baseline), target, met."""
    rows: list[dict[str, Any]] = []

    def row(
        name: str,
        ours: Any,
        base: Any = None,
        target: str = "",
        met: bool | None = None,
        ratio: bool = True,
    ) -> None:
        r = None
        if ratio and isinstance(ours, int | float) and isinstance(base, int | float) and base:
            r = ours / base
        rows.append(
            {
                "measurement": name,
                "streamctl": ours,
                "baseline": base,
                "ratio": r,
                "target": target,
                "met": met,
            }
        )

    if "ttfe" in results:
        t = results["ttfe"]
        sc, base = t["streamctl"], t["baseline"]
        row(
            "time to first event p50 (ms)",
            sc["p50"],
            base["p50"],
            "≤ baseline + 2 ms",
            sc["p50"] - base["p50"] <= 2.0,
        )
        row("time to first event p90 (ms)", sc["p90"], base["p90"])
        row("time to first event p99 (ms)", sc["p99"], base["p99"])
    if "throughput" in results:
        t = results["throughput"]
        base = t["baseline_low"]
        targets = {"low": (50_000, 20.0), "batched": (300_000, None)}
        for gran in ("low", "batched"):
            ours = t[f"streamctl_{gran}"]
            rate, cpu = targets[gran]
            row(
                f"one stream, {gran} (events/s)",
                ours["events_per_s"],
                base["events_per_s"],
                f"≥ {rate:,}",
                ours["events_per_s"] >= rate,
            )
            row(
                f"server CPU per event, {gran} (µs)",
                ours["server_cpu_us_per_event"],
                base["server_cpu_us_per_event"],
                "" if cpu is None else f"≤ {cpu:g}",
                None if cpu is None else ours["server_cpu_us_per_event"] <= cpu,
            )
            row(
                f"one stream, {gran}: request → first chunk (ms)",
                round(ours["to_first_chunk_s"] * 1000, 1),
                round(base["to_first_chunk_s"] * 1000, 1),
            )
    if "fanout" in results:
        f = results["fanout"]
        n = f["subscribers"]
        e2e, spread = f["end_to_end_ms"], f["spread_ms"]
        row(f"fan-out {n} subs, lag end-to-end p50 (ms)", e2e["p50"])
        row(
            f"fan-out {n} subs, lag end-to-end p99 (ms)", e2e["p99"], None, "≤ 50", e2e["p99"] <= 50
        )
        row(
            f"fan-out {n} subs, spread p50 / p99 (ms)", f"{spread['p50']:.2f} / {spread['p99']:.2f}"
        )
        row(f"fan-out {n} subs, server CPU (%)", f["server_cpu_pct"])
        row(
            f"fan-out {n} subs, events/s achieved (nominal 50)",
            f["events_per_s_achieved"],
            None,
            "50",
            f["events_per_s_achieved"] >= 45,
        )
    if "many" in results:
        m = results["many"]
        label = f"{m['runs']} runs x 20 tok/s"
        gap, e2e = m["gap_minus_50ms_ms"], m["end_to_end_ms"]
        row(f"{label}, gap - 50 ms p99 (ms)", gap["p99"], None, "≤ 100", gap["p99"] <= 100)
        row(f"{label}, lag end-to-end p99 (ms)", e2e["p99"])
        row(f"{label}, server CPU (%)", m["server_cpu_pct"])
        row(
            f"{label}, tokens/s per run achieved",
            m["tokens_per_s_per_run_achieved"],
            None,
            "20",
            m["tokens_per_s_per_run_achieved"] >= 18,
        )
    if "idle" in results:
        i = results["idle"]
        sc, base = i["streamctl"]["kib_per_connection"], i["baseline"]["kib_per_connection"]
        row(
            f"idle stream, {i['streamctl']['connections']} open (KiB/conn)",
            sc,
            base,
            "≤ 40",
            sc <= 40,
        )
    if "stop" in results:
        s = results["stop"]
        d, a = s["stop_to_done_ms"], s["stop_answer_ms"]
        row("stop → done at subscriber p50 (ms)", d["p50"])
        row("stop → done at subscriber p99 (ms)", d["p99"], None, "≤ 20", d["p99"] <= 20)
        row("stop → stop answer p50 / p99 (ms)", f"{a['p50']:.2f} / {a['p99']:.2f}")
    if "resume" in results:
        r = results["resume"]
        live, stored = r["live_run_ms"], r["finished_run_ms"]
        row(
            "resume, live run → first missed p50 / p99 (ms)",
            f"{live['p50']:.2f} / {live['p99']:.2f}",
        )
        row(
            "resume, finished run (SQLite) p50 / p99 (ms)",
            f"{stored['p50']:.2f} / {stored['p99']:.2f}",
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = ["measurement", "streamctl", "baseline", "ratio", "target", "met"]
    body = [
        [
            r["measurement"],
            _fmt(r["streamctl"]),
            _fmt(r["baseline"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            r["target"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for b in body:
        cells = [b[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(b[1:4], widths[1:4], strict=True)
        ]
        cells += [b[4].ljust(widths[4]), b[5].ljust(widths[5])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ================================================================================================
# Main
# ================================================================================================


def run_async(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def raise_nofile(want: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def bench(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    src: Path = args.src
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "ttfe": lambda: bench_ttfe(src, sizes),
        "throughput": lambda: bench_throughput(src, sizes),
        "fanout": lambda: bench_fanout(src, sizes, args.fanout_procs),
        "many": lambda: bench_many(src, sizes),
        "idle": lambda: bench_idle(src, sizes),
        "stop": lambda: bench_stop(src, sizes),
        "resume": lambda: bench_resume(src, sizes),
    }
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in args.only:
        t0 = time.perf_counter()
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        results[name] = await steps[name]()
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name} done in {timings[name]} s", file=sys.stderr, flush=True)
    if args.profile is not None:
        print("[bench] profile …", file=sys.stderr, flush=True)
        results["profile"] = await profile_throughput(src, sizes, args.profile)
    results["step_seconds"] = timings
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run (< 60 s)")
    parser.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated subset of: {', '.join(ALL)}"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose streamctl to run")
    parser.add_argument("--revision", help="what --src is, if not a git checkout (for the JSON)")
    parser.add_argument("--fanout-procs", type=int, default=1, help="client processes (fan-out)")
    parser.add_argument("--profile", type=Path, help="also cProfile the low throughput case")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.baseline_server:
        serve_baseline(args.port)
        return 0

    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    args.src = args.src.resolve()
    if args.profile is not None:
        args.profile = args.profile.resolve()
    sizes = Sizes.quick() if args.quick else Sizes()
    nofile = raise_nofile(max(65536, 2 * sizes.idle_connections + 1000))
    if nofile[0] < sizes.idle_connections + 200:
        print(f"warning: RLIMIT_NOFILE is {nofile[0]}", file=sys.stderr)

    load0 = os.getloadavg()
    busy0, own0, wall0 = machine_busy(), own_cpu(), time.perf_counter()
    results = run_async(bench(args, sizes))
    wall = time.perf_counter() - wall0
    busy, own = machine_busy() - busy0, own_cpu() - own0
    load1 = os.getloadavg()
    cpus = os.cpu_count() or 1
    ttfe = results.get("ttfe")
    noise: dict[str, Any] = {
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in load1],
        "cpus": cpus,
        "wall_seconds": round(wall, 1),
        "machine_busy_cpu_s": round(busy, 1),
        "bench_cpu_s": round(own, 1),
        "other_processes_cpu_s": round(max(0.0, busy - own), 1),
        "other_processes_pct_of_machine": round(100 * max(0.0, busy - own) / (cpus * wall), 1),
    }
    if ttfe:
        noise["ttfe_p50_pass2_minus_pass1_ms"] = {
            k: round(ttfe[k + "_pass2"]["p50"] - ttfe[k]["p50"], 3)
            for k in ("streamctl", "baseline")
        }
    rows = table(results)
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(args.src),
        "revision": args.revision or git_describe(args.src),
        "python": sys.version.split()[0],
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "noise": noise,
        "table": rows,
        "results": results,
    }
    args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    print()
    print(render(rows))
    print()
    print("ratio = streamctl ÷ baseline. Method: see the docstring of scripts/bench.py.")
    if ttfe:
        d = noise["ttfe_p50_pass2_minus_pass1_ms"]
        print(
            f"noise: TTFE p50 pass 2 - pass 1: streamctl {d['streamctl']:+.3f} ms, "
            f"baseline {d['baseline']:+.3f} ms."
        )
    print(
        f"noise: load average {' '.join(map(str, noise['loadavg_start']))} at start, "
        f"{' '.join(map(str, noise['loadavg_end']))} at end; other processes used "
        f"{noise['other_processes_cpu_s']} CPU-s of {cpus} x {wall:.0f} s "
        f"({noise['other_processes_pct_of_machine']} % of the machine)."
    )
    if "profile" in results:
        prof = results["profile"]
        for key in ("tottime", "cumulative"):
            print(f"\nserver profile, low throughput, top 15 by {key} ({prof['profile']}):")
            for r in prof["top"][key]:
                print(
                    f"  {r['tottime_s']:8.3f} {r['cumtime_s']:8.3f} {r['calls']:>9}  "
                    f"{r['function']}"
                )
    print(f"\nrevision {doc['revision']}; {wall:.0f} s; results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
