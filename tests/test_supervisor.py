"""The supervisor, below HTTP: numbering, failure containment, stop, limits, threads, recovery."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from streamctl.agents import AgentContext, Fail, Message, ScriptedAgent, Wait
from streamctl.errors import RunNotFound, ThreadBusy, ThreadNotFound, Unavailable
from streamctl.events import AgentEvent, Done, Frame, MessageChunk, RunStarted, ToolEnd
from streamctl.run_task import AGENT_ERROR_MESSAGE
from streamctl.runs import Run
from streamctl.settings import Settings
from streamctl.store import RunRecord, Store
from streamctl.supervisor import Supervisor

from .support import chunks, tool_call
from .support.stored import frames_in_file
from .support.supervisors import USER, finish, request, supervisor

pytestmark = pytest.mark.anyio

CHUNK = "message_chunk"


async def events(sup: Supervisor, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    frames = await sup.store.read_frames(run_id, 0)
    return [(f.seq, f.type, orjson.loads(f.data)) for f in frames]


async def row(sup: Supervisor, run_id: str) -> RunRecord:
    found = await sup.store.get_run(run_id)
    assert found is not None
    return found


def sqlite_of(sup: Supervisor) -> Store:
    assert isinstance(sup.store, Store)
    return sup.store


def types(log: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    return [type_ for _, type_, _ in log]


def assert_one_terminal_done(log: list[tuple[int, str, dict[str, Any]]], status: str) -> None:
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))  # dense
    assert types(log).count("done") == 1
    assert log[0][1] == "run" and log[-1][1] == "done"
    assert log[-1][2]["status"] == status


async def test_events_are_numbered_densely_and_the_snapshot_matches_the_row(db_path: Path) -> None:
    agent = ScriptedAgent([*chunks(5), *tool_call(), *chunks(3, "m2")])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        await finish(run)
        log = await events(sup, run.run_id)
        assert types(log) == ["run", *[CHUNK] * 5, "tool_start", "tool_end", *[CHUNK] * 3, "done"]
        assert_one_terminal_done(log, "completed")
        assert log[-1][2]["tokens"] == 8
        stored = await row(sup, run.run_id)
        assert (stored.status, stored.last_seq) == ("completed", 12)
        live = run.snapshot()
        assert live["output"]["text"] == "w0 w1 w2 w3 w4 w0 w1 w2 "
        assert live["output"]["tool_calls"][0]["output"] == "Sunny, 22°C"
        assert await sup.reads.get_run(run.run_id, USER) == live
        assert sup.active_runs == 0


async def test_agent_failure_fails_only_its_run(db_path: Path) -> None:
    gate = anyio.Event()
    good = ScriptedAgent([*chunks(2), Wait(gate), *chunks(2, "m2")])
    bad = ScriptedAgent([*chunks(1), Fail(RuntimeError("boom"))])

    def agent(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return (bad if ctx.config.get("fail") else good)(ctx)

    async with supervisor(db_path, agent) as sup:
        healthy = await sup.control.start(request(), USER)
        failing = await sup.control.start(request(config={"fail": True}), USER)
        await finish(failing)
        log = await events(sup, failing.run_id)
        assert types(log) == ["run", CHUNK, "error", "done"]
        assert_one_terminal_done(log, "failed")
        error = {"code": "agent_error", "message": AGENT_ERROR_MESSAGE}
        assert log[2][2] == error
        snapshot = await sup.reads.get_run(failing.run_id, USER)
        assert (snapshot["status"], snapshot["error"]) == ("failed", error)
        assert snapshot["output"]["text"] == "w0 "

        assert not healthy.finished.is_set()
        assert healthy.snapshot()["status"] == "running"
        gate.set()
        await finish(healthy)
        assert_one_terminal_done(await events(sup, healthy.run_id), "completed")
        assert healthy.snapshot()["output"]["text"] == "w0 w1 w0 w1 "


async def test_agent_yielding_a_run_owned_event_fails_the_run(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def agent(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        yield MessageChunk(content="a", message_id="m")
        yield Done(run_id=ctx.run_id, thread_id="t", status="completed", reason="x")  # type: ignore[misc]

    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        await finish(run)
        log = await events(sup, run.run_id)
        assert_one_terminal_done(log, "failed")
        assert log[-2][2] == {"code": "agent_error", "message": AGENT_ERROR_MESSAGE}
    assert "AgentProtocolError('agent yielded Done" in caplog.text  # the detail: in the log


async def test_stop_returns_after_the_task_exited_and_keeps_partial_output(db_path: Path) -> None:
    never = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(never), *chunks(2, "late", word="late")])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        await anyio.wait_all_tasks_blocked()  # parked on the Wait
        with pytest.raises(RunNotFound):
            await sup.control.stop("no-such-run", USER)
        with pytest.raises(RunNotFound):  # another principal's run does not exist for them
            await sup.control.stop(run.run_id, "someone-else")
        assert not run.finished.is_set()
        with anyio.fail_after(5):
            snapshot, exited = await sup.control.stop(run.run_id, USER)
        assert exited and run.finished.is_set()
        assert snapshot["status"] == "cancelled"
        assert snapshot["reason"] == "stopped by request"
        assert snapshot["output"]["text"] == "w0 w1 w2 "
        log = await events(sup, run.run_id)
        assert types(log) == ["run"] + [CHUNK] * 3 + ["done"]
        assert_one_terminal_done(log, "cancelled")
        assert (await row(sup, run.run_id)).status == "cancelled"

        again, exited_again = await sup.control.stop(run.run_id, USER)
        assert exited_again
        assert again == snapshot  # idempotent: the same final state, now from the store
        assert_one_terminal_done(await events(sup, run.run_id), "cancelled")


async def test_stop_waits_for_an_agent_that_is_slow_to_exit(db_path: Path) -> None:
    release, exited = anyio.Event(), anyio.Event()

    async def agent(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        try:
            yield MessageChunk(content="partial", message_id="m")
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()  # e.g. closing an upstream connection
            exited.set()

    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        await anyio.wait_all_tasks_blocked()
        stopping, done = await sup.control.stop(run.run_id, USER, wait=False)
        assert not done and stopping["status"] == "running"  # never "cancelled" while it runs
        results: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                results.append((await sup.control.stop(run.run_id, USER))[0])

            tg.start_soon(stop)
            await anyio.wait_all_tasks_blocked()
            assert results == [] and run.snapshot()["status"] == "running"
            release.set()
        assert exited.is_set() and run.finished.is_set()
        assert results[0]["status"] == "cancelled"
        assert results[0]["output"]["text"] == "partial"


@pytest.mark.parametrize("wait_first", [True, False])
async def test_stop_right_after_start_gives_exactly_one_done(
    db_path: Path, wait_first: bool
) -> None:
    agent = ScriptedAgent([Wait(anyio.Event()), *chunks(3)])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        with anyio.fail_after(5):
            await sup.control.stop(run.run_id, USER, wait=wait_first)
            snapshot, exited = await sup.control.stop(run.run_id, USER)
        assert exited and snapshot["status"] == "cancelled"
        log = await events(sup, run.run_id)
        assert types(log) == ["run", "done"]
        assert_one_terminal_done(log, "cancelled")


async def test_stop_racing_the_end_of_the_run_gives_its_final_state(db_path: Path) -> None:
    async with supervisor(db_path, ScriptedAgent(chunks(2))) as sup:
        run = await sup.control.start(
            request(), USER
        )  # the agent is done; its `done` may be in flight
        with anyio.fail_after(5):
            snapshot, exited = await sup.control.stop(run.run_id, USER)
        log = await events(sup, run.run_id)
        assert exited and snapshot["status"] == log[-1][2]["status"]
        assert_one_terminal_done(log, snapshot["status"])


async def test_recursion_limit_from_the_request_fails_the_run(db_path: Path) -> None:
    agent = ScriptedAgent([*chunks(1, "m1"), *chunks(1, "m2"), *chunks(1, "m3")])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(config={"recursion_limit": 2}), USER)
        await finish(run)
        assert agent.runs[0].recursion_limit == 2
        log = await events(sup, run.run_id)
        assert types(log) == ["run", CHUNK, CHUNK, "error", "done"]
        assert_one_terminal_done(log, "failed")
        assert log[3][2]["code"] == "recursion_limit"
        assert run.snapshot()["error"]["code"] == "recursion_limit"


async def test_client_cannot_raise_the_recursion_cap(db_path: Path) -> None:
    agent = ScriptedAgent([*tool_call("c1"), *tool_call("c2"), *tool_call("c3"), *chunks(1)])
    async with supervisor(db_path, agent, recursion_limit=3) as sup:
        run = await sup.control.start(request(config={"recursion_limit": 100}), USER)
        await finish(run)
        assert agent.runs[0].recursion_limit == 3
        log = await events(sup, run.run_id)
        error = {"code": "recursion_limit", "message": "the run took more than 3 steps"}
        assert log[-2][2] == error
        assert types(log).count("tool_start") == 3
        run = await sup.control.start(request(), USER)
        await finish(run)
        assert agent.runs[1].recursion_limit == 3


async def test_a_run_whose_done_is_committed_does_not_hold_its_thread(db_path: Path) -> None:
    """A client that starts the next run as soon as it has ``done`` is not refused: the ended
    run's last bookkeeping (its final row's flush, held here) is waited for, not a 409."""
    async with supervisor(db_path, ScriptedAgent(chunks(1))) as sup:
        store = sqlite_of(sup)
        held = anyio.Event()
        release = anyio.Event()
        flush = store.flush
        first: list[Run] = []

        async def slow_flush(run_id: str | None = None) -> None:
            await flush(run_id)
            if first and first[0].log.closed and not release.is_set():
                held.set()
                await release.wait()  # `done` is committed; the run has not let go yet

        store.flush = slow_flush  # type: ignore[method-assign]
        with anyio.fail_after(5):
            first.append(await sup.control.start(request(thread_id="t1"), USER))
            await held.wait()
            async with anyio.create_task_group() as tg:
                second: list[Run] = []

                async def start_next() -> None:
                    second.append(await sup.control.start(request(thread_id="t1"), USER))

                tg.start_soon(start_next)
                await anyio.wait_all_tasks_blocked()
                assert not second and not first[0].finished.is_set()  # waiting, not refused
                release.set()
            await finish(second[0])
        assert second[0].snapshot()["status"] == "completed"


async def test_multitask_reject_and_interrupt(db_path: Path) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(1), Wait(gate), *chunks(1, "m2")])
    async with supervisor(db_path, agent) as sup:
        first = await sup.control.start(request(thread_id="t1"), USER)
        with pytest.raises(ThreadBusy) as busy:
            await sup.control.start(request(thread_id="t1"), USER)
        assert busy.value.active_run_id == first.run_id
        assert not first.finished.is_set()

        with anyio.fail_after(5):
            second = await sup.control.start(request(thread_id="t1", multitask="interrupt"), USER)
        assert first.finished.is_set()
        assert first.snapshot()["status"] == "cancelled"
        assert first.snapshot()["reason"] == "interrupted by a newer run on the thread"
        assert_one_terminal_done(await events(sup, first.run_id), "cancelled")
        assert not second.finished.is_set()
        assert (await sup.reads.get_thread(USER, "t1"))["active_run"]["run_id"] == second.run_id
        gate.set()
        await finish(second)
        assert second.snapshot()["status"] == "completed"


async def test_thread_history_reaches_the_next_run(db_path: Path) -> None:
    agent = ScriptedAgent(chunks(2))
    async with supervisor(db_path, agent) as sup:
        await finish(await sup.control.start(request("first question", thread_id="t1"), USER))
        await finish(await sup.control.start(request("second question", thread_id="t1"), USER))
        await finish(await sup.control.start(request("elsewhere", thread_id="t2"), USER))
    assert [ctx.history for ctx in agent.runs] == [
        [],
        [
            Message(role="user", content="first question"),
            Message(role="assistant", content="w0 w1 "),
        ],
        [],
    ]
    assert agent.runs[1].messages == [Message(role="user", content="second question")]


async def test_a_run_on_a_new_thread_reads_no_history(db_path: Path) -> None:
    # A run that names no thread starts a new one: nothing to read before its agent starts
    # (a read through the reader's thread was 0.2 ms of every new chat's first event).
    agent = ScriptedAgent(chunks(1))
    async with supervisor(db_path, agent) as sup:
        reads: list[str] = []
        thread_runs = sup.store.thread_runs

        async def counted(owner: str, thread_id: str, **kw: Any) -> Any:
            reads.append(thread_id)
            return await thread_runs(owner, thread_id, **kw)

        sup.store.thread_runs = counted  # type: ignore[method-assign]
        new = await sup.control.start(request("a new chat"), USER)
        await finish(new)
        assert reads == []
        await finish(await sup.control.start(request("more", thread_id=new.thread_id), USER))
        assert reads == [new.thread_id]
    assert agent.runs[1].history == [
        Message(role="user", content="a new chat"),
        Message(role="assistant", content="w0 "),
    ]


async def test_crash_recovery_interrupts_runs_left_active(db_path: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed.db"
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(gate)])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(thread_id="t1"), USER)
        await anyio.wait_all_tasks_blocked()
        await sup.store.flush()
        assert run.snapshot()["last_seq"] == 4
        # What a kill -9 now would leave on disk: a consistent copy of everything committed.
        with closing(sqlite3.connect(db_path)) as src, closing(sqlite3.connect(crashed)) as dst:
            src.backup(dst)
        gate.set()
        await finish(run)

    async with supervisor(crashed, agent) as sup:
        assert sup.recovered_runs == 1
        log = await events(sup, run.run_id)
        assert types(log) == ["run"] + [CHUNK] * 3 + ["done"]
        assert_one_terminal_done(log, "interrupted")
        assert log[-1][2]["tokens"] == 3
        state = await sup.reads.get_run(run.run_id, USER)
        assert (state["status"], state["last_seq"]) == ("interrupted", 5)
        assert state["output"]["text"] == "w0 w1 w2 "
        assert state["ended_at"] is not None
    async with supervisor(crashed, agent) as sup:
        assert sup.recovered_runs == 0  # finalised once, not again on every start


async def test_crash_recovery_of_hand_written_rows(db_path: Path) -> None:
    async with Store(db_path):
        pass  # schema only
    started = RunStarted(run_id="r1", thread_id="t1")
    chunk = MessageChunk(content="half", message_id="m")
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("INSERT INTO threads VALUES ('t1', ?, 0)", (USER,))
        for run_id, status in (("r1", "running"), ("r2", "queued"), ("r3", "completed")):
            conn.execute(
                "INSERT INTO runs (run_id, thread_id, owner, status, input, config, created_at)"
                " VALUES (?, 't1', ?, ?, ?, '{}', 0)",
                (run_id, USER, status, b'{"messages": []}'),
            )
        for frame in (Frame.encode(1, started, 0.0), Frame.encode(2, chunk, 0.0)):
            conn.execute(
                "INSERT INTO event_journal (run_id, created_at, frame) VALUES ('r1', ?, ?)",
                (frame.created_at, frame.sse),
            )
        conn.commit()

    async with supervisor(db_path, ScriptedAgent([])) as sup:
        assert sup.recovered_runs == 2
        r1, r2 = await events(sup, "r1"), await events(sup, "r2")
        assert [(s, t) for s, t, _ in r1] == [(1, "run"), (2, CHUNK), (3, "done")]
        assert r1[-1][2]["status"] == "interrupted"
        assert [(s, t) for s, t, _ in r2] == [(1, "done")]
        assert await events(sup, "r3") == []  # a finished run is left alone
        assert (await sup.reads.get_run("r1", USER))["output"]["text"] == "half"
        assert [(await row(sup, r)).last_seq for r in ("r1", "r2", "r3")] == [3, 1, 0]


async def test_shutdown_interrupts_parked_runs_with_a_done_event(db_path: Path) -> None:
    agent = ScriptedAgent([*chunks(2), Wait(anyio.Event())])
    async with Store(db_path) as store:
        with anyio.fail_after(5):
            async with Supervisor(store, agent, Settings.from_env({}, db=db_path)) as sup:
                run = await sup.control.start(request(), USER)
                await anyio.wait_all_tasks_blocked()
        assert run.finished.is_set() and sup.active_runs == 0
        with pytest.raises(Unavailable):
            await sup.control.start(request(), USER)
        log = [(f.type, orjson.loads(f.data)) for f in await store.read_frames(run.run_id, 0)]
        assert [t for t, _ in log] == ["run", CHUNK, CHUNK, "done"]
        assert log[-1][1]["status"] == "interrupted"
        assert log[-1][1]["reason"] == "the server is shutting down"
        stored = await store.fetch_one("SELECT * FROM runs WHERE run_id = ?", (run.run_id,))
        assert stored is not None
        assert (stored["status"], stored["last_seq"]) == ("interrupted", 4)


async def test_unencodable_agent_event_fails_the_run_without_a_seq_gap(db_path: Path) -> None:
    agent = ScriptedAgent([*chunks(1), ToolEnd(name="t", output={1, 2}, call_id="c")])
    async with supervisor(db_path, agent) as sup:
        run = await sup.control.start(request(), USER)
        await finish(run)
        log = await events(sup, run.run_id)
    assert types(log) == ["run", CHUNK, "error", "done"]
    assert log[-1][2]["status"] == "failed"  # contained: it failed only this run
    assert_one_terminal_done(log, "failed")  # BUG: seqs are 1, 2, 4, 5


async def test_cancelled_start_leaves_no_run_without_done(db_path: Path) -> None:
    async with Store(db_path) as store:
        settings = Settings.from_env({}, db=db_path)
        async with Supervisor(store, ScriptedAgent(chunks(1)), settings) as sup:
            with closing(sqlite3.connect(db_path)) as blocker:
                blocker.execute("BEGIN IMMEDIATE")  # the run row's commit now waits on us
                async with anyio.create_task_group() as tg:
                    caller = anyio.CancelScope()  # e.g. the HTTP client went away

                    async def start() -> None:
                        with caller:
                            await sup.control.start(request(), USER)

                    tg.start_soon(start)
                    with anyio.fail_after(5):
                        while store._inflight is None:  # until the writer has the run row
                            await anyio.wait_all_tasks_blocked()
                    caller.cancel()
                    await anyio.wait_all_tasks_blocked()
                    blocker.rollback()
        await store.flush()
        rows = await store.fetch_all("SELECT run_id, status FROM runs")
        stored = frames_in_file(store.path)
        dones = [run for run, frames in stored.items() for frame in frames if frame.type == "done"]
    # Either the start never happened, or the run (a resource, not a connection) ends properly.
    assert [r["status"] for r in rows] in ([], ["completed"], ["cancelled"], ["interrupted"])
    assert dones == [r["run_id"] for r in rows]


async def test_two_principals_starting_the_same_thread_id_get_a_thread_each(
    db_path: Path,
) -> None:
    agent = ScriptedAgent([Wait(anyio.Event())])
    outcomes: dict[str, Run | Exception] = {}
    async with supervisor(db_path, agent) as sup:

        async def start(owner: str) -> None:
            try:
                outcomes[owner] = await sup.control.start(
                    request(thread_id="shared", multitask="interrupt"), owner
                )
            except ThreadNotFound as exc:
                outcomes[owner] = exc

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(start, "alice")
                tg.start_soon(start, "mallory")
        seen = {
            owner: o.snapshot()["status"] if isinstance(o, Run) else type(o).__name__
            for owner, o in outcomes.items()
        }
        # Threads are (owner, thread_id): each got a `shared` of its own, holding its run only.
        for owner, outcome in outcomes.items():
            assert isinstance(outcome, Run)
            thread = await sup.reads.get_thread(owner, "shared")
            assert {m["run_id"] for m in thread["messages"]} == {outcome.run_id}
    # Neither can stop (an old bug: {'alice': 'cancelled', 'mallory': 'running'}) nor block (a
    # 404 that tells whose id it is, a race to squat it) the other.
    assert seen == {"alice": "running", "mallory": "running"}, seen


async def test_a_failed_final_commit_is_contained_and_retried(db_path: Path) -> None:
    """Disk trouble while one run's `done` is committed: the supervisor and the other runs go
    on, and the run's terminal events are written once the store accepts writes again (a retry,
    no restart): it ends `failed` (`store_error`) with dense ids (invariants 2, 6, 9)."""
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(2), Wait(gate)])
    async with supervisor(db_path, agent) as sup:
        store = sqlite_of(sup)
        commit = store._commit
        failing = True

        async def fail_the_done(conn: Any, batch: Any) -> bool:
            nonlocal failing
            if failing and any(frame.type == "done" for _, frame, _, _ in batch.events):
                failing = False
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            return await commit(conn, batch)

        store._commit = fail_the_done  # type: ignore[method-assign]
        doomed = await sup.control.start(request(), USER)
        other = await sup.control.start(request(), USER)
        with anyio.fail_after(5):
            await sup.control.stop(doomed.run_id, USER, wait=False)
            await doomed.finished.wait()
            assert doomed.log.closed and sup.accepting and other.output.status == "running"
            gate.set()
            await other.finished.wait()
        assert other.snapshot()["status"] == "completed"
        snapshot = await sup.reads.get_run(doomed.run_id, USER)
        page = await sup.reads.events_page(doomed.run_id, USER, 0, 100)
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["type"] for e in page["events"]][-2:] == ["error", "done"]
    assert page["events"][-2]["data"]["code"] == "store_error"
    assert snapshot["status"] == "failed" and snapshot["last_seq"] == seqs[-1]
    async with supervisor(db_path, ScriptedAgent([])) as again:
        assert again.recovered_runs == 0


async def test_a_lost_final_row_after_a_stored_done_is_retried_alone(db_path: Path) -> None:
    """A batch cap puts a run's `done` and its final row in two batches, and only the second one
    fails: the retry writes the row again, not a second `done` (one `done`, dense ids), and the
    row ends as the `done` said (invariants 2 and 6)."""
    agent = ScriptedAgent(chunks(2))
    failing = True
    async with Store(db_path, max_batch_events=1) as store:  # one item per batch
        commit = store._commit

        async def fail_the_final_row(conn: Any, batch: Any) -> bool:
            nonlocal failing
            if failing and any(statement.ends_run for statement in batch.statements):
                failing = False
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            return await commit(conn, batch)

        store._commit = fail_the_final_row  # type: ignore[method-assign]
        async with Supervisor(store, agent, Settings.from_env({}, db=db_path)) as sup:
            run = await sup.control.start(request(), USER)
            await finish(run)
            assert not failing  # the final row's batch did fail once
            log = await events(sup, run.run_id)
            stored = await row(sup, run.run_id)
    assert_one_terminal_done(log, "completed")
    assert types(log).count("error") == 0
    assert stored.status == "completed" and stored.last_seq == len(log)
    assert stored.output is not None and stored.output["text"] == "".join(
        event[2]["content"] for event in log if event[1] == CHUNK
    )


async def test_a_lost_batch_ends_its_run_with_dense_ids(db_path: Path) -> None:
    """A group commit fails mid-run: the lost events were never sent, so the run ends `failed`
    (error `store_error`) numbering on from its last stored event: no gap (invariant 2)."""
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(2), Wait(gate), *chunks(3, "m2")])
    async with supervisor(db_path, agent) as sup:
        store = sqlite_of(sup)
        commit = store._commit
        failing = True

        async def fail_once(conn: Any, batch: Any) -> bool:
            nonlocal failing
            if failing and any(
                frame.type == "message_chunk" and frame.seq > 3 for _, frame, _, _ in batch.events
            ):
                failing = False
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            return await commit(conn, batch)

        store._commit = fail_once  # type: ignore[method-assign]
        run = await sup.control.start(request(), USER)
        with anyio.fail_after(5):
            while run.output.last_seq < 3:  # run + 2 chunks stored; the agent waits at the gate
                await run.log.changed.wait()
            gate.set()
            await run.finished.wait()
        snapshot = await sup.reads.get_run(run.run_id, USER)
        page = await sup.reads.events_page(run.run_id, USER, 0, 100)
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["type"] for e in page["events"]][-2:] == ["error", "done"]
    assert page["events"][-2]["data"]["code"] == "store_error"
    assert snapshot["status"] == "failed" and snapshot["last_seq"] == seqs[-1]


async def test_a_failing_background_loop_restarts_and_leaves_the_runs_alone(
    db_path: Path,
) -> None:
    """A bug in the retention loop is logged and the loop restarts (after a short backoff); the
    task group, and with it every run, goes on (invariant 9)."""
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(2), Wait(gate)])
    settings = Settings.from_env({}, db=db_path, retention_days=7)
    crash, restarted = anyio.Event(), anyio.Event()
    calls = 0

    async def buggy_purge(now: float | None = None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await crash.wait()
            raise RuntimeError("a bug in the retention loop")
        restarted.set()
        return 0

    async with Store(db_path) as store:
        sup = Supervisor(store, agent, settings)
        sup.control.purge = buggy_purge  # type: ignore[method-assign]
        async with sup:
            run = await sup.control.start(request(), USER)
            with anyio.fail_after(5):
                while run.output.last_seq < 3:  # run + 2 chunks: parked at the gate
                    await run.log.changed.wait()
                crash.set()
                await restarted.wait()
            assert sup.stats.loop_restarts == 1 and sup.accepting
            assert not run.finished.is_set() and run.output.status == "running"
            gate.set()
            await finish(run)
        assert run.snapshot()["status"] == "completed"
