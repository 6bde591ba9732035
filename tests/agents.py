"""Agents loaded by child-process servers in tests (``--agent tests.agents:NAME``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from streamctl.agents import AgentContext
from streamctl.events import AgentEvent, MessageChunk


async def fat_chunks(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    """20,000 chunks of 1 KiB: even merged, more text than any socket buffers hold."""
    for i in range(20_000):
        yield MessageChunk(content=f"{i:06d}" + "x" * 1018, message_id="m")
        if i % 500 == 0:
            await anyio.lowlevel.checkpoint()
