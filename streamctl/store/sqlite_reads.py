"""The SQLite store's reads: replay and lookups, on the reader connection.

In WAL mode they never block the writer (``sqlite.py``, which opens both connections and
inherits these methods). The domain asks through the methods of ``RunStore``; ``fetch_one`` and
``fetch_all`` also serve inspection and tests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiosqlite

from ..errors import StoreError
from ..events import Frame
from . import statements as sql
from .base import ACTIVE_STATUSES, RunRecord, ThreadRecord
from .chunks import Unchunked, decode_chunk, select


class SqliteReads:
    """The reading half of ``SqliteStore``."""

    _reader: aiosqlite.Connection | None
    _unchunked: Unchunked

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """One row of any query (for inspection and tests; the domain asks through the methods
        of ``RunStore``)."""
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in await self.fetch_rows(sql, params)]

    async def fetch_rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        assert self._reader is not None, "store is not open"
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    async def read_frames(self, run_id: str, after: int, upto: int | None = None) -> list[Frame]:
        """Committed events of a run with ``after < seq <= upto``, in order: its chunks, then its
        newest events, which the store holds in memory while they are in the journal."""
        journaled = self._unchunked.frames(run_id)  # taken first: see below
        if journaled and journaled[0].seq <= after + 1:
            return select(journaled, after, upto)
        if upto is None:
            rows = await self.fetch_rows(sql.CHUNKS_AFTER, (run_id, after))
        else:
            rows = await self.fetch_rows(sql.CHUNKS_BETWEEN, (run_id, after, upto))
        frames = [
            frame
            for first, last, times, blob in rows
            for frame in decode_chunk(first, last, times, blob, after, upto)
        ]
        # Frames chunked while the chunks were read are in both: what was journaled before the
        # read is in memory (taken before) or chunked by then, so nothing falls between.
        last = frames[-1].seq if frames else after
        return frames + select(journaled, last, upto)

    async def get_run(self, run_id: str) -> RunRecord | None:
        journaled = self._unchunked.last_seq(run_id)  # taken first: see ``_record``
        row = await self.fetch_one(sql.RUN, (run_id,))
        return None if row is None else self._record(row, {run_id: journaled or 0})

    async def list_runs(
        self,
        owner: str | None,
        thread_id: str | None = None,
        limit: int = 50,
        status: str | None = None,
    ) -> list[RunRecord]:
        journaled = self._unchunked.last_seqs()  # taken first: see ``_record``
        if status is not None:
            rows = await self.fetch_all(sql.RUNS_FILTERED, (owner, thread_id, status, limit))
        elif thread_id is None:
            rows = await self.fetch_all(sql.RUNS_OF_OWNER, (owner, limit))
        else:
            rows = await self.fetch_all(sql.RUNS_OF_OWNER_ON_THREAD, (owner, thread_id, limit))
        return [self._record(row, journaled) for row in rows]

    async def get_thread(self, owner: str, thread_id: str) -> ThreadRecord | None:
        row = await self.fetch_one(sql.THREAD, (owner, thread_id))
        if row is None:
            return None
        return ThreadRecord(row["thread_id"], row["owner"], row["created_at"])

    async def thread_runs(
        self, owner: str, thread_id: str, *, limit: int | None = None, before: str | None = None
    ) -> list[RunRecord]:
        journaled = self._unchunked.last_seqs()  # taken first: see ``_record``
        if limit is None and before is None:
            rows = await self.fetch_all(sql.RUNS_ON_THREAD, (owner, thread_id))
        else:
            page = -1 if limit is None else limit  # LIMIT -1: no limit
            rows = await self.fetch_all(sql.LATEST_RUNS_ON_THREAD, (owner, thread_id, before, page))
        return [self._record(row, journaled) for row in rows]

    async def next_run_on_thread(self, owner: str, thread_id: str, run_id: str) -> str | None:
        row = await self.fetch_one(sql.NEXT_RUN_ON_THREAD, (owner, thread_id, run_id))
        return None if row is None else str(row["run_id"])

    @staticmethod
    def _record(row: dict[str, Any], journaled: dict[str, int]) -> RunRecord:
        """The run's record; an active one's ``last_seq`` is its last journaled seq if higher
        than its last chunked one. ``journaled`` is taken before the row is read: a chunking
        committed in between is in the row then, and one later left the seqs in memory."""
        record = sql.run_record(row)
        if record.status in ACTIVE_STATUSES:
            seq = journaled.get(record.run_id, 0)
            if seq > record.last_seq:
                return replace(record, last_seq=seq)
        return record
