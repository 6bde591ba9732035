"""An incremental Server-Sent Events decoder, following the WHATWG rules (HTML §9.2).

Used by the Python client; independent of the server's encoder on purpose. It handles LF, CR and
CRLF line ends (also a CR at the end of one chunk and an LF at the start of the next), a leading
BOM, comments, the one optional space after the colon, multi-line data, ``id`` with NUL ignored,
numeric-only ``retry``, multi-byte characters split across chunks (invalid UTF-8 becomes U+FFFD),
and drops an incomplete event at the end of the stream.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    """The event type (``message`` when the block had no ``event`` field)."""
    data: str
    id: str
    """The last event id in force when this event was dispatched."""


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []
        self.last_event_id = ""
        self.retry: int | None = None
        """The last valid ``retry`` value, in milliseconds."""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        text = self._buffer + text
        # A CR at the very end may be the first half of a CRLF: end the line now, and drop an LF
        # that starts the next chunk.
        ends_with_cr = text.endswith("\r")
        if ends_with_cr:
            text = text[:-1]
        lines = _LINE_END.split(text)
        self._buffer = lines.pop()
        if ends_with_cr:
            lines.append(self._buffer)
            self._buffer = ""
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_event_id)
