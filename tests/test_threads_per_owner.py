"""Threads per principal and bounded threads (docs/security.md, docs/api.md).

A thread is ``(owner, thread_id)``; migration 0003 re-keys an existing database without losing a
row. An agent receives only the latest part of a long thread (``history_messages``,
``history_bytes``), and ``GET /v1/threads/{id}`` answers in pages of runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamctl.agents import Agent, Message, ScriptedAgent
from streamctl.inputs import RunCreate
from streamctl.settings import Settings
from streamctl.store import NewRun, Store
from streamctl.supervisor import Supervisor

from .support import StartServer, chunks, run_body
from .support.migrations import migrate_below

pytestmark = pytest.mark.anyio


def request(content: str, **fields: Any) -> RunCreate:
    body = {"input": {"messages": [{"role": "user", "content": content}]}, **fields}
    return RunCreate.model_validate(body)


@asynccontextmanager
async def supervisor(db_path: Path, agent: Agent, **settings: Any) -> AsyncIterator[Supervisor]:
    async with (
        Store(db_path) as store,
        Supervisor(store, agent, Settings.from_env({}, db=db_path, **settings)) as sup,
    ):
        yield sup


# -- migration 0003 --------------------------------------------------------------------------------


async def test_migration_re_keys_threads_and_keeps_every_row(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate_below(db_path, 3, monkeypatch)
    run = "INSERT INTO runs (run_id, thread_id, owner, status, input, config, created_at,"
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.executemany(
            "INSERT INTO threads VALUES (?, ?, ?)", [("t1", "alice", 1.0), ("t2", "bob", 2.0)]
        )
        for run_id, thread, owner, at in [
            ("r2", "t1", "alice", 5.0),  # created_at ties: rowid orders them
            ("r1", "t1", "alice", 5.0),
            ("r3", "t2", "bob", 6.0),
        ]:
            conn.execute(
                f"{run} ended_at, last_seq, snapshot, purged_at)"
                " VALUES (?, ?, ?, 'completed', ?, '{}', ?, ?, 1, ?, ?)",
                (run_id, thread, owner, b'{"messages": []}', at, at + 1, b"{}", None),
            )
            conn.execute("INSERT INTO events VALUES (?, 1, 'done', ?, ?)", (run_id, b"{}", at))
    async with Store(db_path) as store:
        alice_t1 = await store.get_thread("alice", "t1")
        assert alice_t1 is not None and alice_t1.created_at == 1.0
        assert await store.get_thread("bob", "t1") is None
        assert [r.run_id for r in await store.thread_runs("alice", "t1")] == ["r2", "r1"]
        assert [r.run_id for r in await store.thread_runs("bob", "t2")] == ["r3"]
        assert [f.seq for f in await store.read_frames("r1", 0)] == [1]
        # Bob may now have a `t1` of his own, beside alice's.
        store.create_run(NewRun("r4", "t1", "bob", "running", {"messages": []}, {}, 7.0, 7.0))
        await store.flush()
        assert [r.run_id for r in await store.thread_runs("bob", "t1")] == ["r4"]
        assert [r.run_id for r in await store.thread_runs("alice", "t1")] == ["r2", "r1"]
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (4,)


# -- what an agent receives ------------------------------------------------------------------------


async def test_an_agent_receives_only_the_latest_messages_of_its_thread(db_path: Path) -> None:
    agent = ScriptedAgent(chunks(1))
    async with supervisor(db_path, agent, history_messages=3, history_bytes=905) as sup:
        for i in range(6):
            run = await sup.control.start(request(f"q{i}", thread_id="t"), "u")
            with anyio.fail_after(5):
                await run.finished.wait()
        big = await sup.control.start(request("x" * 900, thread_id="t"), "u")
        with anyio.fail_after(5):
            await big.finished.wait()
        last = await sup.control.start(request("last", thread_id="t"), "u")
        with anyio.fail_after(5):
            await last.finished.wait()
    answer = Message(role="assistant", content="w0 ")
    # Six earlier runs = twelve messages; the window keeps the latest three.
    assert agent.runs[6].history == [answer, Message(role="user", content="q5"), answer]
    # 905 bytes: the 900-byte question fits with the answer after it, nothing older does.
    assert agent.runs[7].history == [Message(role="user", content="x" * 900), answer]


async def test_no_history_when_the_window_is_zero(db_path: Path) -> None:
    agent = ScriptedAgent(chunks(1))
    async with supervisor(db_path, agent, history_messages=0) as sup:
        for i in range(2):
            run = await sup.control.start(request(f"q{i}", thread_id="t"), "u")
            with anyio.fail_after(5):
                await run.finished.wait()
    assert [ctx.history for ctx in agent.runs] == [[], []]


# -- paging a thread -------------------------------------------------------------------------------


async def test_a_thread_answers_in_pages_of_runs(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        run_ids = []
        for i in range(5):
            created = await client.post(
                "/v1/runs/stream", json=run_body(thread_id="long", input=ask(f"q{i}"))
            )
            assert created.status_code == 200
            run_ids.append(created.headers["x-run-id"])
        whole = (await client.get("/v1/threads/long")).json()  # small: all of it, as before
        assert [m["content"] for m in whole["messages"][::2]] == [f"q{i}" for i in range(5)]
        assert whole["has_more"] is False and whole["next_before"] is None
        assert whole["last_run"]["run_id"] == run_ids[-1]

        newest = (await client.get("/v1/threads/long", params={"limit": 2})).json()
        assert [m["run_id"] for m in newest["messages"]] == [run_ids[3]] * 2 + [run_ids[4]] * 2
        assert newest["has_more"] is True and newest["next_before"] == run_ids[3]
        older = (
            await client.get("/v1/threads/long", params={"limit": 2, "before": run_ids[3]})
        ).json()
        assert [m["run_id"] for m in older["messages"][::2]] == run_ids[1:3]
        assert older["has_more"] is True and older["last_run"]["run_id"] == run_ids[-1]
        oldest = (
            await client.get("/v1/threads/long", params={"limit": 2, "before": run_ids[1]})
        ).json()
        assert [m["run_id"] for m in oldest["messages"][::2]] == run_ids[:1]
        assert oldest["has_more"] is False and oldest["next_before"] is None

        other = await client.post("/v1/runs", json=run_body(thread_id="other"))
        for before, status in [("nope", 400), (other.json()["run_id"], 400)]:
            bad = await client.get("/v1/threads/long", params={"before": before})
            assert bad.status_code == status, bad.text
            assert bad.json()["error"]["code"] == "invalid_cursor"
        for limit in ("0", "-1", "x", "100000"):
            refused = await client.get("/v1/threads/long", params={"limit": limit})
            assert refused.status_code == 422


def ask(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}
