"""Small batches are committed on the event loop's own thread (``SqliteStore._commit``): the WAL
stays bounded all the same, a lock held by another connection sends the commit to the writer's
thread instead of blocking the loop, and a run's first event is committed before the agent's
next ones."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

import streamctl.store.chunks
import streamctl.store.sqlite
import streamctl.store.sqlite_checkpoint
import streamctl.store.sqlite_commit
from streamctl.agents import ScriptedAgent
from streamctl.events import Frame, MessageChunk
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import chunks
from .support.stored import frames_in_file
from .support.supervisors import USER, finish, request

pytestmark = pytest.mark.anyio

PAGE = 4096


class Sink:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def committed(self, frame: Frame, event: object) -> None:
        self.seqs.append(frame.seq)

    def publish(self) -> None:
        pass


def event(seq: int) -> tuple[Frame, MessageChunk]:
    chunk = MessageChunk(content=f"word {seq} " * 8, message_id="m1")
    return Frame.encode(seq, chunk, 1_764_500_000.0 + seq / 1000), chunk


def wal_pages(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.stat().st_size // PAGE if wal.exists() else 0


async def commit_one_by_one(store: Store, runs: int, per_run: int) -> None:
    sinks = [Sink() for _ in range(runs)]
    for seq in range(1, per_run + 1):
        for number, sink in enumerate(sinks):
            frame, chunk = event(seq)
            store.append(f"run-{number}", frame, chunk, sink)
            await store.flush()  # one commit of one event, small enough to be inline
    assert all(sink.seqs == list(range(1, per_run + 1)) for sink in sinks)


@pytest.fixture
def no_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    """No chunking commit (always in the thread) that would checkpoint on the side."""
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_AGE", 3600.0)
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_EVENTS", 10**9)


BOUND = 1000 + 4 * 256
"""SQLite's automatic checkpoint (1,000 pages), plus a streak of ``INLINE_STREAK`` one-event
commits of a few pages each: what the WAL may reach under inline commits."""


@pytest.mark.usefixtures("no_chunking")
async def test_inline_commits_keep_the_wal_bounded(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inline commits never checkpoint (it syncs the files: not on the loop); every
    ``INLINE_STREAK``-th commit goes to the thread, where SQLite's automatic checkpoint keeps the
    WAL near its 1,000 pages (the streak alone: no checkpointer beside it)."""
    assert streamctl.store.sqlite_commit.INLINE_STREAK == 256
    monkeypatch.setattr(streamctl.store.sqlite_checkpoint, "CHECKPOINT_EVERY", 3600.0)
    async with Store(db_path) as store:
        await commit_one_by_one(store, runs=10, per_run=300)
        stats = store.stats
        assert stats.batches >= 3000
        assert 0 < stats.batches - stats.inline_batches <= stats.batches // 256 + 1
        assert wal_pages(db_path) <= BOUND
    assert sum(len(frames) for frames in frames_in_file(db_path).values()) == 3000


@pytest.mark.usefixtures("no_chunking")
async def test_the_wal_grows_without_the_threads_checkpoints(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound above is the streak's doing: with every commit inline and no checkpointer,
    nothing checkpoints and the same 3,000 commits grow the WAL past it."""
    monkeypatch.setattr(streamctl.store.sqlite, "INLINE_STREAK", 10**9)
    monkeypatch.setattr(streamctl.store.sqlite_checkpoint, "CHECKPOINT_EVERY", 3600.0)
    async with Store(db_path) as store:
        await commit_one_by_one(store, runs=10, per_run=300)
        assert wal_pages(db_path) > BOUND


def rows_in_database_file_alone(db_path: Path, copy: Path) -> int:
    """The frames a copy of the database file holds without its WAL: what was checkpointed."""
    shutil.copyfile(db_path, copy)
    try:
        return sum(len(frames) for frames in frames_in_file(copy).values())
    except sqlite3.Error:  # copied while a checkpoint wrote to it: not all there yet
        return -1
    finally:
        for path in (copy, copy.with_name(copy.name + "-wal"), copy.with_name(copy.name + "-shm")):
            path.unlink(missing_ok=True)


@pytest.mark.usefixtures("no_chunking")
@pytest.mark.parametrize("every", [0.01, 3600.0], ids=["checkpointer", "none"])
async def test_the_checkpointer_copies_the_wal_into_the_database_beside_the_commits(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: float
) -> None:
    """With every commit inline the writer never checkpoints (``INLINE_MODE``); what the WAL
    holds reaches the database file only through the checkpointer's connection. Without it
    (the control case) the file alone holds the schema and none of the rows."""
    monkeypatch.setattr(streamctl.store.sqlite, "INLINE_STREAK", 10**9)
    monkeypatch.setattr(streamctl.store.sqlite_checkpoint, "CHECKPOINT_EVERY", every)
    copy = tmp_path / "alone.db"
    async with Store(db_path) as store:
        with closing(sqlite3.connect(db_path)) as conn:  # the schema, into the file
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 or every < 1  # only the checkpointer could hold the checkpoint
        await commit_one_by_one(store, runs=2, per_run=100)
        stored = 0
        with anyio.move_on_after(5 if every < 1 else 0.5):
            while (stored := rows_in_database_file_alone(db_path, copy)) < 200:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        if every < 1:
            assert stored == 200 and store.checkpointer.checkpoints >= 1
        else:
            assert stored == 0 and store.checkpointer.checkpoints == 0


async def test_a_lock_held_elsewhere_sends_a_small_commit_to_the_thread(db_path: Path) -> None:
    """Another connection holds the write lock: the small commit does not wait for it on the
    event loop (SQLite's busy wait would block every run and stream for up to 5 s) but in the
    writer's thread, and lands once the lock is released."""
    async with Store(db_path) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, held
        sink, flushed = Sink(), anyio.Event()
        frame, chunk = event(1)
        store.append("run-1", frame, chunk, sink)

        async def flush() -> None:
            await store.flush()
            flushed.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush)
                # A loop blocked in the busy wait would run nothing here for 5 s.
                with anyio.fail_after(2):
                    while store._inflight is None:  # the writer took the batch
                        await anyio.wait_all_tasks_blocked()
                    await anyio.sleep(0.01)  # and the loop goes on meanwhile
                assert not flushed.is_set() and sink.seqs == []  # still waiting for the lock
                blocker.rollback()
                with anyio.fail_after(10):
                    await flushed.wait()
        finally:
            blocker.close()
        assert sink.seqs == [1]
        assert (store.stats.batches, store.stats.inline_batches) == (1, 0)  # in the thread
    assert [f.seq for f in frames_in_file(db_path)["run-1"]] == [1]


async def test_a_runs_first_event_is_committed_before_its_next_ones(db_path: Path) -> None:
    """An agent that emits without awaiting (a cached answer): its first event is committed on
    its own, not with the next 31 (time to first event); the rest follow in batches."""
    batches: list[list[int]] = []
    async with Store(db_path) as store:
        commit = store._commit

        async def record(conn: Any, batch: Any) -> bool:
            seqs = [f.seq for _, f, _, _ in batch.events if f.type == "message_chunk"]
            if seqs:
                batches.append(seqs)
            return await commit(conn, batch)

        store._commit = record  # type: ignore[method-assign]
        settings = Settings.from_env({}, db=db_path)
        async with Supervisor(store, ScriptedAgent(chunks(40)), settings) as sup:
            run = await sup.control.start(request(), USER)
            await finish(run)
    assert batches[0] == [2]
    assert sorted(seq for seqs in batches for seq in seqs) == list(range(2, 42))


async def test_after_a_commit_in_its_thread_the_writer_takes_the_next_batch_at_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit in the writer's thread lets the event loop turn while it runs, so the writer
    goes on to its next batch without yielding another turn (at 800 runs a turn is many
    callbacks); after an inline commit, which never awaits, it yields one."""
    turns = 0
    checkpoint = anyio.lowlevel.checkpoint

    async def counted() -> None:
        nonlocal turns
        turns += 1
        await checkpoint()

    monkeypatch.setattr(anyio.lowlevel, "checkpoint", counted)
    # No checkpoint on the side: its lock could send an inline commit to the thread.
    monkeypatch.setattr(streamctl.store.sqlite_checkpoint, "CHECKPOINT_EVERY", 3600.0)
    sink = Sink()
    async with Store(db_path, max_batch_events=100) as store:
        for seq in range(1, 301):  # three batches of 100 rows: each goes to the thread
            store.append("r1", *event(seq), sink)
        await store.flush()
        assert (store.stats.batches, store.stats.inline_batches, turns) == (3, 0, 0)
        for seq in range(301, 304):  # three lone events: each committed inline
            store.append("r1", *event(seq), sink)
            await store.flush()
        assert (store.stats.batches, store.stats.inline_batches, turns) == (6, 3, 3)
    assert sink.seqs == list(range(1, 304))
