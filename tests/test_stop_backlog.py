"""A run waits for its own writes, and a stopped run does not wait for its backlog (issue 11):
``flush(run_id)`` settles one lane, whatever another run has queued; a stopped run's events that
still wait for the writer are dropped, and its ``done`` follows its last committed event, with
dense ids, delivered to its subscribers like every committed event before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from streamctl.broadcast import follow
from streamctl.store import NewRun, Store
from streamctl.store.base import FinalState
from streamctl.store.queue import Batch
from tests.support.firehose import (
    USER,
    Firehose,
    Order,
    assert_dense_with_one_done,
    chunk_frame,
    request,
    stored,
    supervisor,
    until_backpressure,
)
from tests.support.sse_reference import parse_bytes

pytestmark = pytest.mark.anyio


class Gate:
    """Holds the store's writer at its next commit once ``close`` is called, until ``open``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commit = store._commit
        self.opened = anyio.Event()
        self.holding = anyio.Event()
        self.closed = False

    async def _commit(self, conn: Any, batch: Batch) -> bool:
        if self.closed:
            self.holding.set()
            await self.opened.wait()
        return await self.commit(conn, batch)

    def close(self) -> None:
        self.closed = True
        self.store._commit = self._commit  # type: ignore[method-assign]

    def open(self) -> None:
        self.opened.set()
        self.store._commit = self.commit  # type: ignore[method-assign]


async def test_flush_of_one_run_does_not_wait_for_another_runs_backlog(db_path: Path) -> None:
    """1,000 events of one run queued, then one of another: flushing the other returns once its
    batch is committed, while the writer is held with most of the first run still queued."""
    order: list[tuple[str, int]] = []
    hose, other = Order(order, "hose"), Order(order, "other")
    async with Store(db_path, max_batch_events=10) as store:
        gate = Gate(store)
        for seq in range(1, 1001):
            store.append("hose", *chunk_frame(seq), hose)
        store.append("other", *chunk_frame(1), other)

        async def hold_after_other(conn: Any, batch: Batch) -> bool:
            threaded = await gate.commit(conn, batch)
            if any(run_id == "other" for run_id, _, _, _ in batch.events):
                gate.close()  # every later batch waits
            return threaded

        store._commit = hold_after_other  # type: ignore[method-assign]
        try:
            with anyio.fail_after(10):
                await store.flush("other")
                await gate.holding.wait()
            assert ("other", 1) in order and len(order) < 100
        finally:
            gate.open()
        await store.flush()
    assert [seq for run, seq in order if run == "hose"] == list(range(1, 1001))


async def test_dropped_events_are_the_queued_ones_and_flushes_still_end(db_path: Path) -> None:
    """With a batch of a run in flight (held), its queued events are dropped, oldest first; a
    flush that began before the drop, and one after, end once the batch in flight is committed,
    which holds the only events stored."""
    order: list[tuple[str, int]] = []
    sink = Order(order, "r")
    flushed: list[str] = []
    async with Store(db_path, max_batch_events=10) as store, anyio.create_task_group() as tg:
        gate = Gate(store)
        gate.close()
        for seq in range(1, 101):
            store.append("r", *chunk_frame(seq), sink)
        await gate.holding.wait()  # seqs 1..10 in flight

        async def flush(name: str) -> None:
            await store.flush("r" if name == "run" else None)
            flushed.append(name)

        tg.start_soon(flush, "all")
        await anyio.wait_all_tasks_blocked()
        dropped = store.drop_queued("r")
        assert [frame.seq for frame in dropped] == list(range(11, 101))
        assert store.drop_queued("r") == []  # nothing left to drop
        tg.start_soon(flush, "run")
        await anyio.wait_all_tasks_blocked()
        assert flushed == []  # the batch in flight is not committed yet
        gate.open()
    assert sorted(flushed) == ["all", "run"]
    assert order == [("r", seq) for seq in range(1, 11)]
    assert [frame.seq for frame in await store_frames(db_path)] == list(range(1, 11))


async def store_frames(db_path: Path) -> list[Any]:
    async with Store(db_path) as store:
        return await store.read_frames("r", 0)


async def test_a_lane_with_nothing_in_flight_drops_at_once(db_path: Path) -> None:
    """The writer is held on another run's batch: the events of a run with nothing in flight are
    dropped and count as settled at once (its flush returns before the writer moves on)."""
    order: list[tuple[str, int]] = []
    async with Store(db_path) as store:
        gate = Gate(store)
        gate.close()
        store.append("other", *chunk_frame(1), Order(order, "other"))
        await gate.holding.wait()
        for seq in range(1, 6):
            store.append("r", *chunk_frame(seq), Order(order, "r"))
        try:
            assert [frame.seq for frame in store.drop_queued("r")] == [1, 2, 3, 4, 5]
            with anyio.fail_after(5):
                await store.flush("r")
            assert order == []  # still held: the flush did not wait for the writer
        finally:
            gate.open()
        await store.flush()
    assert order == [("other", 1)]


async def test_a_lane_holding_a_statement_drops_nothing(db_path: Path) -> None:
    """A run's row written after its events (its final row) is never dropped, nor the events
    before it: a lane that holds a statement keeps everything."""
    async with Store(db_path) as store:
        gate = Gate(store)
        gate.close()
        store.create_run(NewRun("r", "t", USER, "running", {"messages": []}, {}, 0.0, 0.0))
        await gate.holding.wait()  # the run's rows in flight
        sink = Order([], "r")
        for seq in range(1, 4):
            store.append("r", *chunk_frame(seq), sink)
        store.finish_run("r", FinalState("completed", "ok", None, 3, 3, {}, 1.0))
        try:
            assert store.drop_queued("r") == []
        finally:
            gate.open()
        await store.flush()
        record = await store.get_run("r")
    assert record is not None and record.status == "completed" and record.last_seq == 3


async def test_a_stopped_firehose_ends_after_its_last_committed_event(db_path: Path) -> None:
    """Stop while the writer holds a batch of the firehose and the rest of its backlog is queued:
    the queued events are dropped (never stored, never sent); the `done` follows the last event
    of the batch in flight; a subscriber from the start receives every stored event in order,
    then the `done`."""
    store = Store(db_path, max_batch_events=50)
    async with supervisor(db_path, Firehose(None), store=store, max_backlog_events=500) as sup:
        run = await sup.control.start(request(), USER)
        received: list[bytes] = []

        async def subscribe() -> None:
            stream = follow(sup.store, run.run_id, run.log, 0, ping_interval=60)
            async for chunk in stream:
                received.append(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe)
            await until_backpressure(sup, run)
            gate = Gate(store)
            gate.close()
            with anyio.fail_after(10):
                await gate.holding.wait()
            emitted = run.last_seq
            try:
                await sup.control.stop(run.run_id, USER, wait=False)
                await anyio.wait_all_tasks_blocked()  # the run's task waits for the batch only
            finally:
                gate.open()
            with anyio.fail_after(10):
                await run.finished.wait()
        log = await stored(sup, run.run_id)
    assert_dense_with_one_done(log, "cancelled")
    assert log[-1][0] < emitted  # the backlog past the batch in flight was dropped
    events = parse_bytes(b"".join(received), step=1 << 20).events
    assert [int(e.id) for e in events] == [seq for seq, _, _ in log]
    assert run.snapshot()["last_seq"] == log[-1][0]
