"""What clients may send: run-creation bodies (streamctl's and AgentFlow's) and stop bodies.

Validated with pydantic at the edge; the supervisor receives a ``RunCreate`` and trusts it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .agents.base import Message
from .shaping import Granularity

ThreadId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"),
    Field(description="Letters, digits and . _ @ -, at most 128 characters."),
]
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


MAX_CONFIG_DEPTH = 32


_INT64 = 2**63


def check_json(value: Any, level: int = 0) -> None:
    """Refuse what could not be stored as JSON: nesting deeper than ``MAX_CONFIG_DEPTH``,
    integers beyond 64 bits, and text with lone surrogates (not UTF-8). ``ValueError`` says which.
    """
    if level > MAX_CONFIG_DEPTH:
        raise ValueError(f"config is nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json(key, level + 1)
            check_json(item, level + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, level + 1)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise ValueError("config holds an integer beyond 64 bits")
    elif isinstance(value, str):
        check_text(value)


def check_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text holds a lone surrogate (not valid Unicode)") from exc
    return text


class RunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _storable(self) -> RunInput:
        # A client replaying a conversation may send tool calls: stored as JSON, like config.
        for message in self.messages:
            calls = [call.model_dump() for call in message.tool_calls]
            try:
                check_json([message.tool_call_id, message.name, calls])
            except ValueError as exc:
                raise ValueError(f"a message's tool call: {exc}") from exc
        return self


class RunConfig(BaseModel):
    """Per-run options. Unknown keys are passed to the agent (e.g. ``demo`` for the demo agent)."""

    model_config = ConfigDict(extra="allow")

    recursion_limit: int | None = Field(
        None, ge=1, le=10_000, description="Lower the server's cap on agent steps; never raises it."
    )

    @model_validator(mode="after")
    def _storable(self) -> RunConfig:
        check_json(self.model_extra or {})
        return self


class RunCreate(BaseModel):
    """Body of ``POST /v1/runs`` and ``POST /v1/runs/stream``."""

    model_config = ConfigDict(extra="forbid")

    thread_id: ThreadId | None = Field(None, description="A new thread when absent.")
    input: RunInput
    config: RunConfig = Field(default_factory=RunConfig)
    multitask: Literal["reject", "interrupt", "enqueue"] = Field(
        "reject", description="What to do when the thread already has an active run."
    )
    on_disconnect: Literal["continue", "cancel"] = Field(
        "continue", description="Whether the streaming client's disconnect cancels the run."
    )
    granularity: Granularity = Field(
        "low",
        description="low: every event as committed; batched: a message's chunks merged per"
        " batch_ms window; message: text as whole messages.",
    )

    token: str | None = Field(
        None, description="A bearer token, for clients that cannot set headers. Never stored."
    )

    def agent_config(self) -> dict[str, Any]:
        return dict(self.config.model_extra or {})


class _TextBlock(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class GraphMessage(BaseModel):
    """A message as AgentFlow's API takes it: content is a string or a list of content blocks."""

    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant", "system", "tool"]
    content: str | list[_TextBlock]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for block in self.content:
            if block.type != "text" or block.text is None:
                raise ValueError(f"content blocks of type {block.type!r} are not supported")
            parts.append(block.text)
        return "".join(parts)


class GraphConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    thread_id: ThreadId | None = None
    recursion_limit: int | None = Field(None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _storable(self) -> GraphConfig:
        check_json(self.model_extra or {})
        return self


class GraphStreamRequest(BaseModel):
    """Body of ``POST /v1/graph/stream``, in the shape of AgentFlow's ``agentflow api``.

    Fields of that API that streamctl has no use for (``stream_mode``, ``initial_state``, ...) are
    accepted and ignored, so existing clients work unchanged.
    """

    model_config = ConfigDict(extra="allow")

    messages: list[GraphMessage] = Field(min_length=1)
    config: GraphConfig = Field(default_factory=GraphConfig)
    response_granularity: Literal["low", "partial", "full"] = "low"

    @model_validator(mode="after")
    def _text_only(self) -> GraphStreamRequest:
        for message in self.messages:
            check_text(message.text())  # ValueError -> a 422 (an unsupported block, bad text)
        return self

    def to_run_create(self) -> RunCreate:
        extra = {k: v for k, v in (self.config.model_extra or {}).items()}
        return RunCreate(
            thread_id=self.config.thread_id,
            granularity=_AGENTFLOW_GRANULARITY[self.response_granularity],
            input=RunInput(
                messages=[Message(role=m.role, content=m.text()) for m in self.messages]
            ),
            config=RunConfig(recursion_limit=self.config.recursion_limit, **extra),
        )


_AGENTFLOW_GRANULARITY: dict[str, Granularity] = {
    "low": "low",
    "partial": "batched",
    "full": "message",
}


class StopTarget(BaseModel):
    """Body of ``POST /stop``: exactly one of ``run_id`` or ``thread_id``."""

    model_config = ConfigDict(extra="forbid")

    run_id: RunId | None = None
    thread_id: ThreadId | None = None
    token: str | None = Field(None, description="A bearer token, if not in the header.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StopTarget:
        if (self.run_id is None) == (self.thread_id is None):
            raise ValueError("give exactly one of run_id or thread_id")
        return self
