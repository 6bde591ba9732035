"""Plain Python agents: a generator function ``fn(ctx)`` that yields text or events.

    async def agent(ctx: AgentContext):
        yield "Hello, "
        yield "world."

Each ``str`` becomes a ``message_chunk``; consecutive strings form one message (a tool call in
between starts a new one). Anything else it yields must be an ``AgentEvent``.

An async generator runs in the run's task: Stop cancels it at its current ``await``. A sync
generator runs in a worker thread, one item at a time: Stop cannot interrupt Python code in a
thread, so it takes effect at the generator's next ``yield``, where the generator is closed
(``GeneratorExit``) in a worker thread; no thread goes on running it after its run has ended.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import anyio.to_thread

from ..events import (
    AgentEvent,
    Custom,
    Interrupt,
    MessageChunk,
    ReasoningChunk,
    ToolEnd,
    ToolStart,
    Usage,
)
from .base import AgentContext

_EVENTS = (MessageChunk, ReasoningChunk, ToolStart, ToolEnd, Custom, Interrupt, Usage)
_END = object()


def is_generator_function(obj: object) -> bool:
    """Whether ``obj`` is a (sync or async) generator function, so ``GeneratorAgent`` fits it."""
    return inspect.isasyncgenfunction(obj) or inspect.isgeneratorfunction(obj)


class GeneratorAgent:
    """An agent made of ``fn(ctx)``, returning an async or a sync iterator of ``str`` or events."""

    def __init__(self, fn: Callable[[AgentContext], Any]) -> None:
        self.fn = fn

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        made = self.fn(ctx)
        if hasattr(made, "__anext__"):
            return _from_async(made)
        if isinstance(made, Iterator):
            return _from_sync(made)
        raise TypeError(
            f"agent {getattr(self.fn, '__name__', self.fn)!r} returned {type(made).__name__};"
            " expected a generator (sync or async)"
        )


class _Text:
    """Turns the items of one run into events: strings become chunks of the current message."""

    def __init__(self) -> None:
        self.message_id: str | None = None

    def event(self, item: object) -> AgentEvent:
        if isinstance(item, str):
            if self.message_id is None:
                self.message_id = uuid.uuid4().hex[:12]
            return MessageChunk(content=item, message_id=self.message_id)
        if isinstance(item, ToolStart | ToolEnd):
            self.message_id = None  # text after a tool call is the model's next message
        if isinstance(item, _EVENTS):
            return item
        raise TypeError(f"agent yielded {type(item).__name__}; expected str or an AgentEvent")


async def _from_async(items: Any) -> AsyncIterator[AgentEvent]:
    text = _Text()
    if hasattr(items, "aclose"):
        async with aclosing(items):
            async for item in items:
                yield text.event(item)
    else:
        async for item in items:
            yield text.event(item)


async def _from_sync(items: Iterator[Any]) -> AsyncIterator[AgentEvent]:
    text = _Text()
    try:
        while True:
            # Not abandoned on cancellation: a stopped run waits here until the generator
            # reaches its next yield, so it is never left running in a thread behind our back.
            item = await anyio.to_thread.run_sync(next, items, _END)
            if item is _END:
                return
            yield text.event(item)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            # GeneratorExit at its yield, so its `finally` and `with` blocks run; in a thread,
            # since that clean-up may block too. Shielded: the run is being cancelled.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)
