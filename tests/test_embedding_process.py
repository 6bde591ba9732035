"""``examples/embed_fastapi.py`` under plain ``uvicorn examples.embed_fastapi:app``, a real process
(docs/embedding.md): the host's cookie login, streamctl under ``/agent``, start, stream, stop,
exact resume, and SIGTERM with streams open: every stream gets its ``done`` (``interrupted``)
and closes cleanly, and the process exits within ``drain_grace`` + a few seconds, with no flag
given to uvicorn (``exit_signals.py`` chains the drain in front of uvicorn's handler).

Streams are read in threads with their own clients, so they stay open while the test signals the
server. Waits are bounded: on a thread's event, on the process exiting, or a short poll of
``/agent/readyz`` with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
GRACE = 1.0
EXIT_SLACK = 5.0
"""The process must exit within ``drain_grace`` + this (invariant 8)."""
SLOW: dict[str, Any] = {"demo": {"tokens": 2000, "delay_ms": 50, "tool": False}}
LOGIN = {"user": "alice", "password": "wonderland"}


class Host:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    port = free_port()
    env = {
        **os.environ,
        "APP_DB": str(tmp_path / "app.db"),
        "STREAMCTL_DRAIN_GRACE": str(GRACE),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "host.log"
    cmd = [sys.executable, "-m", "uvicorn", "examples.embed_fastapi:app", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Host(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            assert process.poll() is None, f"the host exited early:\n{running.output()}"
            assert time.monotonic() < deadline, "the host did not become ready"
            try:
                if httpx.get(running.url + "/agent/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # still starting: nothing to wait on but time
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextmanager
def logged_in(host: Host) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.url, timeout=10.0) as client:
        assert client.post("/login", json=LOGIN).status_code == 200
        yield client


class Reader(threading.Thread):
    """Reads one SSE response to its end in a thread, with the host's session cookie."""

    def __init__(self, host: Host, cookies: httpx.Cookies, method: str, path: str, **kw: Any):
        super().__init__(daemon=True)
        self.host, self.cookies, self.method, self.path, self.kw = host, cookies, method, path, kw
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.opened = threading.Event()
        self.five = threading.Event()
        """Set at the fifth event (or when the stream ended before)."""
        self.run_id: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.host.url, cookies=self.cookies, timeout=60) as client,
                connect_sse(client, self.method, self.path, **self.kw) as source,
            ):
                assert source.response.status_code == 200, source.response.read()
                self.run_id = source.response.headers.get("x-run-id")
                for event in source.iter_sse():
                    if not event.data:
                        continue
                    self.events.append((int(event.id), event.event, orjson.loads(event.data)))
                    self.opened.set()
                    if len(self.events) >= 5:
                        self.five.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.opened.set()
            self.five.set()


def test_the_example_starts_streams_stops_and_resumes_exactly(host: Host) -> None:
    with logged_in(host) as client:
        assert client.get("/me").json() == {"user": "alice"}
        assert httpx.get(host.url + "/agent/v1/runs").status_code == 401  # no session cookie
        page = client.get("/agent/")
        assert page.status_code == 200 and 'src="static/app.js"' in page.text
        # The host's own route: start and stream with streamctl underneath.
        reader = Reader(
            host, client.cookies, "POST", "/chat", json={"message": "Tokyo?", "config": SLOW}
        )
        reader.start()
        assert reader.five.wait(20) and reader.error is None, reader.error
        run_id = reader.run_id
        assert run_id is not None
        stopped = client.post(f"/chat/{run_id}/stop").json()
        assert stopped["status"] == "cancelled" and stopped["stopping"] is False
        reader.join(20)
        assert not reader.is_alive() and reader.error is None, reader.error
        seqs = [seq for seq, _, _ in reader.events]
        assert seqs == list(range(1, len(seqs) + 1)) and reader.events[-1][1] == "done"
        # Exact resume, through the host's route and through streamctl's own under /agent.
        for path in (f"/chat/{run_id}", f"/agent/v1/runs/{run_id}/stream"):
            resumed = Reader(host, client.cookies, "GET", path, headers={"Last-Event-ID": "2"})
            resumed.start()
            resumed.join(20)
            assert resumed.error is None, resumed.error
            assert resumed.events == reader.events[2:]
        snapshot = client.get(f"/agent/v1/runs/{run_id}").json()
        assert snapshot["status"] == "cancelled" and snapshot["last_seq"] == len(seqs)
        assert client.post("/chat/nope/stop").status_code == 404


def test_sigterm_under_plain_uvicorn_ends_every_stream_and_exits(host: Host) -> None:
    with logged_in(host) as client:
        readers = [
            Reader(host, client.cookies, "POST", "/agent/v1/runs/stream", json=body)
            for body in [
                {"input": {"messages": [{"role": "user", "content": f"q{i}"}]}, "config": SLOW}
                for i in range(5)
            ]
        ]
        readers.append(
            Reader(host, client.cookies, "POST", "/chat", json={"message": "x", "config": SLOW})
        )
        for reader in readers:
            reader.start()
        for reader in readers:
            assert reader.opened.wait(20) and reader.error is None, reader.error

        sigterm_at = time.monotonic()
        host.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:  # new runs are refused at once, before the grace ends
            try:
                if client.get("/agent/readyz").status_code == 503:
                    break
            except httpx.TransportError:
                break  # already closed its socket: also refusing
            time.sleep(0.02)
        try:
            status = host.process.wait(GRACE + EXIT_SLACK + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the host did not exit after SIGTERM:\n{host.output()}")
        took = time.monotonic() - sigterm_at

    for reader in readers:
        reader.join(10)
        assert not reader.is_alive()
        assert reader.error is None, reader.error  # each body ended cleanly
        last_seq, last_type, last_data = reader.events[-1]
        assert last_type == "done" and last_data["status"] == "interrupted", reader.events[-3:]
        assert [seq for seq, _, _ in reader.events] == list(range(1, last_seq + 1))
    # uvicorn re-raises the SIGTERM it caught once it has shut down.
    assert status in (0, -signal.SIGTERM), host.output()
    assert "did not stop" not in host.output() and "Traceback" not in host.output()
    print(f"SIGTERM to exit with {len(readers)} streams open: {took:.2f} s (grace {GRACE} s)")
    assert took < GRACE + EXIT_SLACK, f"{took:.1f} s:\n{host.output()}"
