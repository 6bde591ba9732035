"""Real servers for tests: uvicorn in the test's own event loop (``Server``), and
``python -m streamctl serve`` as a child process (``ServerProcess``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import uvicorn
from fastapi import FastAPI

from streamctl import Settings
from streamctl.supervisor import Supervisor


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a child process, which binds it itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1, to hand to uvicorn."""
    # IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections (no 40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@dataclass
class Server:
    """A real uvicorn server on 127.0.0.1, serving one streamctl app."""

    url: str
    settings: Settings
    uvicorn: uvicorn.Server
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        # Reads may wait long on a loaded machine (a parked stream, a storm of requests ahead):
        # tests bound themselves with `fail_after`, so the read timeout is only a backstop.
        kwargs.setdefault("timeout", httpx.Timeout(10.0, read=30.0))
        return httpx.AsyncClient(base_url=self.url, **kwargs)

    async def stop(self) -> None:
        self.uvicorn.should_exit = True
        await self.done.wait()


StartServer = Callable[..., Awaitable[Server]]
"""The ``serve`` fixture: ``await serve(agent=..., **settings)``."""


async def supervisor_of(server: Server, client: httpx.AsyncClient) -> Supervisor:
    """The server's supervisor, once its lifespan has started (it answers ``/readyz``)."""
    assert (await client.get("/readyz")).status_code == 200
    sup: Supervisor = cast(FastAPI, server.uvicorn.config.app).state.supervisor
    return sup


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll another process's state until ``condition`` holds, or fail after ``timeout``."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class ServerProcess:
    """``python -m streamctl serve`` as a real child process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    """The server's stdout and stderr (a file, so a chatty server never blocks on a pipe)."""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, deadline: float = 120.0) -> None:
        """Block until /readyz answers 200 (or the process dies, or the deadline passes).

        The deadline is generous on purpose: on a loaded 2-core machine (load average 16 was seen)
        starting ``--workers 2`` took more than 30 s. It bounds a hang; it measures nothing."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # the process is still starting: nothing to wait on but time
        raise AssertionError(f"server did not become ready in {deadline} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def start_process(
    args: list[str], log: Path, env: dict[str, str] | None = None, *, inherit: bool = True
) -> ServerProcess:
    """Start ``python -m streamctl serve ARGS`` on a free port, output to ``log``; not waited on.

    ``inherit=False`` drops the test runner's own ``STREAMCTL_*`` variables first."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port), *args]
    environ = {k: v for k, v in os.environ.items() if inherit or not k.startswith("STREAMCTL_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=environ | (env or {})
        )
    return ServerProcess(process, f"http://127.0.0.1:{port}", log)
