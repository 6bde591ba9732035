"""Agents for servers that tests start as child processes: the child imports this module by its
path, from the repository root (``--agent tests.support.child_agents:NAME``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from streamctl.agents import AgentContext, ScriptedAgent, demo_agent
from streamctl.events import AgentEvent, MessageChunk, ToolEnd, ToolStart


async def fat_chunks(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    """20,000 chunks of 1 KiB: even merged, more text than any socket buffers hold."""
    for i in range(20_000):
        yield MessageChunk(content=f"{i:06d}" + "x" * 1018, message_id="m")
        if i % 500 == 0:
            await anyio.lowlevel.checkpoint()


class Instant(ScriptedAgent):
    """A scripted agent that answers at once, with one tool call, so every stream ends by itself."""

    def __init__(self) -> None:
        super().__init__(
            [
                MessageChunk(content="Looking it up. ", message_id="m1"),
                ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id="c1"),
                ToolEnd(name="get_weather", output="Sunny, 22°C", call_id="c1"),
                MessageChunk(content="Sunny.", message_id="m2"),
            ]
        )


class Gated:
    """The demo agent; but a run with ``config: {"gate": PATH}`` answers only once the file
    ``PATH`` exists, so a test decides when it ends, however slow the machine is."""

    def validate_config(self, config: dict[str, object]) -> None:
        if "gate" not in config:
            demo_agent.validate_config(config)

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        gate = ctx.config.get("gate")
        return demo_agent(ctx) if gate is None else self._gated(anyio.Path(str(gate)))

    @staticmethod
    async def _gated(gate: anyio.Path) -> AsyncIterator[AgentEvent]:
        yield MessageChunk(content="Waiting. ", message_id="m1")
        # The gate is another process's file: there is no event to wait on, so poll it.
        while not await gate.exists():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        yield MessageChunk(content="Released.", message_id="m1")


async def endless(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    """Starts its answer, then never ends it: only a stop (or a drain) ends the run."""
    yield MessageChunk(content="Looking up the weather. ", message_id="m1")
    await anyio.sleep_forever()
