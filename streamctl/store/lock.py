"""One owner per database: an OS lock on ``<db>.lock``, held for the life of the process.

The SQLite store's crash recovery (``claim_orphans``) treats every active run it did not create as
orphaned, which is only true if no other process is serving the same file. A second server on a
database in use would mark the live server's runs ``interrupted`` and then fight it over their
seqs (``UNIQUE constraint failed``). So the store takes this lock before it reads anything, and a
second process refuses, naming the holder, before it has touched the database.

Why a sidecar file and ``flock``: SQLite's own locks come and go with each transaction (and in WAL
mode readers never block), so they cannot say "this process owns the file". ``flock`` belongs to
the open file, is released by the kernel when the process dies (no stale lock after a crash), and
the sidecar can carry who holds it (pid, host, since) without touching the database. The file is
left in place on release: deleting it would race with a process that has just opened it.

Within one process the lock is shared (counted): ``streamctl serve`` takes it before binding its
port, and the store it opens takes it again. On platforms without ``fcntl`` there is no lock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import orjson

from ..errors import DatabaseInUse

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


_held: dict[str, tuple[int, int]] = {}
"""Locks this process holds: lock file path -> (file descriptor, users)."""
_guard = threading.Lock()


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def _lockable(db: Path) -> bool:
    name = str(db)
    return fcntl is not None and name != ":memory:" and not name.startswith("file:")


class DatabaseLock:
    """``with DatabaseLock(db):`` holds ``<db>.lock``; raises ``DatabaseInUse`` if another process
    holds it."""

    def __init__(self, db: str | Path) -> None:
        self.db = Path(db)
        self.path = lock_path(self.db).resolve() if _lockable(self.db) else None
        self._held = False

    def acquire(self) -> None:
        if self.path is None or self._held:
            return
        key = str(self.path)
        with _guard:
            if key in _held:
                fd, users = _held[key]
                _held[key] = (fd, users + 1)
                self._held = True
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                raise DatabaseInUse(
                    f"the database {str(self.db)!r} is in use by another process ({holder});"
                    " one process owns a database: stop it first, or use another --db"
                ) from exc
            since = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds")
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(me) + b"\n", 0)
            _held[key] = (fd, 1)
            self._held = True

    def release(self) -> None:
        if self.path is None or not self._held:
            return
        key = str(self.path)
        with _guard:
            fd, users = _held[key]
            if users > 1:
                _held[key] = (fd, users - 1)
            else:
                del _held[key]
                os.ftruncate(fd, 0)  # the holder's details go with the lock
                os.close(fd)  # closing the last descriptor releases the flock
            self._held = False

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = orjson.loads(os.pread(fd, 4096, 0))
        return f"pid {data['pid']} on {data['host']} since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is still starting"
