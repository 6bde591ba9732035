"""AG-UI (the Agent-User Interaction protocol, 1.0): ``HttpAgent`` and CopilotKit on our runs.

``POST /v1/ag-ui`` takes a ``RunAgentInput`` and streams the run as AG-UI events (camelCase JSON
in ``data:`` lines), each with an SSE ``id:``. What AG-UI itself lacks, streamctl adds: the
client-chosen ``runId`` is the run's id, so posting the same ``runId`` again joins that run
instead of starting a second one; ``GET /v1/ag-ui/runs/{runId}/stream`` with ``Last-Event-ID``
sends exactly the events after that id, then the live tail; ``POST /v1/ag-ui/runs/{runId}/stop``
stops the run and answers once its task has exited.

The events are built here as plain dicts (the official ``ag-ui-protocol`` models check them in
the tests), so serving AG-UI needs no extra dependency.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...agents.base import Message
from ...auth import Principal
from ...errors import InvalidInput, RunIdTaken, RunNotFound
from ...events import Frame
from ...inputs import RunConfig, RunCreate, RunId, RunInput, ThreadId
from ...sse import EventStream
from ...supervisor import Supervisor
from ..auth import Me
from ..errors import StreamctlRoute
from ..idempotency import REPLAYED, KeyHeader, start_once
from ..services import Services, Sup, Svc
from .common import PING, READ_STREAM, START_STREAM, STOP, invalid, stopped, token_usage
from .wire import LastEventId, Part, parse_part_cursor, render, sse_part, stream_response


class AGUITranslator:
    """A run's frames as AG-UI events: every text message, reasoning message and tool call
    opened is closed, and the run ends with ``RUN_FINISHED`` (a stopped run: outcome
    ``cancelled``; a run that ended on an ``interrupt``: outcome ``interrupt``) or ``RUN_ERROR``.

    ``reasoning_chunk`` becomes AG-UI's reasoning events (``REASONING_START``, a reasoning
    message, ``REASONING_END``; the message id is ours plus ``:reasoning``, apart from the text
    message's); ``custom`` becomes ``CUSTOM``; ``interrupt`` becomes ``CUSTOM`` named
    ``on_interrupt`` with the value (as LangGraph's AG-UI integration sends it), and the run's
    ``RUN_FINISHED`` then lists it in an ``interrupt`` outcome."""

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.started = False
        self.text: str | None = None
        """The open text message's id."""
        self.last_text: str | None = None
        """The assistant message the next tool calls belong to."""
        self.reasoning: str | None = None
        """The open reasoning message's id."""
        self.interrupts: list[Part] = []
        self.error: dict[str, Any] | None = None

    def translate(self, frame: Frame) -> list[Part]:
        out: list[Part] = []
        data = orjson.loads(frame.data)
        kind = frame.type
        stamp = int(frame.created_at * 1000)  # from the log: a replay renders the same bytes
        if kind == "run":
            if not self.started:
                self.started = True
                out.append(
                    {
                        "type": "RUN_STARTED",
                        "timestamp": stamp,
                        "threadId": self.thread_id,
                        "runId": self.run_id,
                    }
                )
        elif kind == "message_chunk":
            self._close_reasoning(out, stamp)
            if self.text != data["message_id"]:
                self._close_text(out, stamp)
                self.text = self.last_text = data["message_id"]
                out.append(
                    {
                        "type": "TEXT_MESSAGE_START",
                        "timestamp": stamp,
                        "messageId": self.text,
                        "role": "assistant",
                    }
                )
            if data["content"]:
                out.append(
                    {
                        "type": "TEXT_MESSAGE_CONTENT",
                        "timestamp": stamp,
                        "messageId": self.text,
                        "delta": data["content"],
                    }
                )
        elif kind == "reasoning_chunk":
            self._close_text(out, stamp)
            reasoning_id = f"{data['message_id']}:reasoning"
            if self.reasoning != reasoning_id:
                self._close_reasoning(out, stamp)
                self.reasoning = reasoning_id
                out.append(
                    {"type": "REASONING_START", "timestamp": stamp, "messageId": reasoning_id}
                )
                out.append(
                    {
                        "type": "REASONING_MESSAGE_START",
                        "timestamp": stamp,
                        "messageId": reasoning_id,
                        "role": "reasoning",
                    }
                )
            if data["content"]:
                out.append(
                    {
                        "type": "REASONING_MESSAGE_CONTENT",
                        "timestamp": stamp,
                        "messageId": reasoning_id,
                        "delta": data["content"],
                    }
                )
        elif kind == "tool_start":
            self._close_text(out, stamp)
            self._close_reasoning(out, stamp)
            call_id = data["call_id"]
            start: Part = {
                "type": "TOOL_CALL_START",
                "timestamp": stamp,
                "toolCallId": call_id,
                "toolCallName": data["name"],
            }
            if self.last_text is not None:
                start["parentMessageId"] = self.last_text
            out.append(start)
            out.append(
                {
                    "type": "TOOL_CALL_ARGS",
                    "timestamp": stamp,
                    "toolCallId": call_id,
                    "delta": orjson.dumps(data["args"]).decode(),
                }
            )
            out.append({"type": "TOOL_CALL_END", "timestamp": stamp, "toolCallId": call_id})
        elif kind == "tool_end":
            self._close_text(out, stamp)
            self._close_reasoning(out, stamp)
            output = data["output"]
            content = output if isinstance(output, str) else orjson.dumps(output).decode()
            out.append(
                {
                    "type": "TOOL_CALL_RESULT",
                    "timestamp": stamp,
                    "messageId": f"{data['call_id']}:result",
                    "toolCallId": data["call_id"],
                    "content": content,
                    "role": "tool",
                }
            )
            self.last_text = None  # the model's next turn is a new assistant message
        elif kind == "custom":
            out.append(
                {"type": "CUSTOM", "timestamp": stamp, "name": data["name"], "value": data["data"]}
            )
        elif kind == "interrupt":
            self._close_text(out, stamp)
            self._close_reasoning(out, stamp)
            value = data["value"]
            interrupt: Part = {
                "id": data["interrupt_id"] or f"{self.run_id}:{frame.seq}",
                "reason": "input_required",
            }
            if isinstance(value, str):
                interrupt["message"] = value
            self.interrupts.append(interrupt)
            out.append(
                {"type": "CUSTOM", "timestamp": stamp, "name": "on_interrupt", "value": value}
            )
        elif kind == "error":
            self.error = data
        elif kind == "done":
            self._close_text(out, stamp)
            self._close_reasoning(out, stamp)
            status = data["status"]
            usage = token_usage(data.get("usage"))
            if status == "completed":
                finished: Part = {
                    "type": "RUN_FINISHED",
                    "timestamp": stamp,
                    "threadId": self.thread_id,
                    "runId": self.run_id,
                }
                if self.interrupts:
                    finished["outcome"] = {"type": "interrupt", "interrupts": self.interrupts}
                out.append(finished)
            elif status in ("cancelled", "interrupted"):
                out.append(
                    {
                        "type": "RUN_FINISHED",
                        "timestamp": stamp,
                        "threadId": self.thread_id,
                        "runId": self.run_id,
                        "outcome": {"type": "cancelled"},
                    }
                )
            else:
                error = self.error or {"code": status, "message": data.get("reason") or status}
                out.append(
                    {
                        "type": "RUN_ERROR",
                        "timestamp": stamp,
                        "message": error["message"],
                        "code": error["code"],
                    }
                )
            if usage is not None:  # RUN_FINISHED and RUN_ERROR both carry the run's usage
                out[-1]["usage"] = [usage]
        return out

    def _close_reasoning(self, out: list[Part], stamp: int) -> None:
        if self.reasoning is not None:
            ident = self.reasoning
            out.append({"type": "REASONING_MESSAGE_END", "timestamp": stamp, "messageId": ident})
            out.append({"type": "REASONING_END", "timestamp": stamp, "messageId": ident})
            self.reasoning = None

    def _close_text(self, out: list[Part], stamp: int) -> None:
        if self.text is not None:
            out.append({"type": "TEXT_MESSAGE_END", "timestamp": stamp, "messageId": self.text})
            self.text = None


class AGUIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    role: str
    content: Any = None
    """A string, a list of parts, or (an ``activity`` message) an object: any is accepted, since
    the client sends its whole conversation back with every run."""

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not isinstance(self.content, list):
            return ""
        return "".join(
            part["text"]
            for part in self.content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )


class RunAgentInput(BaseModel):
    """AG-UI's ``RunAgentInput``. The thread keeps the history, so only the last user message
    becomes the run's input; ``forwardedProps.config`` is passed as the run's ``config``."""

    model_config = ConfigDict(extra="allow")

    threadId: ThreadId
    runId: RunId
    messages: list[AGUIMessage] = Field(min_length=1)
    tools: list[Any] = Field(default_factory=list)
    context: list[Any] = Field(default_factory=list)
    state: Any = None
    forwardedProps: Any = None

    def to_run_create(self) -> RunCreate:
        user = next((m for m in reversed(self.messages) if m.role == "user"), None)
        if user is None or not user.text():
            raise InvalidInput("messages: the last user message has no text")
        props = self.forwardedProps if isinstance(self.forwardedProps, dict) else {}
        try:
            return RunCreate(
                thread_id=self.threadId,
                input=RunInput(messages=[Message(role="user", content=user.text())]),
                config=RunConfig.model_validate(props.get("config") or {}),
            )
        except ValidationError as exc:
            raise invalid(exc, "body") from exc


async def _join(
    request: Request,
    services: Services,
    sup: Supervisor,
    me: Principal,
    run_id: str,
    last_event_id: str | None,
    claimed: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    snapshot, frames = await sup.reads.run_frames(run_id, me.scope)
    cursor = parse_part_cursor(last_event_id, run_id, snapshot["last_seq"])
    headers = {"X-Run-Id": run_id, "X-Thread-Id": snapshot["thread_id"], **(headers or {})}
    if snapshot["status"] not in ("queued", "running") and cursor == (snapshot["last_seq"], 0):
        await frames.aclose()  # type: ignore[attr-defined]
        if claimed:
            sup.streams.close(me.name)
        # Nothing after that id: an EventSource stops here.
        return Response(status_code=204, headers=headers)
    translator = AGUITranslator(snapshot["thread_id"], run_id)
    body = render(frames, translator, sse_part, cursor=cursor, keepalive=PING)
    return stream_response(
        request,
        services,
        sup,
        me.name,
        body,
        content_type="text/event-stream",
        preamble=None,
        headers=headers,
        claimed=claimed,
    )


async def _existing(sup: Supervisor, body: RunAgentInput, me: Principal) -> bool:
    """Whether ``body.runId`` names a run already: the caller's on the same thread (join it),
    or else ``RunIdTaken``. False: the id is free."""
    try:
        snapshot = await sup.reads.get_run(body.runId, me.scope)
    except RunNotFound:
        try:
            await sup.reads.get_run(body.runId, None)
        except RunNotFound:
            return False
        raise RunIdTaken(body.runId) from None
    if snapshot["thread_id"] != body.threadId:
        raise RunIdTaken(body.runId)
    return True


router = APIRouter(prefix="/v1/ag-ui", tags=["ag-ui"], route_class=StreamctlRoute)


@router.post("", response_class=EventStream, responses=START_STREAM)
async def run_agent(
    body: RunAgentInput,
    request: Request,
    svc: Svc,
    sup: Sup,
    me: Me,
    idempotency_key: KeyHeader = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Start the run ``runId`` (or join it, if it exists) and stream it as AG-UI events. With an
    ``Idempotency-Key`` an earlier request sent, join the run that request started."""
    if idempotency_key is None and await _existing(sup, body, me):
        return await _join(request, svc, sup, me, body.runId, last_event_id)
    create = body.to_run_create()
    with sup.streams.claim(me.name):
        run_id, replayed = body.runId, None
        try:
            started = await start_once(
                request, sup, svc.keys, me, idempotency_key, create, run_id=body.runId
            )
            run_id = started.run_id
            replayed = None if started.created else {REPLAYED: "true"}
        except RunIdTaken:  # the same runId posted twice at once: the other one started it
            if not await _existing(sup, body, me):
                raise
        return await _join(
            request, svc, sup, me, run_id, last_event_id, claimed=True, headers=replayed
        )


@router.get("/runs/{run_id}/stream", response_class=EventStream, responses=READ_STREAM)
async def resume(
    run_id: str,
    request: Request,
    svc: Svc,
    sup: Sup,
    me: Me,
    last_event_id: LastEventId = None,
) -> Response:
    """The run's events after ``Last-Event-ID`` (all without it), then the live tail."""
    return await _join(request, svc, sup, me, run_id, last_event_id)


@router.post("/runs/{run_id}/stop", responses=STOP)
async def stop(run_id: str, sup: Sup, me: Me) -> JSONResponse:
    """Stop the run; 200 with its final state once its task has exited (202: stopping)."""
    return stopped(await sup.control.stop(run_id, me.scope))
