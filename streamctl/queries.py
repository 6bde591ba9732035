"""Every question about runs and threads, answered from memory for live runs and from SQLite
for the rest. ``Supervisor`` inherits these; they never change a run.

A live run answers from its committed state (``Run.snapshot``, ``RunLog``); a finished run from its
final row and its stored events. Both views agree because a run leaves memory only after its
terminal event and final row are committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .broadcast import Counters, follow
from .errors import CursorOutOfRange, RunNotFound, RunPurged, ThreadNotFound
from .runs import Run, iso, row_json
from .settings import Settings
from .shaping import Granularity
from .store import Store


class RunQueries:
    """The read side of the supervisor. ``owner`` scopes every lookup: another principal's run
    or thread is not found, exactly like a missing one; ``None`` (an admin) sees everything."""

    store: Store
    settings: Settings
    counters: Counters
    _runs: dict[str, Run]
    _threads: dict[str, list[Run]]
    """Each busy thread's live runs: the active one first, then the queued ones."""

    def _active(self, thread_id: str) -> Run | None:
        queue = self._threads.get(thread_id)
        return queue[0] if queue else None

    def _live(self, run_id: str, owner: str | None) -> Run | None:
        run = self._runs.get(run_id)
        return run if run is not None and owner in (None, run.owner) else None

    async def _run_row(self, run_id: str, owner: str | None) -> dict[str, Any]:
        row = await self.store.fetch_one(
            "SELECT * FROM runs WHERE run_id = ? AND ifnull(?, owner) = owner", (run_id, owner)
        )
        if row is None:
            raise RunNotFound(run_id)
        return row

    async def get_run(self, run_id: str, owner: str | None) -> dict[str, Any]:
        """The run as of its last committed event."""
        run = self._live(run_id, owner)
        if run is not None:
            return run.snapshot()
        return row_json(await self._run_row(run_id, owner))

    async def list_runs(
        self, owner: str | None, thread_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM runs WHERE ifnull(?, owner) = owner", [owner]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        rows = await self.store.fetch_all(
            sql + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)
        )
        return [
            run.snapshot() if (run := self._live(row["run_id"], owner)) else row_json(row)
            for row in rows
        ]

    async def events_page(
        self, run_id: str, owner: str | None, after: int, limit: int
    ) -> dict[str, Any]:
        """Committed events with seq > after, at most ``limit``, as JSON."""
        run = self._live(run_id, owner)
        if run is not None:
            last_seq, status = run.output.last_seq, run.output.status
        else:
            row = await self._run_row(run_id, owner)
            last_seq, status = row["last_seq"], row["status"]
            _check_not_purged(row, after)
        if after > last_seq:
            raise CursorOutOfRange(run_id, after, last_seq)
        frames = await self.store.read_frames(run_id, after, min(after + limit, last_seq))
        return {
            "events": [f.as_json() for f in frames],
            "last_seq": last_seq,
            "status": status,
        }

    async def subscribe(
        self,
        run_id: str,
        owner: str | None,
        cursor: int,
        *,
        id_prefix: bytes = b"",
        granularity: Granularity = "low",
    ) -> AsyncIterator[bytes] | None:
        """SSE bytes of the run after ``cursor``, then its live tail; None if nothing is left."""
        run = self._live(run_id, owner)
        if run is not None:
            log = run.log
            if cursor > log.committed_seq:
                raise CursorOutOfRange(run_id, cursor, log.committed_seq)
            if log.closed and cursor == log.committed_seq:
                return None
        else:
            row = await self._run_row(run_id, owner)
            if cursor > row["last_seq"]:
                raise CursorOutOfRange(run_id, cursor, row["last_seq"])
            if cursor == row["last_seq"]:
                return None
            _check_not_purged(row, cursor)
            log = None
        return follow(
            self.store,
            run_id,
            log,
            cursor,
            ping_interval=self.settings.ping_interval,
            id_prefix=id_prefix,
            counters=self.counters,
            granularity=granularity,
            batch_ms=self.settings.batch_ms,
            heartbeat=True,
        )

    async def _thread_row(self, thread_id: str, owner: str | None) -> dict[str, Any]:
        row = await self.store.fetch_one(
            "SELECT * FROM threads WHERE thread_id = ? AND ifnull(?, owner) = owner",
            (thread_id, owner),
        )
        if row is None:
            raise ThreadNotFound(thread_id)
        return row

    async def get_thread(self, thread_id: str, owner: str | None) -> dict[str, Any]:
        """The thread's checkpoint: every run's input and assistant output, and its active run."""
        thread = await self._thread_row(thread_id, owner)
        rows = await self.store.fetch_all(
            "SELECT * FROM runs WHERE thread_id = ? ORDER BY created_at, rowid", (thread_id,)
        )
        messages: list[dict[str, Any]] = []
        runs = []
        for row in rows:
            live = self._live(row["run_id"], owner)
            run = live.snapshot() if live is not None else row_json(row)
            runs.append(run)
            for message in orjson.loads(row["input"])["messages"]:
                messages.append({**message, "run_id": run["run_id"]})
            messages.append(
                {
                    "role": "assistant",
                    "content": run["output"]["text"],
                    "run_id": run["run_id"],
                    "status": run["status"],
                    "output": run["output"],
                }
            )
        active = self._active(thread_id)
        return {
            "thread_id": thread_id,
            "created_at": iso(thread["created_at"]),
            "messages": messages,
            "active_run": active.snapshot() if active is not None else None,
            "last_run": runs[-1] if runs else None,
        }

    async def subscribe_thread(
        self,
        thread_id: str,
        owner: str | None,
        cursor: tuple[str, int] | None,
        granularity: Granularity = "low",
    ) -> AsyncIterator[bytes] | None:
        """Follow the thread: after ``cursor`` (``(run_id, seq)``) in its run, then the thread's
        next run; without a cursor, its active run. Ids are ``run_id:seq``. None: nothing left."""
        await self._thread_row(thread_id, owner)
        if cursor is None:
            active = self._active(thread_id)
            if active is None:
                return None
            return await self.subscribe(
                active.run_id, owner, 0, id_prefix=_prefix(active.run_id), granularity=granularity
            )
        run_id, seq = cursor
        row = await self._run_row(run_id, owner)
        if row["thread_id"] != thread_id:
            raise RunNotFound(run_id)
        stream = await self.subscribe(
            run_id, owner, seq, id_prefix=_prefix(run_id), granularity=granularity
        )
        if stream is not None:
            return stream
        # That run is over and fully read: go on with the thread's next run, if there is one.
        following = await self.store.fetch_one(
            "SELECT run_id FROM runs WHERE thread_id = ?"
            " AND rowid > (SELECT rowid FROM runs WHERE run_id = ?) ORDER BY rowid LIMIT 1",
            (thread_id, run_id),
        )
        if following is None:
            return None
        return await self.subscribe(
            following["run_id"],
            owner,
            0,
            id_prefix=_prefix(following["run_id"]),
            granularity=granularity,
        )


def _check_not_purged(row: dict[str, Any], cursor: int) -> None:
    if row["purged_at"] is not None and cursor < row["last_seq"]:
        raise RunPurged(row["run_id"], iso(row["purged_at"]) or "")


def _prefix(run_id: str) -> bytes:
    return f"{run_id}:".encode()
