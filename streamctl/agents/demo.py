"""The demo agent: a weather assistant that streams text word by word, calls a simulated
``get_weather`` tool, and streams an answer about the city asked, paced like a real model.

Per-run knobs (demo only) come from the request's ``config.demo``; see ``DemoOptions``. With the
defaults a run takes about 5 s, long enough for a person to press Stop mid-answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, cycle

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidAgentConfig
from ..events import AgentEvent, MessageChunk, ToolEnd, ToolStart
from .base import AgentContext


@dataclass(frozen=True)
class City:
    name: str
    weather: str  # "condition, temperature": the simulated tool's output
    fact: str


_CITIES = {
    c.name.lower(): c
    for c in (
        City("Tokyo", "Sunny, 22°C", "Tokyo's trains are so punctual that a minute late is news."),
        City("London", "Light rain, 12°C", "Londoners carry an umbrella whatever the sky says."),
        City("Paris", "Cloudy, 16°C", "Paris has more than four hundred parks and gardens."),
        City("New York", "Clear, 18°C", "New York's Central Park is larger than Monaco."),
        City("Berlin", "Windy, 14°C", "Berlin has more bridges than Venice."),
        City("Sydney", "Warm and sunny, 26°C", "Sydney's harbour is busy with ferries all day."),
        City("San Francisco", "Foggy, 15°C", "San Francisco's fog even has a name: Karl."),
        City("Rome", "Sunny, 24°C", "Rome has a fountain on almost every square."),
        City("Oslo", "Snow showers, -2°C", "Oslo is ringed by forest that the city protects."),
        City("Singapore", "Thunderstorms, 31°C", "Singapore's afternoon storms rarely last long."),
    )
}
# Matched longest first, so "New York" wins over a shorter name inside it.
_CITY_NAMES = re.compile(
    r"\b(" + "|".join(re.escape(n) for n in sorted(_CITIES, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# A place the table does not know: the capitalised words after "in", "about", "for" or "at".
_PLACE = re.compile(r"\b(?:in|about|for|at)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*){0,3})")
_FILLER = (
    "The forecast says it stays like this for the rest of the day.",
    "A light breeze picks up in the afternoon.",
    "The evening will be slightly cooler, so a thin jacket will do if you go out late.",
    "Tomorrow looks much the same, with a little more cloud in the morning.",
    "Humidity stays moderate and visibility is good.",
)
# One closing sentence of every length up to the longest sentence above: whatever number of
# words is left, the answer ends on a whole sentence with exactly ``tokens`` words.
_CLOSERS = {
    len(s.split()): s
    for s in (
        "Enjoy!",
        "Stay comfortable.",
        "That is all.",
        "Have a good day.",
        "Enjoy the rest of today.",
        "I hope this helps you plan.",
        "Ask me about another city any time.",
        "Let me know if you need anything else.",
        "Check again later, because the weather can change quickly.",
        "Check again later, because the weather can change quickly today.",
        "That is the whole forecast, and I hope it helps you.",
        "That is the whole forecast for now, and I hope it helps.",
        "That is the whole forecast for now, and I hope it helps you.",
        "That is the whole forecast for now, and I really hope it helps you.",
        "That is the whole forecast for now, and I really do hope it helps you.",
        "That is the whole forecast for now, and I really do hope that it helps you.",
    )
}


class DemoOptions(BaseModel):
    """``config.demo`` of a request. Demo agent only."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(40, ge=0, le=1_000_000, description="Words in the streamed answer.")
    delay_ms: float = Field(
        100.0, ge=0, le=60_000, description="Time per word (ms), kept on a schedule."
    )
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


def find_city(text: str) -> City | str | None:
    """The city ``text`` asks about: a known ``City``, else the name of an unknown place, else
    None (no place named)."""
    known = _CITY_NAMES.search(text)
    if known:
        return _CITIES[known.group(1).lower()]
    place = _PLACE.search(text)
    return place.group(1) if place else None


def answer_words(sentences: Iterable[str], tokens: int) -> Iterator[str]:
    """Exactly ``tokens`` words of ``sentences`` (then the filler, endlessly), ending on a whole
    sentence: where the next sentence does not fit, a closer of the remaining length ends it."""
    left = tokens
    for sentence in chain(sentences, cycle(_FILLER)):
        if left == 0:
            return
        words = sentence.split()
        if len(words) > left:
            if left not in _CLOSERS:
                continue  # a long sentence: the shorter ones after it fill the rest
            words = _CLOSERS[left].split()
        left -= len(words)
        yield from words


class Pacer:
    """Waits on a schedule: the k-th wait ends at t0 + the sum of the first k waits, t0 being the
    first call. Sleeping a fixed delay after each event would stretch every period by the work
    done with the event (the server's fan-out); a model's tokens come on its own clock."""

    def __init__(
        self,
        clock: Callable[[], float] = anyio.current_time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.deadline: float | None = None

    async def wait(self, seconds: float) -> None:
        if self.deadline is None:
            self.deadline = self.clock()
        self.deadline += seconds
        if seconds <= 0:
            return  # a zero-delay run never awaits here (the firehose benchmarks rely on it)
        late = self.clock() - self.deadline
        if late < 0:
            await self.sleep(-late)
        # Late (the loop was busy): no sleep, so the next words catch up with the schedule.


class DemoAgent:
    """Streams a weather answer for the city named in the last user message. ``clock`` and
    ``sleep`` pace it (tests pass a fake clock)."""

    name = "demo agent"

    def __init__(
        self,
        clock: Callable[[], float] = anyio.current_time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep

    def validate_config(self, config: dict[str, object]) -> None:
        """Reject bad ``config.demo`` before the run starts (a 422, not a failed run)."""
        demo_options(config)

    def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return _demo(ctx, Pacer(self.clock, self.sleep))


demo_agent = DemoAgent()


def _plan(ctx: AgentContext, opts: DemoOptions) -> Iterator[AgentEvent | float]:
    """The run as events and pauses, made lazily (a run may ask for a million words)."""
    question = next((m.content for m in reversed(ctx.messages) if m.role == "user"), "")
    city = find_city(question)
    name = city.name if isinstance(city, City) else city
    delay = opts.delay_ms / 1000
    first = uuid.uuid4().hex[:12]
    if name is None:
        intro = "About your question:"
    else:
        intro = f"Looking up the weather in {name}." if opts.tool else f"About {name}:"
    for word in intro.split():
        yield delay
        yield MessageChunk(content=word + " ", message_id=first)
    weather = city.weather if isinstance(city, City) else None
    answer = first
    if opts.tool and name is not None:
        call_id = "call_" + uuid.uuid4().hex[:12]
        yield ToolStart(name="get_weather", args={"location": name}, call_id=call_id)
        yield opts.tool_ms / 1000
        output = weather or f"No forecast for {name}"
        yield ToolEnd(name="get_weather", output=output, call_id=call_id)
        answer = uuid.uuid4().hex[:12]
    for word in answer_words(_lead(question, city, ctx), opts.tokens):
        yield delay
        yield MessageChunk(content=word + " ", message_id=answer)


def _lead(question: str, city: City | str | None, ctx: AgentContext) -> list[str]:
    """The answer's first sentences: about the city asked, or saying what was asked."""
    if isinstance(city, City):
        condition, temperature = city.weather.split(", ")
        lead = [f"{condition} and {temperature} in {city.name} right now.", city.fact]
    elif city is not None:
        known = ", ".join(c.name for c in _CITIES.values())
        lead = [
            f"I have no weather data for {city}, so I cannot say what it is like there.",
            f"I know these cities: {known}.",
        ]
    else:
        asked = " ".join(question.split()[:12]) or "nothing"
        lead = [
            f'You asked: "{asked}".',
            "I am a demo agent that knows the weather, so ask me about a city.",
        ]
    asked_before = sum(1 for m in ctx.history if m.role == "user")
    if asked_before:
        lead.insert(1, f"This is question {asked_before + 1} in this conversation.")
    return lead


async def _demo(ctx: AgentContext, pacer: Pacer) -> AsyncIterator[AgentEvent]:
    opts = demo_options(ctx.config)
    emitted = 0
    for item in _plan(ctx, opts):
        if isinstance(item, float):
            await pacer.wait(item)
            continue
        emitted += 1
        if opts.fail_at is not None and emitted == opts.fail_at:
            raise DemoFailure(f"demo failure requested at event {opts.fail_at}")
        yield item
