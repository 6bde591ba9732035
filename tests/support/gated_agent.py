"""An agent for servers started as child processes that the test paces through files
(``--agent tests.support.gated_agent:gated``): a run with ``config.gate = {"dir": D, "tokens": N}``
yields ``token1 ``, then waits until the file ``D/1`` exists before ``token2 ``, and so on.

The test creates ``D/k`` only once it has *received* token k, so a proxy that held events back
would deadlock the run instead of passing: delivery is proven by state, not by timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from streamctl.agents import AgentContext
from streamctl.events import AgentEvent, MessageChunk

_POLL = 0.01
"""Seconds between two looks at the gate (the agent has no other way to hear from the test)."""


async def gated(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    gate = ctx.config["gate"]
    folder, tokens = Path(gate["dir"]), int(gate["tokens"])
    for k in range(1, tokens + 1):
        yield MessageChunk(content=f"token{k} ", message_id="m1")
        if k < tokens:
            # The gate is opened by another process: no anyio.Event can reach across.
            while not (folder / str(k)).exists():  # noqa: ASYNC110
                await anyio.sleep(_POLL)
