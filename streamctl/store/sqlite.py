"""The SQLite store: one group-committing writer, and a reader for replay and lookups.

Writes never await per event. ``append`` puts an encoded event on the pending batch and returns;
the writer task commits whatever is pending in one transaction (one ``executemany``), and while it
commits the next batch accumulates. There is no timer in front of the first event, so an idle
store commits a lone event at once and a busy one commits in ever larger batches.

Only after a batch is committed does the writer hand its events to their ``CommitSink`` (the run's
log), which is what lets subscribers see them: commit before send (docs/architecture.md,
invariant 3).

Reads go through a second connection (``sqlite_reads.py``); in WAL mode they never block the
writer. A third checkpoints the WAL beside the commits (``sqlite_checkpoint.py``). One process
holds the file, so the runs it finds active that it did not create have lost their owner.
``sqlite3`` errors are translated into ``StoreError`` in this package and nowhere else.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import anyio
import anyio.lowlevel
import orjson
from anyio.abc import TaskGroup

from ..errors import StoreError
from ..events import Frame
from ..stats import StoreStats
from . import statements as sql
from .base import (
    CommitSink,
    FinalState,
    NewRun,
)
from .chunks import Unchunked, recover
from .lock import DatabaseLock
from .migrate import connect, in_thread, migrate
from .queue import Batch, Statement, WriteQueue
from .sqlite_checkpoint import Checkpointer
from .sqlite_commit import (
    INLINE_MODE,
    INLINE_STREAK,
    THREAD_MODE,
    commit_batch,
    commit_in_thread,
    deliver,
    inline,
    is_busy,
    set_mode,
    tell_failed,
)
from .sqlite_upkeep import SqliteUpkeep

logger = logging.getLogger("streamctl.store")

CLOSE_TIMEOUT = 30.0
"""Default bound on closing: committing what is queued, then closing the connections."""

MAX_BATCH_EVENTS = 500
"""Default cap on the rows of one transaction (see ``queue.py``)."""
MAX_BATCH_BYTES = 1024 * 1024
"""Default cap on the bytes of one transaction."""


class SqliteStore(SqliteUpkeep):
    """One SQLite file. Use as ``async with SqliteStore(path) as store``."""

    def __init__(
        self,
        path: str | Path,
        *,
        close_timeout: float = CLOSE_TIMEOUT,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.path = Path(path)
        self.close_timeout = close_timeout
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._tg: TaskGroup | None = None
        self.stats = StoreStats()
        self._queue = WriteQueue(max_batch_events, max_batch_bytes, self.stats)
        self._unchunked = Unchunked()
        """Each run's events in the journal, not chunked yet (``chunks.py``)."""
        self._journal_id = 0
        """The last journal id given (the journal is empty once ``recover`` has run)."""
        self._inflight: Batch | None = None
        """The batch being committed, if any."""
        self._commit_scope: anyio.CancelScope | None = None
        self._wake = anyio.Event()
        self._idle = False
        """True while the writer waits on ``_wake`` (a plain flag: appends check it per event)."""
        self._closing = False
        self._abandoned = False
        self._inline_streak = 0
        """Inline commits since the last one in the writer's thread (``_commit``)."""
        self._mode = THREAD_MODE
        """The writer connection's pragmas: for commits inline or in its thread (``_commit``)."""
        self._owned: set[str] = set()
        """Runs this store created and has not finished: their owner is alive."""
        self.lock = DatabaseLock(self.path)
        """One process owns the file (``lock.py``): taken before anything is read."""
        self.checkpointer = Checkpointer()
        """Checkpoints the WAL beside the commits (``sqlite_checkpoint.py``)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStore:
        self.lock.acquire()  # DatabaseInUse: another process serves this file; nothing touched
        try:
            self._writer = await connect(self.path)
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await migrate(self._writer)
            await in_thread(self._writer, recover)
            self._reader = await connect(self.path)
            self.checkpointer.conn = await connect(self.path)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._close_connections()
            self.lock.release()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open store {str(self.path)!r}: {exc}") from exc
            raise
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._write_loop, name="streamctl store writer")
        self._tg.start_soon(self.checkpointer.run, name="streamctl store checkpointer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded, so a cancelled shutdown still commits what it can, but bounded: a commit
        # that never returns (a hung disk) must not hold the process for ever.
        with anyio.move_on_after(self.close_timeout, shield=True) as bound:
            try:
                await self.flush()
            except StoreError:
                logger.exception("last batch could not be committed at shutdown")
        self._closing = True
        self._wake.set()
        self.checkpointer.stop()
        if bound.cancelled_caught:
            logger.error("the store did not commit within %g s; closing anyway", self.close_timeout)
            self._abandoned = True
            if self._commit_scope is not None:
                # The writer stops waiting for its batch and returns (the batch counts as lost);
                # the writer's thread may still finish that commit before the connection closes.
                self._commit_scope.cancel()
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)
        with anyio.move_on_after(self.close_timeout, shield=True):
            await self._close_connections()
        self.lock.release()

    async def _close_connections(self) -> None:
        for conn in (self.checkpointer.conn, self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = self.checkpointer.conn = None

    # -- writing ---------------------------------------------------------------------------------

    def append(self, run_id: str, frame: Frame, event: object, sink: CommitSink) -> None:
        """Queue one event in its run's lane for a coming group commit; never awaits."""
        self._queue.put(run_id, (run_id, frame, event, sink))
        if self._idle:
            self._idle = False
            self._wake.set()

    def create_run(self, run: NewRun) -> None:
        # Encoded before anything is queued: if this raised, nothing half-written would remain.
        input_json, config_json = orjson.dumps(run.input), orjson.dumps(run.config)
        self._execute_later(
            run.run_id, sql.INSERT_THREAD, (run.thread_id, run.owner, run.created_at)
        )
        self._execute_later(
            run.run_id,
            sql.INSERT_RUN,
            (
                run.run_id,
                run.thread_id,
                run.owner,
                run.status,
                input_json,
                config_json,
                run.created_at,
                run.started_at,
            ),
        )
        self._owned.add(run.run_id)

    def mark_running(self, run_id: str, started_at: float) -> None:
        self._execute_later(run_id, sql.MARK_RUNNING, (started_at, run_id))

    def finish_run(self, run_id: str, final: FinalState) -> None:
        self._execute_later(
            run_id,
            sql.FINAL_UPDATE,
            (
                final.status,
                final.ended_at,
                final.last_seq,
                orjson.dumps(final.error) if final.error else None,
                orjson.dumps({"tokens": final.tokens, **(final.usage or {})}),
                orjson.dumps({"reason": final.reason, "output": final.output}),
                run_id,
            ),
            ends_run=run_id,
        )
        self._owned.discard(run_id)

    def _execute_later(
        self, lane: str, sql: str, params: Sequence[Any] = (), ends_run: str | None = None
    ) -> None:
        """Queue a statement in a lane (a run's: in order with its events)."""
        self._queue.put(lane, Statement(sql, params, ends_run))
        if self._idle:
            self._idle = False
            self._wake.set()

    def abandon(self, run_id: str) -> None:
        pass  # one process: a run left active is finalised by the next start (claim_orphans)

    def drop_queued(self, run_id: str) -> list[Frame]:
        """Drop the run's events waiting in its lane (a stopped run's backlog; see
        ``WriteQueue.drop_events``): its ``done`` then waits for the batch in flight at most."""
        return [frame for _, frame, _, _ in self._queue.drop_events(run_id)]

    async def flush(self, run_id: str | None = None) -> None:
        """Return once everything queued so far is committed (with ``run_id``: everything of
        that run), raise ``StoreError`` if some of it was lost. With capped batches that may take
        several: each lane's count says when. A run waits for its own writes only, not behind
        the backlog of a firehose in another lane."""
        marks = self._queue.marks(run_id)
        # No await between a check and taking the event: no batch end falls between them.
        while not all(mark.reached for mark in marks):
            await self._queue.progress.wait()
        for mark in marks:
            lost = mark.loss()
            if lost is not None:
                raise StoreError(f"commit failed: {lost}") from lost

    async def _write_loop(self) -> None:
        conn = self._writer
        assert conn is not None
        queue = self._queue
        while True:
            if self._abandoned:  # closing took too long: what is still queued is lost
                queue.abandon(StoreError("the store closed before committing"))
                return
            if not queue:
                due = self._unchunked.due()
                if self._closing or (due is not None and due <= time.monotonic()):
                    if due is not None:  # nothing else to write: chunk what is due (all, closing)
                        await self._chunk_only(conn, self._closing)
                    if self._closing:
                        return
                    continue
                await self._idle_until(math.inf if due is None else due - time.monotonic())
                continue
            batch = self._inflight = queue.take()
            batch.journal_id = self._journal_id + 1
            self._journal_id += len(batch.events)
            batch.chunking = self._unchunked.take_with(len(batch.events), time.monotonic())
            out_of_order = self._unchunked.out_of_order(batch.events)
            began = time.perf_counter()
            error: BaseException | None = None
            threaded = False
            try:
                if out_of_order is not None:  # as a key on (run_id, seq) would refuse it
                    raise sqlite3.IntegrityError(out_of_order)
                # Shielded: a cancelled caller must not abandon a commit halfway. Only closing
                # the store cancels it (``__aexit__``, past its bound).
                with anyio.CancelScope(shield=True) as scope:
                    self._commit_scope = scope
                    threaded = await self._commit(conn, batch)
                if scope.cancelled_caught:
                    raise sqlite3.OperationalError("the store closed before the commit ended")
            except sqlite3.Error as exc:
                logger.error("group commit of %d events failed: %s", len(batch.events), exc)
                self.stats.failed_batches += 1
                error = exc
            finally:
                self._commit_scope = None
                self._inflight = None
            if error is None:
                self._count(batch, time.perf_counter() - began)
                self.checkpointer.dirty = True
                queue.settle(batch, None)
                self._journaled(batch)
                deliver(batch.events)
            else:
                dropped = queue.settle(batch, error)
                tell_failed(batch.events + dropped, error)
            # One batch per turn of the loop: with a firehose queued, the event loop (other
            # runs, their streams, stops) gets a turn between two transactions. A commit in the
            # thread gave it one already: the next batch goes at once, not after another turn
            # (at 800 runs a turn is many callbacks, and events waited a turn per commit).
            if not threaded:
                await anyio.lowlevel.checkpoint()

    def _count(self, batch: Batch, seconds: float) -> None:
        stats = self.stats
        events = len(batch.events)
        stats.batches += 1
        stats.committed_events += events
        stats.batch_sizes.observe(events)
        stats.commit_seconds.observe(seconds)
        if batch.events:
            oldest = min([frame.created_at for _, frame, _, _ in batch.events])
            stats.commit_wait_seconds.observe(max(0.0, time.time() - oldest))
        stats.max_batch_rows = max(stats.max_batch_rows, batch.rows)
        stats.max_batch_bytes = max(stats.max_batch_bytes, batch.bytes)

    async def _idle_until(self, seconds: float) -> None:
        """Wait for something to write, at most ``seconds``."""
        self._wake = anyio.Event()
        self._idle = True
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        self._idle = False

    def _journaled(self, batch: Batch) -> None:
        """A batch is committed: its chunking's frames left the journal, its events joined it."""
        unchunked = self._unchunked
        if batch.chunking is not None:
            unchunked.settle(batch.chunking)
        now = time.monotonic()
        for journal_id, (run_id, frame, _, _) in enumerate(batch.events, batch.journal_id):
            unchunked.add(run_id, frame, journal_id, now)
        for statement in batch.statements:  # after its events: a lane keeps their order
            if statement.ends_run is not None:
                unchunked.ended(statement.ends_run)

    async def _commit(self, conn: aiosqlite.Connection, batch: Batch) -> bool:
        """Commit ``batch``: a small one on the event loop's thread (``inline``), any other in
        the connection's thread. Only the writer task uses the writer's connection once open, one
        commit at a time, so the thread is idle while an inline commit runs. Returns whether it
        went to the thread (the loop had its turns meanwhile)."""
        if inline(batch) and self._inline_streak < INLINE_STREAK:
            db = conn._conn
            if self._mode is not INLINE_MODE:
                set_mode(db, INLINE_MODE)
                self._mode = INLINE_MODE
            try:
                commit_batch(batch, db)
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                # Another connection holds the lock: wait for it in the thread, not on the loop.
            else:
                self._inline_streak += 1
                self.stats.inline_batches += 1
                return False
        self._inline_streak = 0
        switch = self._mode is not THREAD_MODE
        self._mode = THREAD_MODE
        await in_thread(conn, partial(commit_in_thread, batch, switch))
        return True

    async def _chunk_only(self, conn: aiosqlite.Connection, everything: bool) -> None:
        """A commit of chunks alone (the queue is empty); a failure is logged, and the frames
        stay in the journal for a later commit (or the next start) to chunk."""
        unchunked, now = self._unchunked, time.monotonic()
        chunking = unchunked.take(now, everything=True) if everything else unchunked.take_idle(now)
        if chunking is None:
            return
        try:
            # Shielded like any commit; closing cancels it past its bound (``__aexit__``), and
            # bounds the chunking of what is left at close as it bounds the last flush.
            with anyio.CancelScope(shield=True) as scope:
                self._commit_scope = scope
                if everything:
                    scope.deadline = anyio.current_time() + self.close_timeout
                await self._commit(conn, Batch(chunking=chunking))
            if scope.cancelled_caught:
                raise sqlite3.OperationalError("the store closed before the commit ended")
        except sqlite3.Error as exc:
            logger.error("chunking the events of %d runs failed: %s", len(chunking.runs), exc)
            self.stats.failed_batches += 1
            if not everything:
                await self._idle_until(1.0)  # not in a loop of failures
            return
        finally:
            self._commit_scope = None
        self.checkpointer.dirty = True
        self._unchunked.settle(chunking)
