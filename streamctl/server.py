"""The HTTP server ``streamctl serve`` runs: uvicorn, told about shutdown before it waits.

Plain uvicorn, on SIGTERM, stops listening and then waits for open connections to close before
it runs the application's lifespan shutdown. SSE streams of active runs do not close by
themselves, so uvicorn would wait out its whole graceful timeout and then cut them without a
terminal event. ``Server`` drains the supervisor first: ``/readyz`` fails and new runs get 503 at
once, active runs get ``drain_grace`` seconds, the rest end as ``interrupted``; every open stream
receives its ``done`` and closes; then uvicorn's own shutdown finds nothing left to wait for.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import logging.config
import signal
import socket
import struct
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from . import __version__
from .errors import SettingsError
from .http.embedding import GC_THRESHOLDS
from .logs import log_config
from .settings import Settings
from .sse import unsent_probe
from .store.lock import DatabaseLock
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
        embedding = getattr(self.app.state, "embedding", None)
        if embedding is not None:
            embedding.drain_on_signal = False  # `shutdown` below drains, before uvicorn waits
        await super().startup(sockets)
        self.app.state.abort_connection = self._abort_connection
        self.app.state.unsent_probe = self._unsent_probe
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

    def _transport(self, client: tuple[str, int] | None) -> asyncio.Transport | None:
        for connection in list(self.server_state.connections):
            if client is not None and getattr(connection, "client", None) == client:
                transport: asyncio.Transport | None = getattr(connection, "transport", None)
                return transport
        return None

    def _unsent_probe(self, client: tuple[str, int] | None) -> Callable[[], int] | None:
        """For the connection of ``client``: a function giving the bytes written to it that its
        client has not taken yet (the transport's buffer and the kernel's send queue, unsent or
        unacknowledged). None where the kernel does not tell (not Linux)."""
        return unsent_probe(self._transport(client))

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
        embedding = getattr(self.app.state, "embedding", None)
        if embedding is not None and embedding.supervisor is not None:
            await embedding.drain()
        await super().shutdown(sockets)
        # uvicorn re-raises the signals it caught once it has returned, so a server that drained
        # cleanly on SIGTERM died of it (status 143, a failure to systemd and to orchestrators).
        # A completed drain is the clean exit SIGTERM asks for: 0. SIGINT is still re-raised.
        self._captured_signals[:] = [s for s in self._captured_signals if s != signal.SIGTERM]


_FD_RESERVE = 64
"""File descriptors kept for the database, logs and the listening socket beyond connections."""


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (an idle client costs one descriptor,
    and the common soft default, 1,024, is reached by 1,100 idle sockets). Returns the limit."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # macOS refuses "infinity" as a soft limit
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def connection_cap(settings: Settings, open_files: int) -> int:
    """``max_connections``, lowered to fit the open files limit (past it, accept() fails and
    even ``/healthz`` goes unanswered; under the cap, a request over it gets 503)."""
    fitting = max(open_files - _FD_RESERVE, 16)
    if settings.max_connections > fitting:
        logger.warning(
            "max_connections %d lowered to %d to fit the open files limit (%d)",
            settings.max_connections,
            fitting,
            open_files,
        )
    return min(settings.max_connections, fitting)


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
    # Before binding the port: a second server on a database in use refuses and touches nothing
    # (the store takes the same lock again when the lifespan opens it).
    lock = DatabaseLock(settings.db) if settings.backend == "sqlite" else None
    if lock is not None:
        lock.acquire()
    app = create_app(settings)
    open_files = raise_open_files_limit()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        # Connections (idle or half-sent ones included) and requests at once; beyond, 503.
        limit_concurrency=connection_cap(settings, open_files),
        # After the drain, streams have closed; this only bounds idle keep-alive stragglers.
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    server = Server(config, app, settings)
    # The hot path allocates a few objects per event and holds them until their batch commits;
    # with the default thresholds the cyclic collector runs every few hundred events and walks
    # them all (measured: 16 -> 11.5 µs CPU per event). Objects alive at start-up are frozen out
    # of its way; cycles are still collected, just less often.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        server.run(sockets=worker_socket())
    finally:
        if lock is not None:
            lock.release()
    return 0 if server.started else 1
