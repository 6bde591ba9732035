"""Fan-out: a run's in-memory log and cursor subscribers (DESIGN.md invariants 3, 4, 5 and 6)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import anyio
import pytest

from streamctl.agents import ScriptedAgent, Wait
from streamctl.broadcast import follow
from streamctl.errors import CursorOutOfRange
from streamctl.events import Done, Frame, MessageChunk, RunStarted
from streamctl.inputs import RunCreate
from streamctl.run_log import PING, WAKE_BATCH, RunLog, reframe
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import chunks

pytestmark = pytest.mark.anyio


class Writer:
    """Appends numbered events of one run to the store; commits land in ``log`` (like a Run)."""

    def __init__(self, store: Store, log: RunLog) -> None:
        self.store = store
        self.log = log
        self.seq = 0

    def committed(self, frame: Frame, event: object) -> None:
        self.log.add(frame)

    def publish(self) -> None:
        self.log.publish()

    def chunks(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            event = MessageChunk(content=f"w{self.seq} ", message_id="m1")
            self.store.append(self.log.run_id, Frame.encode(self.seq, event, 0.0), event, self)

    def done(self) -> None:
        self.seq += 1
        event = Done(run_id=self.log.run_id, thread_id="t", status="completed", reason="ok")
        self.store.append(self.log.run_id, Frame.encode(self.seq, event, 0.0), event, self)


def frame(seq: int, type: str = "message_chunk") -> Frame:
    return Frame.build(seq, type, b'{"n":%d}' % seq, 0.0)


def seqs_of(stream: bytes) -> list[int]:
    """The ``id:`` of every event block in a stream (pings skipped)."""
    blocks = [b for b in stream.split(b"\n\n") if b and not b.startswith(b":")]
    return [int(b.split(b"\n", 1)[0].removeprefix(b"id: ")) for b in blocks]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def expected_bytes(store: Store, run_id: str, after: int) -> bytes:
    return b"".join(f.sse for f in await store.read_frames(run_id, after))


# -- RunLog ----------------------------------------------------------------------------------


async def test_add_publish_and_frames_after() -> None:
    log = RunLog("r1", tail_events=16)
    assert (log.first_seq, log.committed_seq, log.frames_after(0)) == (1, 0, [])
    changed = log.changed
    for seq in (1, 2, 3):
        log.add(frame(seq))
    assert not changed.is_set()  # add alone wakes nobody: the store publishes once per batch
    assert log.committed_seq == 3
    log.publish()
    assert changed.is_set()
    assert not log.changed.is_set() and log.changed is not changed
    assert log.frames_after(0) == [frame(1), frame(2), frame(3)]
    assert log.frames_after(2) == [frame(3)]
    assert log.frames_after(3) == []
    assert not log.closed
    log.add(frame(4, "done"))
    assert log.closed and log.committed_seq == 4


async def test_a_commit_larger_than_the_tail_stays_in_memory_until_published() -> None:
    # A subscriber caught up at one publish must find the whole next commit in memory, however
    # many events it holds: else every such subscriber reads the store for each large commit.
    log = RunLog("r1", tail_events=16)
    for seq in range(1, 11):
        log.add(frame(seq))
    log.publish()
    for seq in range(11, 111):  # one commit of 100 events
        log.add(frame(seq))
    log.publish()
    after = log.frames_after(10, limit=1000)
    assert after is not None and [f.seq for f in after] == list(range(11, 111))
    log.add(frame(111))  # the next commit trims back to the bound
    log.publish()
    assert len(log._frames) <= 16 and log.frames_after(10) is None


async def test_tail_is_bounded_and_older_cursors_get_none() -> None:
    log = RunLog("r1", tail_events=16)
    for seq in range(1, 1001):
        log.add(frame(seq))
        log.publish()  # the store publishes once per commit
        assert len(log._frames) <= 16
        first = log.first_seq
        assert [f.seq for f in log._frames] == list(range(first, seq + 1))
    first = log.first_seq
    assert first > 1 and log.committed_seq == 1000
    assert log.frames_after(first - 2) is None
    assert log.frames_after(0) is None
    held = log.frames_after(first - 1)
    assert held is not None and [f.seq for f in held] == list(range(first, 1001))
    assert log.frames_after(1000) == []


async def test_reframe_prefixes_only_the_id() -> None:
    f = Frame.encode(5, MessageChunk(content="hi", message_id="m"), 0.0)
    assert reframe(f, b"") is f.sse
    assert reframe(f, b"run-1:") == b"id: run-1:5\n" + f.sse.split(b"\n", 1)[1]


async def test_subscribers_at_one_cursor_share_one_bytes_object() -> None:
    log = RunLog("r1", tail_events=16)
    for seq in (1, 2, 3):
        log.add(frame(seq))
    first = log.shared(1, b"")
    assert first is not None
    assert first == (frame(2).sse + frame(3).sse, 3, 2)
    again = log.shared(1, b"")
    assert again is not None and again[0] is first[0]  # joined once, not per subscriber
    prefixed = log.shared(1, b"r1:")
    assert prefixed is not None and prefixed[0] == reframe(frame(2), b"r1:") + reframe(
        frame(3), b"r1:"
    )
    assert log.shared(3, b"") == (b"", 3, 0)  # caught up: nothing to send
    log.add(frame(4))  # a commit makes what was shared stale
    after = log.shared(1, b"")
    assert after is not None and after[1:] == (4, 3)
    for seq in range(5, 41):
        log.add(frame(seq))
        log.publish()
    assert log.shared(0, b"") is None  # only in the store now: each subscriber reads it


async def test_publish_wakes_waiters_in_groups_one_per_loop_turn() -> None:
    log = RunLog("r1", tail_events=16)
    events = [log.changed for _ in range(WAKE_BATCH * 2 + 1)]
    assert len({id(e) for e in events}) == 3  # three groups, filled in order of taking
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await events[i].wait()
        woken.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(len(events)):
                tg.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
            log.publish()
            assert [e.is_set() for e in (events[0], events[WAKE_BATCH], events[-1])] == [
                True,
                False,
                False,
            ]
            assert not log.changed.is_set()  # the next publish's waiters
    assert sorted(woken) == list(range(len(events)))
    assert woken[:WAKE_BATCH] == list(range(WAKE_BATCH))  # the first group went first


async def test_subscribers_in_later_wake_groups_miss_nothing(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        writer = Writer(store, log)
        count = WAKE_BATCH * 2 + 3
        received: dict[int, bytes] = {}

        async def subscribe(i: int) -> None:
            received[i] = await collect(follow(store, "r1", log, 0, ping_interval=60))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(subscribe, i)
                await anyio.wait_all_tasks_blocked()
                for n in (1, 2, 1, 7):  # commits land while later groups are still waking
                    writer.chunks(n)
                    await store.flush()
                writer.done()
        expected = await expected_bytes(store, "r1", 0)
    assert seqs_of(expected) == list(range(1, 13))
    assert received == dict.fromkeys(range(count), expected)


# -- follow ----------------------------------------------------------------------------------


async def test_concurrent_subscribers_receive_identical_ordered_bytes(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        writer = Writer(store, log)
        received: dict[int, bytes] = {}

        async def subscribe(i: int) -> None:
            received[i] = await collect(follow(store, "r1", log, 0, ping_interval=60))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(subscribe, i)
                await anyio.wait_all_tasks_blocked()
                assert log.subscribers == 4
                for n in (1, 5, 50, 3):
                    writer.chunks(n)
                    await store.flush()
                    await anyio.wait_all_tasks_blocked()  # subscribers have caught up
                writer.done()
        assert log.subscribers == 0
        expected = await expected_bytes(store, "r1", 0)
    assert seqs_of(expected) == list(range(1, 61))
    assert received == dict.fromkeys(range(4), expected)


async def test_subscriber_behind_the_tail_reads_sqlite_without_gap_or_duplicate(
    db_path: Path,
) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=16)
        writer = Writer(store, log)
        for _ in range(10):  # ten commits: the tail keeps the last one, at least
            writer.chunks(10)
            await store.flush()
        assert log.first_seq > 38  # the cursors below are only in SQLite

        streams = [follow(store, "r1", log, cursor, ping_interval=60) for cursor in (0, 37)]
        with anyio.fail_after(5):
            firsts = [await stream.__anext__() for stream in streams]
            # While both are suspended mid-stream, the run moves the tail far past them.
            writer.chunks(300)
            await store.flush()
            writer.done()
            await store.flush()
            results = [first + await collect(s) for first, s in zip(firsts, streams, strict=True)]
        assert log.subscribers == 0
        assert seqs_of(results[0]) == list(range(1, 402))
        assert seqs_of(results[1]) == list(range(38, 402))
        assert results[0] == await expected_bytes(store, "r1", 0)
        assert results[1] == await expected_bytes(store, "r1", 37)


async def test_idle_stream_pings_then_ends_after_done(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=16)
        writer = Writer(store, log)
        writer.seq += 1
        run = RunStarted(run_id="r1", thread_id="t")
        store.append("r1", Frame.encode(1, run, 0.0), run, writer)
        await store.flush()

        stream = follow(store, "r1", log, 1, ping_interval=0.05)
        assert isinstance(stream, AsyncGenerator)
        with anyio.fail_after(5):
            assert await stream.__anext__() == PING  # nothing after cursor 1: idle
            assert await stream.__anext__() == PING  # and again, for as long as it is idle
            assert log.subscribers == 1
            writer.done()
            await store.flush()
            rest = await collect(stream)
        assert rest.replace(PING, b"") == await expected_bytes(store, "r1", 1)
        assert seqs_of(rest) == [2]
        assert log.subscribers == 0


async def test_busy_stream_does_not_ping(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=16)
        writer = Writer(store, log)
        writer.chunks(20)
        writer.done()
        await store.flush()
        with anyio.fail_after(5):
            out = await collect(follow(store, "r1", log, 0, ping_interval=0.05))
        assert PING not in out
        assert seqs_of(out) == list(range(1, 22))


async def test_closing_a_subscriber_early_releases_it(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=16)
        Writer(store, log).chunks(3)
        await store.flush()
        stream = follow(store, "r1", log, 0, ping_interval=60)
        assert isinstance(stream, AsyncGenerator)
        with anyio.fail_after(5):
            assert seqs_of(await stream.__anext__()) == [1, 2, 3]
            assert log.subscribers == 1
            await stream.aclose()
        assert log.subscribers == 0


async def test_finished_run_is_replayed_from_sqlite_in_pages(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=16)
        writer = Writer(store, log)
        writer.chunks(2499)
        writer.done()
        await store.flush()
        with anyio.fail_after(5):
            writes = [chunk async for chunk in follow(store, "r1", None, 0, ping_interval=60)]
            tail = await collect(follow(store, "r1", None, 2490, ping_interval=60, id_prefix=b"x:"))
        assert len(writes) == 3  # 1000-event pages, not one write per event
        assert seqs_of(b"".join(writes)) == list(range(1, 2501))
        assert b"".join(writes) == await expected_bytes(store, "r1", 0)
        assert tail.count(b"id: x:") == 10
        assert tail.startswith(b"id: x:2491\nevent: message_chunk\n")
        assert log.subscribers == 0


async def test_supervisor_subscription_follows_a_live_run_then_replays_it(db_path: Path) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(2), Wait(gate), *chunks(2, "m2")])
    body = RunCreate.model_validate({"input": {"messages": [{"role": "user", "content": "hi"}]}})
    settings = Settings.from_env({}, db=db_path)
    async with Store(db_path) as store, Supervisor(store, agent, settings) as sup:
        run = await sup.control.start(body, "u")
        with pytest.raises(CursorOutOfRange):
            await sup.reads.subscribe(run.run_id, "u", run.log.committed_seq + 1)
        stream = await sup.reads.subscribe(run.run_id, "u", 0)
        assert stream is not None
        with anyio.fail_after(5):
            first = await stream.__anext__()
            gate.set()
            live = first + await collect(stream)
            await run.finished.wait()  # the stream may end just before the task does
            assert sup.active_runs == 0
            replay = await sup.reads.subscribe(run.run_id, "u", 0)  # now from SQLite only
            assert replay is not None
            replayed = await collect(replay)
        expected = await expected_bytes(store, run.run_id, 0)
        assert live == replayed == expected
        assert seqs_of(expected) == list(range(1, 7))
        assert await sup.reads.subscribe(run.run_id, "u", 6) is None  # nothing left: the API's 204
