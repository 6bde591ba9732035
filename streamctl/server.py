"""The HTTP server ``streamctl serve`` runs: uvicorn, told about shutdown before it waits.

Plain uvicorn, on SIGTERM, stops listening and then waits for open connections to close before
it runs the application's lifespan shutdown. SSE streams of active runs do not close by
themselves, so uvicorn would wait out its whole graceful timeout and then cut them without a
terminal event. ``Server`` drains the supervisor first: ``/readyz`` fails and new runs get 503 at
once, active runs get ``drain_grace`` seconds, the rest end as ``interrupted``; every open stream
receives its ``done`` and closes; then uvicorn's own shutdown finds nothing left to wait for.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import logging.config
import socket
import struct
import time
from types import FrameType
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI

from . import __version__
from .errors import SettingsError
from .logs import log_config
from .settings import Settings
from .workers import serve_workers, worker_socket

logger = logging.getLogger("streamctl.server")

_DRAIN_REPORT_EVERY = 1.0
"""Seconds between two drain progress lines."""

_SECRETS = ("api_keys", "jwt_secret", "stream_token_secret", "redis_url")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.app = app
        self.settings = settings

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn only looks at should_exit every 0.1 s; readiness and new runs fail at once.
        supervisor = getattr(self.app.state, "supervisor", None)
        if supervisor is not None:
            supervisor.control.stop_accepting()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.app.state.abort_connection = self._abort_connection
        if self.started:
            self._banner()

    def _banner(self) -> None:
        s = self.settings
        port = s.port
        for server in self.servers:
            for sock in server.sockets:
                port = sock.getsockname()[1]
        host = f"[{s.host}]" if ":" in s.host else s.host
        logger.info(
            "streamctl %s serving http://%s:%d with agent %s, store %s, auth %s; limits:"
            " %d runs (%d per owner), %d runs/min per owner, %g s per run, %g s ping, %g s drain",
            __version__,
            host,
            port,
            s.agent,
            s.db if s.backend == "sqlite" else "redis",  # the URL may hold a password
            s.auth,
            s.max_runs,
            s.max_runs_per_owner,
            s.runs_per_minute,
            s.max_run_seconds,
            s.ping_interval,
            s.drain_grace,
        )
        values = s.model_dump(mode="json")
        settings = {k: ("[set]" if k in _SECRETS and v else v) for k, v in values.items()}
        logger.debug("settings: %s", settings)

    def _abort_connection(self, client: tuple[str, int] | None) -> None:
        """Reset the connection of a client cut off for not reading (``send_timeout``).

        A plain close would wait to flush what is buffered to a client that never reads, and
        hold the socket (and its buffers) for ever; an abort frees them at once.
        """
        for connection in list(self.server_state.connections):
            if client is not None and getattr(connection, "client", None) == client:
                transport = getattr(connection, "transport", None)
                if transport is None:
                    continue
                # Linger 0: the kernel resets the connection instead of keeping the unsent
                # bytes (and the socket) for a client that never reads them.
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        supervisor = getattr(self.app.state, "supervisor", None)
        if supervisor is not None:
            grace = self.settings.drain_grace
            logger.info(
                "draining: %d active runs get %g s to finish", supervisor.active_runs, grace
            )
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._report_drain, supervisor)
                await supervisor.control.drain(grace)
                tg.cancel_scope.cancel()
            logger.info("drained in %.1f s", time.monotonic() - started)
        await super().shutdown(sockets)

    async def _report_drain(self, supervisor: Any) -> None:
        while True:
            await anyio.sleep(_DRAIN_REPORT_EVERY)
            logger.info("draining: %d runs still active", supervisor.active_runs)


def serve(settings: Settings) -> int:
    """Run streamctl until SIGINT/SIGTERM; return the process exit status."""
    from .http import create_app

    if settings.workers > 1:
        return serve_workers(settings)
    if settings.auth == "none" and not _loopback(settings.host) and not settings.allow_no_auth:
        raise SettingsError(
            f"refusing to serve {settings.host} without authentication: set auth (api-key or"
            " jwt), or --allow-no-auth (STREAMCTL_ALLOW_NO_AUTH=1) if you really mean it"
        )
    # Configured here rather than by uvicorn so that loading the agent already logs this way.
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        # After the drain, streams have closed; this only bounds idle keep-alive stragglers.
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = Server(config, app, settings)
    # The hot path allocates a few objects per event and holds them until their batch commits;
    # with the default thresholds the cyclic collector runs every few hundred events and walks
    # them all (measured: 16 -> 11 µs CPU per event). Objects alive at start-up are frozen out
    # of its way; cycles are still collected, just less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    server.run(sockets=worker_socket(settings))
    return 0 if server.started else 1
