"""Plain Python agents (``streamctl.agents.generators``): generator functions yielding text or
events, async in the run's task and sync in a worker thread; and the new events (reasoning,
custom, interrupt, usage) through a real server."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from streamctl.agents import AgentContext, GeneratorAgent, load_agent
from streamctl.errors import AgentNotFound
from streamctl.events import (
    AgentEvent,
    Custom,
    Interrupt,
    ReasoningChunk,
    ToolEnd,
    ToolStart,
    Usage,
)
from streamctl.run_task import AGENT_ERROR_MESSAGE

from .conftest import StartServer, read_sse
from .test_limits import ask, data
from .test_stop import assert_one_done, stored_events

pytestmark = pytest.mark.anyio


async def chatty(ctx: AgentContext) -> AsyncIterator[str | AgentEvent]:
    yield ReasoningChunk(content="They want the weather.", message_id="r")
    yield "Let me "
    yield "look."
    yield Custom(name="progress", data={"step": 1})
    yield ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id="c1")
    yield Usage(input_tokens=10, output_tokens=4)
    yield ToolEnd(name="get_weather", output="Sunny", call_id="c1")
    yield "Sunny in "
    yield ctx.messages[-1].content
    yield Usage(input_tokens=20, output_tokens=3)
    yield Interrupt(value={"question": "Anything else?"})


async def test_an_async_generator_function_serves_text_and_events(serve: StartServer) -> None:
    server = await serve(agent=chatty)
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo"))
            run = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
    kinds = [e.event for e in events]
    assert kinds == [
        "run",
        "reasoning_chunk",
        "message_chunk",
        "message_chunk",
        "custom",
        "tool_start",
        "tool_end",
        "message_chunk",
        "message_chunk",
        "interrupt",
        "done",
    ]  # no `usage` event: it is added up into done
    chunks = [data(e) for e in events if e.event == "message_chunk"]
    assert chunks[0]["message_id"] == chunks[1]["message_id"]  # one message per stretch of text
    assert chunks[2]["message_id"] == chunks[3]["message_id"] != chunks[0]["message_id"]
    done = data(events[-1])
    assert done["status"] == "completed" and done["tokens"] == 4  # chunks, not model tokens
    assert done["usage"] == {"input_tokens": 30, "output_tokens": 7}
    assert run["usage"] == {"tokens": 4, "input_tokens": 30, "output_tokens": 7}
    output = run["output"]
    assert [m["content"] for m in output["messages"]] == ["Let me look.", "Sunny in Tokyo"]
    assert [r["content"] for r in output["reasoning"]] == ["They want the weather."]
    assert output["interrupt"] == {"value": {"question": "Anything else?"}, "interrupt_id": None}


async def test_a_run_without_model_usage_has_a_null_usage(serve: StartServer) -> None:
    async def plain(ctx: AgentContext) -> AsyncIterator[str]:
        yield "hi"

    server = await serve(agent=plain)
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("x"))
    assert data(events[-1])["usage"] is None and data(events[-1])["tokens"] == 1


async def test_a_sync_generator_runs_in_a_worker_thread(serve: StartServer) -> None:
    threads: list[int] = []

    def agent(ctx: AgentContext) -> Iterator[str | AgentEvent]:
        threads.append(threading.get_ident())
        yield "from "
        yield "a thread"
        yield Usage(input_tokens=1, output_tokens=2)

    server = await serve(agent=agent)
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("x"))
    assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "done"]
    assert threads and threads[0] != threading.get_ident()
    assert data(events[-1])["usage"] == {"input_tokens": 1, "output_tokens": 2}


class BlockingGenerator:
    """A sync generator that blocks in its thread between two yields until released."""

    def __init__(self) -> None:
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.closed_at_yield = threading.Event()
        self.advanced = False
        self.thread: threading.Thread | None = None

    def __call__(self, ctx: AgentContext) -> Iterator[str]:
        self.thread = threading.current_thread()
        yield "first "
        self.blocked.set()
        self.release.wait(30)
        try:
            yield "second "
        except GeneratorExit:
            self.closed_at_yield.set()
            raise
        self.advanced = True
        yield "never sent"


async def test_stop_of_a_sync_generator_closes_it_at_its_next_yield(serve: StartServer) -> None:
    agent = BlockingGenerator()
    server = await serve(agent=GeneratorAgent(agent), stop_timeout=0.3)
    try:
        async with server.client() as client:
            with anyio.fail_after(10):
                run_id = (await client.post("/v1/runs", json=ask("go"))).json()["run_id"]
                await anyio.to_thread.run_sync(agent.blocked.wait, 5)
                stop = await client.post(f"/v1/runs/{run_id}/stop")
                # The generator's thread cannot be interrupted: the run still runs.
                assert stop.status_code == 202 and stop.json()["stopping"] is True
                agent.release.set()
                _, streamed = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
                log = await stored_events(client, run_id)
    finally:
        agent.release.set()
    assert streamed[-1].event == "done" and data(streamed[-1])["status"] == "cancelled"
    assert agent.closed_at_yield.is_set() and not agent.advanced
    assert [e["type"] for e in log] == ["run", "message_chunk", "done"]
    assert assert_one_done(log) == "cancelled"
    # Closed in a worker thread that has returned: nothing runs the generator any more.
    assert agent.thread is not None and agent.thread is not threading.current_thread()


def test_load_agent_wraps_generator_functions_and_refuses_non_agents() -> None:
    module = types.ModuleType("h5_plain_agents")

    async def agen(ctx: AgentContext) -> AsyncIterator[str]:
        yield "x"

    def gen(ctx: AgentContext) -> Iterator[str]:
        yield "x"

    module.agen, module.gen, module.number = agen, gen, 42  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        assert isinstance(load_agent("h5_plain_agents:agen"), GeneratorAgent)
        assert isinstance(load_agent("h5_plain_agents:gen"), GeneratorAgent)
        with pytest.raises(AgentNotFound, match="not callable"):
            load_agent("h5_plain_agents:number")
        with pytest.raises(AgentNotFound, match="--model"):
            load_agent("openai")
    finally:
        del sys.modules[module.__name__]


async def test_a_generator_yielding_something_else_fails_its_run(
    serve: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def wrong(ctx: AgentContext) -> AsyncIterator[Any]:
        yield 42

    server = await serve(agent=wrong)
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("x"))
    assert [e.event for e in events] == ["run", "error", "done"]
    assert data(events[1])["message"] == AGENT_ERROR_MESSAGE
    assert "expected str or an AgentEvent" in caplog.text  # the detail: in the log only
    assert data(events[-1])["status"] == "failed"
