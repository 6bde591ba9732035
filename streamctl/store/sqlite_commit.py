"""One group commit of the SQLite store (``sqlite.py``): its transaction, run on the event loop's
thread when the batch is small (``inline``) and in the connection's thread otherwise, each with
the connection's pragmas for it; then, in the event loop, the hand-over of what it committed to
each run's log (commit before send), or the news of what it lost."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence
from itertools import chain

from . import statements as sql
from .base import CommitSink
from .migrate import BUSY_TIMEOUT_MS
from .queue import Batch, Pending

logger = logging.getLogger("streamctl.store")

ROWS_PER_INSERT = 128
"""Rows (journal, chunks) inserted by one statement of a group commit; the rest of a batch goes
in at most two more, of a multiple of ``ROWS_STEP`` rows and of fewer (``insert_rows``)."""
ROWS_STEP = 16
"""The sizes of the statements for the rest of a batch: few distinct ones, so that each stays
in the connection's cache of prepared statements (128 by default)."""
_WIDTHS = {sql.INSERT_JOURNAL: 4, sql.INSERT_EVENT_CHUNK: 5}


INLINE_ROWS = 16
"""A batch of at most this many rows, with no chunking, is committed on the event loop's own
thread: its transaction (tens of microseconds) costs less than the two thread hops around it,
which were most of a lone event's commit latency (the time to first event)."""
INLINE_BYTES = 64 * 1024
"""Nor with more bytes than this (a long run's final row carries its whole output)."""
INLINE_STREAK = 256
"""After this many inline commits in a row the next one goes to the writer's thread anyway, so
that the WAL's checkpoint (only ever run there) keeps the WAL bounded under a light load too."""
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

INLINE_MODE = ("PRAGMA wal_autocheckpoint=0", "PRAGMA busy_timeout=0")
"""The writer's connection while it commits on the event loop's thread: it must not block the
loop, so it never checkpoints (with ``synchronous=NORMAL`` a checkpoint syncs the files) and
never waits for a lock another connection holds (the commit goes to the thread instead)."""
THREAD_MODE = ("PRAGMA wal_autocheckpoint=1000", f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
"""The writer's connection while it commits in its own thread: SQLite's automatic checkpoint at
its default 1,000 pages, and the store's busy timeout (``connect``)."""


def inline(batch: Batch) -> bool:
    """Whether ``batch`` is small enough to commit on the event loop's thread."""
    return batch.rows <= INLINE_ROWS and batch.bytes <= INLINE_BYTES and batch.chunking is None


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds the lock (the commit can be retried)."""
    return getattr(exc, "sqlite_errorcode", None) in BUSY_CODES


def set_mode(db: sqlite3.Connection, mode: tuple[str, ...]) -> None:
    for pragma in mode:
        db.execute(pragma)


def commit_in_thread(batch: Batch, switch: bool, db: sqlite3.Connection) -> None:
    """``commit_batch`` in the writer's thread, first setting ``THREAD_MODE`` when ``switch``."""
    if switch:
        set_mode(db, THREAD_MODE)
    commit_batch(batch, db)


def commit_batch(batch: Batch, db: sqlite3.Connection) -> None:
    """One transaction: the batch's statements, its events appended to the journal (ids from
    ``batch.journal_id``), then the chunks of its chunking."""
    try:
        for statement in batch.statements:
            db.execute(statement.sql, statement.params)
        rows = [
            (journal_id, run_id, f.created_at, f.sse)
            for journal_id, (run_id, f, _, _) in enumerate(batch.events, batch.journal_id)
        ]
        insert_rows(db, sql.INSERT_JOURNAL, rows)
        if batch.chunking is not None:
            insert_rows(db, sql.INSERT_EVENT_CHUNK, batch.chunking.rows())
            db.execute(sql.DELETE_JOURNAL, (batch.chunking.delete_upto,))
        db.commit()
    except sqlite3.Error:
        db.rollback()
        raise


def insert_rows(db: sqlite3.Connection, statement: str, rows: Sequence[Sequence[object]]) -> None:
    """``rows`` inserted by ``statement`` (a one-row ``INSERT``), ``ROWS_PER_INSERT`` to a
    statement and the rest in at most two more. The sqlite3 module releases the GIL around each
    statement it steps and takes it back after, and while the event loop is busy each take-back
    waits up to the switch interval (5 ms). Per row, a 500-row batch took 35 ms median with the
    loop busy; 16 rows a statement, 2 ms (docs/benchmarks.md). At 500 runs, a pile-up of 200-400
    events after a slow commit still took 22-38 ms at 16 rows a statement; chunks went one
    statement each (40 runs' chunks: 20-27 ms). Alone, a row cost 4.1 µs at 16 rows a statement
    and 2.2 µs at 128."""
    whole = len(rows) - len(rows) % ROWS_PER_INSERT
    if whole:
        groups = (rows[i : i + ROWS_PER_INSERT] for i in range(0, whole, ROWS_PER_INSERT))
        db.executemany(_insert(statement, ROWS_PER_INSERT), [list(chain(*g)) for g in groups])
    rest = len(rows) - whole
    for size in (rest - rest % ROWS_STEP, rest % ROWS_STEP):
        if size:
            db.execute(_insert(statement, size), list(chain(*rows[whole : whole + size])))
            whole += size


@functools.cache
def _insert(statement: str, rows: int) -> str:
    """``statement``, a one-row ``INSERT``, for ``rows`` rows."""
    return statement + (", (" + ", ".join("?" * _WIDTHS[statement]) + ")") * (rows - 1)


def tell_failed(events: list[Pending], error: BaseException) -> None:
    """Tell each run whose events were lost (once): it must stop numbering past the hole."""
    sinks = {id(sink): sink for _, _, _, sink in events}
    for sink in sinks.values():
        failed = getattr(sink, "failed", None)
        if failed is not None:
            try:
                failed(error)
            except Exception:
                logger.exception("telling a run of its lost events failed")


def deliver(events: list[Pending]) -> None:
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
