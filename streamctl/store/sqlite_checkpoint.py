"""The SQLite store's WAL checkpoints, beside the commits rather than inside them.

SQLite's automatic checkpoint runs inside the commit that finds the WAL past its threshold
(1,000 pages): that commit copies the WAL's pages into the database and syncs the file, and
every event queued meanwhile waits for it. Under 500 runs x 20 tokens/s, 2-3 commits in 2,500
took 50-500 ms that way, and they set the lag p99 (docs/benchmarks.md). The ``Checkpointer``
copies what the WAL holds from its own connection, in its own thread, on a ``CHECKPOINT_EVERY``
tick when something was committed since the last one: WAL mode lets a checkpoint run beside
the writer. The writer's automatic checkpoint stays, as the WAL's bound: when it comes there is
little left to copy (it still syncs the files once it catches up with the WAL), and while the
checkpointer holds the checkpoint it is skipped, and tried again at the writer's next commit
in its thread.
"""

from __future__ import annotations

import logging

import aiosqlite
import anyio

logger = logging.getLogger("streamctl.store")

CHECKPOINT_EVERY = 0.25
"""Seconds between two checkpoints while the store commits (none while it does not)."""


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection while ``dirty`` is set.

    PASSIVE copies what it can without waiting for the writer or any reader, never takes the
    writer's lock and never calls the busy handler; the writer sets ``dirty`` after each commit.
    The store opens and closes the connection (``conn``) with its own two."""

    def __init__(self) -> None:
        self.conn: aiosqlite.Connection | None = None
        self.dirty = False
        """Set by the writer after a commit: the WAL has pages the database may not have."""
        self.checkpoints = 0
        """Checkpoints that ran (not those skipped because another held the checkpoint)."""
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    async def run(self) -> None:
        """Checkpoint until ``stop``; a failure is logged and the next one tried later."""
        if self._stopped or self.conn is None:
            return
        with anyio.CancelScope() as self._scope:
            while True:
                await anyio.sleep(CHECKPOINT_EVERY)
                if self.dirty:
                    self.dirty = False
                    await self._checkpoint(self.conn)

    def stop(self) -> None:
        """No more checkpoints; one under way is interrupted (safe: what it copied stays, the
        WAL keeps the rest), so that closing its connection does not wait for it."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
        if self.conn is not None:  # set only while open: its sqlite3 connection is there
            self.conn._conn.interrupt()

    async def _checkpoint(self, conn: aiosqlite.Connection) -> None:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)"))
        except Exception as exc:  # never the store's task group: the writer's checkpoints remain
            logger.warning("a WAL checkpoint failed (the writer's own remain): %s", exc)
            return
        if rows and rows[0][0] == 0:  # (busy, WAL frames, frames copied): busy means skipped
            self.checkpoints += 1
