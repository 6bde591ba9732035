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

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from ..events import AgentEvent


class MessageToolCall(BaseModel):
    """A tool call an assistant message made: its id, the tool's name, its arguments."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        max_length=256, description="The call's id; the tool message answering it names it."
    )
    name: str = Field(max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)


class Message(BaseModel):
    """One chat message: this run's input, or the thread's history.

    An assistant message may carry the ``tool_calls`` it made; a ``tool`` message answers one of
    them (``tool_call_id``, and the tool's ``name``). Fields left at their default are left out
    of the message's JSON, so a plain message stays ``{"role", "content"}``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "tool"]
    content: str = Field(description="The message text (a tool message: the tool's result).")
    tool_calls: list[MessageToolCall] = Field(
        default_factory=list, description="Assistant messages only: the tools it called."
    )
    tool_call_id: str | None = Field(
        None, max_length=256, description="Tool messages only: the call this result answers."
    )
    name: str | None = Field(None, max_length=256, description="Tool messages only: the tool.")

    @field_validator("content")
    @classmethod
    def _unicode(cls, content: str) -> str:
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("content holds a lone surrogate (not valid Unicode)") from exc
        return content

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.tool_call_id is not None or self.name is not None) and self.role != "tool":
            raise ValueError("only a tool message has tool_call_id and name")
        return self

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored inputs and the thread's JSON keep the shape they had before tool calls existed.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k in ("role", "content") or v not in (None, [])}

    @property
    def size(self) -> int:
        """Bytes the message holds (UTF-8 of its content and its calls' arguments)."""
        size = len(self.content.encode("utf-8", "surrogatepass"))
        for call in self.tool_calls:
            size += len(call.name) + len(orjson.dumps(call.args))
        return size


@dataclass(frozen=True, slots=True)
class AgentContext:
    """Everything an agent gets for one run."""

    run_id: str
    thread_id: str
    messages: list[Message]
    """This run's input."""
    history: list[Message]
    """Earlier messages of the thread, in order: each earlier run's input, then what the run
    produced: assistant messages (with the tool calls each made) and ``tool`` messages (each
    call's result), one message per model message (``streamctl.history``)."""
    recursion_limit: int
    """Steps (assistant messages + tool calls) the run allows; the run enforces it too."""
    config: dict[str, Any] = field(default_factory=dict)
    """Agent-specific options from the request's ``config`` (e.g. ``{"demo": {...}}``)."""


class Agent(Protocol):
    def __call__(self, ctx: AgentContext, /) -> AsyncIterator[AgentEvent]: ...
