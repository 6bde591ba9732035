"""The agent seam: an agent is a callable that, given an ``AgentContext``, returns an async
iterator of ``AgentEvent`` (``MessageChunk``, ``ToolStart``, ``ToolEnd``).

The run numbers, stores and fans out whatever the agent yields; it also counts steps (each new
assistant message and each tool call) against the recursion limit. Cancellation (Stop) arrives as
the usual cancellation exception at the agent's current ``await``: an agent must not swallow it.
Await tools inside the iterator, so a stop cancels them too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..events import AgentEvent


class Message(BaseModel):
    """One chat message: this run's input, or the thread's history."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "tool"]
    content: str = Field(description="The message text.")

    @field_validator("content")
    @classmethod
    def _unicode(cls, content: str) -> str:
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("content holds a lone surrogate (not valid Unicode)") from exc
        return content


@dataclass(frozen=True, slots=True)
class AgentContext:
    """Everything an agent gets for one run."""

    run_id: str
    thread_id: str
    messages: list[Message]
    """This run's input."""
    history: list[Message]
    """Earlier messages of the thread: each earlier run's input and the assistant's answer."""
    recursion_limit: int
    """Steps (assistant messages + tool calls) the run allows; the run enforces it too."""
    config: dict[str, Any] = field(default_factory=dict)
    """Agent-specific options from the request's ``config`` (e.g. ``{"demo": {...}}``)."""


class Agent(Protocol):
    def __call__(self, ctx: AgentContext, /) -> AsyncIterator[AgentEvent]: ...
