"""End-to-end tests of runs over HTTP: streaming, resume, stop and errors (DESIGN.md §2, §3).

Every test talks to a real uvicorn server over TCP; runs are held at precise points with
``Wait(anyio.Event)`` steps of a scripted agent, and tests synchronise on the events they read.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import ServerSentEvent, aconnect_sse

from streamctl.agents import AgentContext, Fail, ScriptedAgent, Wait
from streamctl.events import AgentEvent, ToolStart
from streamctl.run_task import AGENT_ERROR_MESSAGE

from .conftest import Server, StartServer, chunks, read_sse, run_body, tool_call

pytestmark = pytest.mark.anyio


class Switch:
    """An agent that hands each run to the agent named by its last user message."""

    def __init__(self, **agents: ScriptedAgent) -> None:
        self.agents = agents

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self.agents[ctx.messages[-1].content](ctx)


def ask(content: str, **extra: Any) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": content}]}, **extra}


async def take(events: AsyncIterator[ServerSentEvent], n: int | None) -> list[ServerSentEvent]:
    """The next ``n`` events of an open stream (all of them until it closes when None)."""
    got: list[ServerSentEvent] = []
    async for event in events:
        if event.data == "" and event.retry is not None:  # the retry-only block
            continue
        got.append(event)
        if n is not None and len(got) >= n:
            break
    return got


def data(event: ServerSentEvent) -> Any:
    return orjson.loads(event.data)


def text_of(events: list[ServerSentEvent]) -> str:
    return "".join(data(e)["content"] for e in events if e.event == "message_chunk")


def brief(message: dict[str, Any]) -> dict[str, Any]:
    """A thread message without the assistant's structured ``output`` (checked separately)."""
    return {k: v for k, v in message.items() if k != "output"}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


async def until_unsubscribed(server: Server, run_id: str) -> None:
    """Wait until the server has seen every stream of the live run go (no HTTP view of this)."""
    app = cast(FastAPI, server.uvicorn.config.app)
    log = app.state.supervisor.live.get(run_id).log
    while log.subscribers:
        await anyio.wait_all_tasks_blocked()


async def test_create_run_returns_201_with_the_running_run(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(2), Wait(gate)]))
    async with server.client() as client:
        with anyio.fail_after(10):
            response = await client.post("/v1/runs", json=run_body(thread_id="t-201"))
            assert response.status_code == 201
            run = response.json()
            assert run["status"] == "running" and run["thread_id"] == "t-201"
            assert run["last_seq"] >= 1 and run["run_id"]
            assert {"output", "error", "created_at", "started_at", "usage"} <= set(run)
            fresh = (await client.post("/v1/runs", json=run_body())).json()
            assert fresh["thread_id"] not in ("", "t-201")  # a new thread when absent
            gate.set()
            _, events = await read_sse(client, "GET", f"/v1/runs/{run['run_id']}/stream")
            assert data(events[-1])["status"] == "completed"


@pytest.mark.parametrize("on_disconnect", ["continue", "cancel"])
async def test_disconnecting_mid_stream(serve: StartServer, on_disconnect: str) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(gate), *tool_call(), *chunks(2, "m2", "v")])
    server = await serve(agent=agent)
    body = run_body(on_disconnect=on_disconnect)
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                head = await take(source.aiter_sse(), 4)
            run_id = source.response.headers["x-run-id"]
            await until_unsubscribed(server, run_id)
            gate.set()
            url = f"/v1/runs/{run_id}/stream"
            _, rest = await read_sse(client, "GET", url, headers={"Last-Event-ID": head[-1].id})
            run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert [e.id for e in head + rest] == [str(i) for i in range(1, len(head + rest) + 1)]
    if on_disconnect == "continue":  # invariant 1: a run is a resource, not a connection
        assert run["status"] == "completed"
        assert run["output"]["text"] == "w0 w1 w2 v0 v1 "
        assert [c["output"] for c in run["output"]["tool_calls"]] == ["Sunny, 22°C"]
    else:
        assert run["status"] == "cancelled" and run["output"]["text"] == "w0 w1 w2 "
        assert [e.event for e in rest] == ["done"]


@pytest.mark.parametrize("seed", range(5))
async def test_resume_while_appending_is_exactly_once(serve: StartServer, seed: int) -> None:
    rng = random.Random(seed)
    server = await serve(tail_events=16)  # the demo agent; old cursors are served from SQLite
    demo = {"tokens": 150, "delay_ms": 1, "tool": True, "tool_ms": 5}
    statuses: list[str] = []
    async with server.client() as client:
        with anyio.fail_after(30):
            body = run_body(config={"demo": demo})
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                received = await take(source.aiter_sse(), rng.randint(1, 20))
            run_id = source.response.headers["x-run-id"]
            while received[-1].event != "done":
                statuses.append((await client.get(f"/v1/runs/{run_id}")).json()["status"])
                cursor: dict[str, Any] = (
                    {"params": {"after": received[-1].id}}
                    if rng.random() < 0.3
                    else {"headers": {"Last-Event-ID": received[-1].id}}
                )
                url = f"/v1/runs/{run_id}/stream"
                response, events = await read_sse(
                    client, "GET", url, limit=rng.randint(1, 20), **cursor
                )
                assert response.status_code == 200
                received += events
            page = (await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    assert "running" in statuses, "the run ended before any reconnect: nothing was tested"
    assert [int(e.id) for e in received] == list(range(1, len(received) + 1))
    assert [(int(e.id), e.event, data(e)) for e in received] == [
        (p["seq"], p["type"], p["data"]) for p in page["events"]
    ]
    assert page["last_seq"] == len(received) and page["status"] == "completed"


async def test_last_event_id_header_wins_over_after(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(5)))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=run_body())
        url = f"/v1/runs/{data(events[-1])['run_id']}/stream"
        _, resumed = await read_sse(
            client, "GET", url, params={"after": "1"}, headers={"Last-Event-ID": "4"}
        )
        assert [e.id for e in resumed] == ["5", "6", "7"]
        bad = await client.get(url, params={"after": "1"}, headers={"Last-Event-ID": "x"})
        assert_error(bad, 400, "invalid_cursor")


async def test_snapshot_then_resume_after_its_last_seq(serve: StartServer) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(4), *tool_call(), Wait(gate), *chunks(4, "m2", "v")])
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=run_body()) as source:
                await take(source.aiter_sse(), 7)  # run, 4 chunks, tool_start, tool_end
            run_id = source.response.headers["x-run-id"]
            snap = (await client.get(f"/v1/runs/{run_id}")).json()
            gate.set()
            url = f"/v1/runs/{run_id}/stream?after={snap['last_seq']}"
            _, rest = await read_sse(client, "GET", url)
            final = (await client.get(f"/v1/runs/{run_id}")).json()
    assert snap["status"] == "running" and snap["last_seq"] == 7
    assert snap["output"]["text"] == "w0 w1 w2 w3 "
    assert [(c["call_id"], c["output"]) for c in snap["output"]["tool_calls"]] == [
        ("c1", "Sunny, 22°C")
    ]
    assert [int(e.id) for e in rest] == list(range(8, 8 + len(rest)))
    assert snap["output"]["text"] + text_of(rest) == final["output"]["text"]
    assert final["output"]["text"] == "w0 w1 w2 w3 v0 v1 v2 v3 "


async def test_snapshot_while_appending_describes_exactly_its_last_seq(serve: StartServer) -> None:
    server = await serve()
    demo = {"tokens": 150, "delay_ms": 1, "tool": True, "tool_ms": 5}
    async with server.client() as client:
        with anyio.fail_after(20):
            body = run_body(config={"demo": demo})
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                await take(source.aiter_sse(), 12)
            run_id = source.response.headers["x-run-id"]
            snap = (await client.get(f"/v1/runs/{run_id}")).json()
            url = f"/v1/runs/{run_id}/stream?after={snap['last_seq']}"
            _, rest = await read_sse(client, "GET", url)
            final = (await client.get(f"/v1/runs/{run_id}")).json()
    assert snap["status"] == "running"
    assert [int(e.id) for e in rest] == list(range(snap["last_seq"] + 1, final["last_seq"] + 1))
    assert snap["output"]["text"] + text_of(rest) == final["output"]["text"]
    assert final["status"] == "completed"


async def test_stop_mid_stream(serve: StartServer) -> None:
    never = anyio.Event()  # only a stop ends this run
    after_wait = ToolStart(name="after_wait", call_id="never")
    agent = ScriptedAgent([*chunks(3), Wait(never), after_wait, *chunks(2, "m2")])
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            body = run_body(thread_id="t-stop")
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                stream = source.aiter_sse()
                await take(stream, 4)  # run + 3 chunks: the agent is at its Wait
                run_id = source.response.headers["x-run-id"]
                stop = await client.post(f"/v1/runs/{run_id}/stop")
                tail = await take(stream, None)  # ends: the server closed the stream
            again = await client.post(f"/v1/runs/{run_id}/stop")
            log = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
            thread = (await client.get("/v1/threads/t-stop")).json()
            url = f"/v1/runs/{run_id}/stream"
            resumed = await client.get(url, headers={"Last-Event-ID": tail[-1].id})
    assert stop.status_code == 200
    state = stop.json()
    assert state["status"] == "cancelled" and state["stopping"] is False
    assert state["output"]["text"] == "w0 w1 w2 "
    assert [e.event for e in tail] == ["done"] and data(tail[0])["status"] == "cancelled"
    assert [e["type"] for e in log] == ["run"] + ["message_chunk"] * 3 + ["done"]
    assert thread["messages"][-1]["output"] == state["output"]
    assert brief(thread["messages"][-1]) == {
        "role": "assistant",
        "content": "w0 w1 w2 ",
        "run_id": run_id,
        "status": "cancelled",
    }
    assert again.status_code == 200 and again.json() == state  # idempotent
    assert resumed.status_code == 204 and resumed.content == b""


async def test_stop_without_waiting_never_reports_cancelled_early(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent([*chunks(1), Wait(anyio.Event())]))
    async with server.client() as client:
        with anyio.fail_after(10):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            stop = await client.post(f"/v1/runs/{run_id}/stop", params={"wait": "false"})
            _, events = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
    assert stop.status_code == 202
    assert stop.json()["stopping"] is True and stop.json()["status"] == "running"
    assert data(events[-1])["status"] == "cancelled"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v1/runs/{run_id}/stop", None),
        ("/stop", {"run_id": "{run_id}"}),
        ("/stop", {"thread_id": "t-1"}),
        ("/v1/threads/t-1/stop", None),
    ],
)
async def test_stop_by_run_or_thread(
    serve: StartServer, path: str, target: dict[str, str] | None
) -> None:
    server = await serve(agent=ScriptedAgent([*chunks(2), Wait(anyio.Event())]))
    async with server.client() as client:
        with anyio.fail_after(10):
            run = await client.post("/v1/runs", json=run_body(thread_id="t-1"))
            run_id = run.json()["run_id"]
            await read_sse(client, "GET", f"/v1/runs/{run_id}/stream", limit=3)
            body = {k: v.format(run_id=run_id) for k, v in target.items()} if target else None
            stop = await client.post(path.format(run_id=run_id), json=body)
            _, events = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
    assert stop.status_code == 200
    assert stop.json()["run_id"] == run_id and stop.json()["status"] == "cancelled"
    assert stop.json()["output"]["text"] == "w0 w1 "
    assert data(events[-1])["status"] == "cancelled"


async def test_stop_errors(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent([]))
    async with server.client() as client:
        assert_error(await client.post("/v1/runs/nope/stop"), 404, "run_not_found")
        assert_error(await client.post("/stop", json={"run_id": "nope"}), 404, "run_not_found")
        assert_error(await client.post("/v1/threads/nope/stop"), 404, "thread_not_found")
        nope = {"thread_id": "nope"}
        assert_error(await client.post("/stop", json=nope), 404, "thread_not_found")
        for body in ({}, {"run_id": "a", "thread_id": "b"}, {"run_id": "a", "x": 1}):
            assert_error(await client.post("/stop", json=body), 422, "invalid_request")


async def test_cursor_and_lookup_errors(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(2), Wait(gate)]))
    async with server.client() as client:
        run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
        stream, events = f"/v1/runs/{run_id}/stream", f"/v1/runs/{run_id}/events"
        live = await client.get(stream, params={"after": "1000"})
        assert_error(live, 400, "cursor_out_of_range")  # also while the run is live
        gate.set()
        _, log = await read_sse(client, "GET", stream)
        assert log[-1].id == "4"
        by_header = await client.get(stream, headers={"Last-Event-ID": "4"})
        by_after = await client.get(stream, params={"after": "4"})
        for ended in (by_header, by_after):
            assert ended.status_code == 204 and ended.content == b""
        for bad in ("abc", "-1", "1.5", " 3", "3 ", "\uff13"):
            assert_error(await client.get(stream, params={"after": bad}), 400, "invalid_cursor")
            assert_error(await client.get(events, params={"after": bad}), 400, "invalid_cursor")
        for bad in ("abc", "-1", "1.5"):
            bad_header = await client.get(stream, headers={"Last-Event-ID": bad})
            assert_error(bad_header, 400, "invalid_cursor")
        beyond = await client.get(stream, headers={"Last-Event-ID": "5"})
        assert_error(beyond, 400, "cursor_out_of_range")
        assert_error(await client.get(events, params={"after": 5}), 400, "cursor_out_of_range")
        for limit in ("0", "1001", "x"):
            page = await client.get(events, params={"limit": limit})
            assert_error(page, 422, "invalid_request")
        for url in ("/v1/runs/nope", "/v1/runs/nope/stream", "/v1/runs/nope/events"):
            assert_error(await client.get(url), 404, "run_not_found")


async def test_agent_failure_fails_only_its_run(serve: StartServer) -> None:
    gate = anyio.Event()
    agent = Switch(
        fail=ScriptedAgent([*chunks(2), Fail(RuntimeError("boom"))]),
        ok=ScriptedAgent([*chunks(1), Wait(gate), *chunks(2, "m2", "v")]),
    )
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            ok = (await client.post("/v1/runs", json=ask("ok", thread_id="t-ok"))).json()
            body = ask("fail", thread_id="t-fail")
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
            failed = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            gate.set()
            _, rest = await read_sse(client, "GET", f"/v1/runs/{ok['run_id']}/stream")
    assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "error", "done"]
    # The exception's text ("boom") stays in the server's log: clients get a generic message.
    assert data(events[3]) == {"code": "agent_error", "message": AGENT_ERROR_MESSAGE}
    assert data(events[4])["status"] == "failed"
    assert failed["status"] == "failed" and failed["error"]["code"] == "agent_error"
    assert failed["output"]["text"] == "w0 w1 "
    assert data(rest[-1])["status"] == "completed" and text_of(rest) == "w0 v0 v1 "


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"input": ', 400, "invalid_json"),
        (b"{}", 422, "invalid_request"),
        (b'{"input": {"messages": []}}', 422, "invalid_request"),
        (orjson.dumps(run_body(surprise=1)), 422, "invalid_request"),
        (orjson.dumps(run_body(thread_id="a b")), 422, "invalid_request"),
        (orjson.dumps(run_body(thread_id="../x")), 422, "invalid_request"),
        (orjson.dumps(run_body(thread_id="t" * 129)), 422, "invalid_request"),
        (orjson.dumps(ask("x", config={"recursion_limit": 0})), 422, "invalid_request"),
        (orjson.dumps(ask("eleven char")), 422, "invalid_input"),
    ],
)
async def test_invalid_bodies(serve: StartServer, body: bytes, status: int, code: str) -> None:
    agent = ScriptedAgent(chunks(1))
    server = await serve(agent=agent, max_message_chars=10)
    headers = {"content-type": "application/json"}
    async with server.client() as client:
        for url in ("/v1/runs", "/v1/runs/stream"):
            assert_error(await client.post(url, content=body, headers=headers), status, code)
    assert agent.runs == []


async def test_invalid_demo_options_are_rejected_up_front(serve: StartServer) -> None:
    server = await serve()  # the demo agent
    async with server.client() as client:
        response = await client.post("/v1/runs", json=run_body(config={"demo": {"tokens": -1}}))
    assert_error(response, 422, "invalid_request")
