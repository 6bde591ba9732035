"""The demo agent on its own: it answers about the city asked, ends on a whole sentence with
exactly the words asked for, and keeps its pace on a schedule (t0 + k * delay) whatever the work
done between its events. Pacing is checked on a fake clock, never on wall time."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from streamctl.agents import AgentContext, Message
from streamctl.agents.demo import (
    _CLOSERS,
    _FILLER,
    DemoAgent,
    DemoFailure,
    Pacer,
    answer_words,
    find_city,
)
from streamctl.events import AgentEvent, MessageChunk, ToolEnd, ToolStart

pytestmark = pytest.mark.anyio

FAST = {"delay_ms": 0, "tool_ms": 0}


def context(question: str, history: tuple[str, ...] = (), **demo: Any) -> AgentContext:
    return AgentContext(
        run_id="r1",
        thread_id="t1",
        messages=[Message(role="user", content=question)],
        history=[Message(role="user", content=h) for h in history],
        recursion_limit=25,
        config={"demo": {**FAST, **demo}},
    )


async def run(ctx: AgentContext, agent: DemoAgent | None = None) -> list[AgentEvent]:
    return [event async for event in (agent or DemoAgent())(ctx)]


def text(events: list[AgentEvent]) -> str:
    return "".join(e.content for e in events if isinstance(e, MessageChunk))


@pytest.mark.parametrize(
    ("question", "city", "weather"),
    [
        ("What about New York?", "New York", "Clear, 18°C"),
        ("what is the weather in tokyo", "Tokyo", "Sunny, 22°C"),
        ("And in London, tomorrow?", "London", "Light rain, 12°C"),
        ("Is it foggy in San Francisco today?", "San Francisco", "Foggy, 15°C"),
    ],
)
async def test_the_city_asked_is_the_city_answered(question: str, city: str, weather: str) -> None:
    events = await run(context(question))
    start, end = [e for e in events if isinstance(e, ToolStart | ToolEnd)]
    assert isinstance(start, ToolStart) and start.args == {"location": city}
    assert isinstance(end, ToolEnd) and end.output == weather and end.call_id == start.call_id
    answer = text(events)
    assert answer.startswith(f"Looking up the weather in {city}. ")
    condition, temperature = weather.split(", ")
    assert f"{condition} and {temperature} in {city} right now." in answer
    assert "Tokyo" not in answer or city == "Tokyo"


async def test_an_unknown_place_gets_a_generic_answer_that_names_it() -> None:
    events = await run(context("What is the weather in Reykjavik?", tokens=30))
    answer = text(events)
    assert answer.startswith("Looking up the weather in Reykjavik. ")
    assert "I have no weather data for Reykjavik" in answer
    end = next(e for e in events if isinstance(e, ToolEnd))
    assert end.output == "No forecast for Reykjavik"


async def test_no_place_at_all_answers_what_was_asked_without_a_tool() -> None:
    events = await run(context("hello there", tokens=25))
    assert not any(isinstance(e, ToolStart) for e in events)
    assert 'You asked: "hello there".' in text(events)


@pytest.mark.parametrize("tokens", [0, 1, 2, 3, 7, 11, 16, 17, 40, 41, 97, 250])
@pytest.mark.parametrize("tool", [True, False])
async def test_the_answer_has_exactly_the_words_asked_and_ends_on_a_sentence(
    tokens: int, tool: bool
) -> None:
    events = await run(context("What about Paris?", ("Hi", "And Tokyo?"), tokens=tokens, tool=tool))
    messages = [e for e in events if isinstance(e, MessageChunk)]
    intro = 6 if tool else 2  # "Looking up the weather in Paris." / "About Paris:"
    assert len(messages) == intro + tokens
    assert all(m.content.endswith(" ") and " " not in m.content[:-1] for m in messages)
    answer = "".join(m.content for m in messages[intro:]).rstrip()
    if tokens:
        assert answer[-1] in ".!?", answer
    if tokens >= 20:
        assert "This is question 3 in this conversation." in answer


def test_every_remainder_has_a_closer() -> None:
    longest = max(len(s.split()) for s in _FILLER)
    assert sorted(_CLOSERS) == list(range(1, longest))
    assert all(len(s.split()) == n for n, s in _CLOSERS.items())
    long_lead = [
        "one two three four five six seven eight nine ten eleven twelve thirteen"
        " fourteen fifteen sixteen seventeen eighteen nineteen twenty."
    ]
    for tokens in range(60):
        words = list(answer_words(long_lead, tokens))
        assert len(words) == tokens and (not words or words[-1][-1] in ".!?")


def test_find_city_prefers_the_longest_known_name() -> None:
    found = find_city("Is New York colder than York?")
    assert not isinstance(found, str) and found is not None and found.name == "New York"
    assert find_city("What about Springfield?") == "Springfield"
    assert find_city("tell me a joke") is None


async def test_fail_at_raises_before_that_event() -> None:
    events: list[AgentEvent] = []
    with pytest.raises(DemoFailure):
        async for event in DemoAgent()(context("In Oslo?", fail_at=4)):
            events.append(event)
    assert len(events) == 3


class FakeClock:
    """A clock that only moves when told: by a sleep, or by the work a test says an event cost."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


async def timed(ctx: AgentContext, clock: FakeClock, work: float) -> list[tuple[float, AgentEvent]]:
    """(time, event) of every event, ``work`` seconds passing after each (the fan-out's cost)."""
    agent = DemoAgent(clock=clock, sleep=clock.sleep)
    events = cast(AsyncGenerator[AgentEvent], agent(ctx))
    out = []
    async for event in events:
        out.append((clock.now, event))
        clock.now += work
    return out


@pytest.mark.parametrize("work", [0.0, 0.004, 0.019])
async def test_word_k_comes_at_t0_plus_k_delays_whatever_the_work_between(work: float) -> None:
    clock = FakeClock()
    t0 = clock.now
    ctx = context("Weather in Rome?", tokens=30, delay_ms=20, tool_ms=300)
    timeline = await timed(ctx, clock, work)
    words = [t for t, e in timeline if isinstance(e, MessageChunk)]
    tool_end = next(t for t, e in timeline if isinstance(e, ToolEnd))
    # Six intro words on the schedule, the tool's 300 ms, then the answer's words.
    assert words[:6] == pytest.approx([t0 + 0.02 * k for k in range(1, 7)])
    assert tool_end == pytest.approx(t0 + 0.12 + 0.3)
    assert words[6:] == pytest.approx([t0 + 0.42 + 0.02 * k for k in range(1, 31)])


async def test_a_late_agent_catches_up_instead_of_shifting_the_schedule() -> None:
    clock = FakeClock()
    t0 = clock.now
    ctx = context("Weather in Rome?", tokens=10, delay_ms=20, tool=False)
    agent = DemoAgent(clock=clock, sleep=clock.sleep)
    times = []
    async for _ in agent(ctx):
        times.append(clock.now)
        if len(times) == 3:
            clock.now += 0.05  # the loop was busy for 2.5 periods
    # Words 4 and 5 were due by then: they come at once; word 6 is back on its deadline.
    assert times[3] == times[4] == pytest.approx(t0 + 0.06 + 0.05)
    assert times[5:] == pytest.approx([t0 + 0.02 * k for k in range(6, 13)])


async def test_a_zero_delay_run_never_sleeps() -> None:
    clock = FakeClock()
    await timed(context("Weather in Rome?", tokens=50), clock, work=0.001)
    assert clock.sleeps == []


async def test_the_pacer_sleeps_only_the_time_left() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, clock.sleep)
    await pacer.wait(0.1)
    clock.now += 0.03
    await pacer.wait(0.1)
    assert clock.sleeps == pytest.approx([0.1, 0.07])
