"""A deadline-paced agent for the benchmarks: word k is due at t0 + k x ``delay_ms``.

A model's tokens arrive on the model's clock: an agent that sleeps a fixed delay *after* each
event has a period of delay + whatever the server did meanwhile, so at high fan-out it slows
down by itself and hides how late the server delivers. This one never drifts: late, it emits
at once what is due. The streamctl servers of the scale measurements run it
(``STREAMCTL_AGENT=benchmarks.paced_agent:paced_agent``; it reads the demo's ``config.demo``:
``tokens`` and ``delay_ms``), and the baseline paces its generators the same way
(``baseline.py``), so both are asked for the same schedule.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from benchmarks.pacing import deadlines, held, words
from streamctl.agents.base import AgentContext
from streamctl.agents.demo import demo_options
from streamctl.events import AgentEvent, MessageChunk


class PacedAgent:
    """The demo's ``config.demo`` (``tokens``, ``delay_ms``), without its tool, deadline-paced;
    ``config.paced.start_file``: its first word waits for that file (``pacing.held``)."""

    def validate_config(self, config: dict[str, object]) -> None:
        demo_options(config)

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return _paced(ctx)


async def _paced(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    opts = demo_options(ctx.config)
    message_id = uuid.uuid4().hex[:12]
    source = words(opts.tokens)
    await held(ctx.config)
    async for _ in deadlines(opts.tokens + 2, opts.delay_ms / 1000):
        yield MessageChunk(content=next(source) + " ", message_id=message_id)


paced_agent = PacedAgent()
