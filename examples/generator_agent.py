"""A plain Python agent: a generator function. Serve it with

    streamctl serve --agent examples.generator_agent:agent

Each string it yields is streamed as a ``message_chunk``; events (tool calls, custom events) pass
through as they are. A sync ``def`` generator works too (it runs in a worker thread).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from streamctl.agents import AgentContext
from streamctl.events import AgentEvent, Custom, ToolEnd, ToolStart


async def agent(ctx: AgentContext) -> AsyncIterator[str | AgentEvent]:
    question = ctx.messages[-1].content
    yield ToolStart(name="search", args={"query": question}, call_id="call_1")
    await anyio.sleep(0.5)  # your tool here: Stop cancels it at this await
    yield ToolEnd(name="search", output=["result one", "result two"], call_id="call_1")
    yield Custom(name="sources", data=[{"title": "Result one", "url": "https://example.com"}])
    for word in f"You asked: {question} Here is what I found.".split():
        await anyio.sleep(0.05)
        yield word + " "
