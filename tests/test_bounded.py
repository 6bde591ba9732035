"""Bounded under a firehose (issue 11): backpressure from the store to the agent, capped and fair
commit batches, stop of a run that emits as fast as it can. Behaviour, not timings: high-water
marks the store keeps, and the order in which things are committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from streamctl.store import NewRun, Store
from streamctl.store.base import FinalState
from streamctl.store.queue import Batch
from tests.support.firehose import (
    USER,
    Both,
    Firehose,
    Order,
    assert_dense_with_one_done,
    chunk_frame,
    request,
    stored,
    supervisor,
    until_backpressure,
)

pytestmark = pytest.mark.anyio

# -- backpressure ----------------------------------------------------------------------------


async def test_a_firehose_backlog_never_exceeds_its_bound(db_path: Path) -> None:
    """A zero-delay agent emitting 30,000 events: the run's backlog in the store never goes past
    its bound (+1: the event that crossed it), the agent waits instead, and every event is
    committed, densely, to the run's `done`. The bound is below the events a run emits between
    two turns of the loop, so the agent must wait, however fast the writer."""
    bound = 16
    agent = Firehose(30_000)
    async with supervisor(db_path, agent, max_backlog_events=bound) as sup:
        run = await sup.control.start(request(), USER)
        with anyio.fail_after(60):
            await run.finished.wait()
        stats = sup.store.stats
        assert stats.max_backlog_events <= bound + 1
        assert stats.backpressure_waits > 0
        log = await stored(sup, run.run_id)
    assert_dense_with_one_done(log, "completed")
    assert sum(1 for _, t, _ in log if t == "message_chunk") == 30_000


async def test_the_byte_bound_holds_for_fat_events(db_path: Path) -> None:
    """Events of ~1 KiB with a 32 KiB byte bound (and an event bound far away): the bytes bound
    the backlog (one event of slack, plus each row's overhead in the store's measure)."""
    bound = 32 * 1024
    agent = Firehose(3000, size=1024)
    async with supervisor(
        db_path, agent, max_backlog_events=100_000, max_backlog_bytes=bound
    ) as sup:
        run = await sup.control.start(request(), USER)
        with anyio.fail_after(60):
            await run.finished.wait()
        stats = sup.store.stats
        assert stats.backpressure_waits > 0
        assert stats.max_backlog_events <= bound // 1024 + 1
        assert stats.max_backlog_bytes <= bound + 1200 + 64 * (bound // 1024 + 1)
        assert run.snapshot()["status"] == "completed"


async def test_a_slow_writer_holds_the_agent_not_memory(db_path: Path) -> None:
    """While the store cannot commit (the writer is held), a firehose agent is not advanced past
    the bound: it is the agent that waits (backpressure), not memory that grows."""
    bound = 100
    go = anyio.Event()
    agent = Firehose(None, go=go)
    store = Store(db_path)
    gate = anyio.Event()
    async with supervisor(db_path, agent, store=store, max_backlog_events=bound) as sup:
        run = await sup.control.start(request(), USER)
        commit = store._commit

        async def held(conn: Any, batch: Batch) -> bool:
            await gate.wait()
            return await commit(conn, batch)

        store._commit = held  # type: ignore[method-assign]
        go.set()
        try:
            await anyio.wait_all_tasks_blocked()  # the writer at the gate, the agent at its bound
            waits, emitted, committed = (
                sup.store.stats.backpressure_waits,
                run.last_seq,
                run.output.last_seq,
            )
        finally:
            gate.set()  # else a failed assertion would leave the writer held at teardown
            store._commit = commit  # type: ignore[method-assign]
        # Emitted: `run` (committed) and bound + 1 chunks, the last of which crossed the bound.
        assert (waits, emitted, committed) == (1, 1 + bound + 1, 1)
        await until_backpressure(sup, run)
        await sup.control.stop(run.run_id, USER)
        assert run.snapshot()["status"] == "cancelled"
        assert sup.store.stats.max_backlog_events <= bound + 1


# -- stop under a firehose -------------------------------------------------------------------


async def test_stop_of_a_firehose_ends_it_cancelled(db_path: Path) -> None:
    """An endless zero-delay agent, waiting at its bound: stop cancels it there, returns once
    its task has exited, and the run ends `cancelled` with dense ids and one `done`."""
    agent = Firehose(None)
    async with supervisor(db_path, agent, max_backlog_events=500) as sup:
        run = await sup.control.start(request(), USER)
        await until_backpressure(sup, run)
        snapshot, exited = await sup.control.stop(run.run_id, USER)
        assert exited and snapshot["status"] == "cancelled"
        log = await stored(sup, run.run_id)
    assert_dense_with_one_done(log, "cancelled")
    assert sup.store.stats.max_backlog_events <= 501


async def test_drain_ends_a_firehose_interrupted(db_path: Path) -> None:
    """Shutdown with a firehose running: drain interrupts it; its terminal event is written
    without waiting on the bound (terminal events never wait)."""
    agent = Firehose(None)
    async with supervisor(db_path, agent, max_backlog_events=200) as sup:
        run = await sup.control.start(request(), USER)
        await until_backpressure(sup, run)
        with anyio.fail_after(20):
            await sup.control.drain(0)
        assert run.finished.is_set()
        log = await stored(sup, run.run_id)
    assert_dense_with_one_done(log, "interrupted")


# -- fairness --------------------------------------------------------------------------------


async def test_another_run_completes_while_a_firehose_runs(db_path: Path) -> None:
    """A second principal's run is committed and ends while an endless firehose is still
    running: its commits do not wait behind the firehose's backlog."""
    firehose = Firehose(None)
    async with supervisor(db_path, Both(firehose), max_backlog_events=2000) as sup:
        hose = await sup.control.start(request("firehose"), USER)
        await until_backpressure(sup, hose)
        quick = await sup.control.start(request("quick"), "user-2")
        with anyio.fail_after(30):
            await quick.finished.wait()
        assert not hose.finished.is_set() and hose.output.status == "running"
        assert quick.snapshot()["status"] == "completed"
        await sup.control.stop(hose.run_id, USER)


async def test_batches_are_capped_and_served_round_robin(db_path: Path) -> None:
    """5,000 events of one run queued, then one of another: the other's is committed in the
    very next batch after the first, not behind all 5,000; no transaction exceeds the cap."""
    order: list[tuple[str, int]] = []
    hose, other = Order(order, "hose"), Order(order, "other")
    async with Store(db_path, max_batch_events=100) as store:
        for seq in range(1, 5001):
            store.append("hose", *chunk_frame(seq), hose)
        store.append("other", *chunk_frame(1), other)
        await store.flush()
        assert store.stats.max_batch_rows <= 100
    assert len(order) == 5001
    assert order.index(("other", 1)) < 200  # in the first or second batch
    assert [seq for run, seq in order if run == "hose"] == list(range(1, 5001))


async def test_batches_are_capped_in_bytes(db_path: Path) -> None:
    """4 KiB events with a 16 KiB cap per transaction: no transaction holds more than that
    (a lone larger event would still go alone)."""
    order: list[tuple[str, int]] = []
    sink = Order(order, "fat")
    async with Store(db_path, max_batch_bytes=16 * 1024) as store:
        for seq in range(1, 201):
            store.append("fat", *chunk_frame(seq, "y" * 4096), sink)
        await store.flush()
        assert store.stats.max_batch_bytes <= 16 * 1024
        assert store.stats.batches >= 200 // 3
    assert [seq for _, seq in order] == list(range(1, 201))


async def test_flush_waits_for_every_batch_queued_before_it(db_path: Path) -> None:
    """With capped batches, what was queued before a flush spans many transactions: flush
    returns only once all of them are committed."""
    order: list[tuple[str, int]] = []
    sink = Order(order, "r")
    async with Store(db_path, max_batch_events=10) as store:
        for seq in range(1, 1001):
            store.append("r", *chunk_frame(seq), sink)
        await store.flush()
        assert len(order) == 1000
        assert store.stats.batches >= 100


async def test_a_runs_statements_keep_their_order_with_its_events(db_path: Path) -> None:
    """A run's row, its events and its final row queued in one go over many small batches:
    the final row is not committed before the run's last event (nor the row after an event)."""
    seen: list[tuple[list[str], list[int]]] = []
    async with Store(db_path, max_batch_events=7) as store:
        commit = store._commit

        async def recording(conn: Any, batch: Batch) -> bool:
            seen.append(
                (
                    [s.sql.split()[0] for s in batch.statements],
                    [f.seq for _, f, _, _ in batch.events],
                )
            )
            return await commit(conn, batch)

        store._commit = recording  # type: ignore[method-assign]
        store.create_run(NewRun("r", "t", USER, "running", {"messages": []}, {}, 0.0, 0.0))
        sink = Order([], "r")
        for seq in range(1, 51):
            store.append("r", *chunk_frame(seq), sink)
        store.finish_run("r", FinalState("completed", "ok", None, 50, 50, {}, 1.0))
        await store.flush()
        record = await store.get_run("r")
    assert record is not None and record.status == "completed" and record.last_seq == 50
    first_event = next(i for i, (_, seqs) in enumerate(seen) if seqs)
    insert = next(i for i, (sqls, _) in enumerate(seen) if "INSERT" in sqls)
    final = next(i for i, (sqls, _) in enumerate(seen) if "UPDATE" in sqls)
    last_event = max(i for i, (_, seqs) in enumerate(seen) if 50 in seqs)
    assert insert <= first_event and final >= last_event
    assert all(len(sqls) + len(seqs) <= 7 for sqls, seqs in seen)


async def test_a_short_lane_beside_a_backlog_goes_in_a_small_batch(db_path: Path) -> None:
    """A run with one event waiting beside another run's backlog of 5,000: the batch that
    commits it holds that event and at most an eighth of the cap of the backlog, so it waits for
    a short commit, not a full one; the backlog's own batches stay full."""
    order: list[tuple[str, int]] = []
    hose, other = Order(order, "hose"), Order(order, "other")
    sizes: list[tuple[int, bool]] = []
    async with Store(db_path, max_batch_events=400) as store:
        commit = store._commit

        async def recording(conn: Any, batch: Batch) -> bool:
            sizes.append((batch.rows, any(run == "other" for run, _, _, _ in batch.events)))
            return await commit(conn, batch)

        store._commit = recording  # type: ignore[method-assign]
        for seq in range(1, 5001):
            store.append("hose", *chunk_frame(seq), hose)
        store.append("other", *chunk_frame(1), other)
        await store.flush()
    assert [rows for rows, has_other in sizes if has_other] == [1 + 400 // 8]
    assert max(rows for rows, _ in sizes) == 400
    assert [seq for run, seq in order if run == "hose"] == list(range(1, 5001))
