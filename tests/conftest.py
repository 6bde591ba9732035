"""Shared fixtures: a scripted agent factory, a temporary database, and real uvicorn servers on
free ports, running in the test's own event loop (so tests can hold a run at a precise point with
an ``anyio.Event`` and still talk to it over real TCP)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from httpx_sse import ServerSentEvent, aconnect_sse

from streamctl import Settings, create_app
from streamctl.agents import Agent
from streamctl.events import MessageChunk, ToolEnd, ToolStart


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite is asyncio-only


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "streamctl.db"


def chunks(n: int, message_id: str = "m1", word: str = "w") -> list[MessageChunk]:
    """``n`` message chunks ``w0 w1 ...`` of one message."""
    return [MessageChunk(content=f"{word}{i} ", message_id=message_id) for i in range(n)]


def tool_call(call_id: str = "c1") -> list[ToolStart | ToolEnd]:
    return [
        ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id=call_id),
        ToolEnd(name="get_weather", output="Sunny, 22°C", call_id=call_id),
    ]


@dataclass
class Server:
    """A real uvicorn server on 127.0.0.1, serving one streamctl app."""

    url: str
    settings: Settings
    uvicorn: uvicorn.Server
    done: anyio.Event = field(default_factory=anyio.Event)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, **kwargs)

    async def stop(self) -> None:
        self.uvicorn.should_exit = True
        await self.done.wait()


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(db_path: Path) -> AsyncIterator[StartServer]:
    """``await serve(agent=..., **settings)`` starts a server; all are stopped at teardown."""
    servers: list[Server] = []
    async with anyio.create_task_group() as tg:

        async def start(agent: Agent | None = None, **overrides: Any) -> Server:
            overrides.setdefault("db", db_path)
            settings = Settings.from_env({}, **overrides)
            app = create_app(settings, agent=agent)
            # IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections (no 40 ms stalls).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            port = sock.getsockname()[1]
            config = uvicorn.Config(
                app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
            )
            server = Server(f"http://127.0.0.1:{port}", settings, uvicorn.Server(config))

            async def run() -> None:
                try:
                    await server.uvicorn.serve(sockets=[sock])
                finally:
                    sock.close()
                    server.done.set()

            tg.start_soon(run)
            servers.append(server)
            # The socket already listens: requests queue until the lifespan has started.
            return server

        yield start
        for server in servers:
            await server.stop()


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, list[ServerSentEvent]]:
    """Open a stream and collect its events (at most ``limit``, then disconnect)."""
    events: list[ServerSentEvent] = []
    async with aconnect_sse(client, method, url, **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            return response, events
        async for event in source.aiter_sse():
            if event.data == "":  # the retry-only block, `: ping` comments (not dispatched)
                continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return response, events


RUN_BODY: dict[str, Any] = {
    "input": {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]}
}


def run_body(**extra: Any) -> dict[str, Any]:
    return {**RUN_BODY, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """``python -m streamctl serve`` as a real child process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    """The server's stdout and stderr (a file, so a chatty server never blocks on a pipe)."""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, deadline: float = 20.0) -> None:
        """Block until /readyz answers 200 (or the process dies, or the deadline passes)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # the process is still starting: nothing to wait on but time
        raise AssertionError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def spawn_server(db_path: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``spawn_server(*args, env={...})`` starts ``python -m streamctl serve`` on a free port."""
    started: list[ServerProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port), *args]
        if "--db" not in args:
            cmd += ["--db", str(db_path)]
        environ = {**os.environ, **(env or {})}
        log = tmp_path / f"server-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
        server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
        started.append(server)
        server.wait_ready()
        return server

    yield spawn
    for server in started:
        server.stop(signal.SIGKILL)
