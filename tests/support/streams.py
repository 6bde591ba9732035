"""Reading SSE streams in tests, and what they carry: request bodies, events, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import orjson
from httpx_sse import ServerSentEvent, aconnect_sse

RUN_BODY: dict[str, Any] = {
    "input": {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]}
}


def run_body(**extra: Any) -> dict[str, Any]:
    return {**RUN_BODY, **extra}


HANG = 240
"""Seconds that bound a test that could hang (below pytest-timeout's 300 s), where the work is
heavy or starts processes. Not a speed target: on a 2-core machine at load average 12-16 such
steps took over 40 s."""


def ask(content: str, **extra: Any) -> dict[str, Any]:
    """A run's body whose one user message is ``content`` (``Switch`` picks an agent by it)."""
    return {"input": {"messages": [{"role": "user", "content": content}]}, **extra}


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, list[ServerSentEvent]]:
    """Open a stream and collect its events (at most ``limit``, then disconnect)."""
    events: list[ServerSentEvent] = []
    async with aconnect_sse(client, method, url, **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            return response, events
        async for event in source.aiter_sse():
            if event.data == "":  # the retry-only block, `: ping` comments (not dispatched)
                continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return response, events


async def next_events(
    source: AsyncIterator[ServerSentEvent], n: int | None = None
) -> list[ServerSentEvent]:
    """The next ``n`` events of an open stream (all, until it closes, when None)."""
    got: list[ServerSentEvent] = []
    async for event in source:
        # Not events: the retry-only block, and `: ping` comments, which httpx-sse reports as
        # blocks without data once an id was seen (a slow test sees pings on an idle stream).
        if event.data == "":
            continue
        got.append(event)
        if len(got) == n:
            break
    return got


def data(event: ServerSentEvent) -> Any:
    return orjson.loads(event.data)


def text_of(events: list[ServerSentEvent]) -> str:
    return "".join(data(e)["content"] for e in events if e.event == "message_chunk")


def brief(message: dict[str, Any]) -> dict[str, Any]:
    """A thread message without the assistant's structured ``output`` (checked separately)."""
    return {k: v for k, v in message.items() if k != "output"}


def assert_one_done(events: list[ServerSentEvent], status: str) -> dict[str, Any]:
    """Dense ids, exactly one ``done``, last, with ``status``; returns its data."""
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert [e.event for e in events].count("done") == 1 and events[-1].event == "done"
    done: dict[str, Any] = data(events[-1])
    assert done["status"] == status, done
    return done


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """A JSON error answer with ``status`` and ``code``; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    message = error["message"]
    assert isinstance(message, str) and message
    return message


def unix(iso: str) -> float:
    """An ISO 8601 time from the API as a Unix timestamp."""
    return datetime.fromisoformat(iso).timestamp()


async def metric(client: httpx.AsyncClient, name: str) -> float:
    """The value of an unlabelled metric from the server's ``/metrics``."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")
