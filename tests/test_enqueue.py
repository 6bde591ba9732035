"""``multitask: "enqueue"``: a run on a busy thread waits for the runs ahead of it, streaming
``queued`` meanwhile, then runs with their answers in its history; stopping it while it waits
ends it without ever running its agent."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from httpx_sse import aconnect_sse

from streamctl.agents import AgentContext, Message, ScriptedAgent, Wait
from streamctl.events import AgentEvent
from streamctl.inputs import RunCreate
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import (
    StartServer,
    Switch,
    ask,
    assert_one_done,
    chunks,
    data,
    next_events,
    read_sse,
    unix,
)

pytestmark = pytest.mark.anyio


async def test_an_enqueued_run_streams_queued_then_runs_after_the_active_one(
    serve: StartServer,
) -> None:
    gate = anyio.Event()
    second = ScriptedAgent(chunks(2, "m2", "s"))
    server = await serve(agent=Switch(first=ScriptedAgent([*chunks(2), Wait(gate)]), second=second))
    async with server.client() as client:
        with anyio.fail_after(10):
            first = (await client.post("/v1/runs", json=ask("first", thread_id="t"))).json()
            body = ask("second", thread_id="t", multitask="enqueue")
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                events = source.aiter_sse()
                head = await next_events(events, 1)  # at once, while the first still runs
                run_id = source.response.headers["x-run-id"]
                queued = (await client.get(f"/v1/runs/{run_id}")).json()
                thread = (await client.get("/v1/threads/t")).json()
                assert second.runs == []
                gate.set()
                tail = await next_events(events)
            ended = (await client.get(f"/v1/runs/{first['run_id']}")).json()
    assert [(e.event, data(e)["status"]) for e in head] == [("run", "queued")]
    assert data(head[0])["run_id"] == run_id
    assert queued["status"] == "queued" and queued["started_at"] is None
    assert thread["active_run"]["run_id"] == first["run_id"]
    assert [e.event for e in tail] == ["run", "message_chunk", "message_chunk", "done"]
    assert data(tail[0])["status"] == "running"
    assert_one_done(head + tail, "completed")
    assert ended["status"] == "completed"
    assert second.runs[0].history == [
        Message(role="user", content="first"),
        Message(role="assistant", content="w0 w1 "),
    ]


async def test_stopping_a_queued_run_never_runs_its_agent(serve: StartServer) -> None:
    gate = anyio.Event()
    second = ScriptedAgent(chunks(1))
    server = await serve(agent=Switch(first=ScriptedAgent([*chunks(1), Wait(gate)]), second=second))
    async with server.client() as client:
        with anyio.fail_after(10):
            first = (await client.post("/v1/runs", json=ask("first", thread_id="t"))).json()
            body = ask("second", thread_id="t", multitask="enqueue")
            queued = (await client.post("/v1/runs", json=body)).json()
            assert queued["status"] == "queued"
            stop = await client.post(f"/v1/runs/{queued['run_id']}/stop")
            page = (await client.get(f"/v1/runs/{queued['run_id']}/events")).json()
            still = (await client.get(f"/v1/runs/{first['run_id']}")).json()
            gate.set()
            _, rest = await read_sse(client, "GET", f"/v1/runs/{first['run_id']}/stream")
    assert stop.status_code == 200 and stop.json()["status"] == "cancelled"
    assert [(e["type"], e["data"]["status"]) for e in page["events"]] == [
        ("run", "queued"),
        ("done", "cancelled"),
    ]
    assert still["status"] == "running"
    assert data(rest[-1])["status"] == "completed"
    assert second.runs == []


class Turns:
    """Each run yields its name, then waits for its gate; records order, history, overlap."""

    def __init__(self, *names: str) -> None:
        self.gates = {name: anyio.Event() for name in names}
        self.seen: list[tuple[str, list[str]]] = []
        self.active = 0
        self.most_active = 0

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        name = ctx.messages[-1].content
        self.seen.append((name, [m.content for m in ctx.history]))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            yield chunks(1, name, name.upper())[0]
            await self.gates[name].wait()
        finally:
            self.active -= 1


async def test_three_enqueued_runs_run_one_at_a_time_in_order(serve: StartServer) -> None:
    agent = Turns("a", "b", "c")
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            runs = []
            for name in "abc":
                body = ask(name, thread_id="t", multitask="enqueue")
                runs.append((await client.post("/v1/runs", json=body)).json())
            assert [r["status"] for r in runs] == ["running", "queued", "queued"]
            for gate in agent.gates.values():
                gate.set()
            _, last = await read_sse(client, "GET", f"/v1/runs/{runs[2]['run_id']}/stream")
            final = [(await client.get(f"/v1/runs/{r['run_id']}")).json() for r in runs]
    assert_one_done(last, "completed")
    assert agent.seen == [
        ("a", []),
        ("b", ["a", "A0 "]),
        ("c", ["a", "A0 ", "b", "B0 "]),
    ]
    assert agent.most_active == 1
    assert [r["status"] for r in final] == ["completed"] * 3
    for before, after in itertools.pairwise(final):
        assert unix(before["ended_at"]) <= unix(after["started_at"])


async def test_stopping_a_queued_run_keeps_the_runs_behind_it_queued(db_path: Path) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(1), Wait(gate)])
    settings = Settings.from_env({}, db=db_path, retention_days=0)

    def request(name: str) -> RunCreate:
        return RunCreate.model_validate(ask(name, thread_id="t", multitask="enqueue"))

    async with Store(db_path) as store, Supervisor(store, agent, settings) as sup:
        with anyio.fail_after(10):
            a, b, c = [await sup.control.start(request(name), "u") for name in "abc"]
            await sup.control.stop(b.run_id, "u")
            await anyio.wait_all_tasks_blocked()
            # Reads are served in order: once this one is answered, any read that c started
            # (its thread history, just before it would run) is answered too.
            await store.fetch_one("SELECT 1")
            await anyio.wait_all_tasks_blocked()
            await store.flush()
            assert not a.finished.is_set()
            assert c.snapshot()["status"] == "queued"
            assert [ctx.messages[0].content for ctx in agent.runs] == ["a"]
            gate.set()
            await c.finished.wait()
    assert [ctx.messages[0].content for ctx in agent.runs] == ["a", "c"]
    assert agent.runs[1].history[:2] == [
        Message(role="user", content="a"),
        Message(role="assistant", content="w0 "),
    ]
