"""``streamctl serve --workers N``: N server processes on one port, for a shared store.

The parent checks that the port is free, binds one listening socket per worker on it with
``SO_REUSEPORT`` (Linux), starts N ordinary ``streamctl serve`` processes with the same settings
(passed as ``STREAMCTL_*`` variables), gives each its socket, and waits for them.

The kernel spreads new connections evenly over the workers' sockets (a hash of each connection's
addresses). Streams live long, so what matters is how many each worker holds: one socket that
all the workers accept from instead gives a burst of connections to whichever worker wakes
first (1,300 connections opened as the runs sweep opens them were split 387 / 913 and 467 / 833;
``docs/redis.md``). The check first makes a port already in use the parent's error, before any
worker starts, also when its holder uses ``SO_REUSEPORT`` (a second ``--workers`` server on the
same port is refused, not joined). Elsewhere than Linux, where ``SO_REUSEPORT`` does not spread
connections, the workers share one socket.

A run lives in the process that started it; any other one reads, streams and stops it through
the store, as another node would (docs/redis.md). That needs a store several processes share:
SQLite is one process's file, so it is refused.

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

LISTEN_FD = "STREAMCTL_WORKER_FD"
"""Set for a worker: the file descriptor of the parent's listening socket (not a setting: only
the parent sets it)."""


def worker_socket() -> list[socket.socket] | None:
    """The listening socket a worker was given, or None for a lone server."""
    fd = os.environ.pop(LISTEN_FD, None)  # not passed on to what the worker starts
    if not fd:
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)  # an agent's subprocess must not keep the port open
    return [sock]


def _socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def listen(settings: Settings, count: int) -> list[socket.socket]:
    """The workers' listening sockets on the port: one each with ``SO_REUSEPORT`` on Linux, else
    one they share (``OSError`` if the port is in use)."""
    if sys.platform != "linux":
        count = 1
    with _socket(settings) as probe:  # a plain bind fails on any listener, SO_REUSEPORT or not
        probe.bind((settings.host, settings.port))
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _socket(settings)
            socks.append(sock)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((settings.host, settings.port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def serve_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM/SIGINT."""
    if settings.backend == "sqlite":
        raise SettingsError(
            "--workers needs a store several processes share (--backend redis): a SQLite file"
            " belongs to one process"
        )
    if settings.port == 0:
        raise SettingsError("--workers needs a fixed --port (the workers share it)")
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            env[ENV_PREFIX + name.upper()] = text
    try:
        socks = listen(settings, settings.workers)
    except OSError as exc:
        raise SettingsError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    env[ENV_PREFIX + "WORKERS"] = "1"
    command = [sys.executable, "-m", "streamctl", "serve"]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(settings.workers):
            sock = socks[i % len(socks)]
            env[LISTEN_FD] = str(sock.fileno())
            workers.append(subprocess.Popen(command, env=env, pass_fds=(sock.fileno(),)))
    except OSError:
        for worker in workers:  # none is left serving the port without its parent
            worker.kill()
            worker.wait()
        raise
    finally:
        for sock in socks:
            sock.close()  # the workers hold them now

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
