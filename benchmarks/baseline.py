"""The baseline server: a bare Starlette ``StreamingResponse``, no persistence.

Served by the same uvicorn (uvloop + httptools) as streamctl, it yields the same SSE frames
(``id: n\\nevent: message_chunk\\ndata: {orjson}\\n\\n``, same headers, same ``retry:`` line) from a
generator: the ceiling of the stack. Words are deadline-paced (``pacing.py``), like the agent of
the scale measurements. Started by the benchmarks as ``python -m benchmarks.baseline --port P``.

``POST /v1/broadcasts`` (the same body) starts one producer whose frames any number of
``GET /v1/broadcasts/{id}/stream`` subscribers follow: the bare broadcaster of the fan-out
measurements. It holds the frames in a list and wakes its subscribers with one ``asyncio.Event``
per frame; each subscriber yields everything after its cursor, joined.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client import HOST
from benchmarks.pacing import deadlines, held, words


@dataclass
class Channel:
    """One broadcast: its frames so far, and the event its subscribers wait on."""

    frames: list[bytes] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False

    def add(self, frame: bytes, last: bool = False) -> None:
        self.frames.append(frame)
        self.done = last
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def baseline_app() -> Any:
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def frame(seq: int, type: bytes, payload: dict[str, Any]) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type, orjson.dumps(payload))

    async def produce(
        run_id: str, thread_id: str, tokens: int, delay: float, config: dict[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        yield frame(1, b"run", {"run_id": run_id, "thread_id": thread_id, "status": "running"})
        message_id = uuid.uuid4().hex[:12]
        source = words(tokens)
        await held(config or {})
        async for k in deadlines(tokens + 2, delay):
            chunk = {"role": "assistant", "content": next(source) + " ", "message_id": message_id}
            yield frame(k + 2, b"message_chunk", chunk)
        done = {
            "run_id": run_id,
            "thread_id": thread_id,
            "status": "completed",
            "reason": "the agent finished",
            "tokens": tokens + 2,
        }
        yield frame(tokens + 4, b"done", done)

    def demo_of(body: dict[str, Any]) -> tuple[int, float]:
        demo = (body.get("config") or {}).get("demo") or {}
        return int(demo.get("tokens", 40)), float(demo.get("delay_ms", 30)) / 1000

    channels: dict[str, Channel] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def broadcast(channel: Channel, parts: AsyncIterator[bytes]) -> None:
        async for part in parts:
            channel.add(part, part.startswith(b"id: ") and b"\nevent: done\n" in part)

    async def start_broadcast(request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        tokens, delay = demo_of(body)
        run_id = uuid.uuid4().hex
        channel = channels[run_id] = Channel()
        task = asyncio.get_running_loop().create_task(
            broadcast(channel, produce(run_id, run_id, tokens, delay, body.get("config")))
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({"run_id": run_id}, status_code=201)

    async def follow_broadcast(request: Request) -> StreamingResponse:
        channel = channels[request.path_params["run_id"]]

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            cursor = 0
            while True:
                changed = channel.changed
                if cursor < len(channel.frames):
                    new, cursor = channel.frames[cursor:], len(channel.frames)
                    yield b"".join(new)
                    continue
                if channel.done:
                    return
                await changed.wait()

        return StreamingResponse(frames(), media_type="text/event-stream", headers=_HEADERS)

    async def run_stream(request: Request) -> StreamingResponse:
        body = orjson.loads(await request.body())
        tokens, delay = demo_of(body)
        run_id = uuid.uuid4().hex
        thread_id = body.get("thread_id") or uuid.uuid4().hex

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            async for part in produce(run_id, thread_id, tokens, delay, body.get("config")):
                yield part

        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Run-Id": run_id,
            "X-Thread-Id": thread_id,
        }
        return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/runs/stream", run_stream, methods=["POST"]),
            Route("/v1/broadcasts", start_broadcast, methods=["POST"]),
            Route("/v1/broadcasts/{run_id}/stream", follow_broadcast),
            Route("/healthz", healthz),
        ]
    )


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(
        baseline_app(),
        host=HOST,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=3,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the benchmarks' bare-SSE baseline server")
    parser.add_argument("--port", type=int, required=True)
    serve_baseline(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
