"""Server processes for the benchmarks, and what runs them.

Every server is a subprocess on a free port with its own temporary directory and SQLite file:
streamctl as ``python -m streamctl serve --port P --db PATH --log-level warning`` (limits raised
through STREAMCTL_* variables so that the benchmark, not a cap, is what is measured), and the
baseline as ``python -m benchmarks.baseline --port P`` (see ``benchmarks/baseline.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.client import HOST, request
from benchmarks.procfs import proc_cpu, tree_cpu, tree_rss_kib
from streamctl.store.chunks import stored_frames

ROOT = Path(__file__).resolve().parent.parent
"""The checkout holding this package (the baseline server imports it from here)."""
QUESTION = {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]}
T = TypeVar("T")

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
    "STREAMCTL_MAX_CONNECTIONS": "100000",  # lowered by the server to fit its open files limit
}


def demo_body(
    tokens: int, delay_ms: float = 0, granularity: str = "low", **extra: Any
) -> dict[str, Any]:
    demo = {"tokens": tokens, "delay_ms": delay_ms, "tool": False, "tool_ms": 0}
    return {"input": QUESTION, "config": {"demo": demo}, "granularity": granularity, **extra}


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

    def __init__(
        self,
        kind: str,
        src: Path,
        profile: Path | None = None,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        redis: Redis | None = None,
        workers: int = 1,
    ) -> None:
        self.kind = kind
        self.redis = redis
        """With a Redis server: ``--backend redis`` and ``--workers``, its CPU counted as ours."""
        self.workers = workers
        self.src = src
        self.profile = profile
        self.env = STREAMCTL_ENV if env is None else env
        """STREAMCTL_* variables of a streamctl server (default: the raised limits)."""
        self.headers = headers or {}
        """Sent with the readiness probe (e.g. an API key)."""
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
            if self.redis is not None:
                args += ["--backend", "redis", "--redis-url", self.redis.url]
                args += ["--workers", str(self.workers)]
            if self.profile is not None:
                cmd = [sys.executable, "-c", _PROFILED_SERVER, str(self.profile), *args]
            else:
                cmd = [sys.executable, "-m", "streamctl", *args]
            env.update(self.env)
            # The benchmarks' own agent (``paced_agent``) is importable beside ``src``'s streamctl.
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(self.src), str(ROOT)]))
            cwd = self.src
        else:
            cmd = [sys.executable, "-m", "benchmarks.baseline", "--port", str(self.port)]
            env["PYTHONPATH"] = str(ROOT)
            cwd = self.tmp
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)

    async def wait_ready(self, limit_s: float = 120.0) -> None:  # a loaded machine starts slowly
        path = "/readyz" if self.kind == "streamctl" else "/healthz"
        deadline = time.perf_counter() + limit_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited:\n{self.log_tail()}")
            try:
                status, _ = await request(self.port, "GET", path, headers=self.headers)
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
        """CPU seconds of the server, its workers and its Redis (the whole serving system)."""
        redis = proc_cpu(self.redis.pid) if self.redis is not None else 0.0
        return tree_cpu(self.pid) + redis

    def rss_kib(self) -> int:
        """VmRSS of the server and its workers (not Redis: the store, like SQLite's file)."""
        return tree_rss_kib(self.pid)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, now (a server past a memory bound)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
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


class Redis:
    """A private ``redis-server`` on a free port, no persistence, ready once constructed (the
    growth sweeps' with ``--redis-workers``, and ``scripts/bench_redis*.py``'s)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        args = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.tmp), "--logfile", str(self.tmp / "redis.log")]
        self.proc = subprocess.Popen(args)
        self.pid = self.proc.pid
        deadline = time.perf_counter() + 10  # it listens within milliseconds
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                if time.perf_counter() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        for path in self.tmp.iterdir():
            path.unlink()
        self.tmp.rmdir()


@contextlib.asynccontextmanager
async def running(
    kind: str,
    src: Path,
    profile: Path | None = None,
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    workers: int = 0,
) -> AsyncIterator[Server]:
    """A server of ``kind``; with ``workers`` (streamctl only), on a fresh private Redis with
    that many worker processes instead of its SQLite file."""
    redis: Redis | None = None
    if workers and kind == "streamctl":
        redis = Redis()
    server = Server(kind, src, profile, env, headers, redis, max(workers, 1))
    try:
        server.start()
        await server.wait_ready()
        yield server
    finally:
        server.stop()
        if redis is not None:
            redis.stop()


def stored_events(conn: sqlite3.Connection, run_id: str) -> list[tuple[int, str, float]]:
    """(seq, type, created_at) of a run's stored events, in the file of the revision measured
    (``--src``): chunks and journal, or the one-row-per-event table before migration 0005."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone()
    if found is not None:
        query = "SELECT seq, type, created_at FROM events WHERE run_id = ? ORDER BY seq"
        rows = conn.execute(query, (run_id,))
        return [(int(seq), str(kind), float(at)) for seq, kind, at in rows]
    return [(f.seq, f.type, f.created_at) for f in stored_frames(conn, run_id)]


def created_at(db: Path, run_id: str) -> dict[int, float]:
    """seq -> created_at (the server's emit time, wall clock) of a run's message_chunk events."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {seq: at for seq, kind, at in stored_events(conn, run_id) if kind == "message_chunk"}
    finally:
        conn.close()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (as the servers do), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def raise_nofile(want: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
