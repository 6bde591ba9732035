"""The translators on their own, fed synthetic frames: every log event type (including the ones
agents of other issues emit: ``custom``, ``reasoning_chunk``), every ending (completed, cancelled,
interrupted, failed, timed out), a queued run's second ``run`` event. AG-UI events are checked
against the official models; every translation is deterministic (a resume renders it again)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from streamctl.events import Frame
from streamctl.http.protocols.ag_ui import AGUITranslator
from streamctl.http.protocols.agentflow import StreamChunkTranslator
from streamctl.http.protocols.ai_sdk import UIMessageTranslator
from streamctl.http.protocols.wire import Translator, parse_part_cursor

EVENT: TypeAdapter[Any] = TypeAdapter(Event)


def log(status: str, error: bool = False) -> list[Frame]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("run", {"run_id": "r", "thread_id": "t", "status": "queued"}),
        ("run", {"run_id": "r", "thread_id": "t", "status": "running"}),
        ("reasoning_chunk", {"content": "thinking", "message_id": "th"}),
        ("message_chunk", {"role": "assistant", "content": "a", "message_id": "m1"}),
        ("message_chunk", {"role": "assistant", "content": "", "message_id": "m1"}),
        ("custom", {"name": "progress", "data": {"pct": 50}}),
        ("tool_start", {"name": "f", "args": {"x": [1, "\n"]}, "call_id": "c1"}),
        ("tool_end", {"name": "f", "output": {"ok": True}, "call_id": "c1"}),
        ("message_chunk", {"role": "assistant", "content": "b", "message_id": "m2"}),
    ]
    if error:
        events.append(("error", {"code": "agent_error", "message": "boom"}))
    events.append(("done", {"run_id": "r", "thread_id": "t", "status": status, "reason": "x"}))
    return [Frame.build(i, t, orjson.dumps(d), 1.5) for i, (t, d) in enumerate(events, start=1)]


def parts(translator: Translator, frames: list[Frame]) -> list[list[dict[str, Any]]]:
    return [translator.translate(f) for f in frames]


ENDINGS = [
    ("completed", False),
    ("cancelled", False),
    ("interrupted", False),
    ("failed", True),
    ("timed_out", False),
]


@pytest.mark.parametrize(("status", "error"), ENDINGS)
def test_ag_ui_events_validate_and_close_what_they_open(status: str, error: bool) -> None:
    out = [p for batch in parts(AGUITranslator("t", "r"), log(status, error)) for p in batch]
    for event in out:
        EVENT.validate_python(event)
    kinds = [e["type"] for e in out]
    assert kinds.count("RUN_STARTED") == 1 and kinds.count("TEXT_MESSAGE_START") == 2
    assert kinds.count("TEXT_MESSAGE_START") == kinds.count("TEXT_MESSAGE_END")
    assert "CUSTOM" in kinds and all(e.get("delta") != "" for e in out)
    last = out[-1]
    if status == "completed":
        assert last["type"] == "RUN_FINISHED" and "outcome" not in last
    elif status in ("cancelled", "interrupted"):
        assert last["type"] == "RUN_FINISHED" and last["outcome"] == {"type": "cancelled"}
    else:
        assert last["type"] == "RUN_ERROR"
        assert last["code"] == ("agent_error" if error else status)
    assert out == [p for b in parts(AGUITranslator("t", "r"), log(status, error)) for p in b]


@pytest.mark.parametrize(("status", "error"), ENDINGS)
def test_ui_message_parts_pair_up(status: str, error: bool) -> None:
    out = [p for batch in parts(UIMessageTranslator("r"), log(status, error)) for p in batch]
    kinds = [p["type"] for p in out]
    assert kinds[0] == "start" and kinds.count("start") == 1
    for opened, closed in (
        ("text-start", "text-end"),
        ("reasoning-start", "reasoning-end"),
        ("start-step", "finish-step"),
    ):
        assert kinds.count(opened) == kinds.count(closed) > 0
    assert "data-progress" in kinds
    ending = {"completed": "finish", "cancelled": "abort", "interrupted": "abort"}
    assert kinds[-1] == ending.get(status, "error")
    if kinds[-1] == "error":
        assert out[-1]["errorText"] == ("agent_error: boom" if error else f"{status}: x")


def test_stream_chunks_end_with_the_runs_status() -> None:
    out = [
        p
        for batch in parts(StreamChunkTranslator("t", "r", False), log("failed", True))
        for p in batch
    ]
    assert [c["event"] for c in out][-2:] == ["error", "updates"]
    assert (
        out[-1]["data"]["run_status"] == "failed" and out[0]["data"]["status"] == "invoking_graph"
    )
    assert out[1]["data"]["status"] == "running"  # the queued run started
    whole = [
        c["message"]["content"][0]["text"]
        for c in out
        if c["event"] == "message"
        and not c["message"]["delta"]
        and c["message"]["role"] == "assistant"
        and c["message"]["content"][0]["type"] == "text"
    ]
    assert whole == ["a", "b"]


def test_part_cursors() -> None:
    assert parse_part_cursor(None, "r", 5) == (0, 0) == parse_part_cursor("", "r", 5)
    assert parse_part_cursor("5", "r", 5) == (5, 0)
    assert parse_part_cursor("4.2", "r", 5) == (4, 2)


def interrupted_log() -> list[Frame]:
    """A run that reasons, sends a custom event, then pauses on an ``interrupt`` and completes."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("run", {"run_id": "r", "thread_id": "t", "status": "running"}),
        ("reasoning_chunk", {"content": "let me see", "message_id": "m1"}),
        ("reasoning_chunk", {"content": "", "message_id": "m1"}),
        ("message_chunk", {"role": "assistant", "content": "I need", "message_id": "m1"}),
        ("custom", {"name": "progress", "data": None}),
        ("reasoning_chunk", {"content": "hm", "message_id": "m2"}),
        ("interrupt", {"value": "Approve the refund?", "interrupt_id": None}),
        ("interrupt", {"value": {"ask": "amount"}, "interrupt_id": "i2"}),
        ("done", {"run_id": "r", "thread_id": "t", "status": "completed", "reason": "x"}),
    ]
    return [Frame.build(i, t, orjson.dumps(d), 1.5) for i, (t, d) in enumerate(events, start=1)]


def test_ag_ui_reasoning_custom_and_interrupts() -> None:
    out = [p for batch in parts(AGUITranslator("t", "r"), interrupted_log()) for p in batch]
    for event in out:
        EVENT.validate_python(event)
    kinds = [e["type"] for e in out]
    assert kinds == [
        "RUN_STARTED",
        "REASONING_START",
        "REASONING_MESSAGE_START",
        "REASONING_MESSAGE_CONTENT",
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "CUSTOM",
        "TEXT_MESSAGE_END",
        "REASONING_START",
        "REASONING_MESSAGE_START",
        "REASONING_MESSAGE_CONTENT",
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "CUSTOM",
        "CUSTOM",
        "RUN_FINISHED",
    ]
    assert out[1]["messageId"] == "m1:reasoning" and out[6]["messageId"] == "m1"
    assert out[8] == {"type": "CUSTOM", "timestamp": 1500, "name": "progress", "value": None}
    assert [(e["name"], e["value"]) for e in out[-3:-1]] == [
        ("on_interrupt", "Approve the refund?"),
        ("on_interrupt", {"ask": "amount"}),
    ]
    assert out[-1]["outcome"] == {
        "type": "interrupt",
        "interrupts": [
            {"id": "r:7", "reason": "input_required", "message": "Approve the refund?"},
            {"id": "i2", "reason": "input_required"},
        ],
    }


def test_ui_message_reasoning_custom_and_interrupts() -> None:
    out = [p for batch in parts(UIMessageTranslator("r"), interrupted_log()) for p in batch]
    assert [p["type"] for p in out] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "data-progress",
        "text-end",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "data-interrupt",
        "data-interrupt",
        "finish-step",
        "finish",
    ]
    assert out[-4]["data"] == {"value": "Approve the refund?", "interrupt_id": None}
    assert out[-3]["data"] == {"value": {"ask": "amount"}, "interrupt_id": "i2"}


def test_stream_chunks_carry_custom_events_and_interrupts_as_updates() -> None:
    out = [
        p
        for batch in parts(StreamChunkTranslator("t", "r", False), interrupted_log())
        for p in batch
    ]
    updates = [c["data"] for c in out if c["event"] == "updates" and "event" in c["data"]]
    assert updates == [
        {"event": "custom", "name": "progress", "data": None},
        {"event": "interrupt", "value": "Approve the refund?", "interrupt_id": None},
        {"event": "interrupt", "value": {"ask": "amount"}, "interrupt_id": "i2"},
    ]
