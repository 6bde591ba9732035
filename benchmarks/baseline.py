"""The baseline server: a bare Starlette ``StreamingResponse``, no persistence.

Served by the same uvicorn (uvloop + httptools) as streamctl, it yields the same SSE frames
(``id: n\\nevent: message_chunk\\ndata: {orjson}\\n\\n``, same headers, same ``retry:`` line) from a
generator: the ceiling of the stack. Started by the benchmarks as
``python -m benchmarks.baseline --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from itertools import chain, cycle, islice
from typing import Any

from benchmarks.client import HOST

_WORDS = (
    "Sunny and 22°C in Tokyo right now. The forecast says it stays like this for the rest of "
    "the day, with a light breeze in the afternoon and a slightly cooler evening."
).split()


def baseline_app() -> Any:
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def frame(seq: int, type: bytes, payload: dict[str, Any]) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type, orjson.dumps(payload))

    async def run_stream(request: Request) -> StreamingResponse:
        body = orjson.loads(await request.body())
        demo = (body.get("config") or {}).get("demo") or {}
        tokens = int(demo.get("tokens", 40))
        delay = float(demo.get("delay_ms", 30)) / 1000
        run_id = uuid.uuid4().hex
        thread_id = body.get("thread_id") or uuid.uuid4().hex

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            yield frame(1, b"run", {"run_id": run_id, "thread_id": thread_id, "status": "running"})
            message_id = uuid.uuid4().hex[:12]
            seq = 1
            # Like the demo agent without its tool: two intro words, then `tokens` words.
            for word in islice(chain(("About", "Tokyo:"), cycle(_WORDS)), tokens + 2):
                if delay:
                    await asyncio.sleep(delay)
                seq += 1
                chunk = {"role": "assistant", "content": word + " ", "message_id": message_id}
                yield frame(seq, b"message_chunk", chunk)
            done = {
                "run_id": run_id,
                "thread_id": thread_id,
                "status": "completed",
                "reason": "the agent finished",
                "tokens": tokens + 2,
            }
            yield frame(seq + 1, b"done", done)

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
