"""The SQL of the SQLite store (``sqlite.py``), and how its rows become records."""

from __future__ import annotations

from typing import Any

import orjson

from .base import ACTIVE_STATUSES, RunRecord

_ACTIVE = "status IN ('queued', 'running')"
assert all(f"'{status}'" in _ACTIVE for status in ACTIVE_STATUSES)

# -- writes (queued, then committed by the group commit) --------------------------------------

INSERT_JOURNAL = "INSERT INTO event_journal (id, run_id, created_at, frame) VALUES (?, ?, ?, ?)"
INSERT_EVENT_CHUNK = (
    "INSERT INTO event_chunks (run_id, first_seq, last_seq, times, frames) VALUES (?, ?, ?, ?, ?)"
)
DELETE_JOURNAL = "DELETE FROM event_journal WHERE id <= ?"
INSERT_THREAD = "INSERT OR IGNORE INTO threads (thread_id, owner, created_at) VALUES (?, ?, ?)"
INSERT_RUN = (
    "INSERT INTO runs (run_id, thread_id, owner, status, input, config, created_at, started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
MARK_RUNNING = "UPDATE runs SET status = 'running', started_at = ? WHERE run_id = ?"
FINAL_UPDATE = (
    "UPDATE runs SET status = ?, ended_at = ?, last_seq = ?, error = ?, usage = ?, snapshot = ?"
    " WHERE run_id = ?"
)
DELETE_CHUNKS = "DELETE FROM event_chunks WHERE run_id = ?"
DELETE_JOURNALED = "DELETE FROM event_journal WHERE run_id = ?"
# A key is taken unless its binding is younger than the window: one statement, so of two claims
# the writer commits one after the other and the second finds the first's binding.
CLAIM_KEY = (
    "INSERT INTO idempotency_keys (owner, key, run_id, request_hash, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner, key) DO UPDATE SET run_id = excluded.run_id,"
    " request_hash = excluded.request_hash, created_at = excluded.created_at"
    " WHERE idempotency_keys.created_at <= ?"
)
RELEASE_KEY = "DELETE FROM idempotency_keys WHERE owner = ? AND key = ? AND run_id = ?"
PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < ?"
MARK_PURGED = "UPDATE runs SET purged_at = ? WHERE run_id = ?"

# -- reads ------------------------------------------------------------------------------------

# A run's events: its chunks (chunks.py), then what it has in the journal (the store keeps those
# in memory too, and reads them there; the journal is read only out of band and at recovery).
CHUNKS_AFTER = (
    "SELECT first_seq, last_seq, times, frames FROM event_chunks WHERE run_id = ? AND last_seq > ?"
    " ORDER BY last_seq"
)
# The chunks from the one after ``after`` to the one holding ``upto`` (the first whose last_seq
# reaches it), both ends on the index: a page of a long run's events reads a few chunks.
CHUNKS_BETWEEN = (
    "SELECT first_seq, last_seq, times, frames FROM event_chunks WHERE run_id = ?1"
    " AND last_seq > ?2 AND last_seq <= ifnull((SELECT min(last_seq) FROM event_chunks"
    " WHERE run_id = ?1 AND last_seq >= ?3), ?3) ORDER BY last_seq"
)
JOURNAL_OF_RUN = "SELECT created_at, frame FROM event_journal WHERE run_id = ? ORDER BY id"
JOURNAL_BY_RUN = "SELECT run_id, created_at, frame FROM event_journal ORDER BY run_id, id"
LAST_CHUNKED = "SELECT ifnull(max(last_seq), 0) FROM event_chunks WHERE run_id = ?"
_RUN_COLUMNS = (
    f"runs.*, CASE WHEN {_ACTIVE} THEN (SELECT ifnull(max(last_seq), 0) FROM event_chunks"
    " WHERE event_chunks.run_id = runs.run_id) END AS stored_seq"
)
"""A run's row; for an active one, also its last chunked seq (the row's ``last_seq`` is written
only when the run ends, and a run whose owner could not end it must not show 0). The store
raises it to the seq of the run's newest journaled event, which it holds in memory."""

RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
RUNS_OF_OWNER = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE ifnull(?, owner) = owner"
    " ORDER BY created_at DESC, rowid DESC LIMIT ?"
)
RUNS_OF_OWNER_ON_THREAD = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE ifnull(?, owner) = owner AND thread_id = ?"
    " ORDER BY created_at DESC, rowid DESC LIMIT ?"
)
RUNS_FILTERED = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE ifnull(?, owner) = owner"
    " AND ifnull(?, thread_id) = thread_id"
    " AND status = ? ORDER BY created_at DESC, rowid DESC LIMIT ?"
)
# A thread is (owner, thread_id) (migration 0003): every thread query names both.
THREAD = "SELECT * FROM threads WHERE owner = ? AND thread_id = ?"
RUNS_ON_THREAD = (
    f"SELECT {_RUN_COLUMNS} FROM runs WHERE owner = ? AND thread_id = ? ORDER BY created_at, rowid"
)
# The newest ``limit`` runs created before a run (all, when it is NULL), returned oldest first.
# A thread's runs are inserted in creation order, so rowid is that order.
LATEST_RUNS_ON_THREAD = (
    "SELECT * FROM (SELECT rowid AS _row, * FROM runs WHERE owner = ? AND thread_id = ?"
    " AND rowid < ifnull((SELECT rowid FROM runs WHERE run_id = ?), 9223372036854775807)"
    " ORDER BY rowid DESC LIMIT ?) ORDER BY _row"
)
NEXT_RUN_ON_THREAD = (
    "SELECT run_id FROM runs WHERE owner = ? AND thread_id = ?"
    " AND rowid > (SELECT rowid FROM runs WHERE run_id = ?) ORDER BY rowid LIMIT 1"
)
IDEMPOTENCY_KEY = "SELECT * FROM idempotency_keys WHERE owner = ? AND key = ?"
COUNT_OLD_KEYS = "SELECT count(*) AS n FROM idempotency_keys WHERE created_at < ?"
ACTIVE_RUNS = f"SELECT run_id, thread_id FROM runs WHERE {_ACTIVE} ORDER BY created_at, rowid"
PURGEABLE_RUNS = (
    f"SELECT run_id FROM runs WHERE purged_at IS NULL AND ended_at < ? AND NOT {_ACTIVE}"
    " ORDER BY ended_at LIMIT ?"
)


def run_record(row: dict[str, Any]) -> RunRecord:
    snapshot = orjson.loads(row["snapshot"]) if row["snapshot"] else {}
    usage = orjson.loads(row["usage"]) if row["usage"] else {}
    return RunRecord(
        run_id=row["run_id"],
        thread_id=row["thread_id"],
        owner=row["owner"],
        status=row["status"],
        input=orjson.loads(row["input"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        last_seq=row["last_seq"] if row.get("stored_seq") is None else row["stored_seq"],
        reason=snapshot.get("reason"),
        output=snapshot.get("output"),
        error=orjson.loads(row["error"]) if row["error"] else None,
        tokens=usage.get("tokens", 0),
        purged_at=row["purged_at"],
        usage=usage,
    )
