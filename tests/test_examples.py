"""Each example under ``examples/`` serves through a real server, as docs/agents.md says."""

from __future__ import annotations

import sys

import anyio
import pytest

from streamctl.agents import load_agent
from streamctl.agents.openai import ChatAgent

from .conftest import StartServer, read_sse
from .fake_openai import FakeOpenAI, Turn, start_fake
from .test_limits import ask, data

pytestmark = pytest.mark.anyio


async def test_the_generator_example(serve: StartServer) -> None:
    server = await serve(agent=load_agent("examples.generator_agent:agent"))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
    kinds = [e.event for e in events]
    assert kinds[:4] == ["run", "tool_start", "tool_end", "custom"]
    assert kinds[-1] == "done" and data(events[-1])["status"] == "completed"
    assert "".join(data(e)["content"] for e in events if e.event == "message_chunk").startswith(
        "You asked: Tokyo?"
    )


async def test_the_langgraph_example(serve: StartServer) -> None:
    server = await serve(agent=load_agent("examples.langgraph_agent:graph"))
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Tokyo?"))
    kinds = [e.event for e in events]
    assert kinds[:4] == ["run", "custom", "custom", "custom"]
    assert kinds[-1] == "done" and "message_chunk" in kinds


async def test_the_openai_example(serve: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOpenAI(
        [Turn(tool_calls=[("get_weather", '{"city": "Oslo"}')]), Turn(text=["Sunny ", "in Oslo."])]
    )
    async with anyio.create_task_group() as tg:
        upstream = await start_fake(tg, fake)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("STREAMCTL_MODEL", "example-model")
        sys.modules.pop("examples.openai_agent", None)
        agent = load_agent("examples.openai_agent:agent")
        assert isinstance(agent, ChatAgent)
        try:
            server = await serve(agent=agent)
            async with server.client() as client:
                with anyio.fail_after(10):
                    _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Oslo?"))
            await server.stop()
        finally:
            await agent.client.close()
            sys.modules.pop("examples.openai_agent", None)
            upstream.server.should_exit = True
    tool_end = next(data(e) for e in events if e.event == "tool_end")
    assert tool_end["output"] == "Sunny, 22°C in Oslo"
    assert fake.requests[0]["model"] == "example-model"
    assert data(events[-1])["status"] == "completed"
