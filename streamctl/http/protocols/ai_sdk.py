"""The Vercel AI SDK's UI message stream (``ai`` 5 and later): ``useChat`` on our runs.

``POST /v1/ai-sdk/chat`` takes what ``DefaultChatTransport`` sends: the chat ``id`` is the thread,
the last user message is the run's input (the thread keeps the history). It answers the run as
one assistant message in the UI message stream protocol. ``GET /v1/ai-sdk/chat/{id}/stream``
(``useChat({resume: true})``) answers 204 without an active run, else that run's message from its
``start`` (the transport treats a resumed stream as a replay and rebuilds the message from it, so
no text is doubled), then the live tail. ``POST /v1/ai-sdk/chat/{id}/stop`` stops the run and
answers once its task has exited; the partial answer stays in the thread.

The client validates each part against a schema, so parts carry only the protocol's keys: the
seq is in the SSE ``id:`` line (see ``wire.py``), the run's id is the message id.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...agents.base import Message
from ...errors import InvalidInput, ThreadNotFound
from ...events import Frame
from ...inputs import RunConfig, RunCreate, RunInput, ThreadId
from ...sse import EventStream
from ...store.base import ACTIVE_STATUSES
from ...supervisor import Supervisor
from ..auth import Me
from ..errors import StreamctlRoute
from ..idempotency import REPLAYED, KeyHeader, start_once
from ..services import Services, Sup, Svc
from .common import PING, READ_STREAM, START_STREAM, STOP, invalid, stopped, token_usage
from .wire import LastEventId, Part, parse_part_cursor, render, sse_part, stream_response

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
DONE = b"data: [DONE]\n\n"


class UIMessageTranslator:
    """A run's frames as the parts of one assistant ``UIMessage`` (its id: the run's id)."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.started = False
        self.step = False
        self.text: str | None = None
        """The id of the open text part, if one is open."""
        self.reasoning: str | None = None
        self.calls: set[str] = set()
        self.pending: set[str] = set()
        """Tool calls whose output has not come yet: the step ends when none is left."""
        self.error: dict[str, Any] | None = None

    def translate(self, frame: Frame) -> list[Part]:
        out: list[Part] = []
        data = orjson.loads(frame.data)
        kind = frame.type
        if kind == "run":
            if not self.started:  # a queued run has a second `run` event when it starts
                self.started = True
                out.append({"type": "start", "messageId": self.message_id})
        elif kind == "message_chunk":
            self._close_reasoning(out)
            if self.text != data["message_id"]:
                self._close_text(out)
                self._open_step(out)
                self.text = data["message_id"]
                out.append({"type": "text-start", "id": self.text})
            if data["content"]:
                out.append({"type": "text-delta", "id": self.text, "delta": data["content"]})
        elif kind == "reasoning_chunk":
            self._close_text(out)
            part_id = data["message_id"]  # text and reasoning parts have ids of their own kinds
            if self.reasoning != part_id:
                self._close_reasoning(out)
                self._open_step(out)
                self.reasoning = part_id
                out.append({"type": "reasoning-start", "id": part_id})
            if data["content"]:
                out.append({"type": "reasoning-delta", "id": part_id, "delta": data["content"]})
        elif kind == "tool_start":
            self._close_text(out)
            self._close_reasoning(out)
            self._open_step(out)
            self._tool_input(out, data["call_id"], data["name"], data["args"])
        elif kind == "tool_end":
            call_id = data["call_id"]
            if call_id not in self.calls:  # an output without a start: give it its input part
                self._close_text(out)
                self._close_reasoning(out)
                self._open_step(out)
                self._tool_input(out, call_id, data["name"], {})
            self.pending.discard(call_id)
            out.append(
                {"type": "tool-output-available", "toolCallId": call_id, "output": data["output"]}
            )
            if not self.pending:  # the model's turn that called the tools is over
                self._close_step(out)
        elif kind == "custom":
            out.append({"type": f"data-{data['name']}", "data": data["data"]})
        elif kind == "interrupt":
            # The UI message stream has no pause: a data part the page renders as a question;
            # the run then finishes, and the answer is the next run's config.resume.
            self._close_text(out)
            self._close_reasoning(out)
            interrupt = {"value": data["value"], "interrupt_id": data["interrupt_id"]}
            out.append({"type": "data-interrupt", "data": interrupt})
        elif kind == "error":
            self.error = data
        elif kind == "done":
            self._close_text(out)
            self._close_reasoning(out)
            self._close_step(out)
            status = data["status"]
            # The usage as message metadata, shaped as the SDK's own `totalUsage`, under the
            # key its docs' metadata example uses.
            usage = token_usage(data.get("usage"))
            metadata = None if usage is None else {"totalUsage": usage}
            if status == "completed":
                finish: Part = {"type": "finish", "finishReason": "stop"}
                if metadata is not None:
                    finish["messageMetadata"] = metadata
                out.append(finish)
                return out
            if metadata is not None:  # `abort` and `error` have no metadata of their own
                out.append({"type": "message-metadata", "messageMetadata": metadata})
            if status in ("cancelled", "interrupted"):
                out.append({"type": "abort"})
            else:
                error = self.error or {"code": status, "message": data.get("reason") or status}
                out.append({"type": "error", "errorText": f"{error['code']}: {error['message']}"})
        return out

    def _tool_input(self, out: list[Part], call_id: str, name: str, args: Any) -> None:
        self.calls.add(call_id)
        self.pending.add(call_id)
        out.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})
        out.append(
            {"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": args}
        )

    def _open_step(self, out: list[Part]) -> None:
        if not self.step:
            self.step = True
            out.append({"type": "start-step"})

    def _close_step(self, out: list[Part]) -> None:
        if self.step:
            self.step = False
            out.append({"type": "finish-step"})

    def _close_text(self, out: list[Part]) -> None:
        if self.text is not None:
            out.append({"type": "text-end", "id": self.text})
            self.text = None

    def _close_reasoning(self, out: list[Part]) -> None:
        if self.reasoning is not None:
            out.append({"type": "reasoning-end", "id": self.reasoning})
            self.reasoning = None


class UIMessageIn(BaseModel):
    """A ``UIMessage`` as the transport sends it. Only its text parts matter here."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = Field(default_factory=list)

    def text(self) -> str:
        return "".join(
            p["text"] for p in self.parts if p.get("type") == "text" and isinstance(p["text"], str)
        )


class ChatRequest(BaseModel):
    """What ``DefaultChatTransport`` posts (extra keys of its ``body`` option are accepted)."""

    model_config = ConfigDict(extra="allow")

    id: ThreadId = Field(description="The chat's id: the streamctl thread.")
    messages: list[UIMessageIn] = Field(min_length=1)
    trigger: str | None = None
    messageId: str | None = None
    config: RunConfig = Field(
        default_factory=RunConfig, description="Per-run options, as in POST /v1/runs."
    )

    def to_run_create(self) -> RunCreate:
        user = next((m for m in reversed(self.messages) if m.role == "user"), None)
        if user is None or not user.text():
            raise InvalidInput("messages: the last user message has no text part")
        try:
            return RunCreate(
                thread_id=self.id,
                input=RunInput(messages=[Message(role="user", content=user.text())]),
                config=self.config,
            )
        except ValidationError as exc:
            raise invalid(exc, "messages") from exc


def ui_message_stream(
    request: Request,
    services: Services,
    sup: Supervisor,
    owner: str,
    run_id: str,
    frames: Any,
    headers: dict[str, str] | None = None,
    claimed: bool = False,
    cursor: tuple[int, int] = (0, 0),
) -> EventStream:
    translator = UIMessageTranslator(run_id)
    body = render(frames, translator, sse_part, cursor=cursor, keepalive=PING, end=DONE)
    return stream_response(
        request,
        services,
        sup,
        owner,
        body,
        content_type="text/event-stream",
        preamble=None,
        headers={**HEADERS, **(headers or {})},
        claimed=claimed,
    )


router = APIRouter(prefix="/v1/ai-sdk", tags=["ai-sdk"], route_class=StreamctlRoute)


@router.post("/chat", response_class=EventStream, responses=START_STREAM)
async def chat(
    body: ChatRequest,
    request: Request,
    svc: Svc,
    sup: Sup,
    me: Me,
    idempotency_key: KeyHeader = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Start a run on the chat's thread; answer it as a UI message stream. A retry with the same
    ``Idempotency-Key`` gets that run's message again (after ``Last-Event-ID``, if sent)."""
    create = body.to_run_create()
    with sup.streams.claim(me.name):
        started = await start_once(request, sup, svc.keys, me, idempotency_key, create)
        snapshot, frames = await sup.reads.run_frames(started.run_id, me.name)
        cursor = (0, 0)
        if not started.created:
            cursor = parse_part_cursor(last_event_id, started.run_id, snapshot["last_seq"])
    headers = {"X-Run-Id": started.run_id, "X-Thread-Id": started.thread_id}
    if not started.created:
        headers[REPLAYED] = "true"
        if snapshot["status"] not in ACTIVE_STATUSES and cursor == (snapshot["last_seq"], 0):
            await frames.aclose()  # type: ignore[attr-defined]
            sup.streams.close(me.name)
            return Response(status_code=204, headers=headers)  # read to its end already
    return ui_message_stream(
        request, svc, sup, me.name, started.run_id, frames, headers, claimed=True, cursor=cursor
    )


@router.get("/chat/{chat_id}/stream", response_class=EventStream, responses=READ_STREAM)
async def resume(chat_id: str, request: Request, svc: Svc, sup: Sup, me: Me) -> Response:
    """The chat's active run from its start, then live; 204 when it has none."""
    try:
        thread = await sup.reads.get_thread(me.name, chat_id, limit=1)  # its active run only
    except ThreadNotFound:
        return Response(status_code=204)
    active = thread["active_run"]
    if active is None:
        return Response(status_code=204)
    _, frames = await sup.reads.run_frames(active["run_id"], me.scope)
    headers = {"X-Run-Id": active["run_id"], "X-Thread-Id": chat_id}
    return ui_message_stream(request, svc, sup, me.name, active["run_id"], frames, headers)


@router.post("/chat/{chat_id}/stop", responses=STOP)
async def stop(chat_id: str, sup: Sup, me: Me) -> JSONResponse:
    """Stop the chat's active run; 200 once its task has exited (202 if still stopping)."""
    return stopped(await sup.control.stop_thread(me.name, chat_id))  # the caller's own chat
