"""The JSON bodies the HTTP API answers with (docs/api.md), as pydantic models.

They are the routes' ``response_model``s, so ``/openapi.json`` documents real shapes. The domain
code builds plain dicts (``runs.run_json``, the supervisor's pages and threads); FastAPI checks
them against these models and serialises them. Two rules keep the wire exactly as it was:

- every model allows extra keys, so a key the model does not name is passed on, never dropped;
- routes serialise with ``response_model_exclude_unset``, so a key the domain leaves out (a
  ``stream_token`` outside ``POST /v1/runs``, ``status`` on a thread's user message) stays out
  instead of appearing as ``null``.

Timestamps stay strings (ISO 8601, as ``runs.iso`` writes them): a ``datetime`` field would
re-serialise them in another spelling.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..events import RunStatus


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class OutputMessage(_Body):
    message_id: str
    role: Literal["assistant"] = "assistant"
    content: str = ""
    seq: int = Field(0, description="Seq of the message's first chunk, to order text and tools.")


class ToolCall(_Body):
    call_id: str
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    output: Any = Field(None, description="The tool's result; null until its tool_end.")
    seq: int = Field(0, description="Seq of the call's tool_start.")
    end_seq: int | None = Field(None, description="Seq of the call's tool_end; null until then.")


class Reasoning(_Body):
    message_id: str
    content: str = ""
    seq: int = Field(0, description="Seq of the reasoning's first chunk.")


class Interrupt(_Body):
    value: Any = None
    interrupt_id: str | None = None


class Output(_Body):
    """What the run has produced up to the snapshot's ``last_seq``."""

    text: str = ""
    messages: list[OutputMessage] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    reasoning: list[Reasoning] = Field(
        default_factory=list, description="Reasoning the model streamed, per message."
    )
    interrupt: Interrupt | None = Field(
        None, description="The run paused for input (LangGraph `interrupt()`): what it asks."
    )


class RunError(_Body):
    code: str
    message: str


class Usage(_Body):
    tokens: int = Field(description="Message chunks the run produced (not model tokens).")
    input_tokens: int | None = Field(None, description="Model input tokens, when reported.")
    output_tokens: int | None = Field(None, description="Model output tokens, when reported.")


class Run(_Body):
    """A run as of its ``last_seq``: render it, then stream ``?after=<last_seq>``."""

    run_id: str
    thread_id: str
    status: RunStatus
    reason: str | None = Field(description="Why the run ended, once it has.")
    last_seq: int = Field(description="The last committed event this snapshot includes.")
    output: Output
    error: RunError | None
    created_at: str | None = Field(description="ISO 8601, UTC.")
    started_at: str | None
    ended_at: str | None
    usage: Usage
    events_purged_at: str | None = Field(
        description="When retention deleted the run's events (its snapshot remains)."
    )
    stream_token: str | None = Field(
        None,
        description="A read-only token for this run's stream and snapshot (`?token=`): in the"
        " answer of POST /v1/runs (null with auth off) and of GET of an active run (auth on).",
    )


class Stopped(Run):
    """A stop's answer: the run, and whether its agent is still stopping (then ``202``)."""

    stopping: bool


class RunList(_Body):
    runs: list[Run]


class EventRecord(_Body):
    seq: int
    type: str = Field(description="The SSE `event:` name (docs/events.md).")
    data: dict[str, Any] = Field(description="Exactly the SSE `data:` of the event.")


class EventsPage(_Body):
    events: list[EventRecord]
    last_seq: int
    status: RunStatus


class ThreadToolCall(_Body):
    id: str = Field(description="The call's id, which its tool message names.")
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class ThreadMessage(_Body):
    """One message of the thread, in order: a run's input messages, then what the run produced,
    one message each (an assistant message per model message, with the ``tool_calls`` it made;
    a ``tool`` message per call's result). The run's last message also carries the run's
    ``status`` and whole ``output``. This is the history the thread's next run receives."""

    role: Literal["user", "assistant", "system", "tool"]
    content: str
    run_id: str
    tool_calls: list[ThreadToolCall] | None = Field(
        None, description="Assistant messages that called tools only."
    )
    tool_call_id: str | None = Field(None, description="Tool messages only: the call answered.")
    name: str | None = Field(None, description="Tool messages only: the tool's name.")
    status: RunStatus | None = Field(None, description="The run's last message only.")
    output: Output | None = Field(None, description="The run's last message only.")


class Thread(_Body):
    thread_id: str
    created_at: str | None
    messages: list[ThreadMessage]
    active_run: Run | None
    last_run: Run | None
    has_more: bool = Field(False, description="Older runs than this page's remain.")
    next_before: str | None = Field(
        None, description="With `has_more`: pass as `before=` for the page of older runs."
    )


class Health(_Body):
    status: Literal["ok"]


class Ready(_Body):
    status: Literal["ready"]
    active_runs: int | None = None
    """Only for the metrics token or an admin while auth is on (docs/security.md)."""


class ErrorDetail(_Body):
    loc: list[str | int]
    msg: str
    type: str | None


class ErrorInfo(_Body):
    code: str = Field(description="Machine-readable; see the error codes in docs/api.md.")
    message: str
    details: list[ErrorDetail] | None = Field(
        None, description="Validation errors (`invalid_request`, `invalid_json`) only."
    )


class Error(_Body):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorInfo
