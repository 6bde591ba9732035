"""Schema migrations of the SQLite store: numbered SQL files, each applied once, in order."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from ..errors import StoreError
from .lock import DatabaseLock

T = TypeVar("T")

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations_dir() -> Path:
    """Where the schema lives: inside the installed wheel, or beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "migrations"
    if packaged.is_dir():
        return packaged
    return package.parent / "migrations"


BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for a lock another connection holds."""


async def connect(path: Path) -> aiosqlite.Connection:
    # Not bound to aiosqlite's thread: the writer commits small batches on the event loop's
    # thread while its own thread is idle (``SqliteStore._commit``); never both at once.
    conn = await aiosqlite.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


async def in_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` on the connection in its own thread, in one hop. This is aiosqlite's private
    ``_execute``, the call each of its methods makes once: a batch of N statements through those
    is N hops to the thread and back, each waiting for the GIL behind a busy event loop. Every
    commit goes through here, so any aiosqlite that changed it fails the whole suite."""
    return await conn._execute(lambda: fn(conn._conn))  # type: ignore[no-any-return,no-untyped-call]


async def migrate(conn: aiosqlite.Connection) -> list[str]:
    """Apply the migrations this database has not seen, each in its own transaction, in order."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    await conn.commit()
    done = {row[0] for row in await conn.execute_fetchall("SELECT version FROM schema_migrations")}
    applied: list[str] = []
    # Looked up through the module at call time, so a test can point it elsewhere.
    for path in sorted(migrations_dir().glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise StoreError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in done:
            continue
        # One script, one transaction: the schema change and its record land together or not at all.
        script = (
            f"BEGIN;\n{path.read_text(encoding='utf-8')}\n;\n"
            f"INSERT INTO schema_migrations VALUES ({version}, '{path.name}', {time.time()});\n"
            "COMMIT;"
        )
        try:
            await conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.rollback()
            raise StoreError(f"migration {path.name} failed: {exc}") from exc
        applied.append(path.name)
    return applied


async def migrate_file(path: str | Path) -> list[str]:
    """Open ``path`` (creating it), switch it to WAL and apply pending migrations.

    Refuses (``DatabaseInUse``) while another process serves the database."""
    with DatabaseLock(path):
        try:
            conn = await connect(Path(path))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {str(path)!r}: {exc}") from exc
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return await migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot migrate store {str(path)!r}: {exc}") from exc
        finally:
            await conn.close()
