"""A fake OpenAI-compatible chat server for the adapter's tests: a Starlette app on a real uvicorn,
streaming ``chat.completion.chunk`` SSE the way the API does (a role delta, content deltas,
tool-call deltas split across chunks, a finish chunk, the usage chunk when asked, ``[DONE]``).

Each request takes the next ``Turn`` of the script; it records every request body, and whether a
stream was cut by its client (Stop must close the upstream connection).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Turn:
    """One model answer: text pieces, then tool calls (name, JSON arguments, split in pieces)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    hold: anyio.Event | None = None
    """When set: stream the text, then wait for this event (or the client's disconnect)."""
    status: int = 200
    """Answer with this HTTP error instead of a stream."""
    error_after_text: bool = False
    """Send an ``error`` chunk (the API's mid-stream failure) after the text."""
    usage: tuple[int, int] = (11, 5)
    delay: float = 0.0
    """Seconds between two content chunks (a model's pace)."""
    whole_calls: bool = False
    """Send each tool call whole in one chunk, without ``index`` (as some servers do)."""


SECRET = "sk-fake-SECRET-123"


class FakeOpenAI:
    def __init__(self, turns: list[Turn]) -> None:
        self.turns = list(turns)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.holding = anyio.Event()
        """Set when a stream waits on its ``hold``."""
        self.disconnected = anyio.Event()
        """Set when a client went away in the middle of a stream."""
        self.url = ""
        self.cuts = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        turn = self.turns.pop(0) if self.turns else Turn(text=["(no more turns)"])
        if turn.status != 200:
            error = {
                "message": f"Limit reached for key {request.headers.get('authorization')}",
                "type": "requests",
                "code": "rate_limit_exceeded" if turn.status == 429 else "server_error",
            }
            return JSONResponse({"error": error}, status_code=turn.status)
        usage = bool(body.get("stream_options", {}).get("include_usage"))
        return StreamingResponse(
            self._stream(turn, body["model"], usage), media_type="text/event-stream"
        )

    async def _stream(self, turn: Turn, model: str, usage: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if usage:
                data["usage"] = None
            return b"data: " + orjson.dumps(data) + b"\n\n"

        try:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            for piece in turn.reasoning:
                yield chunk({"reasoning_content": piece})
            for piece in turn.text:
                if turn.delay:
                    await anyio.sleep(turn.delay)
                yield chunk({"content": piece})
            if turn.error_after_text:
                error = {"message": f"internal failure near {SECRET}", "type": "server_error"}
                yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
                return
            if turn.hold is not None:
                self.holding.set()
                await turn.hold.wait()
            for index, (name, arguments) in enumerate(turn.tool_calls):
                if turn.whole_calls:
                    whole = {
                        "id": f"call_{index}_fake",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                    yield chunk({"tool_calls": [whole]})
                    continue
                head = {
                    "index": index,
                    "id": f"call_{index}_fake",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                yield chunk({"tool_calls": [head]})
                third = max(1, len(arguments) // 3)  # the arguments, split across chunks
                for start in range(0, len(arguments), third):
                    piece = arguments[start : start + third]
                    part = {"index": index, "function": {"arguments": piece}}
                    yield chunk({"tool_calls": [part]})
            yield chunk({}, "tool_calls" if turn.tool_calls else "stop")
            if usage:
                prompt, completion = turn.usage
                last = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }
                yield b"data: " + orjson.dumps(last) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except BaseException:  # the client went away: Starlette cancels the stream
            self.cuts += 1
            self.disconnected.set()
            raise


@dataclass
class Upstream:
    fake: FakeOpenAI
    server: uvicorn.Server
    done: anyio.Event


async def start_fake(tg: anyio.abc.TaskGroup, fake: FakeOpenAI) -> Upstream:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    config = uvicorn.Config(
        fake.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    upstream = Upstream(fake, uvicorn.Server(config), anyio.Event())

    async def run() -> None:
        try:
            await upstream.server.serve(sockets=[sock])
        finally:
            sock.close()
            upstream.done.set()

    tg.start_soon(run)
    return upstream


StartUpstream = Callable[[list[Turn]], Awaitable[FakeOpenAI]]
"""``await start(turns)``: a fake OpenAI-compatible server answering ``turns``."""


@asynccontextmanager
async def fake_upstreams(
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[StartUpstream]:
    """Start fake servers on demand; each is stopped on exit (after ``before_stop``, e.g. to close
    the model clients a framework leaves open)."""
    started: list[Upstream] = []
    async with anyio.create_task_group() as tg:

        async def start(turns: list[Turn]) -> FakeOpenAI:
            fake = FakeOpenAI(turns)
            started.append(await start_fake(tg, fake))
            return fake

        yield start
        if before_stop is not None:
            await before_stop()
        for up in started:
            up.server.should_exit = True
            await up.done.wait()
