"""The fixtures: a temporary database, real uvicorn servers on free ports running in the test's
own event loop (so tests can hold a run at a precise point with an ``anyio.Event`` and still talk
to it over real TCP), and ``python -m streamctl serve`` child processes. What tests share besides
fixtures is in ``tests/support/``."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from streamctl import Settings, create_app
from streamctl.agents import Agent

from .support import Server, ServerProcess, StartServer, listening_socket, start_process


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite is asyncio-only


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "streamctl.db"


@pytest.fixture
async def serve(db_path: Path) -> AsyncIterator[StartServer]:
    """``await serve(agent=..., **settings)`` starts a server; all are stopped at teardown."""
    servers: list[Server] = []
    async with anyio.create_task_group() as tg:

        async def start(agent: Agent | None = None, **overrides: Any) -> Server:
            overrides.setdefault("db", db_path)
            settings = Settings.from_env({}, **overrides)
            app = create_app(settings, agent=agent)
            sock = listening_socket()
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


@pytest.fixture
def spawn_server(db_path: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``spawn_server(*args, env={...})`` starts ``python -m streamctl serve`` on a free port and
    waits until it is ready; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        db = [] if "--db" in args else ["--db", str(db_path)]
        log = tmp_path / f"server-{len(started)}.log"
        server = start_process([*args, *db], log, env)
        started.append(server)
        server.wait_ready()
        return server

    yield spawn
    for server in started:
        # SIGTERM, so a measured (coverage) process writes its data; killed if it takes long.
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.stop(signal.SIGTERM, timeout=5.0)
