"""Run an asyncio-only framework's stream in a task of its own, so that Stop really stops it.

LangGraph and 10xGraph run parts of a graph (nodes, tools) in asyncio tasks they create. Iterating
their stream directly in the run's task and cancelling that task leaves those tasks running
(orphaned): the framework awaits them through a queue, and nothing cancels them when its
consumer goes away. So the stream runs in a task of its own, relayed to the run through a bounded
queue; Stop cancels that task and waits for it. With ``cancel_spawned``, every task created
inside it (at any depth: a task inherits its creator's context, where a marker is set) is
cancelled and awaited too, for frameworks that do not cancel their own (10xGraph's tool tasks).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

from ..events import AgentEvent

__all__ = ["InTask"]

_QUEUE = 256
"""Stream items buffered between the graph's task and the run: a slow run holds the graph back."""

_END = object()

_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "streamctl_in_task", default=None
)
"""Set in each relay task: the tasks it creates, and theirs, carry it in their context."""

_WAIT = 10.0
"""Seconds ``aclose`` waits for the cancelled tasks (a tool that ignores cancellation)."""


class InTask:
    """An async iterator run in an asyncio task of its own, its items relayed through a bounded
    queue. ``aclose`` cancels the task (and, with ``cancel_spawned``, the tasks it created) and
    waits until they have ended.

    Not an anyio task group: the group would have to stay open across the items handed to the run
    (each a ``yield`` out of the group), which breaks structured cancellation. The frameworks are
    asyncio-only, so plain tasks, always cancelled and awaited in ``aclose``, are what fits.
    """

    def __init__(self, source: AsyncIterator[AgentEvent], *, cancel_spawned: bool = False) -> None:
        if cancel_spawned and sys.version_info < (3, 12):  # pragma: no cover - 3.12 only
            raise RuntimeError("cancel_spawned needs Python 3.12 (Task.get_context)")
        self._source = source
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._marker = object() if cancel_spawned else None
        self._ended = False
        """The stream ended by itself (its end or its exception reached the run)."""

    def __aiter__(self) -> InTask:
        return self

    async def __anext__(self) -> AgentEvent:
        if self._task is None:
            context = contextvars.copy_context()
            context.run(_OWNER.set, self._marker)
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._pump(), context=context)
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item  # type: ignore[no-any-return]

    async def _pump(self) -> None:
        try:
            async for item in self._source:
                await self._queue.put(item)
        except Exception as exc:  # handed to the run, whose boundary turns it into `error`
            await self._queue.put(exc)
            return
        await self._queue.put(_END)

    def _spawned(self) -> set[asyncio.Task[Any]]:
        """The unfinished tasks created inside the relay task (at any depth)."""
        if self._marker is None:
            return set()
        return {
            task
            for task in asyncio.all_tasks()
            if not task.done() and task.get_context().get(_OWNER) is self._marker  # type: ignore[attr-defined]
        }

    async def aclose(self) -> None:
        task = self._task
        if task is None:
            return
        # A stream that ended by itself may leave work of the framework's own behind (a
        # checkpoint being written): only a stream cut short has its spawned tasks cancelled.
        cut = not self._ended
        task.cancel()
        # Shielded: this runs when the run is being cancelled, and must see the graph's tasks end
        # (a tool that ignores cancellation still gets a bounded wait, not for ever).
        with anyio.move_on_after(_WAIT, shield=True):
            await asyncio.wait({task})
            spawned = self._spawned() if cut else set()
            for child in spawned:
                child.cancel()
            if spawned:
                await asyncio.wait(spawned)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error after the run stopped is not reported twice
