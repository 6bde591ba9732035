"""The events of a run, and their one-time encoding into SSE frames.

An agent yields ``MessageChunk``, ``ReasoningChunk``, ``ToolStart``, ``ToolEnd``, ``Custom`` and
``Interrupt`` (and ``Usage``, which the run adds up into ``done`` and never sends); the run itself
adds ``RunStarted`` first, and ``ErrorEvent`` / ``Done`` last. Each event is encoded exactly once,
when it is appended: its JSON payload (stored in SQLite) and its SSE frame (sent to every
subscriber) are bytes shared by everyone, so live bytes and replayed bytes are the same bytes
(docs/architecture.md, invariant 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

TERMINAL_STATUSES = ("completed", "cancelled", "failed", "timed_out", "interrupted")
TerminalStatus = Literal["completed", "cancelled", "failed", "timed_out", "interrupted"]
RunStatus = Literal[
    "queued", "running", "completed", "cancelled", "failed", "timed_out", "interrupted"
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    """The discriminator: each event narrows it to its own literal name."""

    def payload(self) -> dict[str, Any]:
        """The event's ``data`` on the wire: every field but the ``type`` discriminator."""
        data = dict(self.__dict__)
        del data["type"]
        return data


class RunStarted(_Event):
    """First event of every run (status ``running``, or ``queued`` when it waits for the thread's
    active run; then a second ``run`` event with status ``running`` when it starts)."""

    type: Literal["run"] = "run"
    run_id: str
    thread_id: str
    status: RunStatus = "running"


class MessageChunk(_Event):
    """A piece of the assistant's text; chunks with one ``message_id`` form one message."""

    type: Literal["message_chunk"] = "message_chunk"
    role: Literal["assistant"] = "assistant"
    content: str
    message_id: str


class ToolStart(_Event):
    """The agent started a tool call."""

    type: Literal["tool_start"] = "tool_start"
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    call_id: str


class ToolEnd(_Event):
    """A tool call returned; ``call_id`` matches its ``tool_start``."""

    type: Literal["tool_end"] = "tool_end"
    name: str
    output: Any = None
    call_id: str


class ReasoningChunk(_Event):
    """A piece of the model's reasoning, where a model streams it (shown apart from the answer)."""

    type: Literal["reasoning_chunk"] = "reasoning_chunk"
    content: str
    message_id: str
    """The message this reasoning belongs to (the same id as its ``message_chunk``s, if any)."""


class Custom(_Event):
    """Anything else an agent wants its clients to see (progress, a plot's data, a citation)."""

    type: Literal["custom"] = "custom"
    name: str
    data: Any = None
    """Any JSON value."""


class Interrupt(_Event):
    """The agent paused for input (LangGraph's ``interrupt()``); the run ends after it. The next
    run on the thread answers with ``config: {"resume": <answer>}``."""

    type: Literal["interrupt"] = "interrupt"
    value: Any = None
    """What the agent asks (any JSON value). Not called ``payload``: that is a method here."""
    interrupt_id: str | None = None


class TokenUsage(TypedDict):
    """Tokens the model reported for the whole run (all its model calls added up)."""

    input_tokens: int
    output_tokens: int


class Usage(_Event):
    """Yielded by an agent when its model reports token usage (once per model call, or more).

    Not an event of the stream: the run adds every ``Usage`` up and sends the totals in ``done``.
    """

    type: Literal["usage"] = "usage"
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)

    def add_to(self, totals: dict[str, int]) -> None:
        totals["input_tokens"] = totals.get("input_tokens", 0) + self.input_tokens
        totals["output_tokens"] = totals.get("output_tokens", 0) + self.output_tokens


class ErrorEvent(_Event):
    """The run failed; always followed by ``done`` with status ``failed`` (or ``timed_out``)."""

    type: Literal["error"] = "error"
    code: str
    message: str


class Done(_Event):
    """Last event of every run, exactly once. After it the run's streams close."""

    type: Literal["done"] = "done"
    run_id: str
    thread_id: str
    status: TerminalStatus
    reason: str
    tokens: int = 0
    """Number of ``message_chunk`` events of the run (chunks, not model tokens)."""
    usage: TokenUsage | None = None
    """Model tokens, when the agent's model reported them (see ``Usage``); else null."""


AgentEvent = MessageChunk | ReasoningChunk | ToolStart | ToolEnd | Custom | Interrupt | Usage
"""What an agent may yield. The run owns ``run``, ``error`` and ``done``."""

Event = Annotated[
    RunStarted
    | MessageChunk
    | ReasoningChunk
    | ToolStart
    | ToolEnd
    | Custom
    | Interrupt
    | ErrorEvent
    | Done,
    Field(discriminator="type"),
]
event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of every event (``type`` is the discriminator), for generating typed clients."""
    return event_adapter.json_schema()


_NAMES = {name: name.encode("ascii") for name in ("run", "message_chunk", "reasoning_chunk",
                                                  "tool_start", "tool_end", "custom", "interrupt",
                                                  "error", "done")}  # fmt: skip


@dataclass(slots=True)
class Frame:
    """One committed-or-about-to-be-committed event of a run, encoded once.

    A frame holds its bytes once, as the SSE block; ``data`` is cut from it when asked for (the
    store's row, a protocol's translation). A run's in-memory tail is frames, so their size is
    the memory of a live run: about 200 bytes for a token.

    Never changed once made (shared by the store, the log and every stream), though not
    ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``, which made
    the frame's creation 0.87 µs instead of 0.21, on every event.
    """

    seq: int
    type: str
    created_at: float
    sse: bytes
    """The complete SSE block: ``id``, ``event``, ``data`` and the blank line."""

    @classmethod
    def build(cls, seq: int, type: str, data: bytes, created_at: float) -> Frame:
        # orjson escapes every control character, so `data` is one line: neither user text nor
        # tool output can start a new SSE field or event. (Keeping only the block also drops
        # orjson's own bytes object, whose buffer stays over-allocated: 4 KiB for a token.)
        name = _NAMES.get(type) or type.encode("ascii")
        return cls(seq, type, created_at, b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name, data))

    @property
    def data(self) -> bytes:
        """The JSON payload, as stored in the ``events`` table (a copy cut from ``sse``)."""
        sse = self.sse
        return sse[sse.index(b"\ndata: ") + 7 : -2]

    @property
    def data_size(self) -> int:
        """``len(self.data)``, without cutting it."""
        sse = self.sse
        return len(sse) - sse.index(b"\ndata: ") - 9

    @classmethod
    def encode(cls, seq: int, event: _Event, created_at: float) -> Frame:
        type = event.type  # `build`, inline: this runs for every event a run emits
        name = _NAMES.get(type) or type.encode("ascii")
        data = orjson.dumps(event.payload())
        return cls(seq, type, created_at, b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name, data))

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "data": orjson.loads(self.data)}
