"""What every protocol view shares: sub-event cursors, rendering frames through a translator, and
the streaming response.

One committed frame may translate into several parts of a protocol (a tool call is three AG-UI
events), so a cursor names a part, not only a frame: the last part of frame ``n`` has the SSE id
``n``, an earlier part ``k`` (1-based) has ``n.k``. A client resuming from any id it received gets
exactly the parts after it: the view translates the run from its first frame again (a translator
is deterministic) and skips what that id covers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

import orjson
from fastapi import Header, Request
from starlette.types import Scope

from ...errors import CursorOutOfRange, InvalidCursor
from ...events import Frame
from ...sse import EventStream, SendWatch
from ...supervisor import Supervisor
from ..services import Services
from ..streams import slow_reset

Part = dict[str, Any]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
Encode = Callable[[Part, str], bytes]

_MAX_ID = 40


class Translator(Protocol):
    def translate(self, frame: Frame) -> list[Part]:
        """The protocol's parts for the next frame of the run (frames arrive in seq order)."""
        ...


def parse_part_cursor(raw: str | None, run_id: str, last_seq: int) -> tuple[int, int]:
    """``Last-Event-ID`` of a protocol stream as ``(seq, parts of that frame already sent)``;
    ``(seq, 0)`` means the whole frame was sent. Absent or empty: from the start."""
    if not raw:
        return 0, 0
    seq, dot, part = raw.partition(".")
    digits = seq.isascii() and seq.isdigit() and (not dot or (part.isascii() and part.isdigit()))
    if not digits or len(raw) > _MAX_ID:
        shown = raw[:_MAX_ID].encode("unicode_escape").decode("ascii")
        raise InvalidCursor(f"Last-Event-ID must be <seq> or <seq>.<part>, got {shown!r}")
    cursor = (int(seq), int(part) if dot else 0)
    if cursor[0] > last_seq:
        raise CursorOutOfRange(run_id, cursor[0], last_seq)
    return cursor


def sse_part(part: Part, ident: str) -> bytes:
    # orjson escapes every control character: the JSON is one line, so it is one data field.
    return b"id: %s\ndata: %s\n\n" % (ident.encode("ascii"), orjson.dumps(part))


def ndjson_part(part: Part, ident: str) -> bytes:
    return orjson.dumps(part) + b"\n"


async def render(
    frames: AsyncIterator[list[Frame]],
    translator: Translator,
    encode: Encode,
    *,
    cursor: tuple[int, int] = (0, 0),
    keepalive: bytes,
    end: bytes = b"",
) -> AsyncIterator[bytes]:
    """The encoded parts of every frame after ``cursor``, one write per batch of frames; then
    ``end`` once the run's terminal frame was rendered."""
    after, skip = cursor
    try:
        async for batch in frames:
            if not batch:
                yield keepalive
                continue
            out: list[bytes] = []
            for frame in batch:
                parts = translator.translate(frame)  # always: it builds the state
                if frame.seq < after or (frame.seq == after and not skip):
                    continue
                last = len(parts) - 1
                for i in range(skip if frame.seq == after else 0, len(parts)):
                    ident = str(frame.seq) if i == last else f"{frame.seq}.{i + 1}"
                    out.append(encode(parts[i], ident))
            if out:
                yield b"".join(out)
        if end:
            yield end
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


class ProtocolStream(EventStream):
    """A protocol's stream: ``EventStream``'s disconnect handling, send watch and slow-client
    reset, with the protocol's content type and preamble (an NDJSON stream has no ``retry:``)."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        content_type: str,
        preamble: bytes | None,
        send_timeout: float,
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_slow: Callable[[Scope], None] | None = None,
        on_close: Callable[[], None] | None = None,
        watch: SendWatch | None = None,
    ) -> None:
        super().__init__(
            body,
            retry_ms=0,
            send_timeout=send_timeout,
            headers=headers,
            on_disconnect=on_disconnect,
            on_slow=on_slow,
            on_close=on_close,
            watch=watch,
        )
        self.raw_headers = [
            (b"content-type", content_type.encode("latin-1")),
            *((k, v) for k, v in self.raw_headers if k != b"content-type"),
        ]
        self.preamble = preamble if preamble is not None else b""


def stream_response(
    request: Request,
    services: Services,
    sup: Supervisor,
    owner: str,
    body: AsyncIterator[bytes],
    *,
    content_type: str,
    preamble: bytes | None,
    headers: dict[str, str] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    claimed: bool = False,
) -> ProtocolStream:
    """The response for ``body``, like ``http.streams.event_stream``: counts as one of the
    principal's streams while open (429 past the cap) and is watched by the services'
    ``SendWatch``. ``claimed``: the caller has already opened that stream slot."""
    if not claimed:
        sup.streams.open(owner)
    return ProtocolStream(
        body,
        content_type=content_type,
        preamble=preamble,
        send_timeout=services.settings.send_timeout,
        headers=headers,
        on_disconnect=on_disconnect,
        on_slow=slow_reset(request, sup),
        on_close=lambda: sup.streams.close(owner),
        watch=services.watch,
    )
