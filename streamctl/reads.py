"""The read side: every question about runs and threads, answered from memory for live runs and
from the store for the rest. Nothing here changes a run.

A live run answers from its committed state (``Run.snapshot``, ``RunLog``); a finished run from its
final record and its stored events. Both views agree because a run leaves memory only after its
terminal event and final row are committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .broadcast import follow, follow_frames
from .errors import CursorOutOfRange, InvalidCursor, RunNotFound, RunPurged, ThreadNotFound
from .events import Frame
from .history import thread_turn
from .registry import LiveRuns
from .remote import RemoteLogs
from .runs import RunOutput, iso, record_json, run_json
from .settings import Settings
from .shaping import Granularity
from .stats import Counters
from .store.base import ACTIVE_STATUSES, RunRecord, RunStore, ThreadRecord


class RunReads:
    """Snapshots, event pages, run and thread streams, threads. ``owner`` scopes every lookup:
    another principal's run or thread is not found, exactly like a missing one; ``None`` (an
    admin) sees every run. A thread is ``(owner, thread_id)``: thread lookups take the owner whose
    namespace is addressed (the HTTP layer decides whom a principal may address)."""

    def __init__(
        self,
        store: RunStore,
        live: LiveRuns,
        settings: Settings,
        counters: Counters,
        remote: RemoteLogs | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.settings = settings
        self.counters = counters
        self.remote = remote
        """With a shared store: the runs owned by another process, followed from this one."""

    async def run_record(self, run_id: str, owner: str | None) -> RunRecord:
        """The run's stored record; ``RunNotFound`` if missing or another principal's."""
        record = await self.store.get_run(run_id)
        if record is None or owner not in (None, record.owner):
            raise RunNotFound(run_id)
        return record

    async def thread_record(self, owner: str, thread_id: str) -> ThreadRecord:
        """The thread's stored record; ``ThreadNotFound`` if ``owner`` has no such thread."""
        thread = await self.store.get_thread(owner, thread_id)
        if thread is None:
            raise ThreadNotFound(thread_id)
        return thread

    async def get_run(self, run_id: str, owner: str | None) -> dict[str, Any]:
        """The run as of its last committed event."""
        run = self.live.get(run_id, owner)
        if run is not None:
            return run.snapshot()
        return await self._record_json(await self.run_record(run_id, owner))

    async def _record_json(self, record: RunRecord) -> dict[str, Any]:
        """A stored run as JSON. A run live on another process (a shared store) has no output in
        its record yet: it is folded from its stored events, as its owner folds it."""
        if self.remote is None or record.status not in ACTIVE_STATUSES:
            return record_json(record)
        out = RunOutput.fold(await self.store.read_frames(record.run_id, 0, record.last_seq))
        return run_json(
            run_id=record.run_id,
            thread_id=record.thread_id,
            status=record.status,
            reason=None,
            last_seq=out.last_seq,
            output=out.as_json(),
            error=out.error,
            created_at=record.created_at,
            started_at=record.started_at,
            ended_at=None,
            tokens=out.tokens,
            usage=out.usage,
        )

    async def list_runs(
        self,
        owner: str | None,
        thread_id: str | None = None,
        limit: int = 50,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        records = await self.store.list_runs(owner, thread_id, limit, status)
        runs = []
        for record in records:
            live = self.live.get(record.run_id, owner)
            runs.append(live.snapshot() if live else await self._record_json(record))
        return runs

    async def events_page(
        self, run_id: str, owner: str | None, after: int, limit: int
    ) -> dict[str, Any]:
        """Committed events with seq > after, at most ``limit``, as JSON."""
        run = self.live.get(run_id, owner)
        status: str
        if run is not None:
            last_seq, status = run.output.last_seq, run.output.status
        else:
            record = await self.run_record(run_id, owner)
            last_seq, status = record.last_seq, record.status
            _check_not_purged(record, after)
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
        run = self.live.get(run_id, owner)
        if run is not None:
            log = run.log
            if cursor > log.committed_seq:
                raise CursorOutOfRange(run_id, cursor, log.committed_seq)
            if log.closed and cursor == log.committed_seq:
                return None
        else:
            record = await self.run_record(run_id, owner)
            if cursor > record.last_seq:
                raise CursorOutOfRange(run_id, cursor, record.last_seq)
            log = None
            if self.remote is not None and record.status in ACTIVE_STATUSES:
                log = self.remote.log(run_id, record.last_seq)  # live on another process
            elif cursor == record.last_seq:
                return None
            _check_not_purged(record, cursor)
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
            message_buffer=self.settings.max_message_buffer,
        )

    async def run_frames(
        self, run_id: str, owner: str | None
    ) -> tuple[dict[str, Any], AsyncIterator[list[Frame]]]:
        """The run's snapshot and its committed frames from the first on, then its live tail
        (``broadcast.follow_frames``): what a protocol view translates. A translator keeps
        state, so a view always reads a run from its first frame."""
        run = self.live.get(run_id, owner)
        snapshot = run.snapshot() if run is not None else await self.get_run(run_id, owner)
        if run is None:
            run = self.live.get(run_id, owner)  # it may have started meanwhile (a chosen id)
        if run is None and snapshot["events_purged_at"] is not None and snapshot["last_seq"] > 0:
            raise RunPurged(run_id, snapshot["events_purged_at"])
        frames = follow_frames(
            self.store,
            run_id,
            run.log if run is not None else None,
            ping_interval=self.settings.ping_interval,
            counters=self.counters,
        )
        return snapshot, frames

    async def get_thread(
        self, owner: str, thread_id: str, limit: int | None = None, before: str | None = None
    ) -> dict[str, Any]:
        """The thread's checkpoint: its runs' inputs and assistant outputs, and its active run.
        A page: the newest ``limit`` runs created before the run ``before`` (oldest first);
        ``has_more`` says whether older runs remain, fetched with ``before=next_before``."""
        thread = await self.thread_record(owner, thread_id)
        if before is not None:
            anchor = await self.store.get_run(before)
            if anchor is None or (anchor.owner, anchor.thread_id) != (owner, thread_id):
                raise InvalidCursor(f"before={before!r} is not a run of this thread")
        page = None if limit is None else limit + 1  # one more says whether older runs remain
        records = await self.store.thread_runs(owner, thread_id, limit=page, before=before)
        has_more = limit is not None and len(records) > limit
        if has_more:
            records = records[1:]
        messages: list[dict[str, Any]] = []
        runs = []
        for record in records:
            run = self._json(record, owner)
            runs.append(run)
            messages += thread_turn(record.input, run)
        active = self.live.active(owner, thread_id)
        last_run = runs[-1] if runs else None
        if before is not None:  # the thread's last run, not the page's
            newest = await self.store.thread_runs(owner, thread_id, limit=1)
            last_run = self._json(newest[0], owner) if newest else None
        return {
            "thread_id": thread_id,
            "created_at": iso(thread.created_at),
            "messages": messages,
            "active_run": active.snapshot() if active is not None else None,
            "last_run": last_run,
            "has_more": has_more,
            "next_before": runs[0]["run_id"] if has_more else None,
        }

    def _json(self, record: RunRecord, owner: str | None) -> dict[str, Any]:
        live = self.live.get(record.run_id, owner)
        return live.snapshot() if live is not None else record_json(record)

    async def subscribe_thread(
        self,
        owner: str,
        thread_id: str,
        cursor: tuple[str, int] | None,
        granularity: Granularity = "low",
    ) -> AsyncIterator[bytes] | None:
        """Follow the thread: after ``cursor`` (``(run_id, seq)``) in its run, then the thread's
        next run; without a cursor, its active run. Ids are ``run_id:seq``. None: nothing left."""
        await self.thread_record(owner, thread_id)
        if cursor is None:
            active = self.live.active(owner, thread_id)
            active_id = active.run_id if active is not None else None
            if active_id is None and self.remote is not None:  # active on another process?
                last = await self.store.thread_runs(owner, thread_id, limit=1)
                if last and last[0].status in ACTIVE_STATUSES:
                    active_id = last[0].run_id
            if active_id is None:
                return None
            return await self.subscribe(
                active_id, owner, 0, id_prefix=_prefix(active_id), granularity=granularity
            )
        run_id, seq = cursor
        record = await self.run_record(run_id, owner)
        if record.thread_id != thread_id:
            raise RunNotFound(run_id)
        stream = await self.subscribe(
            run_id, owner, seq, id_prefix=_prefix(run_id), granularity=granularity
        )
        if stream is not None:
            return stream
        # That run is over and fully read: go on with the thread's next run, if there is one.
        following = await self.store.next_run_on_thread(owner, thread_id, run_id)
        if following is None:
            return None
        return await self.subscribe(
            following, owner, 0, id_prefix=_prefix(following), granularity=granularity
        )


def _check_not_purged(record: RunRecord, cursor: int) -> None:
    if record.purged_at is not None and cursor < record.last_seq:
        raise RunPurged(record.run_id, iso(record.purged_at) or "")


def _prefix(run_id: str) -> bytes:
    return f"{run_id}:".encode()
