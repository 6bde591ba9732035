"""The SQLite store: schema migrations, one group-committing writer, and a reader for replay.

Writes never await per event. ``append`` puts an encoded event on the pending batch and returns;
the writer task commits whatever is pending in one transaction (one ``executemany``), and while it
commits the next batch accumulates. There is no timer in front of the first event, so an idle
store commits a lone event at once and a busy one commits in ever larger batches.

Only after a batch is committed does the writer hand its events to their ``CommitSink`` (the run's
log), which is what lets subscribers see them: commit before send (DESIGN.md invariant 3).

Reads go through a second connection; in WAL mode they never block the writer.
``sqlite3`` errors are translated into ``StoreError`` here and nowhere else.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiosqlite
import anyio
from anyio.abc import TaskGroup

from .errors import StoreError
from .events import Frame
from .metrics import Buckets

logger = logging.getLogger("streamctl.store")

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_INSERT_EVENT = "INSERT INTO events (run_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)"


def migrations_dir() -> Path:
    """Where the schema lives: inside the installed wheel, or beside the package in a checkout."""
    packaged = Path(__file__).with_name("migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


class CommitSink(Protocol):
    """Receives a run's events once they are durable (the run's log)."""

    def committed(self, frame: Frame, event: object) -> None: ...

    def publish(self) -> None: ...


class _Batch:
    """Completion of one group commit; everyone who enqueued into it waits on ``done``."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class Store:
    """One SQLite file. Use as ``async with Store(path) as store``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._tg: TaskGroup | None = None
        self._events: list[tuple[str, Frame, object, CommitSink]] = []
        self._statements: list[tuple[str, Sequence[Any]]] = []
        self._pending = _Batch()
        self._inflight: _Batch | None = None
        self._wake = anyio.Event()
        self._idle = False
        """True while the writer waits on ``_wake`` (a plain flag: appends check it per event)."""
        self._closing = False
        self.batches = 0
        """Transactions committed so far (for tests and benchmarks)."""
        self.committed_events = 0
        self.batch_sizes = Buckets((1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000))
        self.commit_seconds = Buckets((0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        try:
            self._writer = await _connect(self.path)
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await migrate(self._writer)
            self._reader = await _connect(self.path)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._close_connections()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {str(self.path)!r}: {exc}") from exc
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._write_loop, name="streamctl store writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except StoreError:
                logger.exception("last batch could not be committed at shutdown")
        self._closing = True
        self._wake.set()
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        with anyio.CancelScope(shield=True):
            await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    # -- writing ---------------------------------------------------------------------------------

    def append(self, run_id: str, frame: Frame, event: object, sink: CommitSink) -> None:
        """Queue one event for the next group commit. Synchronous: never awaits."""
        self._events.append((run_id, frame, event, sink))
        if self._idle:
            self._idle = False
            self._wake.set()

    def execute_later(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a statement for the next group commit (before that batch's events)."""
        self._statements.append((sql, params))
        if self._idle:
            self._idle = False
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything queued so far is committed; raise ``StoreError`` if it failed."""
        batches = [] if self._inflight is None else [self._inflight]
        if self._events or self._statements:
            batches.append(self._pending)
        for batch in batches:
            await batch.done.wait()
        for batch in batches:
            if batch.error is not None:
                raise StoreError(f"commit failed: {batch.error}") from batch.error

    async def _write_loop(self) -> None:
        conn = self._writer
        assert conn is not None
        while True:
            if not (self._events or self._statements):
                if self._closing:
                    return
                self._wake = anyio.Event()
                self._idle = True
                await self._wake.wait()
                self._idle = False
                continue
            events, self._events = self._events, []
            statements, self._statements = self._statements, []
            batch, self._pending = self._pending, _Batch()
            self._inflight = batch
            began = time.perf_counter()
            try:
                with anyio.CancelScope(shield=True):
                    await self._commit(conn, statements, events)
            except sqlite3.Error as exc:
                logger.exception("group commit of %d events failed", len(events))
                batch.error = exc
                self._abandon(events, exc)
            else:
                self.batches += 1
                self.committed_events += len(events)
                self.batch_sizes.observe(len(events))
                self.commit_seconds.observe(time.perf_counter() - began)
                _deliver(events)
            finally:
                self._inflight = None
                batch.done.set()

    def _abandon(self, events: list[tuple[str, Frame, object, CommitSink]], exc: Exception) -> None:
        """A batch is lost: its runs must not number on past the hole (dense ids), so their
        later events still pending are dropped too, and each run is told it has failed."""
        lost = {id(sink): sink for _, _, _, sink in events}
        if not lost:
            return
        kept = [entry for entry in self._events if id(entry[3]) not in lost]
        if len(kept) < len(self._events):
            # Whoever waits for the pending batch waited for these too: it failed for them.
            self._pending.error = exc
            self._events = kept
            if not kept and not self._statements:
                self._pending.done.set()
                self._pending = _Batch()
        for sink in lost.values():
            failed = getattr(sink, "failed", None)
            if failed is not None:
                failed(exc)

    @staticmethod
    async def _commit(
        conn: aiosqlite.Connection,
        statements: list[tuple[str, Sequence[Any]]],
        events: list[tuple[str, Frame, object, CommitSink]],
    ) -> None:
        try:
            for sql, params in statements:
                await conn.execute(sql, params)
            if events:
                await conn.executemany(
                    _INSERT_EVENT,
                    [(run_id, f.seq, f.type, f.data, f.created_at) for run_id, f, _, _ in events],
                )
            await conn.commit()
        except sqlite3.Error:
            await conn.rollback()
            raise

    # -- reading ---------------------------------------------------------------------------------

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        assert self._reader is not None, "store is not open"
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        return [dict(row) for row in rows]

    async def read_frames(self, run_id: str, after: int, upto: int | None = None) -> list[Frame]:
        """Committed events of a run with ``after < seq <= upto``, in order."""
        sql = "SELECT seq, type, data, created_at FROM events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, after]
        if upto is not None:
            sql += " AND seq <= ?"
            params.append(upto)
        rows = await self.fetch_all(sql + " ORDER BY seq", params)
        return [Frame.build(r["seq"], r["type"], r["data"], r["created_at"]) for r in rows]


def _deliver(events: list[tuple[str, Frame, object, CommitSink]]) -> None:
    sinks: dict[int, CommitSink] = {}
    for run_id, frame, event, sink in events:
        try:
            sink.committed(frame, event)
        except Exception:  # a broken sink must not take the writer (and every run) down
            logger.exception("run %s: delivering committed event %d failed", run_id, frame.seq)
        sinks[id(sink)] = sink
    for sink in sinks.values():
        try:
            sink.publish()
        except Exception:
            logger.exception("waking subscribers failed")


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path)
    conn.row_factory = sqlite3.Row
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA busy_timeout=5000")
    return conn


async def migrate(conn: aiosqlite.Connection) -> list[str]:
    """Apply the migrations this database has not seen, each in its own transaction, in order."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    await conn.commit()
    done = {row[0] for row in await conn.execute_fetchall("SELECT version FROM schema_migrations")}
    applied: list[str] = []
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
    """Open ``path`` (creating it), switch it to WAL and apply pending migrations."""
    try:
        conn = await _connect(Path(path))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {str(path)!r}: {exc}") from exc
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        return await migrate(conn)
    finally:
        await conn.close()
