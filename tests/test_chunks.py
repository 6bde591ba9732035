"""The SQLite store's event layout (``store/chunks.py``): events journaled at commit, chunked per
run a little later, read back alike from either; recovery of what a stopped store left in the
journal; the migration of the old one-row-per-event table."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import anyio
import pytest

import streamctl.store.chunks
import streamctl.store.migrate
from streamctl.errors import StoreError
from streamctl.events import Done, Frame, MessageChunk, RunStarted, ToolEnd
from streamctl.store import FinalState, NewRun, Store, migrate_file
from streamctl.store import statements as sql
from streamctl.store.chunks import Chunking, Unchunked, decode_chunk, encode_chunk
from streamctl.store.sqlite_commit import ROWS_PER_INSERT, insert_rows

from .support.migrations import migrate_below
from .support.stored import frames_in_file

pytestmark = pytest.mark.anyio

DONE = Done(run_id="r1", thread_id="t1", status="completed", reason="end")


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def committed(self, frame: Frame, event: object) -> None:
        self.frames.append(frame)

    def publish(self) -> None:
        pass


def frame(seq: int, text: str = "", at: float = 0.0) -> Frame:
    event = MessageChunk(content=text or f"w{seq} ", message_id="m1")
    return Frame.encode(seq, event, at or 1_764_500_000.123456 + seq / 1000)


def rows(db_path: Path, table: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)


class Chunked:
    """Chunking sooner (50 ms after a commit instead of a second), and a way to wait for it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(streamctl.store.chunks, "CHUNK_AGE", 0.05)
        self.settled = anyio.Event()
        settle = Unchunked.settle

        def settled(unchunked: Unchunked, chunking: Chunking) -> None:
            settle(unchunked, chunking)
            self.settled.set()

        monkeypatch.setattr(Unchunked, "settle", settled)

    async def until(self, db_path: Path, journal_left: int = 0) -> None:
        """Until the journal in the file holds ``journal_left`` rows."""
        with anyio.fail_after(10):
            while rows(db_path, "event_journal") != journal_left:
                await self.settled.wait()
                self.settled = anyio.Event()


@pytest.fixture
def chunk_soon(monkeypatch: pytest.MonkeyPatch) -> Chunked:
    return Chunked(monkeypatch)


async def assert_every_window(store: Store, run_id: str, expected: list[Frame]) -> None:
    """``read_frames`` gives the events ``after < seq <= upto`` of ``expected``, for every pair
    (and ``upto`` None or past the end)."""
    last = expected[-1].seq
    for after in range(0, last + 1):
        for upto in [None, *range(after, last + 2)]:
            got = await store.read_frames(run_id, after, upto)
            want = [f for f in expected if f.seq > after and (upto is None or f.seq <= upto)]
            assert got == want, (after, upto)


def test_a_chunk_gives_back_its_frames_exactly() -> None:
    frames = [
        Frame.encode(7, RunStarted(run_id="r1", thread_id="t1"), 1.5),
        Frame.encode(
            8,
            MessageChunk(content='line\nnext "quoted" \u00e9\U0001f600\n\n', message_id="m"),
            2.25,
        ),
        Frame.encode(9, ToolEnd(call_id="c", name="x", output="a\n\nb"), 1_764_500_000.987654),
        Frame.build(10, "custom_type", b'{"k":[1,2]}', 3.0),
        Frame.encode(11, DONE, 4.0),
    ]
    run_id, first, last, times, blob = encode_chunk("r1", frames)
    assert (run_id, first, last) == ("r1", 7, 11)
    assert decode_chunk(first, last, times, blob) == frames  # seq, type, created_at, SSE bytes


@pytest.mark.parametrize(
    "damage",
    [
        lambda t, b: (t, b[:-1]),  # a frame cut short
        lambda t, b: (t[:-8], b),  # a time missing
        lambda t, b: (t + t[:8], b),  # a time too many
        lambda t, b: (t, b + b"id: 9\nevent: done\ndata: {}\n\n"),  # a frame too many
    ],
)
def test_a_damaged_chunk_is_a_store_error(damage: object) -> None:
    _, first, last, times, blob = encode_chunk("r1", [frame(1), frame(2)])
    times, blob = damage(times, blob)  # type: ignore[operator]
    with pytest.raises(StoreError, match=r"chunk of events 1\.\.2 is damaged"):
        decode_chunk(first, last, times, blob)


async def test_events_move_from_journal_to_chunks_and_read_the_same(
    db_path: Path, chunk_soon: Chunked
) -> None:
    sink = Sink()
    async with Store(db_path) as store:
        for seq in range(1, 6):
            store.append("r1", frame(seq), None, sink)
        await store.flush()
        assert rows(db_path, "event_journal") == 5  # committed: journaled, not chunked yet
        await chunk_soon.until(db_path)  # the idle writer chunks them once they are due
        assert rows(db_path, "event_chunks") == 1
        for seq in range(6, 9):
            store.append("r1", frame(seq), None, sink)
        await store.flush()
        assert rows(db_path, "event_journal") == 3
        expected = [frame(seq) for seq in range(1, 9)]
        # Every window, across the chunk and the journal (read from memory), as one log.
        await assert_every_window(store, "r1", expected)
        assert sink.frames == expected
    assert frames_in_file(db_path, "r1")["r1"] == expected
    assert rows(db_path, "event_journal") == 0  # closing chunks what is left


async def test_many_runs_commit_to_the_journal_and_are_chunked_a_row_per_run(
    db_path: Path, chunk_soon: Chunked
) -> None:
    sink = Sink()
    async with Store(db_path) as store:
        for seq in range(1, 21):
            for run in range(50):
                store.append(f"r{run}", frame(seq), None, sink)
            await store.flush()
        await chunk_soon.until(db_path)
        assert rows(db_path, "event_chunks") <= 100  # per run one or two, not 20
        for run in range(50):
            got = await store.read_frames(f"r{run}", 0)
            assert [f.seq for f in got] == list(range(1, 21))
        record = await store.get_run("r1")
    assert record is None  # events alone make no run


async def test_an_active_runs_last_seq_counts_its_journaled_events(db_path: Path) -> None:
    async with Store(db_path) as store:
        store.create_run(NewRun("r1", "t1", "u", "running", {"messages": []}, {}, 1.0, 1.0))
        for seq in range(1, 4):
            store.append("r1", frame(seq), None, Sink())
        await store.flush()
        assert rows(db_path, "event_chunks") == 0
        record = await store.get_run("r1")
        assert record is not None and record.last_seq == 3
        (listed,) = await store.list_runs("u")
        assert listed.last_seq == 3


async def test_a_seq_skipped_or_repeated_fails_its_batch(db_path: Path) -> None:
    sink = Sink()
    async with Store(db_path) as store:
        store.append("r1", frame(1), None, sink)
        await store.flush()
        store.append("r1", frame(3), None, sink)  # 2 skipped
        with pytest.raises(StoreError, match="run r1: event 3 does not follow event 1"):
            await store.flush()
        store.append("r1", frame(2), None, sink)
        store.append("r1", frame(2), None, sink)  # in the same batch
        with pytest.raises(StoreError, match="run r1: event 2 does not follow event 2"):
            await store.flush()
        store.append("r1", frame(2), None, sink)
        await store.flush()
    assert [f.seq for f in frames_in_file(db_path, "r1")["r1"]] == [1, 2]


async def test_opening_chunks_what_the_journal_held(db_path: Path) -> None:
    """A store killed before it chunked: its journal rows (some chunked already, their delete
    not committed) become chunks at the next start, once each, before anything is read."""
    await migrate_file(db_path)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "INSERT INTO event_chunks VALUES (?, ?, ?, ?, ?)",
            encode_chunk("r1", [frame(1), frame(2)]),
        )
        for seq in (1, 2, 3, 4):  # 1 and 2 also chunked
            conn.execute(
                "INSERT INTO event_journal (run_id, created_at, frame) VALUES ('r1', ?, ?)",
                (frame(seq).created_at, frame(seq).sse),
            )
        conn.execute(
            "INSERT INTO event_journal (run_id, created_at, frame) VALUES ('r2', ?, ?)",
            (frame(1).created_at, frame(1).sse),
        )
    async with Store(db_path) as store:
        assert rows(db_path, "event_journal") == 0
        assert await store.read_frames("r1", 0) == [frame(s) for s in (1, 2, 3, 4)]
        assert await store.read_frames("r2", 0) == [frame(1)]
        sink = Sink()
        store.append("r1", frame(5), None, sink)  # the journal's ids start again: no clash
        await store.flush()
        assert [f.seq for f in await store.read_frames("r1", 3)] == [4, 5]


async def test_migration_5_moves_every_stored_event_unchanged(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_below(db_path, 5, monkeypatch)
    stored = {
        "a": [
            Frame.encode(1, RunStarted(run_id="a", thread_id="t"), 1_764_500_000.123456),
            Frame.encode(2, MessageChunk(content='é "q" \n😀', message_id="m"), 1_764_500_000.5),
            Frame.encode(3, DONE, 1_764_500_001.0),
        ],
        "b": [frame(seq) for seq in range(1, 40)],
    }
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for run_id, frames in stored.items():
            for f in reversed(frames):  # inserted out of order: the migration orders them
                conn.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    (run_id, f.seq, f.type, f.data, f.created_at),
                )
    async with Store(db_path) as store:
        for run_id, frames in stored.items():
            assert await store.read_frames(run_id, 0) == frames
    with closing(sqlite3.connect(db_path)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "events" not in tables and rows(db_path, "event_journal") == 0


async def test_a_purge_drops_a_runs_chunks_and_journal(db_path: Path) -> None:
    async with Store(db_path) as store:
        for run_id in ("old", "new"):
            store.create_run(NewRun(run_id, "t", "u", "running", {"messages": []}, {}, 1.0, 1.0))
            for seq in range(1, 4):
                store.append(run_id, frame(seq), None, Sink())
        await store.flush()
        await store.read_frames("old", 0)  # journaled: in memory, not chunked
        now = time.time()
        store.finish_run("old", FinalState("completed", None, None, 3, 3, {}, now - 10))
        await store.flush()
        assert await store.purge(ended_before=now, now=now) == 1
        assert await store.read_frames("old", 0) == []
        assert [f.seq for f in await store.read_frames("new", 0)] == [1, 2, 3]
    assert set(frames_in_file(db_path)) == {"new"}


async def test_every_window_reads_the_same_across_many_chunks(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_EVENTS", 3)  # a run with 3 is chunked
    expected = [frame(seq) for seq in range(1, 15)]
    async with Store(db_path) as store:
        for f in expected:  # a commit each: each commit chunks what the last one filled
            store.append("r1", f, None, Sink())
            await store.flush()
        assert rows(db_path, "event_chunks") == 4 and rows(db_path, "event_journal") == 2
        await assert_every_window(store, "r1", expected)


def test_a_chunk_read_from_the_middle_parses_only_what_it_returns() -> None:
    frames = [frame(seq) for seq in range(5, 15)]
    _, first, last, times, blob = encode_chunk("r1", frames)
    assert decode_chunk(first, last, times, blob, after=8, upto=10) == frames[4:6]
    assert decode_chunk(first, last, times, blob, after=13) == frames[9:]
    assert decode_chunk(first, last, times, blob, after=0, upto=4) == []
    with pytest.raises(StoreError, match="damaged"):  # a frame whose id is not its place
        decode_chunk(first, last, times, blob.replace(b"id: 9\n", b"id: 7\n"), after=6)


def test_small_commits_leave_chunking_to_the_idle_writer_unless_overdue() -> None:
    """A light load's commits (a run's first event) do not carry chunking they do not need; a
    busy store's do; the idle writer takes a group of runs due within half the age."""
    unchunked = Unchunked()
    unchunked.add("r1", frame(1), 1, now=0.0)
    unchunked.add("r2", frame(1), 2, now=0.4)
    unchunked.add("r3", frame(1), 3, now=0.9)
    age = streamctl.store.chunks.CHUNK_AGE
    assert unchunked.take_with(1, now=age + 0.5) is None  # r1 due, not overdue
    busy = unchunked.take_with(64, now=age + 0.5)
    assert busy is not None and sorted(r for r, _ in busy.runs) == ["r1", "r2"]
    assert busy.delete_upto == 2  # r3's journal row stays
    overdue = unchunked.take_with(1, now=2 * age)  # r1 overdue: every run due goes
    assert overdue is not None and sorted(r for r, _ in overdue.runs) == ["r1", "r2", "r3"]
    assert overdue.delete_upto == 3
    idle = unchunked.take_idle(now=age)  # r1 due; r2 due within half the age
    assert idle is not None and sorted(r for r, _ in idle.runs) == ["r1", "r2"]
    unchunked.settle(idle)
    assert unchunked.frames("r3") == [frame(1)] and unchunked.frames("r1") == []


@pytest.mark.parametrize("bound", ["events", "bytes"])
def test_a_commit_chunks_a_bounded_share_of_the_runs_due_and_the_rest_follow(
    monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """Runs started together come due together: one commit chunks runs until it holds
    ``CHUNK_COMMIT_EVENTS`` of their events or ``CHUNK_COMMIT_BYTES`` of their bytes, oldest
    first, and deletes only the journal rows below the first run it leaves; the next commits
    take the rest. Closing takes everything."""
    unchunked = Unchunked()
    journal_id = 0
    for seq in range(1, 5):  # 6 runs of 4 events, interleaved as a group commit journals them
        for run in range(6):
            journal_id += 1
            unchunked.add(f"r{run}", frame(seq), journal_id, now=0.0)
    run_bytes = sum(len(frame(seq).sse) for seq in range(1, 5))
    if bound == "events":
        monkeypatch.setattr(streamctl.store.chunks, "CHUNK_COMMIT_EVENTS", 10)  # 3 runs: 12
    else:
        monkeypatch.setattr(streamctl.store.chunks, "CHUNK_COMMIT_BYTES", 2 * run_bytes + 1)
    age = streamctl.store.chunks.CHUNK_AGE
    taken: list[str] = []
    while (chunking := unchunked.take(due_by=age)) is not None:
        taken += [run_id for run_id, _ in chunking.runs]
        assert sum(len(frames) for _, frames in chunking.runs) == 12  # 3 runs: 12 >= 10
        left = len(taken)  # the first run left for later is r{left}: its first journal id,
        assert chunking.delete_upto == (24 if left == 6 else left)  # left + 1, stays
        unchunked.settle(chunking)
    assert taken == ["r0", "r1", "r2", "r3", "r4", "r5"]
    for run in range(6):
        unchunked.add(f"r{run}", frame(5), journal_id + run + 1, now=0.0)
    everything = unchunked.take(None, everything=True)
    assert everything is not None and len(everything.runs) == 6


def test_the_runs_due_go_first_and_a_run_past_the_bound_goes_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The oldest run due is chunked whatever the full runs hold (a firehose whose chunk alone
    passes the bound at every commit must not keep the others in the journal); a run being
    purged is skipped and holds the watermark; a run bigger than the bound goes alone."""
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_COMMIT_EVENTS", 10)
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_EVENTS", 20)
    age = streamctl.store.chunks.CHUNK_AGE
    unchunked = Unchunked()
    unchunked.add("old", frame(1), 1, now=0.0)
    unchunked.add("purged", frame(1), 2, now=0.0)
    for seq in range(1, 26):  # full: 25 events, more than the bound, not due yet
        unchunked.add("fire", frame(seq), 2 + seq, now=0.5)
    unchunked.purging(["purged"])
    first = unchunked.take(due_by=age)
    assert first is not None and [r for r, _ in first.runs] == ["old", "fire"]
    assert first.delete_upto == 1  # "purged"'s row (id 2) stays
    unchunked.settle(first)
    for seq in range(26, 51):  # full again
        unchunked.add("fire", frame(seq), 2 + seq, now=1.0)
    unchunked.add("later", frame(1), 53, now=1.0)
    assert [r for r, _ in unchunked.take(due_by=None).runs] == ["fire"]  # type: ignore[union-attr]
    unchunked.purged(["purged"], deleted=True)
    big = Unchunked()
    for seq in range(1, 16):  # 15 events: past the bound, not full
        big.add("big", frame(seq), seq, now=0.0)
    big.add("small", frame(1), 16, now=0.0)
    alone = big.take(due_by=age)
    assert alone is not None and [r for r, _ in alone.runs] == ["big"]
    assert alone.delete_upto == 15
    big.settle(alone)
    rest = big.take(due_by=age)
    assert rest is not None and [r for r, _ in rest.runs] == ["small"] and rest.delete_upto == 16


@pytest.mark.parametrize("count", [1, 15, 16, 17, 127, 128, 129, 300, 500])
@pytest.mark.parametrize("table", ["event_journal", "event_chunks"])
def test_a_commits_rows_go_in_order_in_few_statements(count: int, table: str) -> None:
    """``insert_rows``: every row, in order, in at most ``count // ROWS_PER_INSERT`` + 2
    statements of at most ``ROWS_PER_INSERT`` rows each (each statement hands the GIL over and
    back)."""
    if table == "event_journal":
        statement, columns = sql.INSERT_JOURNAL, "id, run_id, created_at, frame"
        expected: list[tuple[object, ...]] = [
            (n, f"r{n % 7}", n / 10, b"x" * n) for n in range(count, 0, -1)
        ]
    else:
        statement, columns = sql.INSERT_EVENT_CHUNK, "run_id, first_seq, last_seq, times, frames"
        expected = [(f"r{n}", n, n + 1, b"t" * n, b"f" * n) for n in range(count, 0, -1)]
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute(f"CREATE TABLE {table} ({columns})")  # no key: rowid is the insertion order
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        insert_rows(db, statement, expected)
        db.set_trace_callback(None)
        assert db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() == expected
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) <= count // ROWS_PER_INSERT + 2
    assert all(s.count("), (") < ROWS_PER_INSERT for s in inserts)  # at most 128 rows each


async def test_a_seq_taken_again_after_its_run_was_chunked_fails_its_batch(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamctl.store.chunks, "CHUNK_EVENTS", 2)
    sink = Sink()
    async with Store(db_path) as store:
        for seq in (1, 2, 3):
            store.append("r1", frame(seq), None, sink)
            await store.flush()
        assert store._unchunked.frames("r1") == [frame(3)]  # 1 and 2 are chunked
        store.append("r1", frame(2), None, sink)
        with pytest.raises(StoreError, match="run r1: event 2 does not follow event 3"):
            await store.flush()
    assert [f.seq for f in frames_in_file(db_path, "r1")["r1"]] == [1, 2, 3]


async def test_a_failed_purge_keeps_the_runs_events_while_others_are_chunked(
    db_path: Path, chunk_soon: Chunked
) -> None:
    async with Store(db_path) as store:
        store.create_run(NewRun("old", "t", "u", "running", {"messages": []}, {}, 1.0, 1.0))
        for seq in range(1, 4):
            store.append("old", frame(seq), None, Sink())
        now = time.time()
        store.finish_run("old", FinalState("completed", None, None, 3, 3, {}, now - 10))
        await store.flush()
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute(  # the purge's transaction fails at its last statement
                "CREATE TRIGGER keep BEFORE UPDATE OF purged_at ON runs"
                " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
        with pytest.raises(StoreError, match="refused by a trigger"):
            await store.purge(ended_before=now, now=now)
        # A busy commit of another run chunks what is due and moves the watermark on: the
        # run whose purge failed is chunked like any other, and nothing of it is lost.
        for seq in range(1, 65):
            store.append("new", frame(seq), None, Sink())
        await store.flush()
        await chunk_soon.until(db_path)
        assert await store.read_frames("old", 0) == [frame(s) for s in (1, 2, 3)]
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("DROP TRIGGER keep")
        assert await store.purge(ended_before=now, now=now) == 1
        assert await store.read_frames("old", 0) == []
    assert set(frames_in_file(db_path)) == {"new"}


def test_a_run_being_purged_is_never_due() -> None:
    """Else the idle writer, woken for it, would take nothing and loop without waiting."""
    unchunked = Unchunked()
    unchunked.add("old", frame(1), 1, now=0.0)
    unchunked.add("new", frame(1), 2, now=0.5)
    age = streamctl.store.chunks.CHUNK_AGE
    unchunked.purging(["old"])
    assert unchunked.due() == 0.5 + age
    assert unchunked.take_idle(now=age / 2) is None  # "old" is due, but not to be chunked
    later = unchunked.take_idle(now=age)
    assert later is not None and [r for r, _ in later.runs] == ["new"]
    assert later.delete_upto == 0  # "old"'s journal row stays until its delete commits
    unchunked.purged(["old"], deleted=False)
    assert unchunked.due() == age
