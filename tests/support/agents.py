"""Scripted agent steps for tests whose server runs in the test's own event loop."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import anyio

from streamctl.agents import AgentContext, ScriptedAgent, demo_agent
from streamctl.events import AgentEvent, MessageChunk, ToolEnd, ToolStart


def chunks(n: int, message_id: str = "m1", word: str = "w") -> list[MessageChunk]:
    """``n`` message chunks ``w0 w1 ...`` of one message."""
    return [MessageChunk(content=f"{word}{i} ", message_id=message_id) for i in range(n)]


def tool_call(call_id: str = "c1") -> list[ToolStart | ToolEnd]:
    return [
        ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id=call_id),
        ToolEnd(name="get_weather", output="Sunny, 22°C", call_id=call_id),
    ]


class Switch:
    """Hands each run to the scripted agent named by its last user message (see ``ask``)."""

    def __init__(self, **agents: ScriptedAgent) -> None:
        self.agents = agents

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self.agents[ctx.messages[-1].content](ctx)


class Paced:
    """The demo agent with these ``config.demo`` options (a request's own are ignored); the run is
    held after its event ``hold_at`` until ``release`` is set, so "mid-run" is a state to wait
    for, not a time."""

    name = "demo agent"  # what the page shows, as for the demo agent itself

    def __init__(self, **demo: Any) -> None:
        self.demo = demo
        self.hold_at: int | None = None
        self.held = anyio.Event()
        self.release = anyio.Event()

    def hold_again(self, at: int) -> None:
        """Release the run held now, to be held again after event ``at``."""
        release = self.release
        self.hold_at, self.held, self.release = at, anyio.Event(), anyio.Event()
        release.set()

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self._run(dataclasses.replace(ctx, config={**ctx.config, "demo": dict(self.demo)}))

    async def _run(self, ctx: AgentContext) -> AsyncGenerator[AgentEvent]:
        events = cast(AsyncGenerator[AgentEvent], demo_agent(ctx))
        try:
            count = 0
            async for event in events:
                yield event
                count += 1
                if count == self.hold_at:
                    self.held.set()
                    await self.release.wait()
        finally:
            await events.aclose()
