"""End-to-end tests of threads over HTTP: thread state and streams, multitask, history, the
AgentFlow-shaped ``/v1/graph/stream``, and persistence across a restart (DESIGN.md §2, §3)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from streamctl.agents import Message, ScriptedAgent, Wait
from streamctl.agents.base import MessageToolCall

from .support import (
    StartServer,
    Switch,
    ask,
    assert_error,
    brief,
    chunks,
    data,
    next_events,
    read_sse,
    text_of,
    tool_call,
)

pytestmark = pytest.mark.anyio


async def test_busy_thread_rejects_or_interrupts(serve: StartServer) -> None:
    agent = Switch(
        first=ScriptedAgent([*chunks(2), Wait(anyio.Event())]),
        second=ScriptedAgent(chunks(2, "m2", "s")),
    )
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            first = (await client.post("/v1/runs", json=ask("first", thread_id="t-b"))).json()
            await read_sse(client, "GET", f"/v1/runs/{first['run_id']}/stream", limit=3)
            for extra in ({}, {"multitask": "reject"}):
                busy = await client.post("/v1/runs", json=ask("second", thread_id="t-b", **extra))
                assert_error(busy, 409, "thread_busy")
            bogus = ask("second", thread_id="t-b", multitask="bogus")
            assert_error(await client.post("/v1/runs", json=bogus), 422, "invalid_request")
            assert agent.agents["second"].runs == []
            body = ask("second", thread_id="t-b", multitask="interrupt")
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
            old = (await client.get(f"/v1/runs/{first['run_id']}")).json()
            _, old_log = await read_sse(client, "GET", f"/v1/runs/{first['run_id']}/stream")
            thread = (await client.get("/v1/threads/t-b")).json()
    assert data(events[-1])["status"] == "completed" and text_of(events) == "s0 s1 "
    assert old["status"] == "cancelled" and old["output"]["text"] == "w0 w1 "
    assert [e.event for e in old_log][-1:] == ["done"]
    assert data(old_log[-1])["status"] == "cancelled"
    assert [m.get("status") for m in thread["messages"]] == [None, "cancelled", None, "completed"]


async def test_thread_state_and_runs_listing(serve: StartServer) -> None:
    gate = anyio.Event()
    agent = Switch(
        one=ScriptedAgent(chunks(2)),
        two=ScriptedAgent([*chunks(1, "m2", "x"), Wait(gate), *chunks(1, "m3", "y")]),
    )
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            _, first = await read_sse(
                client, "POST", "/v1/runs/stream", json=ask("one", thread_id="t")
            )
            await read_sse(client, "POST", "/v1/runs/stream", json=ask("one", thread_id="u"))
            two = (await client.post("/v1/runs", json=ask("two", thread_id="t"))).json()["run_id"]
            await read_sse(client, "GET", f"/v1/runs/{two}/stream", limit=2)
            live = (await client.get("/v1/threads/t")).json()
            listed = (await client.get("/v1/runs", params={"thread_id": "t"})).json()["runs"]
            gate.set()
            await read_sse(client, "GET", f"/v1/runs/{two}/stream")
            ended = (await client.get("/v1/threads/t")).json()
            assert_error(await client.get("/v1/threads/nope"), 404, "thread_not_found")
    one = data(first[0])["run_id"]
    assert live["thread_id"] == "t"
    assert [brief(m) for m in live["messages"]] == [
        {"role": "user", "content": "one", "run_id": one},
        {"role": "assistant", "content": "w0 w1 ", "run_id": one, "status": "completed"},
        {"role": "user", "content": "two", "run_id": two},
        {"role": "assistant", "content": "x0 ", "run_id": two, "status": "running"},
    ]
    assert live["active_run"]["run_id"] == two and live["active_run"]["status"] == "running"
    assert live["last_run"]["run_id"] == two
    assert [(r["run_id"], r["thread_id"]) for r in listed] == [(two, "t"), (one, "t")]
    assert ended["active_run"] is None and ended["last_run"]["status"] == "completed"
    assert ended["messages"][-1]["output"]["text"] == "x0 y0 "
    # Each model message is a message of its own; the run's last one carries the run.
    assert [brief(m) for m in ended["messages"][-2:]] == [
        {"role": "assistant", "content": "x0 ", "run_id": two},
        {"role": "assistant", "content": "y0 ", "run_id": two, "status": "completed"},
    ]


async def test_thread_stream_joins_and_resumes_the_active_run(serve: StartServer) -> None:
    gate, later = anyio.Event(), anyio.Event()
    agent = Switch(
        one=ScriptedAgent([*chunks(2), Wait(gate), *tool_call(), *chunks(2, "m2", "v")]),
        two=ScriptedAgent([*chunks(1, "m3", "z"), Wait(later)]),
    )
    server = await serve(agent=agent)
    url = "/v1/threads/t/stream"
    async with server.client() as client:
        with anyio.fail_after(10):
            one = (await client.post("/v1/runs", json=ask("one", thread_id="t"))).json()["run_id"]
            async with aconnect_sse(client, "GET", url) as source:
                head = await next_events(source.aiter_sse(), 3)
            gate.set()
            _, rest = await read_sse(client, "GET", url, headers={"Last-Event-ID": head[-1].id})
            page = (await client.get(f"/v1/runs/{one}/events")).json()["events"]
            at_end = await client.get(url, headers={"Last-Event-ID": rest[-1].id})
            nothing = await client.get(url)
            two = (await client.post("/v1/runs", json=ask("two", thread_id="t"))).json()["run_id"]
            cursor = {"Last-Event-ID": rest[-1].id}  # at the end of run one: joins run two
            _, joined = await read_sse(client, "GET", url, headers=cursor, limit=2)
    log = head + rest
    assert [e.id for e in log] == [f"{one}:{i}" for i in range(1, len(log) + 1)]
    assert [(e.event, data(e)) for e in log] == [(p["type"], p["data"]) for p in page]
    assert log[-1].event == "done" and data(log[-1])["status"] == "completed"
    assert at_end.status_code == 204 and nothing.status_code == 204
    assert [e.id for e in joined] == [f"{two}:1", f"{two}:2"]


async def test_thread_stream_cursor_errors(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    url = "/v1/threads/t/stream"
    async with server.client() as client:
        _, mine = await read_sse(client, "POST", "/v1/runs/stream", json=ask("a", thread_id="t"))
        _, other = await read_sse(client, "POST", "/v1/runs/stream", json=ask("b", thread_id="u"))
        run, elsewhere = data(mine[0])["run_id"], data(other[0])["run_id"]
        for bad in ("3", ":3", f"{run}:", f"{run}:x", f"{run}:-1", f"{run}:1.5"):
            cursor = await client.get(url, headers={"Last-Event-ID": bad})
            assert_error(cursor, 400, "invalid_cursor")
        for unknown in ("nope:1", f"{elsewhere}:1"):
            cursor = await client.get(url, headers={"Last-Event-ID": unknown})
            assert_error(cursor, 404, "run_not_found")
        beyond = await client.get(url, headers={"Last-Event-ID": f"{run}:4"})
        assert_error(beyond, 400, "cursor_out_of_range")
        assert_error(await client.get("/v1/threads/nope/stream"), 404, "thread_not_found")


async def test_thread_stream_rejects_non_ascii_digits(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("a", thread_id="t"))
        cursor = f"{data(events[0])['run_id']}:\u00b2".encode("latin-1")  # "²".isdigit()
        response = await client.get("/v1/threads/t/stream", headers={b"Last-Event-ID": cursor})
    assert_error(response, 400, "invalid_cursor")


async def test_a_later_run_gets_the_thread_history(serve: StartServer) -> None:
    agent = ScriptedAgent([*chunks(2), *tool_call(), *chunks(1, "m2", "v")])
    server = await serve(agent=agent)
    async with server.client() as client:
        for content, thread_id in (("first?", "t"), ("second?", "t"), ("elsewhere", "u")):
            await read_sse(
                client, "POST", "/v1/runs/stream", json=ask(content, thread_id=thread_id)
            )
        thread = (await client.get("/v1/threads/t")).json()
    first, second, elsewhere = agent.runs
    assert first.history == [] and elsewhere.history == []
    assert second.messages == [Message(role="user", content="second?")]
    # Each message separate and in order, the tool call on the message that made it, its result
    # a tool message naming the call.
    call = MessageToolCall(id="c1", name="get_weather", args={"location": "Tokyo"})
    answer = Message(role="tool", content="Sunny, 22°C", tool_call_id="c1", name="get_weather")
    assert second.history == [
        Message(role="user", content="first?"),
        Message(role="assistant", content="w0 w1 ", tool_calls=[call]),
        answer,
        Message(role="assistant", content="v0 "),
    ]
    # The thread shows the same messages, each naming its run.
    one, two = (r.run_id for r in (first, second))
    assert [brief(m) for m in thread["messages"]] == [
        {"role": "user", "content": "first?", "run_id": one},
        {
            "role": "assistant",
            "content": "w0 w1 ",
            "tool_calls": [{"id": "c1", "name": "get_weather", "args": {"location": "Tokyo"}}],
            "run_id": one,
        },
        {
            "role": "tool",
            "content": "Sunny, 22°C",
            "tool_call_id": "c1",
            "name": "get_weather",
            "run_id": one,
        },
        {"role": "assistant", "content": "v0 ", "run_id": one, "status": "completed"},
        {"role": "user", "content": "second?", "run_id": two},
        {
            "role": "assistant",
            "content": "w0 w1 ",
            "tool_calls": [call.model_dump()],
            "run_id": two,
        },
        {**answer.model_dump(), "run_id": two},
        {"role": "assistant", "content": "v0 ", "run_id": two, "status": "completed"},
    ]


def graph_body(thread_id: str, recursion_limit: int, **block: Any) -> dict[str, Any]:
    content = [block or {"type": "text", "text": "hi"}]
    return {
        "messages": [{"role": "user", "content": content}],
        "config": {"thread_id": thread_id, "recursion_limit": recursion_limit},
        "stream_mode": "values",
    }


async def test_graph_stream_takes_agentflow_bodies(serve: StartServer) -> None:
    agent = ScriptedAgent([*chunks(2), *chunks(2, "m2", "v")])  # two steps: two messages
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            url = "/v1/graph/stream"
            response, events = await read_sse(client, "POST", url, json=graph_body("t1", 5))
            _, capped = await read_sse(client, "POST", url, json=graph_body("t2", 10_000))
            _, over = await read_sse(client, "POST", url, json=graph_body("t3", 1))
            image = graph_body("t4", 5, type="image_url", image_url={"url": "http://x/y.png"})
            assert_error(await client.post(url, json=image), 422, "invalid_request")
            empty = {**graph_body("t4", 5), "messages": []}
            assert_error(await client.post(url, json=empty), 422, "invalid_request")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert [e.event for e in events] == ["run"] + ["message_chunk"] * 4 + ["done"]
    assert data(events[0])["thread_id"] == "t1" and data(events[-1])["status"] == "completed"
    assert text_of(events) == "w0 w1 v0 v1 "
    ctx = agent.runs[0]
    assert ctx.thread_id == "t1" and ctx.messages == [Message(role="user", content="hi")]
    assert ctx.recursion_limit == 5
    assert agent.runs[1].recursion_limit == server.settings.recursion_limit  # the cap wins
    assert data(capped[-1])["status"] == "completed"
    assert [e.event for e in over][-2:] == ["error", "done"]
    assert data(over[-2])["code"] == "recursion_limit" and data(over[-1])["status"] == "failed"
    assert len(agent.runs) == 3


async def everything(client: httpx.AsyncClient, runs: list[str]) -> dict[str, Any]:
    """Every observable view of the given runs and their threads."""
    views: dict[str, Any] = {"list": (await client.get("/v1/runs")).json()}
    for run_id in runs:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        page = await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
        replay = await client.get(f"/v1/runs/{run_id}/stream")
        thread = await client.get(f"/v1/threads/{run['thread_id']}")
        views[run_id] = (run, page.json(), replay.content, thread.json())
    return views


async def test_restart_keeps_runs_events_and_threads(serve: StartServer) -> None:
    agent = Switch(
        ok=ScriptedAgent([*chunks(3), *tool_call(), *chunks(2, "m2", "v")]),
        held=ScriptedAgent([*chunks(2), Wait(anyio.Event())]),
    )
    server = await serve(agent=agent)
    runs: list[str] = []
    async with server.client() as client:
        with anyio.fail_after(10):
            for thread_id in ("t-a", "t-a", "t-b"):
                body = ask("ok", thread_id=thread_id)
                _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
                runs.append(data(events[0])["run_id"])
            stopped = (await client.post("/v1/runs", json=ask("held", thread_id="t-c"))).json()
            await client.post(f"/v1/runs/{stopped['run_id']}/stop")
            runs.append(stopped["run_id"])
            before = await everything(client, runs)
            held = (await client.post("/v1/runs", json=ask("held", thread_id="t-d"))).json()
            await read_sse(client, "GET", f"/v1/runs/{held['run_id']}/stream", limit=3)
    with anyio.fail_after(10):
        await server.stop()  # the held run is still active: it is interrupted
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            assert (await client.get("/readyz")).status_code == 200
            after = await everything(client, runs)
            interrupted = (await client.get(f"/v1/runs/{held['run_id']}")).json()
            _, log = await read_sse(client, "GET", f"/v1/runs/{held['run_id']}/stream")
    after["list"]["runs"] = [r for r in after["list"]["runs"] if r["run_id"] != held["run_id"]]
    assert after == before
    assert before[runs[0]][0]["output"]["text"] == "w0 w1 w2 v0 v1 "
    assert before[runs[3]][0]["status"] == "cancelled"
    assert interrupted["status"] == "interrupted" and interrupted["output"]["text"] == "w0 w1 "
    assert [int(e.id) for e in log] == list(range(1, 5)) and log[-1].event == "done"
    assert data(log[-1])["status"] == "interrupted"


async def test_a_run_stopped_mid_tool_leaves_its_partial_text_in_the_history(
    serve: StartServer,
) -> None:
    held = ScriptedAgent(
        [
            *chunks(2),
            *tool_call("c1"),
            *chunks(1, "m2", "v"),
            tool_call("c2")[0],
            Wait(anyio.Event()),
        ]
    )
    agent = Switch(held=held, next=ScriptedAgent(chunks(1, "m3", "n")))
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            run = (await client.post("/v1/runs", json=ask("held", thread_id="t-s"))).json()
            await read_sse(client, "GET", f"/v1/runs/{run['run_id']}/stream", limit=7)
            stopped = (await client.post(f"/v1/runs/{run['run_id']}/stop")).json()
            await read_sse(client, "POST", "/v1/runs/stream", json=ask("next", thread_id="t-s"))
            thread = (await client.get("/v1/threads/t-s")).json()
    assert stopped["status"] == "cancelled"
    (second,) = agent.agents["next"].runs
    call = MessageToolCall(id="c1", name="get_weather", args={"location": "Tokyo"})
    # c2 never returned (the run stopped inside it): the model never saw it, and a call no tool
    # message answers is refused by chat APIs, so it is left out; the text before stays.
    assert second.history == [
        Message(role="user", content="held"),
        Message(role="assistant", content="w0 w1 ", tool_calls=[call]),
        Message(role="tool", content="Sunny, 22°C", tool_call_id="c1", name="get_weather"),
        Message(role="assistant", content="v0 "),
    ]
    held_messages = [m for m in thread["messages"] if m["run_id"] == run["run_id"]]
    assert [brief(m) for m in held_messages][-1] == {
        "role": "assistant",
        "content": "v0 ",
        "run_id": run["run_id"],
        "status": "cancelled",
    }
    # The run's own output still shows the call that was cut short.
    calls = held_messages[-1]["output"]["tool_calls"]
    assert [(c["call_id"], c["output"], c["end_seq"]) for c in calls] == [
        ("c1", "Sunny, 22°C", 5),
        ("c2", None, None),
    ]
