"""The SQLite store: migrations, pragmas, group commit, commit-before-send, failing batches."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import anyio
import pytest

import streamctl.store.migrate
from streamctl.errors import StoreError
from streamctl.events import Frame, MessageChunk
from streamctl.store import NewRun, Store, migrate_file, migrations_dir
from streamctl.store.sqlite import MAX_BATCH_EVENTS

from .support.stored import frames_in_file

pytestmark = pytest.mark.anyio


class RecordingSink:
    """A CommitSink that records what it was handed, and how often it was told to publish."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.events: list[object] = []
        self.publishes = 0

    def committed(self, frame: Frame, event: object) -> None:
        self.frames.append(frame)
        self.events.append(event)

    def publish(self) -> None:
        self.publishes += 1


def chunk_frame(seq: int, text: str = "") -> Frame:
    return Frame.encode(seq, MessageChunk(content=text or f"w{seq} ", message_id="m1"), 1.0)


@contextmanager
def plain(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A separate, ordinary sqlite3 connection: sees only what is committed."""
    with closing(sqlite3.connect(db_path)) as conn:
        yield conn


def committed_seqs(db_path: Path, run_id: str = "r1") -> list[int]:
    return [frame.seq for frame in frames_in_file(db_path, run_id).get(run_id, [])]


# -- migrations ------------------------------------------------------------------------------


async def test_migrations_apply_once(db_path: Path) -> None:
    files = sorted(p.name for p in migrations_dir().glob("*.sql"))
    assert files and files[0] == "0001_initial.sql"
    async with Store(db_path):
        pass
    with plain(db_path) as conn:
        first = conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
    assert [name for _, name, _ in first] == files
    assert [version for version, _, _ in first] == [int(f[:4]) for f in files]

    async with Store(db_path):
        pass
    assert await migrate_file(db_path) == []
    with plain(db_path) as conn:
        again = conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
    assert again == first  # same rows, same applied_at: nothing was re-applied


async def test_migrate_file_applies_everything_then_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    files = sorted(p.name for p in migrations_dir().glob("*.sql"))
    assert await migrate_file(path) == files
    assert await migrate_file(path) == []
    with plain(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"threads", "runs", "event_journal", "event_chunks", "schema_migrations"} <= tables
    assert "events" not in tables  # migration 0005 moved its rows


async def test_a_failing_migration_leaves_no_trace(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_file(db_path)
    extra = tmp_path / "migrations"
    extra.mkdir()
    for path in migrations_dir().glob("*.sql"):
        (extra / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (extra / "0099_broken.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\nCREATE TABLE broken (;\n", encoding="utf-8"
    )
    monkeypatch.setattr(streamctl.store.migrate, "migrations_dir", lambda: extra)
    with pytest.raises(StoreError, match=r"0099_broken\.sql"):
        await migrate_file(db_path)
    with plain(db_path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        half = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchall()
    assert 99 not in versions
    assert half == []


async def test_open_failing_in_migrate_closes_its_connections(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "migrations"
    bad.mkdir()
    (bad / "initial.sql").write_text("SELECT 1;", encoding="utf-8")  # not NNNN_name.sql
    monkeypatch.setattr(streamctl.store.migrate, "migrations_dir", lambda: bad)
    store = Store(db_path)
    try:
        with pytest.raises(StoreError, match=r"not named NNNN_name\.sql"):
            await store.__aenter__()
        assert store._writer is None and store._reader is None
    finally:
        await store._close_connections()  # so the leak does not outlive this test


# -- connections -----------------------------------------------------------------------------


async def test_connections_use_wal_and_synchronous_normal(db_path: Path) -> None:
    async with Store(db_path) as store:
        for conn in (store._writer, store._reader):
            assert conn is not None
            rows = list(await conn.execute_fetchall("PRAGMA synchronous"))
            assert rows[0][0] == 1  # NORMAL
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode"))
            assert rows[0][0] == "wal"
        with plain(db_path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- group commit ----------------------------------------------------------------------------


async def test_events_appended_in_one_go_commit_in_few_batches_in_order(db_path: Path) -> None:
    sink = RecordingSink()
    n = 2000
    async with Store(db_path) as store:
        before = store.stats.batches
        for seq in range(1, n + 1):
            store.append("r1", chunk_frame(seq), None, sink)
        await store.flush()
        # As few transactions as the cap on one allows (no timer, no batch per event).
        assert store.stats.batches - before <= -(-n // MAX_BATCH_EVENTS) + 1
        assert store.stats.committed_events == n
    assert sink.publishes == store.stats.batches - before  # one wake-up per batch, not per event
    assert [f.seq for f in sink.frames] == list(range(1, n + 1))
    assert committed_seqs(db_path) == list(range(1, n + 1))


async def test_events_appended_while_a_batch_commits_form_the_next_batch(db_path: Path) -> None:
    sink = RecordingSink()
    async with Store(db_path) as store:
        store.append("r1", chunk_frame(1), None, sink)
        await anyio.wait_all_tasks_blocked()  # the writer has taken event 1
        for seq in range(2, 502):
            store.append("r1", chunk_frame(seq), None, sink)
        await store.flush()
        assert store.stats.batches == 2
    assert [f.seq for f in sink.frames] == list(range(1, 502))


async def test_flush_returns_once_rows_are_visible_to_other_connections(db_path: Path) -> None:
    async with Store(db_path) as store:
        for round_ in range(3):
            seqs = range(round_ * 10 + 1, round_ * 10 + 11)
            for seq in seqs:
                store.append("r1", chunk_frame(seq), None, RecordingSink())
            thread = f"t{round_}"
            store.create_run(NewRun(f"r-{thread}", thread, "o", "running", {}, {}, 0.0, 0.0))
            await store.flush()
            assert committed_seqs(db_path) == list(range(1, seqs[-1] + 1))
            with plain(db_path) as conn:
                assert conn.execute("SELECT count(*) FROM threads").fetchone()[0] == round_ + 1


async def test_flush_with_nothing_pending_returns_at_once(db_path: Path) -> None:
    async with Store(db_path) as store:
        with anyio.fail_after(5):
            await store.flush()
        assert store.stats.batches == 0


async def test_sink_sees_an_event_only_after_it_is_committed(db_path: Path) -> None:
    seen: list[tuple[int, bool]] = []

    class CheckingSink(RecordingSink):
        def committed(self, frame: Frame, event: object) -> None:
            stored = {f.seq: f for f in frames_in_file(db_path, "r1").get("r1", [])}
            row = stored.get(frame.seq)
            seen.append((frame.seq, row is not None and row.data == frame.data))
            super().committed(frame, event)

    sink = CheckingSink()
    async with Store(db_path) as store:
        store.append("r1", chunk_frame(1), "event-1", sink)
        await store.flush()
        for seq in range(2, 6):
            store.append("r1", chunk_frame(seq), f"event-{seq}", sink)
        await store.flush()
    assert seen == [(seq, True) for seq in range(1, 6)]
    assert sink.events == [f"event-{seq}" for seq in range(1, 6)]


async def test_each_sink_is_published_once_per_batch(db_path: Path) -> None:
    a, b = RecordingSink(), RecordingSink()
    async with Store(db_path) as store:
        for seq in range(1, 4):
            store.append("ra", chunk_frame(seq), None, a)
            store.append("rb", chunk_frame(seq), None, b)
        await store.flush()
    assert (a.publishes, b.publishes) == (1, 1)
    assert [f.seq for f in a.frames] == [f.seq for f in b.frames] == [1, 2, 3]


# -- reading ---------------------------------------------------------------------------------


async def test_read_frames_honours_after_and_upto(db_path: Path) -> None:
    async with Store(db_path) as store:
        for seq in range(1, 11):
            store.append("r1", chunk_frame(seq), None, RecordingSink())
            store.append("other", chunk_frame(seq, "x"), None, RecordingSink())
        await store.flush()

        async def seqs(after: int, upto: int | None = None) -> list[int]:
            return [f.seq for f in await store.read_frames("r1", after, upto)]

        assert await seqs(0) == list(range(1, 11))
        assert await seqs(3) == list(range(4, 11))
        assert await seqs(3, 6) == [4, 5, 6]
        assert await seqs(6, 6) == []
        assert await seqs(10) == []
        assert await seqs(0, 1) == [1]
        assert await seqs(9, 100) == [10]
        assert await store.read_frames("nobody", 0) == []
        frames = await store.read_frames("r1", 4, 5)
        assert frames == [chunk_frame(5)]


# -- failures --------------------------------------------------------------------------------


async def test_failing_batch_raises_delivers_nothing_and_store_recovers(db_path: Path) -> None:
    sink = RecordingSink()
    async with Store(db_path) as store:
        store.append("r1", chunk_frame(1), None, sink)
        await store.flush()
        batches = store.stats.batches

        other = RecordingSink()
        store.append("r2", chunk_frame(1), None, other)  # innocent, but in the same batch
        store.append("r1", chunk_frame(2), None, sink)
        store.append("r1", chunk_frame(1, "duplicate"), None, sink)  # a seq taken twice
        with pytest.raises(StoreError, match="run r1: event 1 does not follow event 2"):
            await store.flush()
        assert store.stats.batches == batches
        assert [f.seq for f in sink.frames] == [1]
        assert other.frames == [] and other.publishes == 0
        assert committed_seqs(db_path, "r2") == []  # the whole batch was rolled back

        store.append("r1", chunk_frame(2), None, sink)
        store.append("r1", chunk_frame(3), None, sink)
        await store.flush()
        assert [f.seq for f in sink.frames] == [1, 2, 3]
        assert store.stats.batches == batches + 1
    assert committed_seqs(db_path) == [1, 2, 3]
    assert frames_in_file(db_path, "r1")["r1"][0].data == chunk_frame(1).data


REFUSE_WORD = (
    "CREATE TRIGGER refuse BEFORE INSERT ON event_journal WHEN instr(NEW.frame, 'refused')"
    " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
)
"""Makes the file refuse events holding the word "refused": a commit that fails in SQLite."""


async def test_flush_reports_a_failure_of_the_batch_in_flight(db_path: Path) -> None:
    sink = RecordingSink()
    async with Store(db_path) as store:
        store.append("r1", chunk_frame(1), None, sink)
        await store.flush()
        with plain(db_path) as blocker:
            blocker.execute(REFUSE_WORD)
            blocker.commit()
            # Hold SQLite's write lock, so the writer's next commit waits (busy_timeout=5 s).
            blocker.execute("BEGIN IMMEDIATE")
            store.append("r1", chunk_frame(2, "refused"), None, sink)  # will fail
            await anyio.wait_all_tasks_blocked()  # the writer is committing it, blocked on us
            assert store._inflight is not None
            store.append("r1", chunk_frame(3), None, sink)  # dropped: r1 must not number on
            other = RecordingSink()
            store.append("r2", chunk_frame(1), None, other)  # another run's: still commits
            async with anyio.create_task_group() as tg:
                outcome: list[BaseException | None] = []

                async def flush() -> None:
                    try:
                        await store.flush()
                    except StoreError as exc:
                        outcome.append(exc)
                    else:
                        outcome.append(None)

                tg.start_soon(flush)
                await anyio.wait_all_tasks_blocked()
                blocker.rollback()
        # r1 lost a batch, so its later event was dropped too: no gap in its ids. Others go on.
        assert committed_seqs(db_path) == [1]
        assert committed_seqs(db_path, "r2") == [1] and [f.seq for f in other.frames] == [1]
        assert isinstance(outcome[0], StoreError)  # "everything queued so far" did not commit


class FailingSink(RecordingSink):
    """A sink that also records being told its batch was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[Exception] = []

    def failed(self, error: Exception) -> None:
        self.errors.append(error)


async def test_closing_gives_up_a_commit_that_never_ends(db_path: Path) -> None:
    """Closing commits what is queued under a shield, but a bounded one: a commit that hangs (a
    dead disk) is given up after ``close_timeout``, its runs told, and the store closes."""
    sink = FailingSink()
    never = anyio.Event()
    store = Store(db_path, close_timeout=0.05)

    async def hang(conn: object, batch: object) -> bool:
        await never.wait()
        return True

    outcome: list[BaseException | None] = []

    async def flush() -> None:
        try:
            await store.flush()
        except StoreError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    with anyio.fail_after(10):  # a safety net: unbounded, closing would wait for ever
        async with anyio.create_task_group() as tg, store:
            store._commit = hang  # type: ignore[method-assign]
            store.append("r1", chunk_frame(1), None, sink)
            await anyio.wait_all_tasks_blocked()  # the writer is in the commit that never ends
            store.append("r1", chunk_frame(2), None, sink)  # queued behind it
            tg.start_soon(flush)
            await anyio.wait_all_tasks_blocked()
    assert not never.is_set()
    assert committed_seqs(db_path) == [] and sink.frames == [] and len(sink.errors) == 1
    assert store.stats.batches == 0
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError)  # reported lost, not done
