"""Retention: the events of finished runs older than ``retention_days`` are purged; the run's row
(status, output) and its thread's messages stay, and reading the purged events is a clear ``410``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest

from streamctl.agents import Agent, AgentContext, ScriptedAgent, Wait
from streamctl.events import AgentEvent
from streamctl.inputs import RunCreate
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import StartServer, ask, chunks, data, read_sse, supervisor_of, tool_call
from .support.stored import frames_in_file

pytestmark = pytest.mark.anyio


def sqlite_of(sup: Supervisor) -> Store:
    """The supervisor's store, as the SQLite store it is in these tests."""
    assert isinstance(sup.store, Store)
    return sup.store


DAY = 86400.0


def unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def assert_purged(response: httpx.Response) -> None:
    assert response.status_code == 410, response.text
    error = response.json()["error"]
    assert error["code"] == "run_purged" and "GET /v1/runs/" in error["message"]


async def test_purge_deletes_the_events_of_old_finished_runs_only(serve: StartServer) -> None:
    gate = anyio.Event()
    finishing = ScriptedAgent([*chunks(2), *tool_call()])
    parked = ScriptedAgent([*chunks(1, "p", "p"), Wait(gate)])

    def agent(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return (parked if ctx.messages[-1].content == "parked" else finishing)(ctx)

    server = await serve(agent=agent)
    async with server.client() as client:
        sup = await supervisor_of(server, client)
        with anyio.fail_after(10):
            ids = []
            for thread in ("t-old", "t-new"):
                body = ask("hello", thread_id=thread)
                _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
                ids.append(data(events[0])["run_id"])
            old_id, new_id = ids
            active = (await client.post("/v1/runs", json=ask("parked", thread_id="t-run"))).json()
            old, new = [(await client.get(f"/v1/runs/{i}")).json() for i in ids]
            # Retention ends between the two runs' ends: only the older one is past it.
            between = (unix(old["ended_at"]) + unix(new["ended_at"])) / 2
            assert await sup.control.purge(now=between + 7 * DAY) == 1
            assert await sup.control.purge(now=between + 7 * DAY) == 0  # purged once

            purged = (await client.get(f"/v1/runs/{old_id}")).json()
            thread = (await client.get("/v1/threads/t-old")).json()
            stream = f"/v1/runs/{old_id}/stream"
            assert_purged(await client.get(stream))
            assert_purged(await client.get(stream, headers={"Last-Event-ID": "2"}))
            assert_purged(await client.get(f"/v1/runs/{old_id}/events"))
            thread_cursor = {"Last-Event-ID": f"{old_id}:1"}
            assert_purged(await client.get("/v1/threads/t-old/stream", headers=thread_cursor))
            nothing_left = await client.get(stream, headers={"Last-Event-ID": str(old["last_seq"])})
            assert nothing_left.status_code == 204  # a client that has everything is done
            kept = (await client.get(f"/v1/runs/{new_id}/events")).json()["events"]
            live = (await client.get(f"/v1/runs/{active['run_id']}/events")).json()["events"]

            # Much later every finished run is past retention; the active one is never purged.
            assert await sup.control.purge(now=time.time() + 8 * DAY) == 1
            gate.set()
            _, rest = await read_sse(client, "GET", f"/v1/runs/{active['run_id']}/stream")
            page = await client.get(f"/v1/runs/{active['run_id']}/events")
        left = set(frames_in_file(sqlite_of(sup).path))

    assert purged["events_purged_at"] is not None and old["events_purged_at"] is None
    assert {k: v for k, v in purged.items() if k != "events_purged_at"} == {
        k: v for k, v in old.items() if k != "events_purged_at"
    }  # status, last_seq and output are kept
    assert purged["output"]["text"] == "w0 w1 "
    assert purged["output"]["tool_calls"][0]["output"] == "Sunny, 22°C"
    assert [(m["role"], m["content"]) for m in thread["messages"]] == [
        ("user", "hello"),
        ("assistant", "w0 w1 "),
        ("tool", "Sunny, 22°C"),  # the history comes from the kept output, not the events
    ]
    assert [e["type"] for e in kept] == [
        "run",
        *["message_chunk"] * 2,
        "tool_start",
        "tool_end",
        "done",
    ]
    assert [e["type"] for e in live] == ["run", "message_chunk"]
    assert data(rest[-1])["status"] == "completed"
    assert page.status_code == 200 and len(page.json()["events"]) == 3
    assert left == {active["run_id"]}
    assert sup.stats.purged == 2


class CountingSupervisor(Supervisor):
    """Counts calls of ``control.purge`` (the background task's only work)."""

    def __init__(self, store: Store, agent: Agent, settings: Settings) -> None:
        super().__init__(store, agent, settings)
        self.purges = 0
        self.purged = anyio.Event()
        purge = self.control.purge

        async def counting(now: float | None = None) -> int:
            self.purges += 1
            count = await purge(now)
            self.purged.set()
            return count

        self.control.purge = counting  # type: ignore[method-assign]


@pytest.mark.parametrize("retention_days", [7.0, 0.0])
async def test_the_background_purge_runs_only_with_a_retention(
    db_path: Path, retention_days: float
) -> None:
    agent = ScriptedAgent(chunks(1))
    request = RunCreate.model_validate(ask("hello"))
    keep = Settings.from_env({}, db=db_path, retention_days=0)
    async with Store(db_path) as first, Supervisor(first, agent, keep) as before:
        run = await before.control.start(request, "u")
        with anyio.fail_after(5):
            await run.finished.wait()
    with closing(sqlite3.connect(db_path)) as conn:  # the run ended a month ago
        conn.execute("UPDATE runs SET ended_at = ended_at - 30 * 86400")
        conn.commit()

    settings = Settings.from_env({}, db=db_path, retention_days=retention_days)
    store = Store(db_path)
    sup = CountingSupervisor(store, agent, settings)
    async with store, sup:
        with anyio.fail_after(5):
            if retention_days:
                await sup.purged.wait()  # the task purges once at start, then every interval
            else:
                await anyio.wait_all_tasks_blocked()  # a task would have called purge by now
        left = frames_in_file(store.path, run.run_id).get(run.run_id, [])
        state = await sup.reads.get_run(run.run_id, "u")
    if retention_days:
        assert sup.purges == 1 and left == [] and state["events_purged_at"] is not None
    else:
        assert sup.purges == 0 and len(left) == 3 and state["events_purged_at"] is None
