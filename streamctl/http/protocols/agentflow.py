"""AgentFlow's own API shape (``agentflow api``, 10xGraph): ``POST /v1/graph/stream`` and
``POST /v1/graph/stop``, for AgentFlow's TypeScript client unchanged.

That client asks for ``Accept: application/x-ndjson`` and parses the answer line by line as
``StreamChunk``s (``event``: message / updates / error; ``message`` with content blocks and
``delta``; ``thread_id``, ``run_id``, ``metadata``): with that header the run is streamed as
NDJSON, otherwise as our SSE. A top-level ``recursion_limit`` (where the client puts it) counts
like ``config.recursion_limit``. ``POST /v1/graph/stop {thread_id}`` stops the thread's active run
mid-node and answers once its task has exited, in AgentFlow's response envelope.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ...events import Frame
from ...inputs import GraphStreamRequest, RunCreate, ThreadId
from ...sse import EventStream
from ..auth import Me
from ..errors import StreamctlRoute
from ..idempotency import REPLAYED, KeyHeader, start_once
from ..services import Sup, Svc
from ..streams import start_streaming
from .common import START_STREAM, STOP
from .wire import LastEventId, Part, ndjson_part, render, stream_response

NDJSON = "application/x-ndjson"


class StreamChunkTranslator:
    """A run's frames as AgentFlow ``StreamChunk``s: text as ``delta`` messages, then the whole
    message (``delta: false``) when it ends; tool calls and results as messages of their own."""

    def __init__(self, thread_id: str, run_id: str, is_new_thread: bool) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.is_new_thread = is_new_thread
        self.started = False
        self.text_id: str | None = None
        self.text: list[str] = []
        self.error: dict[str, Any] | None = None

    def translate(self, frame: Frame) -> list[Part]:
        out: list[Part] = []
        data = orjson.loads(frame.data)
        kind = frame.type
        if kind == "run":
            status = "invoking_graph" if not self.started else data["status"]
            self.started = True
            out.append(
                self._chunk(frame, "updates", data={"status": status, "run_status": data["status"]})
            )
        elif kind == "message_chunk":
            if self.text_id != data["message_id"]:
                self._flush(frame, out)
                self.text_id = data["message_id"]
            self.text.append(data["content"])
            out.append(
                self._message(
                    frame, data["message_id"], "assistant", [_text(data["content"])], delta=True
                )
            )
        elif kind == "tool_start":
            self._flush(frame, out)
            call = {
                "id": data["call_id"],
                "type": "function",
                "function": {
                    "name": data["name"],
                    "arguments": orjson.dumps(data["args"]).decode(),
                },
            }
            block = {
                "type": "tool_call",
                "id": data["call_id"],
                "name": data["name"],
                "args": data["args"],
            }
            out.append(
                self._message(
                    frame, f"{data['call_id']}:call", "assistant", [block], tools_calls=[call]
                )
            )
        elif kind == "tool_end":
            self._flush(frame, out)
            block = {
                "type": "tool_result",
                "call_id": data["call_id"],
                "output": data["output"],
                "is_error": False,
                "status": "completed",
            }
            out.append(self._message(frame, f"{data['call_id']}:result", "tool", [block]))
        elif kind in ("custom", "interrupt"):
            # No message of AgentFlow's carries these: an `updates` chunk with our event's
            # fields (an interrupt's answer is the next run's config.resume). Reasoning is not
            # sent: AgentFlow's client shows only the answer.
            self._flush(frame, out)
            out.append(self._chunk(frame, "updates", data={"event": kind, **data}))
        elif kind == "error":
            self.error = data
        elif kind == "done":
            self._flush(frame, out)
            status = data["status"]
            if self.error is not None or status in ("failed", "timed_out"):
                error = self.error or {"code": status, "message": data.get("reason") or status}
                out.append(
                    self._chunk(
                        frame,
                        "error",
                        data={
                            "status": status,
                            "code": error["code"],
                            "message": error["message"],
                            "reason": error["message"],
                        },
                    )
                )
            out.append(
                self._chunk(
                    frame,
                    "updates",
                    data={
                        "status": "graph_invoked" if status == "completed" else status,
                        "run_status": status,
                        "reason": data.get("reason"),
                        "tokens": data.get("tokens", 0),
                    },
                )
            )
        return out

    def _flush(self, frame: Frame, out: list[Part]) -> None:
        """The open text message, whole (AgentFlow ends a streamed message so)."""
        if self.text_id is not None:
            out.append(self._message(frame, self.text_id, "assistant", [_text("".join(self.text))]))
            self.text_id, self.text = None, []

    def _message(
        self,
        frame: Frame,
        message_id: str,
        role: str,
        content: list[dict[str, Any]],
        *,
        delta: bool = False,
        tools_calls: list[dict[str, Any]] | None = None,
    ) -> Part:
        message: dict[str, Any] = {
            "message_id": message_id,
            "role": role,
            "content": content,
            "delta": delta,
            "timestamp": frame.created_at,
            "metadata": {},
        }
        if tools_calls is not None:
            message["tools_calls"] = tools_calls
        return self._chunk(frame, "message", message=message)

    def _chunk(self, frame: Frame, event: str, **fields: Any) -> Part:
        return {
            "event": event,
            **fields,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "metadata": {
                "seq": frame.seq,
                "thread_id": self.thread_id,
                "is_new_thread": self.is_new_thread,
            },
            "timestamp": frame.created_at,
        }


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "annotations": []}


class AgentFlowStreamRequest(GraphStreamRequest):
    """``GraphStreamRequest`` with AgentFlow's top-level ``recursion_limit``."""

    recursion_limit: int | None = Field(
        None, ge=1, le=10_000, description="Like config.recursion_limit; the lower one counts."
    )

    def to_run_create(self) -> RunCreate:
        create = super().to_run_create()
        limits = [n for n in (self.recursion_limit, self.config.recursion_limit) if n]
        if limits:
            create.config.recursion_limit = min(limits)
        return create


class GraphStop(BaseModel):
    """AgentFlow's stop body."""

    model_config = ConfigDict(extra="forbid")

    thread_id: ThreadId
    config: dict[str, Any] | None = None
    token: str | None = Field(None, description="A bearer token, if not in the header.")


def _envelope(data: dict[str, Any], status: int) -> JSONResponse:
    """AgentFlow's response shape: ``{data, metadata: {request_id, timestamp, message}}``."""
    metadata = {
        "request_id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(),
        "message": "OK",
    }
    return JSONResponse({"data": data, "metadata": metadata}, status)


router = APIRouter(prefix="/v1/graph", tags=["agentflow"], route_class=StreamctlRoute)


@router.post("/stream", response_class=EventStream, responses=START_STREAM)
async def graph_stream(
    body: AgentFlowStreamRequest,
    request: Request,
    svc: Svc,
    sup: Sup,
    me: Me,
    idempotency_key: KeyHeader = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Start a run from an AgentFlow-shaped body; NDJSON ``StreamChunk``s when asked for
    ``application/x-ndjson``, else our SSE. A retry with the same ``Idempotency-Key`` gets the
    run the first request started: SSE after ``Last-Event-ID``, NDJSON from its start."""
    create = body.to_run_create()
    if NDJSON not in request.headers.get("accept", ""):
        return await start_streaming(
            request, svc, sup, create, me, key=idempotency_key, last_event_id=last_event_id
        )
    with sup.streams.claim(me.name):
        started = await start_once(request, sup, svc.keys, me, idempotency_key, create)
        _, frames = await sup.reads.run_frames(started.run_id, me.name)
    run_id, thread_id = started.run_id, started.thread_id
    translator = StreamChunkTranslator(thread_id, run_id, body.config.thread_id is None)
    headers = {"X-Run-Id": run_id, "X-Thread-Id": thread_id}
    if not started.created:
        headers[REPLAYED] = "true"
    return stream_response(
        request,
        svc,
        sup,
        me.name,
        render(frames, translator, ndjson_part, keepalive=b"\n"),
        content_type=NDJSON,
        preamble=None,
        headers=headers,
        on_disconnect=(
            (lambda: sup.control.request_stop(run_id)) if create.on_disconnect == "cancel" else None
        ),
        claimed=True,
    )


@router.post("/stop", responses=STOP)
async def graph_stop(body: GraphStop, sup: Sup, me: Me) -> JSONResponse:
    """Stop the thread's active run; 200 once its task has exited (202 if still stopping)."""
    started = time.time()
    snapshot, finished = await sup.control.stop_thread(me.name, body.thread_id)
    data = {
        "success": True,
        "message": "stopped" if finished else "stopping",
        "thread_id": body.thread_id,
        "stopped_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "run": snapshot,
        "stopping": not finished,
    }
    return _envelope(data, 200 if finished else 202)
