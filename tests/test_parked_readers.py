"""Caught-up ``low`` streams parked on their run's log, which writes each commit to them itself
(``run_log.py``), and the response's side of it (``sse.SendOutlet``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.types import Message, Scope

from streamctl.broadcast import follow
from streamctl.events import Frame, MessageChunk
from streamctl.run_log import PING, WAKE_BATCH, Outlet, RunLog
from streamctl.shaping import LAG_MERGE_FRAMES
from streamctl.sse import RAW_SEND_KEY, EventStream, SendWatch
from streamctl.stats import Counters
from streamctl.store import Store

from .test_broadcast import Writer, expected_bytes, frame, seqs_of

pytestmark = pytest.mark.anyio


class Recorder:
    """An outlet that keeps what the log wrote; ``accept`` False: each write is "under way";
    None: each write is refused (nothing sent, nothing kept)."""

    direct = True

    def __init__(self, accept: bool | None = True) -> None:
        self.written: list[bytes] = []
        self.accept = accept
        self.calls = 0

    def write(self, data: bytes) -> bool | None:
        self.calls += 1
        if self.accept is not None:
            self.written.append(data)
        return self.accept


async def pump(
    stream: AsyncGenerator[bytes, Outlet | None], outlet: Outlet, out: list[bytes]
) -> None:
    """What ``EventStream`` does with a body: send it the outlet at every step."""
    taken = stream.__anext__()
    while True:
        try:
            out.append(await taken)
        except StopAsyncIteration:
            return
        taken = stream.asend(outlet)


@asynccontextmanager
async def one_run(db_path: Path) -> AsyncIterator[tuple[Store, RunLog, Writer]]:
    """A store and a live run's log, its first event committed."""
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        writer = Writer(store, log)
        writer.chunks(1)
        await store.flush()
        yield store, log, writer


async def stream_commits(
    store: Store,
    log: RunLog,
    writer: Writer,
    outlet: Outlet,
    sizes: tuple[int, ...],
    counters: Counters,
) -> list[bytes]:
    """One stream of ``log`` through ``outlet`` while commits of ``sizes`` events and the run's
    end land: what its task yielded."""
    out = list[bytes]()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, subscribe(store, log, counters), outlet, out)
            await anyio.wait_all_tasks_blocked()
            for n in sizes:
                writer.chunks(n)
                await store.flush()
                await anyio.wait_all_tasks_blocked()
            writer.done()
    return out


def subscribe(store: Store, log: RunLog, counters: Counters, ping: float = 60.0) -> Any:
    return follow(store, "r1", log, 0, ping_interval=ping, heartbeat=True, counters=counters)


async def test_a_caught_up_stream_is_written_by_its_log_without_waking(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, outlet, out = Counters(), Recorder(), list[bytes]()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, subscribe(store, log, counters), outlet, out)
                await anyio.wait_all_tasks_blocked()
                assert log.parked == 1  # caught up after its first write: parked
                for n in (1, 5, 3):
                    writer.chunks(n)
                    await store.flush()
                    await anyio.wait_all_tasks_blocked()
                # Three commits written by the log; the stream's task never ran for them.
                assert len(outlet.written) == 3
                assert len(out) == 1
                assert counters.direct_writes == 3
                writer.done()
        expected = await expected_bytes(store, "r1", 0)
    # The done was written by the log too; the task then ended the stream (one b"").
    assert out[1:] == [b""]
    assert b"".join(out + outlet.written) == expected
    assert seqs_of(expected) == list(range(1, 12))
    assert log.parked == 0
    assert counters.writes == 5  # the task's first write, the log's four
    assert counters.events_sent == 11


async def test_a_write_left_under_way_hands_the_stream_back_each_time(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, outlet, out = Counters(), Recorder(accept=False), list[bytes]()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, subscribe(store, log, counters), outlet, out)
                await anyio.wait_all_tasks_blocked()
                for n in (2, 1, 4):
                    writer.chunks(n)
                    await store.flush()
                    await anyio.wait_all_tasks_blocked()
                    # Handed back (b"": its response ends the write), then parked again.
                    assert out[-1] == b""
                    assert log.parked == 1
                writer.done()
        expected = await expected_bytes(store, "r1", 0)
    assert out.count(b"") == 4
    assert b"".join(out + outlet.written) == expected


async def test_a_parked_stream_that_lags_goes_back_to_its_task(db_path: Path) -> None:
    def chunk(seq: int) -> Frame:
        return Frame.encode(seq, MessageChunk(content=f"w{seq} ", message_id="m1"), 0.0)

    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        log.add(chunk(1))
        log.publish()
        counters, outlet, out = Counters(), Recorder(), list[bytes]()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, subscribe(store, log, counters), outlet, out)
                await anyio.wait_all_tasks_blocked()
                assert log.parked == 1
                for seq in range(2, LAG_MERGE_FRAMES + 2):  # one commit of a lagging write
                    log.add(chunk(seq))
                log.publish()
                await anyio.wait_all_tasks_blocked()
                assert outlet.written == []  # the log did not write it: the task merged it
                assert out[1] == b""
                assert b'"content":"w2 w3 ' in out[2]
                assert log.parked == 1  # and parked again once caught up
                log.add(Frame.build(LAG_MERGE_FRAMES + 2, "done", b"{}", 0.0))
                log.publish()
    assert seqs_of(b"".join(out[1:] + outlet.written)) == [LAG_MERGE_FRAMES + 1] * 1 + [
        LAG_MERGE_FRAMES + 2
    ]


async def test_a_parked_stream_sends_a_failure_and_ends(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, _writer):
        counters, outlet, out = Counters(), Recorder(), list[bytes]()
        failure = b"event: error\ndata: {}\n\n"
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, subscribe(store, log, counters), outlet, out)
                await anyio.wait_all_tasks_blocked()
                assert log.parked == 1
                log.fail(failure)
        assert out[-1] == failure
        assert log.parked == 0 and log.subscribers == 0


async def test_the_heartbeat_pings_a_parked_idle_stream(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, outlet, out = Counters(), Recorder(), list[bytes]()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, subscribe(store, log, counters, ping=0), outlet, out)
                await anyio.wait_all_tasks_blocked()
                pings = counters.pings
                log.publish()  # the supervisor's heartbeat: nothing new, idle long enough
                await anyio.wait_all_tasks_blocked()
                assert outlet.written == [PING]
                assert counters.pings == pings + 1
                writer.done()
    assert outlet.written[1].startswith(b"id: 2\nevent: done\n")  # after the ping


async def test_many_parked_streams_get_every_commit_even_during_a_pass(db_path: Path) -> None:
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        log.add(frame(1))
        log.publish()
        count = WAKE_BATCH * 2 + 5
        outlets = [Recorder() for _ in range(count)]
        outs: list[list[bytes]] = [[] for _ in range(count)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for outlet, out in zip(outlets, outs, strict=True):
                    tg.start_soon(pump, subscribe(store, log, Counters()), outlet, out)
                await anyio.wait_all_tasks_blocked()
                assert log.parked == count
                log.add(frame(2))
                log.publish()
                await anyio.lowlevel.checkpoint()  # the pass's first batch, not its others
                assert outlets[0].written == [frame(2).sse]
                assert outlets[-1].written == []
                for seq in (3, 4):  # commits while that pass is still going
                    log.add(frame(seq))
                    log.publish()
                    assert log._rewrite is True  # one more pass, once this one ends
                    await anyio.lowlevel.checkpoint()
                while log._rewrite is not None:  # the passes' batches, one per loop turn
                    await anyio.lowlevel.checkpoint()
                news = b"".join(frame(s).sse for s in (2, 3, 4))
                for outlet in outlets:  # before the end: every one caught up by a pass
                    assert b"".join(outlet.written) == news
                log.add(Frame.build(5, "done", b"{}", 0.0))
                log.publish()
        expected = frame(1).sse + b"".join(frame(s).sse for s in (2, 3, 4))
    for outlet, out in zip(outlets, outs, strict=True):
        assert b"".join(out + outlet.written).startswith(expected)
        assert seqs_of(b"".join(out + outlet.written)) == [1, 2, 3, 4, 5]


class Server:
    """An ASGI server's send: keeps the body; while ``held``, a body write waits for it."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.held: anyio.Event | None = None
        self.ended = False

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            return
        if self.held is not None and message["body"]:
            await self.held.wait()
        self.body.append(message["body"])
        self.ended = not message["more_body"]


async def never_disconnect() -> Message:
    await anyio.sleep_forever()
    raise AssertionError


@asynccontextmanager
async def served(
    response: EventStream, server: Server, *beside: Callable[[], Coroutine[Any, Any, None]]
) -> AsyncIterator[Scope]:
    """``response`` sending to ``server`` (its raw send in the scope) in a task, and ``beside``
    started once every task blocks (a timer among them would keep them from all blocking); the
    stream has ended when the block exits (5 s at most), and ``beside`` with it."""
    scope = {"type": "http", RAW_SEND_KEY: server.send}

    async def respond() -> None:
        await response(scope, never_disconnect, server.send)
        tg.cancel_scope.cancel()  # the tasks beside it end with it

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(respond)
            await anyio.wait_all_tasks_blocked()
            for task in beside:
                tg.start_soon(task)
            yield scope


async def test_a_send_the_log_began_is_ended_by_the_stream_in_order(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, server = Counters(), Server()
        response = EventStream(subscribe(store, log, counters), retry_ms=1000, watch=None)
        async with served(response, server):
            assert log.parked == 1
            writer.chunks(1)  # written by the log: ends at once
            await store.flush()
            await anyio.wait_all_tasks_blocked()
            server.held = anyio.Event()
            writer.chunks(3)  # its send waits: the stream's task takes it over
            await store.flush()
            await anyio.wait_all_tasks_blocked()
            assert log.parked == 0
            writer.chunks(2)  # committed while that send is under way
            await store.flush()
            await anyio.wait_all_tasks_blocked()
            assert counters.direct_writes == 2
            server.held.set()
            await anyio.wait_all_tasks_blocked()
            writer.done()
        expected = await expected_bytes(store, "r1", 0)
    assert server.ended
    assert b"".join(server.body) == b"retry: 1000\n" + expected


async def test_a_send_under_way_that_never_ends_is_cut_off(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        server, slow, cut = Server(), list[Scope](), anyio.Event()

        def on_slow(scope: Scope) -> None:
            slow.append(scope)
            cut.set()

        watch = SendWatch(0.2)
        response = EventStream(
            subscribe(store, log, Counters()),
            retry_ms=1000,
            watch=watch,
            on_slow=on_slow,
        )
        async with served(response, server, watch.run) as scope:
            server.held = anyio.Event()  # the client takes nothing from now on
            writer.chunks(2)
            await store.flush()
            with anyio.fail_after(2):
                await cut.wait()
    assert slow == [scope]
    assert log.subscribers == 0 and log.parked == 0


class Broken(Recorder):
    def write(self, data: bytes) -> bool | None:
        raise RuntimeError("a broken outlet")


async def test_a_broken_outlet_does_not_stop_the_other_streams(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with one_run(db_path) as (store, log, writer):
        outlets: list[Recorder] = [Broken(), Recorder()]
        outs: list[list[bytes]] = [[], []]
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for outlet, out in zip(outlets, outs, strict=True):
                    tg.start_soon(pump, subscribe(store, log, Counters()), outlet, out)
                await anyio.wait_all_tasks_blocked()
                for n in (2, 3):
                    writer.chunks(n)
                    await store.flush()
                    await anyio.wait_all_tasks_blocked()
                writer.done()
        expected = await expected_bytes(store, "r1", 0)
    # The broken one went back to its task each time, which sent the frames itself.
    assert b"".join(outs[0]) == expected
    assert b"".join(outs[1] + outlets[1].written) == expected
    assert len(outlets[1].written) == 3
    assert "writing to a caught-up stream failed" in caplog.text


async def test_a_refused_write_is_sent_by_the_stream_itself(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, outlet = Counters(), Recorder(accept=None)
        out = await stream_commits(store, log, writer, outlet, (2, 3), counters)
        expected = await expected_bytes(store, "r1", 0)
    assert b"".join(out) == expected  # nothing lost to the refusals, nothing twice
    assert counters.direct_writes == 0
    assert outlet.calls >= 3  # the log tried each commit and the end


async def test_a_commit_during_a_slow_ping_is_not_missed(db_path: Path) -> None:
    """The log moves on while the stream's ping is being sent: the stream must not park behind
    it (the commit's publish found no one to write to; none may follow: here, the run's end)."""
    async with Store(db_path) as store:
        log = RunLog("r1", tail_events=10_000)
        log.add(frame(1))
        log.publish()
        out = list[bytes]()
        stream = subscribe(store, log, Counters(), ping=0)
        outlet = Recorder()
        with anyio.fail_after(5):
            taken = stream.__anext__()
            while True:
                try:
                    chunk = await taken
                except StopAsyncIteration:
                    break
                out.append(chunk)
                if chunk == PING and log.committed_seq == 1:
                    log.add(Frame.build(2, "done", b"{}", 0.0))  # while the ping is sent
                    log.publish()
                taken = stream.asend(outlet)
    assert seqs_of(b"".join(out + outlet.written).replace(PING, b"")) == [1, 2]
    assert log.parked == 0 and log.subscribers == 0


async def test_without_a_watch_a_send_under_way_is_timed_too(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        server, slow = Server(), list[Scope]()
        response = EventStream(
            subscribe(store, log, Counters()),
            retry_ms=1000,
            send_timeout=0.2,
            on_slow=slow.append,
        )
        async with served(response, server) as scope:
            server.held = anyio.Event()  # the client takes nothing from now on
            writer.chunks(2)
            await store.flush()
        assert slow == [scope]  # the response ended on its own, after send_timeout


class TaskBound(Server):
    """A server whose send works only inside a task (as one that times it with anyio would)."""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            asyncio.current_task().get_name()  # type: ignore[union-attr]
        await super().send(message)


async def test_a_send_that_needs_its_task_turns_the_outlet_off(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, server = Counters(), TaskBound()
        response = EventStream(subscribe(store, log, counters), retry_ms=1000)
        async with served(response, server):
            assert log.parked == 1
            for n in (2, 3):
                writer.chunks(n)
                await store.flush()
                await anyio.wait_all_tasks_blocked()
                assert log.parked == 0  # off: the stream waits in its task from now on
            writer.done()
        expected = await expected_bytes(store, "r1", 0)
    assert b"".join(server.body) == b"retry: 1000\n" + expected
    assert counters.direct_writes == 0
    assert "fails outside its task" in caplog.text


class Gone(Server):
    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message["body"] and self.held:
            raise ConnectionResetError("the client is gone")
        await super().send(message)


async def test_a_connection_lost_under_a_direct_write_ends_the_stream(db_path: Path) -> None:
    async with one_run(db_path) as (store, log, writer):
        counters, server, lost = Counters(), Gone(), list[bool]()
        response = EventStream(
            subscribe(store, log, counters),
            retry_ms=1000,
            on_disconnect=lambda: lost.append(True),
        )
        async with served(response, server):
            server.held = anyio.Event()  # from now on each write fails
            writer.chunks(2)
            await store.flush()
    assert lost == [True]  # ended as a disconnect, not a crash
    assert counters.direct_writes == 0
    assert log.parked == 0 and log.subscribers == 0
