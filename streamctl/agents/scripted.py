"""A scripted agent for tests and benchmarks: it yields a fixed list of steps.

A step is an ``AgentEvent`` to yield, a ``Wait`` (block until an ``anyio.Event`` is set, so a test
can hold a run at a precise point), a ``Sleep``, or a ``Fail`` (raise). This is the one fake in the
test suite: everything behind the agent seam is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import anyio

from ..events import AgentEvent
from .base import AgentContext


@dataclass(frozen=True)
class Wait:
    event: anyio.Event


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Fail:
    error: Exception


Step = AgentEvent | Wait | Sleep | Fail


class ScriptedAgent:
    """Yields ``steps`` in order, for every run (``steps`` may be re-iterable or a callable)."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps = list(steps)
        self.runs: list[AgentContext] = []
        self.started = anyio.Event()
        """Set when the first run starts iterating."""

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        self.runs.append(ctx)
        self.started.set()
        for step in self.steps:
            if isinstance(step, Wait):
                await step.event.wait()
            elif isinstance(step, Sleep):
                await anyio.sleep(step.seconds)
            elif isinstance(step, Fail):
                raise step.error
            else:
                yield step
