"""Bounded everything (DESIGN.md invariant 10), over HTTP: the recursion limit, run duration and
stall time, caps on concurrent runs, and body and input size.

Time limits are tested with small settings: waiting for the limit to pass is the event itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from streamctl.agents import AgentContext, ScriptedAgent, Sleep, Wait
from streamctl.agents.scripted import Step
from streamctl.errors import TooManyRuns
from streamctl.events import AgentEvent
from streamctl.inputs import RunCreate
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import (
    StartServer,
    ask,
    assert_error,
    assert_one_done,
    chunks,
    data,
    next_events,
    read_sse,
    supervisor_of,
    tool_call,
)

pytestmark = pytest.mark.anyio


class Switch:
    """Hands each run to the scripted agent named by its last user message."""

    def __init__(self, **agents: ScriptedAgent) -> None:
        self.agents = agents

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self.agents[ctx.messages[-1].content](ctx)


class Steps:
    """Yields ``events`` and records its recursion limit and whether it was closed."""

    def __init__(self, events: Iterable[AgentEvent]) -> None:
        self.events = list(events)
        self.limits: list[int] = []
        self.closed = 0

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        self.limits.append(ctx.recursion_limit)
        try:
            for event in self.events:
                yield event
        finally:
            self.closed += 1


def steps(n: int) -> list[AgentEvent]:
    """``n`` agent steps: tool calls and two-chunk messages, alternately."""
    out: list[AgentEvent] = []
    for i in range(n):
        out += tool_call(f"c{i}") if i % 2 == 0 else chunks(2, f"m{i}")
    return out


# -- recursion limit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "requested", "taken", "limit"),
    [
        (3, None, 4, 3),  # the server cap
        (3, 100, 4, 3),  # a client cannot raise it
        (5, 2, 3, 2),  # but may lower it
        (3, None, 3, 3),  # exactly at the limit is allowed
    ],
)
async def test_recursion_limit(
    serve: StartServer, cap: int, requested: int | None, taken: int, limit: int
) -> None:
    agent = Steps(steps(taken))
    server = await serve(agent=agent, recursion_limit=cap)
    config = {} if requested is None else {"recursion_limit": requested}
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(
                client, "POST", "/v1/runs/stream", json=ask("go", config=config)
            )
    kinds = [e.event for e in events]
    allowed = [e.type for e in steps(limit)]
    assert agent.limits == [limit] and agent.closed == 1  # the agent is closed, not left parked
    if taken <= limit:
        assert kinds == ["run", *allowed, "done"]
        assert_one_done(events, "completed")
        return
    assert kinds == ["run", *allowed, "error", "done"]  # the step over the limit is not emitted
    message = f"the run took more than {limit} steps"
    assert data(events[-2]) == {"code": "recursion_limit", "message": message}
    assert_one_done(events, "failed")


# -- run duration and stall time ------------------------------------------------------------------


async def test_a_busy_run_times_out_at_its_time_limit(serve: StartServer) -> None:
    ticking: list[Step] = [chunks(1)[0], Sleep(0.02)] * 500
    server = await serve(agent=ScriptedAgent(ticking), max_run_seconds=0.6, stall_seconds=0.4)
    async with server.client() as client:
        with anyio.fail_after(10):
            began = anyio.current_time()
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("go"))
            took = anyio.current_time() - began
            run = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
    done = assert_one_done(events, "timed_out")
    # The agent yields every 20 ms, longer in all than the stall time: only the time limit ends it.
    assert done["reason"] == "the run exceeded its time limit of 0.6 s"
    assert took >= 0.6 and len(events) > 5
    assert run["status"] == "timed_out" and run["reason"] == done["reason"]
    assert run["output"]["text"].startswith("w0 w0 ")  # partial output is kept


async def test_an_agent_that_goes_quiet_times_out_as_stalled(serve: StartServer) -> None:
    agent = ScriptedAgent([*chunks(2), Wait(anyio.Event())])
    server = await serve(agent=agent, stall_seconds=0.2)
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("go"))
            run = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
            assert (await client.get("/readyz")).status_code == 200  # contained to its run
    assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "done"]
    done = assert_one_done(events, "timed_out")
    assert "stalled" in done["reason"] and "0.2 s" in done["reason"]
    assert run["status"] == "timed_out" and run["output"]["text"] == "w0 w1 "


async def test_a_queued_runs_clock_starts_when_it_starts(serve: StartServer) -> None:
    gate = anyio.Event()
    agent = Switch(
        first=ScriptedAgent([*chunks(1), Wait(anyio.Event())]),  # ends at the time limit
        second=ScriptedAgent([*chunks(1, "m2"), Wait(gate), *chunks(1, "m3")]),
    )
    server = await serve(agent=agent, max_run_seconds=0.4)
    async with server.client() as client:
        with anyio.fail_after(10):
            first = (await client.post("/v1/runs", json=ask("first", thread_id="t"))).json()
            body = ask("second", thread_id="t", multitask="enqueue")
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                events = source.aiter_sse()
                head = await next_events(events, 3)  # queued; after 0.4 s: running, a chunk
                gate.set()  # had its clock started when it was queued, it would be over now
                tail = await next_events(events, 2)
            ended = (await client.get(f"/v1/runs/{first['run_id']}")).json()
    assert [(e.event, data(e).get("status")) for e in head] == [
        ("run", "queued"),
        ("run", "running"),
        ("message_chunk", None),
    ]
    assert_one_done(head + tail, "completed")
    assert ended["status"] == "timed_out" and "time limit" in ended["reason"]


# -- concurrent runs ------------------------------------------------------------------------------

CAPS = {"max_runs": "its maximum of {} runs", "max_runs_per_owner": "you have {} active runs"}


KEY = "k" * 24
BEARER = {"Authorization": f"Bearer {KEY}"}


def caps(setting: str, cap: int) -> dict[str, Any]:
    # A per-principal cap needs principals: with auth=none everyone is `anonymous`.
    auth = {"auth": "api-key", "api_keys": f"alice:{KEY}"} if setting != "max_runs" else {}
    return {"max_runs": 1000, "max_runs_per_owner": 1000, setting: cap, **auth}


@pytest.mark.parametrize("setting", list(CAPS))
async def test_a_full_server_answers_429_until_a_run_ends(serve: StartServer, setting: str) -> None:
    server = await serve(agent=ScriptedAgent([Wait(anyio.Event())]), **caps(setting, 2))
    async with server.client(headers=BEARER) as client:
        with anyio.fail_after(10):
            first = await client.post("/v1/runs", json=ask("a", thread_id="t"))
            queued = await client.post(
                "/v1/runs", json=ask("b", thread_id="t", multitask="enqueue")
            )
            assert (first.status_code, queued.status_code) == (201, 201)
            assert queued.json()["status"] == "queued"  # a queued run counts too
            for url in ("/v1/runs", "/v1/runs/stream"):
                refused = await client.post(url, json=ask("c"))
                assert CAPS[setting].format(2) in assert_error(refused, 429, "too_many_runs")
                assert int(refused.headers["retry-after"]) >= 1
            stop = await client.post(f"/v1/runs/{queued.json()['run_id']}/stop")
            assert stop.json()["status"] == "cancelled"
            assert (await client.post("/v1/runs", json=ask("d"))).status_code == 201


@pytest.mark.parametrize("setting", list(CAPS))
async def test_a_burst_of_starts_cannot_slip_past_the_cap(serve: StartServer, setting: str) -> None:
    gates = {"one": anyio.Event(), "two": anyio.Event()}
    agent = Switch(**{tag: ScriptedAgent([*chunks(1), Wait(gate)]) for tag, gate in gates.items()})
    server = await serve(agent=agent, **caps(setting, 5))
    async with server.client(headers=BEARER) as client:
        sup = await supervisor_of(server, client)

        async def post(answers: list[httpx.Response], tag: str, i: int) -> None:
            body = ask(tag, thread_id=f"{tag}-{i}")  # a thread lookup before the check
            answers.append(await client.post("/v1/runs", json=body))

        with anyio.fail_after(20):
            for tag, gate in gates.items():  # the second burst: capacity has come back
                answers: list[httpx.Response] = []
                async with anyio.create_task_group() as tg:
                    for i in range(30):
                        tg.start_soon(post, answers, tag, i)
                started = [a.json()["run_id"] for a in answers if a.status_code == 201]
                assert len(started) == 5 and sup.active_runs == 5
                for answer in answers:
                    if answer.status_code != 201:
                        assert_error(answer, 429, "too_many_runs")
                gate.set()
                for run_id in started:
                    _, events = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
                    assert_one_done(events, "completed")
                assert sup.active_runs == 0


async def test_the_per_owner_cap_counts_each_owner_alone(db_path: Path) -> None:
    settings = Settings.from_env({}, db=db_path, max_runs=3, max_runs_per_owner=2)
    request = RunCreate.model_validate(ask("x"))
    async with (
        Store(db_path) as store,
        Supervisor(
            store, ScriptedAgent([Wait(anyio.Event())]), settings, per_principal=True
        ) as sup,
    ):
        alice = [await sup.control.start(request, "alice") for _ in range(2)]
        with pytest.raises(TooManyRuns, match="you have 2 active runs"):
            await sup.control.start(request, "alice")
        await sup.control.start(request, "bob")  # alice's runs do not count against bob
        with pytest.raises(TooManyRuns, match="maximum of 3 runs"):
            await sup.control.start(request, "bob")
        with anyio.fail_after(5):
            await sup.control.stop(alice[0].run_id, "alice")
        await sup.control.start(request, "bob")
        assert sup.active_runs == 3


async def test_with_auth_off_per_principal_caps_do_not_cap_the_server(serve: StartServer) -> None:
    # Everyone is `anonymous`: max_runs_per_owner and max_streams_per_owner would be server-wide.
    server = await serve(
        agent=ScriptedAgent([*chunks(1), Wait(anyio.Event())]),
        max_runs=4,
        max_runs_per_owner=1,
        max_streams_per_owner=1,
        runs_per_minute=1,
    )
    async with server.client() as client:
        with anyio.fail_after(10):
            started = [await client.post("/v1/runs", json=ask(str(i))) for i in range(4)]
            assert [r.status_code for r in started] == [201] * 4
            refused = await client.post("/v1/runs", json=ask("5"))
            assert "its maximum of 4 runs" in assert_error(refused, 429, "too_many_runs")
            async with (
                aconnect_sse(client, "GET", f"/v1/runs/{started[0].json()['run_id']}/stream"),
                aconnect_sse(client, "GET", f"/v1/runs/{started[1].json()['run_id']}/stream") as s,
            ):
                assert s.response.status_code == 200  # a second stream of `anonymous`
            for answer in started:
                await client.post(f"/v1/runs/{answer.json()['run_id']}/stop")


# -- request size ---------------------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid run body of exactly ``size`` bytes."""
    empty = orjson.dumps(ask(""))
    return orjson.dumps(ask("x" * (size - len(empty))))


async def in_chunks(body: bytes, size: int = 500) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("url", ["/v1/runs", "/v1/runs/stream"])
async def test_a_body_over_the_limit_is_refused_before_it_is_stored(
    serve: StartServer, url: str, chunked: bool
) -> None:
    agent = ScriptedAgent(chunks(1))
    server = await serve(agent=agent, max_body_bytes=1024)
    body = padded_body(1025)
    content = in_chunks(body) if chunked else body
    headers = {"content-type": "application/json"}
    async with server.client() as client:
        response = await client.post(url, content=content, headers=headers)
        if chunked:  # sent without a length: only reading it shows it is too large
            assert "content-length" not in response.request.headers
        assert_error(response, 413, "body_too_large")
        assert (await client.get("/v1/runs")).json() == {"runs": []}
    assert agent.runs == []


async def test_a_chunked_body_at_the_limit_is_accepted(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), max_body_bytes=1024)
    headers = {"content-type": "application/json"}
    async with server.client() as client:
        body = in_chunks(padded_body(1024), 100)
        response = await client.post("/v1/runs", content=body, headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["run_id"]


async def test_too_many_or_too_long_messages_are_422(serve: StartServer) -> None:
    agent = ScriptedAgent(chunks(1))
    server = await serve(agent=agent, max_messages=3, max_message_chars=20)

    def body(*contents: str) -> dict[str, Any]:
        return {"input": {"messages": [{"role": "user", "content": c} for c in contents]}}

    async with server.client() as client:
        many = await client.post("/v1/runs", json=body("a", "b", "c", "d"))
        assert "4 input messages" in assert_error(many, 422, "invalid_input")
        graph = {"messages": [{"role": "user", "content": c} for c in "abcd"]}
        assert_error(await client.post("/v1/graph/stream", json=graph), 422, "invalid_input")
        long = await client.post("/v1/runs", json=body("a", "y" * 21))
        assert "21 characters" in assert_error(long, 422, "invalid_input")
        assert agent.runs == []
        at_limit = await client.post("/v1/runs", json=body("a", "b", "z" * 20))
        assert at_limit.status_code == 201
