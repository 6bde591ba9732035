"""The LangGraph adapter (``streamctl.agents.langgraph.LangGraphAgent``) with real ``langgraph``
and ``langchain-core``, a scripted chat model streaming tokens and tool calls (no network):
text, tool calls and results, custom events, usage, history and checkpointers, interrupt and
resume, and Stop reaching the model's stream and the tool itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from streamctl.agents import load_agent
from streamctl.agents.langgraph import LangGraphAgent
from streamctl.run_task import AGENT_ERROR_MESSAGE

from .support import ServerProcess, StartServer, ask, data, next_events, read_sse
from .support.langgraph_agents import (
    ScriptedChatModel,
    booking_graph,
    call,
    get_weather,
    react_graph,
)

pytestmark = pytest.mark.anyio


def replies() -> list[AIMessage]:
    return [
        call("get_weather", {"location": "Tokyo"}, "call_1", "Let me check."),
        AIMessage("It is sunny in Tokyo."),
    ]


async def test_tokens_tool_calls_custom_events_and_usage(serve: StartServer) -> None:
    model = ScriptedChatModel(replies=replies())
    server = await serve(agent=LangGraphAgent(react_graph(model, [get_weather])))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
            run = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
    assert [e.event for e in events] == [
        "run",
        *["message_chunk"] * 3,
        "tool_start",
        "custom",
        "custom",
        "tool_end",
        *["message_chunk"] * 5,
        "done",
    ]
    chunks = [data(e) for e in events if e.event == "message_chunk"]
    assert len({c["message_id"] for c in chunks[:3]}) == 1  # one id per model message
    assert len({c["message_id"] for c in chunks[3:]}) == 1
    assert chunks[0]["message_id"] != chunks[3]["message_id"]
    start, end = data(events[4]), data(events[7])
    assert start == {"name": "get_weather", "args": {"location": "Tokyo"}, "call_id": "call_1"}
    assert end == {"name": "get_weather", "output": "Sunny, 22°C in Tokyo", "call_id": "call_1"}
    assert data(events[5]) == {"name": "progress", "data": {"looking_up": "Tokyo"}}
    assert data(events[6]) == {"name": "custom", "data": ["anything", 1]}
    done = data(events[-1])
    assert done["status"] == "completed"
    assert done["usage"] == {"input_tokens": 20, "output_tokens": 8}  # two model calls
    assert run["output"]["text"] == "Let me check.It is sunny in Tokyo."


@pytest.mark.parametrize("checkpointer", [False, True], ids=["history", "checkpointer"])
async def test_the_next_run_sees_the_conversation(serve: StartServer, checkpointer: bool) -> None:
    model = ScriptedChatModel(replies=[*replies(), AIMessage("Still sunny.")])
    graph = react_graph(model, [get_weather], checkpointer=checkpointer)
    server = await serve(agent=LangGraphAgent(graph))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, first = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
            thread_id = data(first[0])["thread_id"]
            body = ask("And later?", thread_id=thread_id)
            _, second = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert data(second[-1])["status"] == "completed"
    seen = model.seen[-1]  # what the model got in the second run
    # Either way (the graph's own state, or the thread's history streamctl hands it), tool calls
    # and results round-trip, each message separate and in order.
    kinds = [type(m).__name__ for m in seen]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage", "HumanMessage"]
    assert seen[0].content == "Tokyo?"
    assert isinstance(seen[1], AIMessage) and seen[1].content == "Let me check."
    assert [(c["id"], c["name"], c["args"]) for c in seen[1].tool_calls] == [
        ("call_1", "get_weather", {"location": "Tokyo"})
    ]
    assert isinstance(seen[2], ToolMessage) and seen[2].tool_call_id == "call_1"
    assert seen[2].content == "Sunny, 22°C in Tokyo"
    assert seen[3].content == "It is sunny in Tokyo."
    assert isinstance(seen[-1], HumanMessage) and seen[-1].content == "And later?"


async def test_interrupt_ends_the_run_and_the_next_run_resumes(serve: StartServer) -> None:
    server = await serve(agent=LangGraphAgent(booking_graph()))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, first = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Book a table"))
            thread_id = data(first[0])["thread_id"]
            run = (await client.get(f"/v1/runs/{data(first[0])['run_id']}")).json()
            body = ask("yes", thread_id=thread_id, config={"resume": "yes, at 8"})
            _, second = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert [e.event for e in first] == ["run", "interrupt", "done"]
    interrupt = data(first[1])
    assert interrupt["value"] == {"question": "Book the table for 8?"}
    assert interrupt["interrupt_id"]
    assert data(first[-1])["status"] == "completed"
    assert run["output"]["interrupt"] == interrupt
    assert [e.event for e in second] == ["run", "message_chunk", "done"]
    assert data(second[1])["content"] == "Booked: yes, at 8."


async def test_stop_mid_token_cancels_the_model_stream(serve: StartServer) -> None:
    hold = anyio.Event()
    model = ScriptedChatModel(replies=[AIMessage("one two three")], hold=hold)
    server = await serve(agent=LangGraphAgent(react_graph(model, [get_weather])))
    try:
        async with server.client() as client:
            with anyio.fail_after(10):
                async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as src:
                    events = src.aiter_sse()
                    head = await next_events(events, 2)
                    await model.holding.wait()
                    stop = await client.post(f"/v1/runs/{src.response.headers['x-run-id']}/stop")
                    tail = await next_events(events)
    finally:
        hold.set()
    assert [e.event for e in head] == ["run", "message_chunk"]
    assert stop.status_code == 200 and stop.json()["output"]["text"] == "one "
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]
    assert model.cancelled.is_set()  # the model's own stream saw the cancellation


async def test_stop_mid_tool_cancels_the_tool_itself(serve: StartServer) -> None:
    entered, cancelled, finished = anyio.Event(), anyio.Event(), anyio.Event()

    async def slow_search(query: str) -> str:
        """Searches for a long time."""
        entered.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        finally:
            finished.set()
        return "too late"

    model = ScriptedChatModel(replies=[call("slow_search", {"query": "x"}, "call_s")])
    server = await serve(agent=LangGraphAgent(react_graph(model, [slow_search])))
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as src:
                events = src.aiter_sse()
                head = await next_events(events, 2)
                await entered.wait()
                stop = await client.post(f"/v1/runs/{src.response.headers['x-run-id']}/stop")
                # The stop answered after the run's task exited: the tool has ended by then.
                assert finished.is_set()
                tail = await next_events(events)
    assert [e.event for e in head] == ["run", "tool_start"]
    assert cancelled.is_set()  # not orphaned: the tool itself was cancelled
    assert stop.status_code == 200
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]


async def test_a_failing_graph_fails_the_run(serve: StartServer) -> None:
    async def broken(state: Any) -> dict[str, Any]:
        raise RuntimeError("the graph broke")

    from langgraph.graph import START, MessagesState, StateGraph

    builder = StateGraph(MessagesState)
    builder.add_node("broken", broken)
    builder.add_edge(START, "broken")
    server = await serve(agent=LangGraphAgent(builder.compile()))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("x"))
    assert [e.event for e in events] == ["run", "error", "done"]
    assert data(events[1]) == {"code": "agent_error", "message": AGENT_ERROR_MESSAGE}


async def test_the_graph_recursion_limit_is_the_runs(serve: StartServer) -> None:
    loop = [call("get_weather", {"location": str(i)}, f"c{i}") for i in range(10)]
    model = ScriptedChatModel(replies=loop)
    server = await serve(agent=LangGraphAgent(react_graph(model, [get_weather])))
    async with server.client() as client:
        body = ask("x", config={"recursion_limit": 3})
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
    assert data(events[-2])["code"] == "recursion_limit"
    assert data(events[-1])["status"] == "failed"


def test_load_agent_accepts_a_compiled_graph() -> None:
    agent = load_agent("tests.support.langgraph_agents:graph")
    assert isinstance(agent, LangGraphAgent)


async def test_serve_agent_module_graph(spawn_server: Callable[..., ServerProcess]) -> None:
    server = await anyio.to_thread.run_sync(
        lambda: spawn_server("--agent", "tests.support.langgraph_agents:graph")
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(15):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Paris?"))
    kinds = [e.event for e in events]
    assert kinds[0] == "run" and kinds[-1] == "done" and data(events[-1])["status"] == "completed"
    assert "tool_start" in kinds and "tool_end" in kinds and "custom" in kinds


async def test_a_graph_running_another_graph_streams_the_inner_tokens_once(
    serve: StartServer,
) -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    model = ScriptedChatModel(replies=replies())
    builder = StateGraph(MessagesState)
    builder.add_node("worker", react_graph(model, [get_weather]))
    builder.add_edge(START, "worker")
    server = await serve(agent=LangGraphAgent(builder.compile()))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
    kinds = [e.event for e in events]
    # Streamed as the inner model produced them (not as whole messages when the node ended),
    # and the tool call the outer graph's update repeats is sent once.
    assert kinds == [
        "run",
        *["message_chunk"] * 3,
        "tool_start",
        "custom",
        "custom",
        "tool_end",
        *["message_chunk"] * 5,
        "done",
    ]
    assert data(events[-1])["usage"] == {"input_tokens": 20, "output_tokens": 8}
