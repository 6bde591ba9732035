"""Test helpers for the wire: a reference SSE parser written from SSE-NOTES.md rules 1-7, and a
checker that a stream (at any granularity) is an exact shaping of the run's log.

The parser takes bytes in any split (one byte at a time if you like) and decodes UTF-8
incrementally, so a character straddling two reads decodes as one character.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
from httpx_sse import aconnect_sse

Mode = Literal["low", "batched", "message"]


@dataclass(frozen=True)
class SpecEvent:
    id: str
    type: str
    data: str


@dataclass
class SpecParser:
    """The WHATWG event-stream interpretation, fed bytes incrementally."""

    events: list[SpecEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_event_id: str = ""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _line: list[str] = field(default_factory=list)
    _started: bool = False
    _after_cr: bool = False
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> None:
        self._chars(self._decoder.decode(chunk))

    def close(self) -> None:
        """End of stream: an incomplete event is discarded (rule 7)."""
        self._chars(self._decoder.decode(b"", final=True))
        self._line, self._data, self._event = [], [], ""

    def _chars(self, text: str) -> None:
        for ch in text:
            if not self._started:
                self._started = True
                if ch == "\ufeff":  # a leading BOM is stripped, once only (rule 1)
                    continue
            if self._after_cr:
                self._after_cr = False
                if ch == "\n":  # CR LF is one line break, even across two chunks
                    continue
            if ch == "\r":
                self._after_cr = True
                self._end_line()
            elif ch == "\n":
                self._end_line()
            else:
                self._line.append(ch)

    def _end_line(self) -> None:
        line = "".join(self._line)
        self._line = []
        if not line:
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            self.retry = int(value)

    def _dispatch(self) -> None:
        if not self._data:  # empty data: nothing is dispatched (rule 4)
            self._event = ""
            return
        self.events.append(
            SpecEvent(self.last_event_id, self._event or "message", "\n".join(self._data))
        )
        self._data, self._event = [], ""


def parse_bytes(raw: bytes, step: int = 1) -> SpecParser:
    """Feed ``raw`` to a fresh parser ``step`` bytes at a time, then end the stream."""
    parser = SpecParser()
    for i in range(0, len(raw), step):
        parser.feed(raw[i : i + step])
    parser.close()
    return parser


@dataclass(frozen=True)
class Ev:
    """An event as the log or a client has it: seq (the SSE id), type, decoded data."""

    seq: int
    type: str
    data: Any


async def fetch_log(client: httpx.AsyncClient, run_id: str) -> list[Ev]:
    """The run's whole committed log from ``GET /v1/runs/{id}/events``, page by page."""
    log: list[Ev] = []
    while True:
        params = {"after": str(len(log)), "limit": "1000"}
        response = await client.get(f"/v1/runs/{run_id}/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        log += [Ev(e["seq"], e["type"], e["data"]) for e in page["events"]]
        if len(log) >= page["last_seq"]:
            return log


def text(events: list[Ev]) -> str:
    return "".join(e.data["content"] for e in events if e.type == "message_chunk")


def check_shaped(received: list[Ev], log: list[Ev], after: int, mode: Mode | None) -> None:
    """Assert ``received`` is exactly the log after ``after``, shaped by ``mode``.

    Every received event covers the log's seqs (previous id, its id]: a non-chunk event is one
    log event, unchanged; a ``message_chunk`` is adjacent chunks of one message, joined, carrying
    the last seq it covers. ``low`` (mode) means no merging at all; ``message`` means each chunk
    event is a whole message; ``None`` allows any merging (a lagging ``low`` stream).
    """
    assert [e.seq for e in log] == list(range(1, len(log) + 1)), "the log is not dense"
    prev = after
    for event in received:
        assert event.seq > prev, f"id {event.seq} after {prev}: not strictly increasing"
        segment = log[prev : event.seq]
        if event.type != "message_chunk" or mode == "low":
            assert segment == [event], f"event {event} is not the log's {segment}"
        else:
            message_id = event.data["message_id"]
            for part in segment:
                assert part.type == "message_chunk", f"{event} covers {part}"
                assert part.data["message_id"] == message_id, f"{event} spans two messages"
                assert part.data["role"] == event.data["role"]
            assert text(segment) == event.data["content"], f"merged content differs at {event.seq}"
            assert set(event.data) == {"role", "content", "message_id"}
            if mode == "message":
                before = log[prev - 1] if prev else None
                following = log[event.seq] if event.seq < len(log) else None
                for edge in (before, following):
                    assert edge is None or edge.data.get("message_id") != message_id, (
                        f"event {event.seq} is not a whole message"
                    )
        prev = event.seq
    assert prev == len(log), f"stream ended at {prev}, the log at {len(log)}"


def decode(events: list[tuple[str, str, str]]) -> list[Ev]:
    """(id, type, data) triples as a parser reports them, decoded; ids must be ASCII digits."""
    out = []
    for id_, type_, data in events:
        assert id_.isascii() and id_.isdigit(), f"id {id_!r} is not ASCII digits"
        out.append(Ev(int(id_), type_, orjson.loads(data)))
    return out


def parsed(events: list[Any]) -> list[Ev]:
    # httpx-sse reports empty-data blocks (the retry line, a ping after an event) that the
    # standard does not dispatch (SSE-NOTES.md rule 4).
    return decode([(e.id, e.event, e.data) for e in events if e.data != ""])


async def stream(
    client: httpx.AsyncClient, method: str, url: str, limit: int | None = None, **kw: Any
) -> tuple[httpx.Response, list[Ev]]:
    """Read a stream (at most ``limit`` events, then disconnect)."""
    got: list[Any] = []
    async with aconnect_sse(client, method, url, **kw) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            return source.response, []
        async for event in source.aiter_sse():
            if event.data != "":
                got.append(event)
            if limit is not None and len(got) >= limit:
                break
    return source.response, parsed(got)
