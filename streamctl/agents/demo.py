"""The demo agent: a weather assistant that streams text word by word, calls a simulated
``get_weather`` tool, and streams an answer, paced like a real model.

Per-run knobs (demo only) come from the request's ``config.demo``; see ``DemoOptions``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from itertools import chain, cycle, islice

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidAgentConfig
from ..events import AgentEvent, MessageChunk, ToolEnd, ToolStart
from .base import AgentContext

_WEATHER = {
    "tokyo": "Sunny, 22°C",
    "london": "Light rain, 12°C",
    "paris": "Cloudy, 16°C",
    "new york": "Clear, 18°C",
}
_ANSWER = (
    "The forecast says it stays like this for the rest of the day, with a light breeze in "
    "the afternoon and a slightly cooler evening, so a thin jacket will do if you go out late."
).split()


class DemoOptions(BaseModel):
    """``config.demo`` of a request. Demo agent only."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(40, ge=0, le=1_000_000, description="Words in the streamed answer.")
    delay_ms: float = Field(30.0, ge=0, le=60_000, description="Pause before each word (ms).")
    tool: bool = Field(True, description="Whether to call the simulated get_weather tool.")
    tool_ms: float = Field(400.0, ge=0, le=600_000, description="How long the tool call takes.")
    fail_at: int | None = Field(
        None, ge=1, description="Raise an error before yielding the k-th event (1-based)."
    )


class DemoFailure(RuntimeError):
    """The failure a run asked for with ``config.demo.fail_at``."""


def demo_options(config: dict[str, object]) -> DemoOptions:
    try:
        return DemoOptions.model_validate(config.get("demo") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["config", "demo", *(str(p) for p in first["loc"])])
        raise InvalidAgentConfig(f"{where}: {first['msg']}") from exc


def _location(ctx: AgentContext) -> str:
    text = next((m.content for m in reversed(ctx.messages) if m.role == "user"), "")
    match = re.search(r"\bin ([A-Za-z][A-Za-z ]{0,40}?)[?.!,]*$", text.strip())
    return match.group(1).strip().title() if match else "Tokyo"


class DemoAgent:
    """Streams a weather answer for the city named in the last user message."""

    def validate_config(self, config: dict[str, object]) -> None:
        """Reject bad ``config.demo`` before the run starts (a 422, not a failed run)."""
        demo_options(config)

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return _demo(ctx)


demo_agent = DemoAgent()


async def _demo(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
    opts = demo_options(ctx.config)
    city = _location(ctx)
    asked_before = sum(1 for m in ctx.history if m.role == "user")
    delay = opts.delay_ms / 1000

    def events() -> Iterator[AgentEvent | float]:
        # The plan, as events and pauses, made lazily (a run may ask for a million words);
        # the loop below paces and yields it.
        first = uuid.uuid4().hex[:12]
        intro = f"Looking up the weather in {city}." if opts.tool else f"About {city}:"
        for word in intro.split():
            yield delay
            yield MessageChunk(content=word + " ", message_id=first)
        weather = _WEATHER.get(city.lower(), "Mild, 20°C")
        if opts.tool:
            call_id = "call_" + uuid.uuid4().hex[:12]
            yield ToolStart(name="get_weather", args={"location": city}, call_id=call_id)
            yield opts.tool_ms / 1000
            yield ToolEnd(name="get_weather", output=weather, call_id=call_id)
        answer = uuid.uuid4().hex[:12] if opts.tool else first
        condition, temperature = weather.split(", ")
        lead = f"{condition} and {temperature} in {city} right now."
        if asked_before:
            lead += f" (Question {asked_before + 1} in this conversation.)"
        for word in islice(chain(lead.split(), cycle(_ANSWER)), opts.tokens):
            yield delay
            yield MessageChunk(content=word + " ", message_id=answer)

    emitted = 0
    for item in events():
        if isinstance(item, float):
            if item > 0:
                await anyio.sleep(item)
            continue
        emitted += 1
        if opts.fail_at is not None and emitted == opts.fail_at:
            raise DemoFailure(f"demo failure requested at event {opts.fail_at}")
        yield item
