"""Events and their one-time SSE encoding (DESIGN.md §4; invariant 3: live bytes == replayed)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from streamctl.events import (
    Custom,
    Done,
    ErrorEvent,
    Frame,
    Interrupt,
    MessageChunk,
    ReasoningChunk,
    RunStarted,
    ToolEnd,
    ToolStart,
    Usage,
    event_adapter,
    event_json_schema,
)
from streamctl.store import Store

AnyEvent = (
    RunStarted
    | MessageChunk
    | ReasoningChunk
    | ToolStart
    | ToolEnd
    | Custom
    | Interrupt
    | ErrorEvent
    | Done
)

ALL_EVENTS: list[AnyEvent] = [
    RunStarted(run_id="r1", thread_id="t1"),
    MessageChunk(content="Hello ", message_id="m1"),
    ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id="c1"),
    ToolEnd(name="get_weather", output={"text": "Sunny, 22°C", "n": [1, 2.5, None]}, call_id="c1"),
    ReasoningChunk(content="The user wants weather.", message_id="m2"),
    Custom(name="progress", data={"step": 2, "of": [1, 2, 3], "note": None}),
    Interrupt(value={"question": "Book it?"}, interrupt_id="i1"),
    ErrorEvent(code="agent_error", message="RuntimeError: boom"),
    Done(run_id="r1", thread_id="t1", status="completed", reason="the agent finished", tokens=3),
    Done(
        run_id="r1",
        thread_id="t1",
        status="completed",
        reason="the agent finished",
        tokens=3,
        usage={"input_tokens": 12, "output_tokens": 7},
    ),
]

NASTY = [
    "line one\nline two",
    "carriage\rreturn",
    "crlf\r\nending\r\n",
    "\n\ndata: injected\n\nid: 999\nevent: done\n\n",
    "data: x",
    "nul\x00byte",
    "emoji 🌧️👩‍👩‍👧 and accents é ü 東京",
    "\x0b\x0c\x1b[31m other controls \x7f",
    "\u2028\u2029 unicode separators",
]


def parse_block(sse: bytes) -> list[tuple[str, str]]:
    """The (field, value) lines of one SSE block, as a conforming parser splits them."""
    assert sse.endswith(b"\n\n"), sse
    body = sse[:-2].decode("utf-8")
    # The SSE spec ends a line at CR, LF or CRLF: split on all three, as a browser would.
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fields = []
    for line in lines:
        name, _, value = line.partition(": ")
        fields.append((name, value))
    return fields


def test_build_produces_id_event_data_and_blank_line() -> None:
    frame = Frame.build(7, "message_chunk", b'{"content":"hi"}', 12.5)
    assert frame.sse == b'id: 7\nevent: message_chunk\ndata: {"content":"hi"}\n\n'
    assert (frame.seq, frame.type, frame.data, frame.created_at) == (
        7,
        "message_chunk",
        b'{"content":"hi"}',
        12.5,
    )


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_encode_puts_the_payload_without_type_on_one_data_line(event: AnyEvent) -> None:
    frame = Frame.encode(42, event, 1.0)
    assert frame.type == event.type
    assert parse_block(frame.sse) == [
        ("id", "42"),
        ("event", event.type),
        ("data", frame.data.decode()),
    ]
    payload = orjson.loads(frame.data)
    assert frame.data_size == len(frame.data)
    assert "type" not in payload
    assert payload == orjson.loads(orjson.dumps(event.model_dump(exclude={"type"})))
    # The frame is enough to rebuild the event: type from `event:`, fields from `data:`.
    assert event_adapter.validate_python({"type": frame.type, **payload}) == event


@pytest.mark.parametrize("content", NASTY)
def test_hostile_content_stays_on_one_data_line(content: str) -> None:
    frame = Frame.encode(3, MessageChunk(content=content, message_id="m1"), 0.0)
    head, data_line = frame.sse[:-2].rsplit(b"\n", 1)
    assert head == b"id: 3\nevent: message_chunk"
    assert data_line.startswith(b"data: ")
    for raw in (b"\r", b"\n", b"\x00"):
        assert raw not in frame.data
    assert [name for name, _ in parse_block(frame.sse)] == ["id", "event", "data"]
    assert orjson.loads(data_line[len(b"data: ") :])["content"] == content


def test_tool_output_with_newlines_in_nested_values_stays_on_one_line() -> None:
    output: dict[str, Any] = {"lines": ["a\nb", "c\r\nd"], "nested": {"k\nk": "v\rv"}}
    frame = Frame.encode(1, ToolEnd(name="t", output=output, call_id="c"), 0.0)
    assert [name for name, _ in parse_block(frame.sse)] == ["id", "event", "data"]
    assert orjson.loads(frame.data)["output"] == output


def test_a_frame_holds_about_its_own_size_in_memory() -> None:
    # orjson's bytes keep an over-allocated buffer (4 KiB for a token's 100 bytes); a run's tail
    # holds thousands of frames, so a frame must not keep that buffer alive.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frames = [
            Frame.encode(seq, MessageChunk(content=" word", message_id="m_0123456789"), 1.0)
            for seq in range(2000)
        ]
        per_frame = (tracemalloc.get_traced_memory()[0] - before) / len(frames)
    finally:
        tracemalloc.stop()
    assert per_frame < 4 * len(frames[0].sse), per_frame


def test_as_json_gives_seq_type_and_decoded_data() -> None:
    frame = Frame.encode(5, ToolStart(name="n", args={"x": 1}, call_id="c"), 0.0)
    assert frame.as_json() == {
        "seq": 5,
        "type": "tool_start",
        "data": {"name": "n", "args": {"x": 1}, "call_id": "c"},
    }


@pytest.mark.anyio
async def test_replayed_frames_equal_live_frames_byte_for_byte(db_path: Path) -> None:
    live = [
        Frame.encode(seq, event, 1_700_000_000.123456 + seq)
        for seq, event in enumerate(
            [*ALL_EVENTS, *(MessageChunk(content=c, message_id="m2") for c in NASTY)], start=1
        )
    ]

    class Sink:
        def committed(self, frame: Frame, event: object) -> None:
            pass

        def publish(self) -> None:
            pass

    async with Store(db_path) as store:
        for frame in live:
            store.append("r1", frame, None, Sink())
        await store.flush()
        replayed = await store.read_frames("r1", 0)
    assert [f.sse for f in replayed] == [f.sse for f in live]
    assert replayed == live  # seq, type, data, created_at and sse all survive the round trip


def test_event_json_schema_lists_all_nine_types_with_a_type_discriminator() -> None:
    schema = event_json_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == {
        "run",
        "message_chunk",
        "reasoning_chunk",
        "tool_start",
        "tool_end",
        "custom",
        "interrupt",
        "error",
        "done",
    }
    assert len(schema["oneOf"]) == 9
    for type_name, ref in mapping.items():
        model = schema["$defs"][ref.rsplit("/", 1)[1]]
        assert model["properties"]["type"]["const"] == type_name
    done = schema["$defs"]["Done"]["properties"]["status"]
    assert set(done["enum"]) == {"completed", "cancelled", "failed", "timed_out", "interrupted"}


def test_events_reject_unknown_fields_and_statuses() -> None:
    with pytest.raises(ValidationError):
        event_adapter.validate_python(
            {"type": "message_chunk", "content": "x", "message_id": "m", "bogus": 1}
        )
    with pytest.raises(ValidationError):
        event_adapter.validate_python(
            {"type": "done", "run_id": "r", "thread_id": "t", "status": "running", "reason": ""}
        )


def test_usage_is_not_an_event_of_the_stream_and_adds_up() -> None:
    assert "usage" not in event_json_schema()["discriminator"]["mapping"]
    totals: dict[str, int] = {}
    Usage(input_tokens=10, output_tokens=3).add_to(totals)
    Usage(input_tokens=5, output_tokens=4).add_to(totals)
    assert totals == {"input_tokens": 15, "output_tokens": 7}
    usage = event_json_schema()["$defs"]["Done"]["properties"]["usage"]
    assert {"type": "null"} in usage["anyOf"]


def test_interrupt_keeps_the_payload_method() -> None:
    # A field named `payload` would shadow the method every event is encoded with.
    event = Interrupt(value={"payload": 1})
    assert event.payload() == {"value": {"payload": 1}, "interrupt_id": None}
