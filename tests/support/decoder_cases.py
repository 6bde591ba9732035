"""The parsing rules 1-7 of SSE-NOTES.md as cases: a stream, and what a conforming parser
dispatches from it. Fed to ``streamctl.decoder`` (test_decoder.py) and to the browser's parser
under Node (test_static.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    stream: bytes
    events: list[tuple[str, str, str]]
    """(event type, data, id) of every dispatched event."""
    last_event_id: str = ""
    retry: int | None = None


CASES: dict[str, Case] = {
    # 1. LF, CR and CRLF end lines; CR+LF split over two chunks is one break; BOM stripped once.
    "lf": Case(b"data: a\n\n", [("message", "a", "")]),
    "cr": Case(b"data: a\r\r", [("message", "a", "")]),
    "crlf": Case(b"data: a\r\n\r\n", [("message", "a", "")]),
    "mixed": Case(b"event: x\rdata: 1\r\ndata: 2\n\r\n", [("x", "1\n2", "")]),
    "crlf_is_one_break": Case(b"data: a\r\ndata: b\r\n\r\n", [("message", "a\nb", "")]),
    "cr_cr_is_two": Case(b"data: a\r\rdata: b\r\r", [("message", "a", ""), ("message", "b", "")]),
    "bom": Case(b"\xef\xbb\xbfdata: a\n\n", [("message", "a", "")]),
    "bom_once_only": Case(
        b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [("message", "b", "")]
    ),
    "bom_later_is_text": Case(b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [("message", "a", "")]),
    # 2. A blank line dispatches; a comment line touches nothing.
    "comments": Case(b": ping\ndata: a\n: mid\ndata: b\n\n:\n\n", [("message", "a\nb", "")]),
    "comment_only": Case(b": hi\n\n: there\n\n", []),
    # 3. Split at the first colon; one leading space removed; no colon: empty value.
    "colons": Case(b"data:a\ndata:  b\ndata\ndata: c:d\n\n", [("message", "a\n b\n\nc:d", "")]),
    "names_are_case_sensitive": Case(
        b"Data: x\nfoo: y\nEVENT: z\ndata: w\n\n", [("message", "w", "")]
    ),
    "event_type_resets": Case(
        b"event: tool_start\ndata: {}\n\ndata: x\n\n",
        [("tool_start", "{}", ""), ("message", "x", "")],
    ),
    # 4. data lines joined with LF; no data, no event (and the event type is reset anyway).
    "no_data_no_event": Case(
        b"event: e\n\nid: 3\nevent: f\n\ndata: x\n\n", [("message", "x", "3")], "3"
    ),
    "empty_data_line_is_data": Case(
        b"data\n\ndata:\n\n", [("message", "", ""), ("message", "", "")]
    ),
    "trailing_empty_line": Case(b"data: a\ndata:\n\n", [("message", "a\n", "")]),
    # 5. id: NUL ignored; empty resets; persists; an id-only block moves it without dispatching.
    "ids": Case(
        b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\nid: 7\n\n",
        [("message", "a", "1"), ("message", "b", "1"), ("message", "c", "2"), ("message", "d", "")],
        "7",
    ),
    "id_with_space": Case(b"id:  9\ndata: a\n\n", [("message", "a", " 9")], " 9"),
    # 6. retry only when all ASCII digits.
    "retry": Case(
        "retry: 1500\n\nretry: 15a\nretry: -1\nretry: 1.5\nretry:\nretry: \u0661\n"
        "retry: 20 \nretry:+3\n\n".encode(),
        [],
        retry=1500,
    ),
    "retry_zero": Case(b"retry: 0\ndata: a\n\n", [("message", "a", "")], retry=0),
    # 7. An incomplete last event is dropped; UTF-8 decodes across chunks, invalid bytes: U+FFFD.
    "incomplete_dropped": Case(b"data: a\n\ndata: b\n", [("message", "a", "")]),
    "unterminated_line": Case(b"data: a\n\ndata: b", [("message", "a", "")]),
    "multibyte": Case("data: héllo 😀 ☃ 東京\n\n".encode(), [("message", "héllo 😀 ☃ 東京", "")]),
    "invalid_utf8": Case(b"data: a\xffb\xe2\x98\n\n", [("message", "a\ufffdb\ufffd", "")]),
    "stream_like": Case(
        b'retry: 2000\n\nid: 1\nevent: run\ndata: {"a":1}\n\n: ping\n\n'
        b'id: 2\nevent: done\ndata: {"s":"\xc3\xa9"}\n\n',
        [("run", '{"a":1}', "1"), ("done", '{"s":"é"}', "2")],
        "2",
        2000,
    ),
}


def feedings(stream: bytes) -> Iterator[list[bytes]]:
    """Whole; byte by byte with empty chunks between; split in two at every point."""
    yield [stream]
    yield [piece for i in range(len(stream)) for piece in (stream[i : i + 1], b"")]
    for cut in range(1, len(stream)):
        yield [stream[:cut], stream[cut:]]
