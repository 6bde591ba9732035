"""The OpenAI-compatible adapter (``streamctl.agents.openai.ChatAgent``) against a fake
OpenAI-compatible server on real TCP (``tests/support/fake_openai.py``): streamed text and
reasoning, tool calls assembled from split deltas, tools run and answered, usage, history,
Stop reaching the upstream stream and the tool, upstream failures,
and ``streamctl serve --agent openai``."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI

from streamctl.agents.openai import ChatAgent

from .support import HANG, ServerProcess, StartServer, ask, data, next_events, read_sse
from .support.fake_openai import SECRET, FakeOpenAI, Turn, fake_upstreams

pytestmark = pytest.mark.anyio

Upstream = Callable[[list[Turn]], Awaitable[FakeOpenAI]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """``await upstream(turns)`` starts a fake OpenAI-compatible server; stopped at teardown."""
    async with fake_upstreams() as start:
        yield start


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[FakeOpenAI], AsyncOpenAI]]:
    made: list[AsyncOpenAI] = []

    def make(fake: FakeOpenAI) -> AsyncOpenAI:
        made.append(AsyncOpenAI(base_url=fake.url, api_key=SECRET, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        await client.close()


tool_threads: list[int] = []


def get_weather(location: str, unit: str = "celsius") -> str:
    """The weather now in a city."""
    tool_threads.append(threading.get_ident())
    return f"Sunny, 22° {unit} in {location}"


async def test_text_tool_calls_usage_and_the_next_turn(
    serve: StartServer, upstream: Upstream, clients: Callable[[FakeOpenAI], AsyncOpenAI]
) -> None:
    fake = await upstream(
        [
            Turn(
                reasoning=["The user ", "asks."],
                text=["Let me ", "check."],
                tool_calls=[("get_weather", '{"location": "Tokyo", "unit": "celsius"}')],
                usage=(11, 5),
            ),
            Turn(text=["Sunny ", "in Tokyo."], usage=(30, 4)),
            Turn(text=["Still sunny."], usage=(50, 3)),
        ]
    )
    agent = ChatAgent("fake-model", tools=[get_weather], system="Be brief.", client=clients(fake))
    server = await serve(agent=agent)
    async with server.client() as client:
        with anyio.fail_after(10):
            _, events = await read_sse(
                client, "POST", "/v1/runs/stream", json=ask("Weather in Tokyo?")
            )
            thread_id = data(events[0])["thread_id"]
            _, again = await read_sse(
                client, "POST", "/v1/runs/stream", json=ask("And now?", thread_id=thread_id)
            )
    assert [e.event for e in events] == [
        "run",
        "reasoning_chunk",
        "reasoning_chunk",
        "message_chunk",
        "message_chunk",
        "tool_start",
        "tool_end",
        "message_chunk",
        "message_chunk",
        "done",
    ]
    start, end = data(events[5]), data(events[6])
    assert start == {
        "name": "get_weather",
        "args": {"location": "Tokyo", "unit": "celsius"},  # assembled from split deltas
        "call_id": "call_0_fake",
    }
    assert end == {
        "name": "get_weather",
        "output": "Sunny, 22° celsius in Tokyo",
        "call_id": start["call_id"],
    }
    assert tool_threads and tool_threads[-1] != threading.get_ident()  # a sync tool: a thread
    first, second = data(events[3])["message_id"], data(events[7])["message_id"]
    assert first != second and data(events[1])["message_id"] == first
    done = data(events[-1])
    assert done["status"] == "completed"
    assert done["usage"] == {"input_tokens": 41, "output_tokens": 9}  # both model calls

    request, follow_up, next_run = fake.requests
    assert request["model"] == "fake-model" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert fake.headers[0]["authorization"] == f"Bearer {SECRET}"
    (spec,) = request["tools"]
    assert spec["function"]["name"] == "get_weather"
    assert spec["function"]["description"] == "The weather now in a city."
    assert spec["function"]["parameters"]["required"] == ["location"]
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Tokyo?"},
    ]
    assert follow_up["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_0_fake",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"location": "Tokyo", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0_fake", "content": "Sunny, 22° celsius in Tokyo"},
    ]
    # The next run on the thread gets the thread's history: each message separate and in order,
    # the tool call and its result as the API shapes them.
    called = follow_up["messages"][2]["tool_calls"][0]
    called = called | {
        "function": called["function"] | {"arguments": orjson.dumps(start["args"]).decode()}
    }
    assert next_run["messages"] == [
        *request["messages"],
        {"role": "assistant", "content": "Let me check.", "tool_calls": [called]},
        follow_up["messages"][3],
        {"role": "assistant", "content": "Sunny in Tokyo."},
        {"role": "user", "content": "And now?"},
    ]
    assert [e.event for e in again][-2:] == ["message_chunk", "done"]


async def test_tool_failures_are_answered_to_the_model(
    serve: StartServer, upstream: Upstream, clients: Callable[[FakeOpenAI], AsyncOpenAI]
) -> None:
    async def broken(city: str) -> str:
        raise RuntimeError(f"no data for {city}")

    fake = await upstream(
        [
            Turn(
                tool_calls=[
                    ("broken", '{"city": "Oslo"}'),
                    ("broken", '{"town": "Oslo"}'),
                    ("nonexistent", "{}"),
                    ("broken", "not json"),
                ]
            ),
            Turn(text=["Sorry."]),
        ]
    )
    server = await serve(agent=ChatAgent("m", tools=[broken], client=clients(fake)))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Oslo?"))
    outputs = [data(e)["output"] for e in events if e.event == "tool_end"]
    assert outputs == [
        {"error": "RuntimeError: no data for Oslo"},
        {"error": "invalid arguments for broken: Field required"},
        {"error": "there is no tool named 'nonexistent'"},
        {"error": "the arguments are not a JSON object"},
    ]
    assert [e.event for e in events][-2:] == ["message_chunk", "done"]
    tool_messages = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == [f"call_{i}_fake" for i in range(4)]


async def test_stop_mid_token_closes_the_upstream_stream(
    serve: StartServer, upstream: Upstream, clients: Callable[[FakeOpenAI], AsyncOpenAI]
) -> None:
    hold = anyio.Event()
    fake = await upstream([Turn(text=["Hel", "lo"], hold=hold)])
    server = await serve(agent=ChatAgent("m", client=clients(fake)), stop_timeout=5)
    try:
        async with server.client() as client:
            with anyio.fail_after(10):
                async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("hi")) as src:
                    events = src.aiter_sse()
                    head = await next_events(events, 3)
                    await fake.holding.wait()
                    run_id = src.response.headers["x-run-id"]
                    stop = await client.post(f"/v1/runs/{run_id}/stop")
                    tail = await next_events(events)
                await fake.disconnected.wait()  # the model server saw the client go
    finally:
        hold.set()
    assert [e.event for e in head] == ["run", "message_chunk", "message_chunk"]
    assert stop.status_code == 200 and stop.json()["output"]["text"] == "Hello"
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]


async def test_stop_mid_tool_cancels_the_tool(
    serve: StartServer, upstream: Upstream, clients: Callable[[FakeOpenAI], AsyncOpenAI]
) -> None:
    entered, cancelled = anyio.Event(), anyio.Event()

    async def slow_search(query: str) -> str:
        """Searches for a long time."""
        entered.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "too late"

    fake = await upstream([Turn(tool_calls=[("slow_search", '{"query": "x"}')])])
    server = await serve(agent=ChatAgent("m", tools=[slow_search], client=clients(fake)))
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as src:
                events = src.aiter_sse()
                head = await next_events(events, 2)
                await entered.wait()
                stop = await client.post(f"/v1/runs/{src.response.headers['x-run-id']}/stop")
                tail = await next_events(events)
    assert [e.event for e in head] == ["run", "tool_start"]
    assert cancelled.is_set()  # the tool itself saw the cancellation
    assert stop.status_code == 200
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]
    assert len(fake.requests) == 1  # no next model turn after the stop


def assert_no_secret(events: list[Any], run: dict[str, Any]) -> None:
    for text in [e.data for e in events] + [str(run)]:
        assert "SECRET" not in text and "sk-" not in text


@pytest.mark.parametrize(
    ("turn", "code", "status"),
    [
        (Turn(status=429), "model_rate_limited", "HTTP 429"),
        (Turn(status=500), "model_error", "HTTP 500"),
        (Turn(text=["Par", "tial"], error_after_text=True), "model_error", "while streaming"),
    ],
    ids=["429", "500", "error-mid-stream"],
)
async def test_a_failing_model_server_fails_the_run_without_leaking_its_text(
    serve: StartServer,
    upstream: Upstream,
    clients: Callable[[FakeOpenAI], AsyncOpenAI],
    turn: Turn,
    code: str,
    status: str,
) -> None:
    fake = await upstream([turn])
    server = await serve(agent=ChatAgent("m", client=clients(fake)))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("hi"))
        run = (await client.get(f"/v1/runs/{data(events[0])['run_id']}")).json()
    assert [e.event for e in events][-2:] == ["error", "done"]
    error = data(events[-2])
    assert error["code"] == code and status in error["message"]
    assert data(events[-1])["status"] == "failed"
    assert run["output"]["text"] == "".join(turn.text)  # what streamed before the failure stays
    assert_no_secret(events, run)


async def test_serve_agent_openai_reads_the_standard_environment(
    upstream: Upstream, spawn_server: Callable[..., ServerProcess]
) -> None:
    fake = await upstream([Turn(text=["From ", "the model."], usage=(7, 2))])
    env = {"OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": SECRET}
    server = await anyio.to_thread.run_sync(
        lambda: spawn_server("--agent", "openai", "--model", "served-model", env=env)
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(HANG):
            _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("hi"))
    assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "done"]
    assert data(events[-1])["usage"] == {"input_tokens": 7, "output_tokens": 2}
    assert fake.requests[0]["model"] == "served-model"
    assert fake.headers[0]["authorization"] == f"Bearer {SECRET}"


def test_serve_agent_openai_without_a_model_says_so(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamctl.cli import main

    status = main(["serve", "--agent", "openai", "--db", str(tmp_path / "x.db"), "--port", "0"])
    assert status == 2 and "--model NAME" in capsys.readouterr().err


async def test_tool_calls_sent_whole_without_an_index(
    serve: StartServer, upstream: Upstream, clients: Callable[[FakeOpenAI], AsyncOpenAI]
) -> None:
    calls = [("get_weather", '{"location": "Oslo"}'), ("get_weather", '{"location": "Rome"}')]
    fake = await upstream([Turn(tool_calls=calls, whole_calls=True), Turn(text=["Both sunny."])])
    server = await serve(agent=ChatAgent("m", tools=[get_weather], client=clients(fake)))
    async with server.client() as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=ask("Oslo, Rome?"))
    starts = [data(e) for e in events if e.event == "tool_start"]
    assert [(s["call_id"], s["args"]) for s in starts] == [
        ("call_0_fake", {"location": "Oslo"}),
        ("call_1_fake", {"location": "Rome"}),
    ]
    assert data(events[-1])["status"] == "completed"
