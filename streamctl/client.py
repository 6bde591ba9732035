"""An async Python client for a streamctl server.

    async with Client("http://127.0.0.1:8000") as client:
        async for event in client.stream_run("What is the weather in Tokyo?", thread_id="u1"):
            if isinstance(event, MessageChunk):
                print(event.content, end="", flush=True)

Streams resume by themselves: when the connection drops (or the stream ends without ``done``),
the client reconnects with ``Last-Event-ID`` after the server's ``retry`` time, with exponential
backoff and jitter, and carries on exactly where it was: no event lost, none repeated. It stops at
the terminal ``done`` event, at ``204 No Content``, or at a 4xx (raised as ``ClientError``).
Events are the server's own pydantic models (``streamctl.events``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from types import TracebackType
from typing import Any

import anyio
import httpx
import orjson

from .decoder import SSEDecoder
from .errors import ClientError
from .events import Done, Event, event_adapter

__all__ = ["Client", "ClientError"]


class _Retry(Exception):
    """The stream broke in a way worth reconnecting for."""


class Client:
    """A streamctl server. Use as ``async with Client(url) as client``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        max_retries: int = 20,
        max_backoff: float = 10.0,
        timeout: float = 30.0,
    ) -> None:
        """``timeout`` bounds every request and every silence on a stream; keep it above the
        server's ``ping_interval``."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # A read timeout on streams too: an idle stream still gets a `: ping` every ping_interval
        # (15 s by default), so silence longer than `timeout` means a dead connection (a NAT
        # dropped it, a laptop slept); the stream then reconnects with Last-Event-ID.
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout)
        )
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.reconnects = 0
        """Reconnections made by streams of this client (for tests and curious users)."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- requests --------------------------------------------------------------------------------

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = await self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        body: dict[str, Any] = response.json()
        return body

    async def create_run(
        self,
        message: str | list[dict[str, str]],
        *,
        thread_id: str | None = None,
        config: dict[str, Any] | None = None,
        multitask: str = "reject",
    ) -> dict[str, Any]:
        """Start a run in the background; returns the run (``run_id``, ``thread_id``, ...)."""
        return await self._json(
            "POST", "/v1/runs", json=_body(message, thread_id, config, multitask)
        )

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's snapshot as of its ``last_seq``."""
        return await self._json("GET", f"/v1/runs/{run_id}")

    async def list_runs(
        self, thread_id: str | None = None, limit: int = 50, *, status: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if thread_id is not None:
            params["thread_id"] = thread_id
        if status is not None:
            params["status"] = status
        runs: list[dict[str, Any]] = (await self._json("GET", "/v1/runs", params=params))["runs"]
        return runs

    async def get_thread(self, thread_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/threads/{thread_id}")

    async def stop(self, run_id: str, *, wait: bool = True) -> dict[str, Any]:
        """Stop the run; with ``wait`` (default) return once it has stopped, in its final state."""
        return await self._json("POST", f"/v1/runs/{run_id}/stop", params={"wait": wait})

    # -- streams ---------------------------------------------------------------------------------

    async def stream_run(
        self,
        message: str | list[dict[str, str]],
        *,
        thread_id: str | None = None,
        config: dict[str, Any] | None = None,
        multitask: str = "reject",
        granularity: str = "low",
    ) -> AsyncIterator[Event]:
        """Start a run and yield its events until ``done``, resuming after connection losses."""
        body = _body(message, thread_id, config, multitask) | {"granularity": granularity}
        run_id: str | None = None
        cursor = 0
        try:
            async with self.http.stream("POST", "/v1/runs/stream", json=body) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, await response.aread())
                run_id = response.headers["x-run-id"]
                async with aclosing(_read(response, SSEDecoder())) as events:
                    async for seq, event in events:
                        cursor = seq
                        yield event
                        if isinstance(event, Done):
                            return
        except (httpx.TransportError, _Retry):
            if run_id is None:
                raise  # the run may not exist: nothing to resume
        assert run_id is not None
        self.reconnects += 1
        async for event in self.events(run_id, after=cursor, granularity=granularity):
            yield event

    async def events(
        self, run_id: str, *, after: int = 0, granularity: str = "low"
    ) -> AsyncIterator[Event]:
        """Yield the run's events after ``after``, then its live tail, until ``done``.

        Reconnects with ``Last-Event-ID`` whenever the connection drops. Ends quietly at ``204``
        (nothing left); raises ``ClientError`` for a 4xx (e.g. an unknown run).
        """
        cursor = after
        failures = 0
        retry_ms = 2000
        while True:
            decoder = SSEDecoder()
            try:
                headers = {"Last-Event-ID": str(cursor)}
                async with self.http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/stream",
                    headers=headers,
                    params={"granularity": granularity},
                ) as response:
                    if response.status_code == 204:
                        return
                    if 400 <= response.status_code < 500:
                        raise _error(response.status_code, await response.aread())
                    if response.status_code != 200:
                        raise _Retry(f"HTTP {response.status_code}")
                    async with aclosing(_read(response, decoder)) as events:
                        async for seq, event in events:
                            cursor, failures = seq, 0
                            yield event
                            if isinstance(event, Done):
                                return
            except (httpx.TransportError, _Retry):
                pass
            if decoder.retry is not None:
                retry_ms = decoder.retry
            failures += 1
            if failures > self.max_retries:
                raise ClientError(0, "unreachable", f"gave up after {self.max_retries} attempts")
            self.reconnects += 1
            await anyio.sleep(self._backoff(failures, retry_ms))

    def _backoff(self, failures: int, retry_ms: int) -> float:
        base = retry_ms / 1000 if failures == 1 else min(self.max_backoff, 0.25 * 2**failures)
        return base * random.uniform(0.5, 1.0)  # jitter: reconnecting clients do not stampede


async def _read(response: httpx.Response, decoder: SSEDecoder) -> AsyncGenerator[tuple[int, Event]]:
    """(seq, event) pairs of one response; raises ``_Retry`` if it ends before ``done``."""
    async for chunk in response.aiter_raw():
        for sse in decoder.feed(chunk):
            data = orjson.loads(sse.data)
            event = event_adapter.validate_python({**data, "type": sse.event})
            yield int(sse.id.rpartition(":")[2]), event
    # The body ended without `done`: the connection was cut (a proxy, a deploy).
    raise _Retry("stream ended before its terminal event")


def _body(
    message: str | list[dict[str, str]],
    thread_id: str | None,
    config: dict[str, Any] | None,
    multitask: str,
) -> dict[str, Any]:
    messages = [{"role": "user", "content": message}] if isinstance(message, str) else message
    body: dict[str, Any] = {"input": {"messages": messages}, "multitask": multitask}
    if thread_id is not None:
        body["thread_id"] = thread_id
    if config is not None:
        body["config"] = config
    return body


def _error(status: int, content: bytes) -> ClientError:
    try:
        error = orjson.loads(content)["error"]
        return ClientError(status, error["code"], error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ClientError(status, "http_error", content[:200].decode("utf-8", "replace"))
