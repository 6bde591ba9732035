"""``streamctl serve --workers N``: N processes on one port over Redis; refused on SQLite."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from benchmarks.procfs import connections

from .support import ServerProcess
from .support.redis_server import RedisServer, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]  # fixtures this module uses


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process has just exited
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_workers_need_a_shared_store(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamctl", "serve", "--workers", "2", "--port", "8999"]
    done = subprocess.run([*cmd, "--db", str(tmp_path / "x.db")], capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"--workers needs a store several processes share" in done.stderr


def test_a_port_in_use_is_the_parents_error_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cmd = [sys.executable, "-m", "streamctl", "serve", "--workers", "2", "--port", port]
        cmd += ["--backend", "redis", "--redis-url", "redis://127.0.0.1:1/0"]
        done = subprocess.run(cmd, capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}".encode() in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_second_workers_server_on_the_same_port_is_refused(
    spawn_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    """Each worker's socket allows others on its port (``SO_REUSEPORT``): a second server of the
    same user must still not join them and take a share of the connections."""
    server = spawn_server("--backend", "redis", "--redis-url", redis_url, "--workers", "2")
    port = server.url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "streamctl", "serve", "--workers", "2", "--port", port]
    cmd += ["--backend", "redis", "--redis-url", redis_url]
    done = subprocess.run(cmd, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}".encode() in done.stderr
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_the_workers_take_even_shares_of_a_burst_of_connections(
    spawn_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    """Streams live long: each worker must hold about half of them, however they arrive. From
    one socket shared by both, a burst went mostly to whichever worker woke first (up to 70 %)."""
    server = spawn_server("--backend", "redis", "--redis-url", redis_url, "--workers", "2")
    port = int(server.url.rsplit(":", 1)[1])
    clients = []
    try:
        for _ in range(400):  # a burst: every connect under way before any is accepted
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        held = connections(server.process.pid, port)  # each worker's established connections
        while len(held) != 2 or sum(held) < len(clients):  # until both have accepted them all
            time.sleep(0.01)
            held = connections(server.process.pid, port)
        # Hashed over two sockets, a worker's share is binomial: 200 ± 10 (one deviation).
        assert min(held) >= 140, held
    finally:
        for client in clients:
            client.close()


def test_two_workers_share_one_port_and_every_run(
    spawn_server: Callable[..., ServerProcess], redis_url: str, redis_server: RedisServer
) -> None:
    server = spawn_server("--backend", "redis", "--redis-url", redis_url, "--workers", "2")
    assert len(children(server.process.pid)) == 2
    body: dict[str, Any] = {"input": {"messages": [{"role": "user", "content": "hi"}]}}
    body["config"] = {"demo": {"tokens": 200, "delay_ms": 2, "tool": False}}
    run_ids = []
    for _ in range(6):  # a new connection each: either worker may accept it
        with httpx.Client(base_url=server.url, timeout=15) as client:
            response = client.post("/v1/runs", json=body)
            assert response.status_code == 201, response.text
            run_ids.append(response.json()["run_id"])
    for run_id in run_ids:
        got: list[tuple[str, str]] = []
        while not got or got[-1][1] != "done":
            after = {"Last-Event-ID": got[-1][0]} if got else {}
            # Each resume on a new connection, so on either worker, owner or not.
            with (
                httpx.Client(base_url=server.url, timeout=15) as client,
                connect_sse(client, "GET", f"/v1/runs/{run_id}/stream", headers=after) as source,
            ):
                for event in source.iter_sse():
                    if event.data:
                        got.append((event.id, event.event))
                        if len(got) % 50 == 0 or event.event == "done":
                            break
        assert [int(seq) for seq, _ in got] == list(range(1, len(got) + 1))
        with httpx.Client(base_url=server.url, timeout=15) as client:
            run = client.get(f"/v1/runs/{run_id}").json()
        assert (run["status"], run["last_seq"]) == ("completed", len(got))
        assert run["output"]["text"].count(" ") >= 200
    assert server.stop(signal.SIGTERM) == 0  # every worker drained and exited cleanly
    assert children(server.process.pid) == []
