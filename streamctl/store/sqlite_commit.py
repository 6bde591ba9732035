"""One group commit of the SQLite store (``sqlite.py``): the transaction its writer runs in the
connection's thread, then, back in the event loop, the hand-over of what it committed to each
run's log (commit before send), or the news of what it lost."""

from __future__ import annotations

import logging
import sqlite3
from itertools import chain

from . import statements as sql
from .base import CommitSink
from .queue import Batch, Pending

logger = logging.getLogger("streamctl.store")

ROWS_PER_INSERT = 16
"""Journal rows inserted by one statement of a group commit (the rest of a batch: one each)."""
_INSERT_ROWS = sql.INSERT_JOURNAL + ", (?, ?, ?, ?)" * (ROWS_PER_INSERT - 1)


def commit_batch(batch: Batch, db: sqlite3.Connection) -> None:
    """One transaction, in the writer's thread: the batch's statements, its events appended to
    the journal (ids from ``batch.journal_id``), then the chunks of its chunking."""
    try:
        for statement in batch.statements:
            db.execute(statement.sql, statement.params)
        rows = [
            (journal_id, run_id, f.created_at, f.sse)
            for journal_id, (run_id, f, _, _) in enumerate(batch.events, batch.journal_id)
        ]
        # Rows go ROWS_PER_INSERT to a statement: the sqlite3 module releases the GIL around each
        # statement it steps and takes it back after, and while the event loop is busy each
        # take-back waits up to the switch interval (5 ms). Per row, a 500-row batch took 35 ms
        # median with the loop busy; 16 rows a statement, 2 ms (docs/benchmarks.md).
        whole = len(rows) - len(rows) % ROWS_PER_INSERT
        if whole:
            groups = (rows[i : i + ROWS_PER_INSERT] for i in range(0, whole, ROWS_PER_INSERT))
            db.executemany(_INSERT_ROWS, [list(chain(*group)) for group in groups])
        if whole < len(rows):
            db.executemany(sql.INSERT_JOURNAL, rows[whole:])
        if batch.chunking is not None:
            db.executemany(sql.INSERT_EVENT_CHUNK, batch.chunking.rows())
            db.execute(sql.DELETE_JOURNAL, (batch.chunking.delete_upto,))
        db.commit()
    except sqlite3.Error:
        db.rollback()
        raise


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
