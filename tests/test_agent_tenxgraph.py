"""The 10xGraph adapter (``streamctl.agents.tenxgraph.TenXGraphAgent``) with real ``10xgraph``
(Python 3.12): its prebuilt ReactAgent streaming from the fake OpenAI-compatible server (text
deltas, the final message's tool calls, tool results, a tool's emitted progress), history with
and without its checkpointer, its recursion limit, failures, and Stop cancelling a node and a tool
mid-way (10xGraph's own server would only stop between nodes).

``scripts/test`` runs this module in a Python 3.12 venv (``.venv312``); under 3.11 it is skipped.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

pytest.importorskip("tenxgraph", reason="10xgraph needs Python 3.12: scripts/test runs it there")

from streamctl.agents import load_agent
from streamctl.agents.tenxgraph import TenXGraphAgent

from .support import (
    ServerProcess,
    StartServer,
    ask,
    data,
    next_events,
    read_sse,
    tenxgraph_agents,
)
from .support.fake_openai import FakeOpenAI, Turn, fake_upstreams
from .support.tenxgraph_agents import (
    Watched,
    booking_graph,
    broken_tool,
    get_weather,
    looping_graph,
    one_node_graph,
    react_graph,
)

pytestmark = pytest.mark.anyio

Upstream = Callable[[list[Turn]], Awaitable[FakeOpenAI]]
WEATHER = ("get_weather", '{"location": "Tokyo"}')


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """``await upstream(turns)`` starts a fake OpenAI-compatible server; stopped at teardown."""

    async def close_clients() -> None:  # the graphs' model clients, which 10xGraph never closes
        while tenxgraph_agents.clients:
            await tenxgraph_agents.clients.pop().close()

    async with fake_upstreams(close_clients) as start:
        yield start


def weather_turns(*more: Turn) -> list[Turn]:
    # 10xGraph 0.10's OpenAI converter keeps only tool calls that arrive whole in one chunk
    # (split argument deltas are dropped), so the fake sends them whole.
    return [
        Turn(text=["Let me ", "check."], tool_calls=[WEATHER], whole_calls=True),
        Turn(text=["Sunny ", "in Tokyo."]),
        *more,
    ]


async def test_tokens_tool_calls_results_and_progress(
    serve: StartServer, upstream: Upstream
) -> None:
    fake = await upstream(weather_turns())
    server = await serve(agent=TenXGraphAgent(react_graph(fake, [get_weather])))
    async with server.client() as client:
        with anyio.fail_after(20):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
    assert [e.event for e in events] == [
        "run",
        "message_chunk",
        "message_chunk",
        "tool_start",
        "custom",
        "tool_end",
        "message_chunk",
        "message_chunk",
        "done",
    ]
    chunks = [data(e) for e in events if e.event == "message_chunk"]
    assert [c["content"] for c in chunks] == ["Let me ", "check.", "Sunny ", "in Tokyo."]
    # The fake reuses one completion id for both model calls: still two messages.
    assert chunks[0]["message_id"] == chunks[1]["message_id"] != chunks[2]["message_id"]
    assert chunks[2]["message_id"] == chunks[3]["message_id"]
    start, progress, end = (data(e) for e in events[3:6])
    assert start == {"name": "get_weather", "args": {"location": "Tokyo"}, "call_id": "call_0_fake"}
    assert progress["name"] == "tool_progress"
    assert progress["data"]["looking_up"] == "Tokyo"
    assert progress["data"]["tool_call_id"] == "call_0_fake"
    assert end == {
        "name": "get_weather",
        "output": "Sunny, 22°C in Tokyo",
        "call_id": "call_0_fake",
    }
    assert data(events[-1])["status"] == "completed"
    assert fake.requests[0]["messages"] == [{"role": "user", "content": "Tokyo?"}]


@pytest.mark.parametrize("checkpointer", [False, True], ids=["history", "checkpointer"])
async def test_the_next_run_gets_the_tool_calls_and_results(
    serve: StartServer, upstream: Upstream, checkpointer: bool
) -> None:
    fake = await upstream(weather_turns(Turn(text=["Still sunny."])))
    graph = react_graph(fake, [get_weather], checkpointer=checkpointer)
    server = await serve(agent=TenXGraphAgent(graph))
    async with server.client() as client:
        with anyio.fail_after(20):
            _, first = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
            body = ask("And later?", thread_id=data(first[0])["thread_id"])
            _, second = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert data(second[-1])["status"] == "completed"
    sent = fake.requests[-1]["messages"]  # what the model got in the second run
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[0]["content"] == "Tokyo?"
    assert sent[1]["content"] == "Let me check."
    (called,) = sent[1]["tool_calls"]
    assert called["id"] == "call_0_fake" and called["function"]["name"] == "get_weather"
    assert sent[2] == {
        "role": "tool",
        "content": "Sunny, 22°C in Tokyo",
        "tool_call_id": "call_0_fake",
    }
    assert sent[3]["content"] == "Sunny in Tokyo."
    assert sent[4] == {"role": "user", "content": "And later?"}


async def test_interrupt_ends_the_run_and_the_next_run_resumes(serve: StartServer) -> None:
    server = await serve(agent=TenXGraphAgent(booking_graph()))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, asked = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Book it"))
            body = ask("yes", thread_id=data(asked[0])["thread_id"], config={"resume": "yes"})
            _, resumed = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert [e.event for e in asked] == ["run", "interrupt", "done"]
    assert data(asked[1])["value"] == {"question": "Book the table for 8?"}
    assert data(asked[1])["interrupt_id"]
    assert data(asked[-1])["status"] == "completed"
    assert [e.event for e in resumed] == ["run", "message_chunk", "done"]
    assert data(resumed[1])["content"] == "Booked: yes."


async def test_stop_cancels_a_node_mid_way(serve: StartServer) -> None:
    watched = Watched(seconds=2)  # a 2 s node: 10xGraph's own Stop would let it finish
    server = await serve(agent=TenXGraphAgent(one_node_graph(watched.node())))
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as src:
                events = src.aiter_sse()
                await next_events(events, 1)
                await watched.started.wait()
                stop = await client.post(f"/v1/runs/{src.response.headers['x-run-id']}/stop")
                # The stop answered once the run's task exited: by then the node had seen it.
                assert watched.cancelled.is_set() and not watched.finished
                tail = await next_events(events)
    assert stop.status_code == 200 and stop.json()["stopping"] is False
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]


async def test_stop_cancels_a_running_tool_that_10xgraph_runs_in_a_task_of_its_own(
    serve: StartServer, upstream: Upstream
) -> None:
    watched = Watched()
    fake = await upstream(
        [Turn(tool_calls=[("slow_lookup", '{"location": "Tokyo"}')], whole_calls=True)]
    )
    server = await serve(agent=TenXGraphAgent(react_graph(fake, [watched.tool()])))
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as src:
                events = src.aiter_sse()
                head = await next_events(events, 2)
                await watched.started.wait()
                stop = await client.post(f"/v1/runs/{src.response.headers['x-run-id']}/stop")
                assert watched.cancelled.is_set()  # not orphaned: the tool itself was cancelled
                tail = await next_events(events)
    assert [e.event for e in head] == ["run", "tool_start"]
    assert stop.status_code == 200 and stop.json()["stopping"] is False
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]


async def test_the_recursion_limit_is_the_graphs(serve: StartServer) -> None:
    visits: list[int] = []
    server = await serve(agent=TenXGraphAgent(looping_graph(visits)))
    async with server.client() as client:
        with anyio.fail_after(10):
            body = ask("loop", config={"recursion_limit": 3})
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert [e.event for e in events][-2:] == ["error", "done"]
    assert data(events[-2])["code"] == "recursion_limit"
    assert data(events[-1])["status"] == "failed"
    assert visits == [1, 2]  # 10xGraph counts its entry as a step too: its own limit, the run's


async def test_a_failing_tool_answers_with_its_error_and_a_failing_graph_fails_the_run(
    serve: StartServer, upstream: Upstream
) -> None:
    fake = await upstream(
        [Turn(tool_calls=[("broken_tool", '{"location": "Oslo"}')], whole_calls=True)]
    )

    async def broken(state: Any) -> Any:
        raise RuntimeError("the graph broke")

    tools = TenXGraphAgent(react_graph(fake, [broken_tool]))
    server = await serve(agent=tools)
    async with server.client() as client:
        with anyio.fail_after(20):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Oslo?"))
    ends = [data(e) for e in events if e.event == "tool_end"]
    assert len(ends) == 1 and ends[0]["call_id"] == "call_0_fake"
    assert "error" in ends[0]["output"] and ends[0]["name"] == "broken_tool"

    server = await serve(agent=TenXGraphAgent(one_node_graph(broken)))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("x"))
    assert [e.event for e in events][-2:] == ["error", "done"]
    assert data(events[-2])["code"] == "agent_error"
    assert "the graph broke" not in events[-2].data  # the exception's text stays in the log


async def test_the_example(
    serve: StartServer, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await upstream(
        [
            Turn(tool_calls=[("get_weather", '{"city": "Oslo"}')], whole_calls=True),
            Turn(text=["Sunny ", "in Oslo."]),
        ]
    )
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("STREAMCTL_MODEL", "example-model")
    monkeypatch.delitem(sys.modules, "examples.tenxgraph_agent", raising=False)
    agent = load_agent("examples.tenxgraph_agent:graph")
    assert isinstance(agent, TenXGraphAgent)
    example = sys.modules["examples.tenxgraph_agent"].graph
    tenxgraph_agents.clients.append(example._state_graph.nodes["MAIN"].func.client)
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(20):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Oslo?"))
    kinds = [e.event for e in events]
    assert kinds == ["run", "tool_start", "custom", "tool_end", *["message_chunk"] * 2, "done"]
    assert fake.requests[0]["model"] == "example-model"
    assert fake.requests[0]["messages"][0]["role"] == "system"


def test_load_agent_accepts_a_compiled_graph() -> None:
    agent = load_agent("tests.support.tenxgraph_agents:graph")
    assert isinstance(agent, TenXGraphAgent)


async def test_serve_agent_module_graph(spawn_server: Callable[..., ServerProcess]) -> None:
    server = await anyio.to_thread.run_sync(
        lambda: spawn_server("--agent", "tests.support.tenxgraph_agents:graph")
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(15):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Hi"))
    assert [e.event for e in events] == ["run", "message_chunk", "done"]
    assert data(events[1])["content"] == "Hello from 10xGraph."


def test_importing_streamctl_imports_no_10xgraph() -> None:
    # Here 10xgraph is installed: importing streamctl must still not import it.
    code = (
        "import sys, streamctl, streamctl.agents, streamctl.http, streamctl.cli\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "assert not {'tenxgraph', 'agentflow'} & loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
