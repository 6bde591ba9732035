"""The storage seam's contract (``RunStore``), run against every backend: SQLite and Redis.

Each test speaks only the protocol; to look at what is durably stored it uses the backend's own
out-of-band reader (a plain ``sqlite3`` connection, a separate synchronous Redis client), never
the store under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from streamctl.events import Frame, MessageChunk
from streamctl.orphans import finalise_orphans
from streamctl.store import FinalState, NewRun, RunStore, SqliteStore
from streamctl.store.base import IdempotencyKey
from streamctl.store.redis import RedisStore

from .support.redis_server import RedisServer, redis_server
from .support.stored import frames_in_file

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]  # a fixture this module uses


@dataclass
class Backend:
    name: str
    open: Callable[[], RunStore]
    """A new store on the same data (another process, as far as the data can tell)."""
    stored_seqs: Callable[[str], list[int]]
    """The seqs of a run's events durably stored, read out of band."""


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "contract.db"

        def sqlite_seqs(run_id: str) -> list[int]:
            return [frame.seq for frame in frames_in_file(path, run_id).get(run_id, [])]

        yield Backend("sqlite", lambda: SqliteStore(path), sqlite_seqs)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as client:
        client.flushall()

        def redis_seqs(run_id: str) -> list[int]:
            entries = client.xrange(f"sc:{{{run_id}}}:ev")
            return [int(entry_id.split(b"-")[1]) for entry_id, _ in entries]

        yield Backend("redis", lambda: RedisStore(server.url, lease_seconds=3), redis_seqs)


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.publishes = 0
        self.errors: list[Exception] = []

    def committed(self, frame: Frame, event: object) -> None:
        self.frames.append(frame)

    def publish(self) -> None:
        self.publishes += 1

    def failed(self, error: Exception) -> None:
        self.errors.append(error)


def chunk_frame(seq: int, text: str = "") -> Frame:
    return Frame.encode(seq, MessageChunk(content=text or f"w{seq} ", message_id="m1"), 1.5)


def new_run(run_id: str, thread_id: str = "t1", owner: str = "alice", at: float = 10.0) -> NewRun:
    messages = [{"role": "user", "content": f"hello from {run_id}"}]
    return NewRun(run_id, thread_id, owner, "running", {"messages": messages}, {"k": 1}, at, at)


def final(last_seq: int, status: str = "completed", ended_at: float = 20.0) -> FinalState:
    output = {"text": "hi", "messages": [], "tool_calls": []}
    return FinalState(status, "the agent finished", None, 3, last_seq, output, ended_at)


# -- writing ---------------------------------------------------------------------------------


async def test_appends_commit_in_order_and_read_back_byte_for_byte(backend: Backend) -> None:
    sink = RecordingSink()
    n = 2000
    async with backend.open() as store:
        store.create_run(new_run("r1"))
        for seq in range(1, n + 1):
            store.append("r1", chunk_frame(seq), None, sink)
        await store.flush()
        assert backend.stored_seqs("r1") == list(range(1, n + 1))
        assert [f.seq for f in sink.frames] == list(range(1, n + 1))
        assert sink.publishes <= 10  # woken per batch, not per event
        assert await store.read_frames("r1", 0) == [chunk_frame(seq) for seq in range(1, n + 1)]
        assert store.stats.committed_events == n


async def test_a_sink_sees_an_event_only_once_it_is_stored(backend: Backend) -> None:
    seen: list[tuple[int, bool]] = []

    class CheckingSink(RecordingSink):
        def committed(self, frame: Frame, event: object) -> None:
            seen.append((frame.seq, frame.seq in backend.stored_seqs("r1")))

    sink = CheckingSink()
    async with backend.open() as store:
        store.create_run(new_run("r1"))
        store.append("r1", chunk_frame(1), None, sink)
        await store.flush()
        for seq in range(2, 6):
            store.append("r1", chunk_frame(seq), None, sink)
        await store.flush()
    assert seen == [(seq, True) for seq in range(1, 6)]


async def test_each_sink_is_published_once_per_batch(backend: Backend) -> None:
    a, b = RecordingSink(), RecordingSink()
    async with backend.open() as store:
        store.create_run(new_run("ra"))
        store.create_run(new_run("rb", "t2"))
        await store.flush()
        for seq in range(1, 4):
            store.append("ra", chunk_frame(seq), None, a)
            store.append("rb", chunk_frame(seq), None, b)
        await store.flush()
    assert (a.publishes, b.publishes) == (1, 1)
    assert [f.seq for f in a.frames] == [f.seq for f in b.frames] == [1, 2, 3]


async def test_a_commits_wait_counts_from_its_oldest_events_emit(backend: Backend) -> None:
    """``commit_wait_seconds``: per commit, the longest wait of its events from their emit
    (``created_at``) to the commit's end; the queue's wait, which a commit's duration misses."""
    async with backend.open() as store:
        store.create_run(new_run("r1"))
        await store.flush()
        waits = store.stats.commit_wait_seconds
        assert waits.counts == [0] * len(waits.counts)  # no events yet
        batches, now = store.stats.batches, time.time()
        for seq, age in ((1, 0.2), (2, 2.0), (3, 0.0)):  # emitted 0.2 s, 2 s and 0 s ago
            frame = Frame.encode(seq, MessageChunk(content="w", message_id="m1"), now - age)
            store.append("r1", frame, None, RecordingSink())
        await store.flush()
        assert 1 <= sum(waits.counts) <= store.stats.batches - batches  # at most one a commit
        assert 2.0 <= waits.sum < 2.0 + 0.2 * sum(waits.counts) + 5  # the 2-s-old event's
        assert waits.counts[-1] == 1  # past the last bound (1 s): the commit that held it


async def test_flush_with_nothing_pending_returns_at_once(backend: Backend) -> None:
    async with backend.open() as store:
        with anyio.fail_after(5):
            await store.flush()
        assert store.stats.batches == 0


async def test_read_frames_honours_after_and_upto(backend: Backend) -> None:
    async with backend.open() as store:
        store.create_run(new_run("r1"))
        store.create_run(new_run("other", "t2"))
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
        assert await seqs(9, 100) == [10]
        assert await store.read_frames("nobody", 0) == []


# -- runs and threads ------------------------------------------------------------------------


async def test_a_run_record_from_creation_to_its_end(backend: Backend) -> None:
    async with backend.open() as store:
        queued = NewRun("r1", "t1", "alice", "queued", {"messages": []}, {}, 10.0, None)
        store.create_run(queued)
        await store.flush()
        record = await store.get_run("r1")
        assert record is not None
        assert (record.status, record.started_at, record.ended_at) == ("queued", None, None)
        assert (record.owner, record.thread_id, record.input) == ("alice", "t1", {"messages": []})
        assert record.output is None and record.error is None and record.purged_at is None

        store.mark_running("r1", 11.0)
        store.append("r1", chunk_frame(1), None, RecordingSink())
        error = {"code": "agent_error", "message": "boom"}
        usage = {"input_tokens": 7, "output_tokens": 9}
        store.finish_run(
            "r1", FinalState("failed", "the agent raised", error, 3, 1, {"text": "x"}, 12.0, usage)
        )
        await store.flush()
        record = await store.get_run("r1")
        assert record is not None
        assert (record.status, record.reason, record.error) == ("failed", "the agent raised", error)
        assert (record.started_at, record.ended_at, record.last_seq) == (11.0, 12.0, 1)
        assert (record.tokens, record.output) == (3, {"text": "x"})
        assert record.usage == {"tokens": 3, "input_tokens": 7, "output_tokens": 9}
        assert await store.get_run("missing") is None


async def test_run_lists_threads_and_history(backend: Backend) -> None:
    async with backend.open() as store:
        runs = [("a1", "ta", "alice"), ("b1", "tb", "bob"), ("a2", "ta", "alice")]
        for i, (run_id, thread, owner) in enumerate([*runs, ("a3", "tc", "alice")]):
            store.create_run(new_run(run_id, thread, owner, at=10.0 + i))
        await store.flush()

        async def ids(owner: str | None, thread: str | None = None, limit: int = 50) -> list[str]:
            return [r.run_id for r in await store.list_runs(owner, thread, limit)]

        assert await ids(None) == ["a3", "a2", "b1", "a1"]  # newest first
        assert await ids("alice") == ["a3", "a2", "a1"]
        assert await ids("alice", limit=2) == ["a3", "a2"]
        assert await ids("alice", "ta") == ["a2", "a1"]
        assert await ids("bob", "ta") == []
        assert await ids(None, "ta", limit=1) == ["a2"]
        record = await store.get_thread("alice", "ta")
        assert record is not None and (record.owner, record.created_at) == ("alice", 10.0)
        assert await store.get_thread("alice", "nope") is None
        assert await store.get_thread("bob", "ta") is None  # each principal has its own ids
        runs_ta = await store.thread_runs("alice", "ta")
        assert [r.run_id for r in runs_ta] == ["a1", "a2"]  # oldest first
        assert [r.run_id for r in await store.thread_runs("alice", "ta", limit=1)] == ["a2"]
        before = await store.thread_runs("alice", "ta", limit=5, before="a2")
        assert [r.run_id for r in before] == ["a1"]
        assert await store.next_run_on_thread("alice", "ta", "a1") == "a2"
        assert await store.next_run_on_thread("alice", "ta", "a2") is None
        store.finish_run("a1", final(0))
        await store.flush()
        done = await store.list_runs("alice", None, 50, "completed")
        assert [r.run_id for r in done] == ["a1"]


# -- owners gone: orphans --------------------------------------------------------------------


async def test_runs_left_active_by_a_closed_store_are_claimed_once(backend: Backend) -> None:
    async with backend.open() as first:
        first.create_run(new_run("left"))
        first.create_run(new_run("ended", "t2"))
        for seq in (1, 2):
            first.append("left", chunk_frame(seq), None, RecordingSink())
        first.append("ended", chunk_frame(1), None, RecordingSink())
        first.finish_run("ended", final(1))
        await first.flush()
    async with backend.open() as second:
        second.create_run(new_run("mine", "t3"))  # alive: its owner is this store
        await second.flush()
        assert await finalise_orphans(second) == 1
        record = await second.get_run("left")
        assert record is not None
        assert (record.status, record.last_seq) == ("interrupted", 3)
        frames = await second.read_frames("left", 0)
        assert [f.type for f in frames] == ["message_chunk", "message_chunk", "done"]
        assert backend.stored_seqs("left") == [1, 2, 3]
        assert await second.claim_orphans() == []
        mine = await second.get_run("mine")
        assert mine is not None and mine.status == "running"
        second.finish_run("mine", final(0))


# -- retention -------------------------------------------------------------------------------


async def test_purge_deletes_events_of_old_finished_runs_and_keeps_their_records(
    backend: Backend,
) -> None:
    async with backend.open() as store:
        for i, run_id in enumerate(["old1", "old2", "new", "active"]):
            store.create_run(new_run(run_id, f"t{i}"))
            store.append(run_id, chunk_frame(1), None, RecordingSink())
        store.finish_run("old1", final(1, ended_at=100.0))
        store.finish_run("old2", final(1, ended_at=200.0))
        store.finish_run("new", final(1, ended_at=1000.0))
        await store.flush()
        assert await store.purge(ended_before=500.0, now=600.0, limit=1) == 1
        assert await store.purge(ended_before=500.0, now=700.0) == 1
        assert await store.purge(ended_before=500.0, now=800.0) == 0
        for run_id, purged_at in [("old1", 600.0), ("old2", 700.0), ("new", None)]:
            record = await store.get_run(run_id)
            assert record is not None and record.purged_at == purged_at
            assert record.status == "completed" and record.last_seq == 1
        assert backend.stored_seqs("old1") == backend.stored_seqs("old2") == []
        assert backend.stored_seqs("new") == backend.stored_seqs("active") == [1]
        store.finish_run("active", final(1))


# -- idempotency keys --------------------------------------------------------------------------


async def test_an_idempotency_key_binds_once_per_owner_within_its_window(backend: Backend) -> None:
    now = time.time()
    first = IdempotencyKey("r1", "h1", now)
    async with backend.open() as store:
        assert await store.claim_idempotency_key("alice", "k", first, 60) == first
        second = IdempotencyKey("r2", "h2", now + 1)
        assert await store.claim_idempotency_key("alice", "k", second, 60) == first
        # Another owner's key of the same spelling is another key.
        bob = IdempotencyKey("r3", "h1", now + 1)
        assert await store.claim_idempotency_key("bob", "k", bob, 60) == bob
        # A binding whose window has passed is free to be claimed again.
        await store.claim_idempotency_key(
            "alice", "old", IdempotencyKey("r4", "h4", now - 3600), 60
        )
        fresh = IdempotencyKey("r5", "h5", now)
        assert await store.claim_idempotency_key("alice", "old", fresh, 60) == fresh
    async with backend.open() as store:  # durable: another store (process) sees the binding
        assert await store.claim_idempotency_key("alice", "k", second, 60) == first


async def test_a_released_key_is_free_and_only_its_own_run_releases_it(backend: Backend) -> None:
    now = time.time()
    first = IdempotencyKey("r1", "h", now)
    async with backend.open() as store:
        await store.claim_idempotency_key("alice", "k", first, 60)
        await store.release_idempotency_key("alice", "k", "another-run")  # not its run: kept
        retry = IdempotencyKey("r2", "h", now + 1)
        assert await store.claim_idempotency_key("alice", "k", retry, 60) == first
        await store.release_idempotency_key("bob", "k", "r1")  # not bob's key: kept
        assert await store.claim_idempotency_key("alice", "k", retry, 60) == first
        await store.release_idempotency_key("alice", "k", "r1")
        assert await store.claim_idempotency_key("alice", "k", retry, 60) == retry


async def test_concurrent_claims_of_one_key_all_get_the_one_winner(backend: Backend) -> None:
    now = time.time()
    claims = [IdempotencyKey(f"r{i}", "h", now + i / 1000) for i in range(20)]
    got: list[IdempotencyKey] = []
    async with backend.open() as store:

        async def claim(mine: IdempotencyKey) -> None:
            got.append(await store.claim_idempotency_key("alice", "k", mine, 60))

        async with anyio.create_task_group() as tg:
            for mine in claims:
                tg.start_soon(claim, mine)
    assert len(got) == 20 and len(set(got)) == 1 and got[0] in claims


async def test_purging_idempotency_keys_keeps_those_within_their_window(backend: Backend) -> None:
    now = time.time()
    kept = IdempotencyKey("r1", "h", now)
    async with backend.open() as store:
        await store.claim_idempotency_key("alice", "kept", kept, 60)
        await store.claim_idempotency_key("alice", "old", IdempotencyKey("r0", "h", now - 3600), 60)
        purged = await store.purge_idempotency_keys(now - 60)
        assert purged == (0 if backend.name == "redis" else 1)  # Redis expired it by itself
        assert (
            await store.claim_idempotency_key("alice", "kept", IdempotencyKey("x", "h", now), 60)
            == kept
        )
        fresh = IdempotencyKey("r2", "h", now)
        assert await store.claim_idempotency_key("alice", "old", fresh, 60) == fresh
