"""The SQLite store's WAL checkpoints, beside the commits rather than inside them.

SQLite's automatic checkpoint runs inside the commit that finds the WAL past its threshold
(1,000 pages): that commit copies the WAL's pages into the database and syncs the file, and
every event queued meanwhile waits for it. Under 500 runs x 20 tokens/s, 2-3 commits in 2,500
took 50-500 ms that way, and they set the lag p99 (docs/benchmarks.md). The ``Checkpointer``
copies and syncs what the WAL holds from its own connection, in its own thread, every
``CHECKPOINT_EVERY`` seconds after a commit: WAL mode lets a checkpoint run beside the writer.
The writer's automatic checkpoint stays, as the WAL's bound: when it comes there is little left
to copy, and while the checkpointer holds the checkpoint it skips.
"""

from __future__ import annotations

import logging
import sqlite3

import aiosqlite
import anyio

logger = logging.getLogger("streamctl.store")

CHECKPOINT_EVERY = 0.25
"""Seconds between two checkpoints while the store commits (none while it does not)."""


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection while ``dirty`` is set.

    PASSIVE copies what it can without waiting for the writer or any reader and never calls the
    busy handler, so it never holds up a commit; the writer sets ``dirty`` after each one. The
    store opens and closes the connection (``conn``) with its own two."""

    def __init__(self) -> None:
        self.conn: aiosqlite.Connection | None = None
        self.dirty = False
        """Set by the writer after a commit: the WAL has pages the database may not have."""
        self.checkpoints = 0
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
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def _checkpoint(self, conn: aiosqlite.Connection) -> None:
        try:
            await conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            logger.warning("a WAL checkpoint failed (the writer's own remain): %s", exc)
        else:
            self.checkpoints += 1
