"""The SQLite store's upkeep: the runs whose owner is gone, retention, idempotency keys.

Retention and the keys write through the store's one writer (``_execute_later``, in order with
everything else it commits) and wait for it (``flush``); ``sqlite.py`` defines both and inherits
these methods, as it inherits the reads. ``claim_orphans`` reads the active runs and takes those
this process did not start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from . import statements as sql
from .base import IdempotencyKey, Orphan
from .sqlite_reads import SqliteReads


class SqliteUpkeep(SqliteReads):
    """The upkeep half of ``SqliteStore``."""

    _owned: set[str]
    _wake: anyio.Event

    def _execute_later(
        self, lane: str, sql: str, params: Sequence[Any] = (), ends_run: str | None = None
    ) -> None:
        raise NotImplementedError  # ``SqliteStore``'s

    async def flush(self, run_id: str | None = None) -> None:
        raise NotImplementedError  # ``SqliteStore``'s

    async def claim_orphans(self) -> list[Orphan]:
        rows = await self.fetch_all(sql.ACTIVE_RUNS)
        orphans = [
            Orphan(r["run_id"], r["thread_id"]) for r in rows if r["run_id"] not in self._owned
        ]
        self._owned.update(orphan.run_id for orphan in orphans)
        return orphans

    async def purge(self, ended_before: float, now: float, limit: int = 500) -> int:
        rows = await self.fetch_all(sql.PURGEABLE_RUNS, (ended_before, limit))
        run_ids = [row["run_id"] for row in rows]
        # Before the deletes are queued, none of these runs is chunked any more (a chunk committed
        # after its delete would bring its events back); its frames stay until the delete is.
        self._unchunked.purging(run_ids)
        for run_id in run_ids:
            self._execute_later("", sql.DELETE_CHUNKS, (run_id,))
            self._execute_later("", sql.DELETE_JOURNALED, (run_id,))
            self._execute_later("", sql.MARK_PURGED, (now, run_id))
        try:
            await self.flush()
        except BaseException:
            self._unchunked.purged(run_ids, deleted=False)
            self._wake.set()  # they may be due for chunking again: an idle writer waits for nothing
            raise
        self._unchunked.purged(run_ids, deleted=True)
        return len(rows)

    async def claim_idempotency_key(
        self, owner: str, key: str, claim: IdempotencyKey, ttl: float
    ) -> IdempotencyKey:
        # Through the writer, in order with everything else it commits: the one connection that
        # writes decides which claim came first; the row read after the flush is the winner's.
        params = (owner, key, claim.run_id, claim.request_hash, claim.created_at)
        while True:
            self._execute_later("", sql.CLAIM_KEY, (*params, claim.created_at - ttl))
            await self.flush()
            row = await self.fetch_one(sql.IDEMPOTENCY_KEY, (owner, key))
            if row is not None:  # else the winner released it meanwhile (its start failed)
                return IdempotencyKey(row["run_id"], row["request_hash"], row["created_at"])

    async def release_idempotency_key(self, owner: str, key: str, run_id: str) -> None:
        self._execute_later("", sql.RELEASE_KEY, (owner, key, run_id))
        await self.flush()

    async def purge_idempotency_keys(self, created_before: float) -> int:
        row = await self.fetch_one(sql.COUNT_OLD_KEYS, (created_before,))
        self._execute_later("", sql.PURGE_KEYS, (created_before,))
        await self.flush()
        return int(row["n"]) if row else 0
