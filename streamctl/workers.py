"""``streamctl serve --workers N``: N server processes on one port, for a shared store.

The parent starts N ordinary ``streamctl serve`` processes with the same settings (passed as
``STREAMCTL_*`` variables) and waits for them; each binds the port with ``SO_REUSEPORT``, so the
kernel spreads new connections over them. A run lives in the process that started it; any other
one reads, streams and stops it through the store, as another node would (docs/redis.md). That
needs a store several processes share: SQLite is one process's file, so it is refused.

SIGTERM or SIGINT to the parent is passed to every worker; each drains as a single server does.
The parent exits 0 once every worker has ended cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

from .errors import SettingsError
from .settings import ENV_PREFIX, Settings

REUSE_PORT = "STREAMCTL_WORKER_REUSE_PORT"
"""Set for a worker: bind the port with SO_REUSEPORT (not a setting: only the parent sets it)."""


def worker_socket(settings: Settings) -> list[socket.socket] | None:
    """The listening socket of a worker (``SO_REUSEPORT``), or None for a lone server."""
    if not os.environ.get(REUSE_PORT):
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    return [sock]


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM/SIGINT."""
    if settings.backend == "sqlite":
        raise SettingsError(
            "--workers needs a store several processes share (--backend redis): a SQLite file"
            " belongs to one process"
        )
    if settings.port == 0:
        raise SettingsError("--workers needs a fixed --port (each worker binds the same one)")
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            env[ENV_PREFIX + name.upper()] = text
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[REUSE_PORT] = "1"
    command = [sys.executable, "-m", "streamctl", "serve"]
    workers = [subprocess.Popen(command, env=env) for _ in range(settings.workers)]

    def forward(sig: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    statuses = [worker.wait() for worker in workers]
    # uvicorn re-raises the signal it drained on, so a clean worker may end "killed" by it.
    clean = (0, -signal.SIGTERM, -signal.SIGINT)
    return 0 if all(status in clean for status in statuses) else 1
