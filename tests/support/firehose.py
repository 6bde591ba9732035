"""Agents, sinks and checks shared by the firehose tests (test_bounded, test_stop_backlog): an
agent that emits as fast as it can, a sink that records commit order, a supervisor on a store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson

from streamctl.agents import Agent, AgentContext
from streamctl.events import AgentEvent, Frame, MessageChunk
from streamctl.inputs import RunCreate
from streamctl.runs import Run
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

USER = "user-1"


def request(content: str = "hi") -> RunCreate:
    return RunCreate.model_validate({"input": {"messages": [{"role": "user", "content": content}]}})


@asynccontextmanager
async def supervisor(
    db_path: Path, agent: Agent, store: Store | None = None, **settings: Any
) -> AsyncIterator[Supervisor]:
    async with (
        store if store is not None else Store(db_path) as opened,
        Supervisor(opened, agent, Settings.from_env({}, db=db_path, **settings)) as sup,
    ):
        yield sup


class Firehose:
    """An agent that yields as fast as it can and never awaits: ``count`` chunks of ``size``
    characters (``None``: until stopped). A checkpoint every 4096 chunks at most, like a busy
    generator in a real framework."""

    def __init__(self, count: int | None, size: int = 8, go: anyio.Event | None = None) -> None:
        self.count = count
        self.size = size
        self.go = go
        self.yielded = 0

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self._yield()

    async def _yield(self) -> AsyncIterator[AgentEvent]:
        pad = "x" * max(0, self.size - 7)
        if self.go is not None:
            await self.go.wait()
        while self.count is None or self.yielded < self.count:
            yield MessageChunk(content=f"{self.yielded:06d}{pad} ", message_id="m")
            self.yielded += 1


class Quick:
    """A short, ordinary run: a few chunks, each after a checkpoint."""

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return self._yield()

    async def _yield(self) -> AsyncIterator[AgentEvent]:
        for i in range(5):
            await anyio.lowlevel.checkpoint()
            yield MessageChunk(content=f"q{i} ", message_id="q")


class Both:
    """``Firehose`` for a request saying "firehose", ``Quick`` for any other."""

    def __init__(self, firehose: Firehose) -> None:
        self.firehose = firehose

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        if ctx.messages[-1].content == "firehose":
            return self.firehose(ctx)
        return Quick()(ctx)


async def stored(sup: Supervisor, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    frames = await sup.store.read_frames(run_id, 0)
    return [(f.seq, f.type, orjson.loads(f.data)) for f in frames]


def assert_dense_with_one_done(log: list[tuple[int, str, dict[str, Any]]], status: str) -> None:
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
    assert [t for _, t, _ in log].count("done") == 1
    assert log[-1][1] == "done" and log[-1][2]["status"] == status


async def until_backpressure(sup: Supervisor, run: Run) -> None:
    """Until the run has waited at least once for the store (it is a firehose by then)."""
    with anyio.fail_after(30):
        while sup.store.stats.backpressure_waits == 0:
            await run.log.changed.wait()


def chunk_frame(seq: int, content: str = "x") -> tuple[Frame, MessageChunk]:
    event = MessageChunk(content=content, message_id="m")
    return Frame.encode(seq, event, 0.0), event


class Order:
    """A sink recording the order in which the events of every run are committed."""

    def __init__(self, committed: list[tuple[str, int]], run_id: str) -> None:
        self.log, self.run_id = committed, run_id
        self.publishes = 0

    def committed(self, frame: Frame, event: object) -> None:
        self.log.append((self.run_id, frame.seq))

    def publish(self) -> None:
        self.publishes += 1
