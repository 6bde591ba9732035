"""Granularity: how a subscriber shapes the committed frames it sends.

- ``low``: every event as committed. Only a subscriber that has fallen far behind a live run (a
  whole write's worth of events) gets adjacent chunks merged, so it catches up in fewer bytes.
- ``batched``: adjacent ``message_chunk``s of one message are merged into one event (the
  subscriber also waits up to ``batch_ms`` between writes, so there is something to merge).
- ``message``: assistant text as whole messages; tool and terminal events as they come. A message
  longer than ``max_chars`` (setting ``max_message_buffer``) is sent in parts, each a
  ``message_chunk`` continuing the last: a stream holds at most that much text (plus one chunk),
  whatever the length of a message, instead of a whole 200k-word message per stream.

A merged event is a ``message_chunk`` whose content is the chunks' contents joined and whose id
is the last seq it covers. So resuming from any id a client received yields the rest of the
content exactly once, whatever the granularity.
"""

from __future__ import annotations

from typing import Literal

import orjson

from .events import Frame

Granularity = Literal["low", "batched", "message"]
GRANULARITIES: tuple[Granularity, ...] = ("low", "batched", "message")

LAG_MERGE_FRAMES = 1024
"""A ``low`` subscriber handed this many frames in one wake is lagging: merge its chunks."""

MESSAGE_BUFFER_CHARS = 65_536
"""Default of ``max_message_buffer``: the text a ``message`` stream holds before sending a part."""


class Shaper:
    """One subscriber's shaping state: at most one open message (``message`` mode only)."""

    __slots__ = (
        "_chars",
        "_content",
        "_created_at",
        "_message_id",
        "_role",
        "_seq",
        "max_chars",
        "mode",
    )

    def __init__(self, mode: Granularity, max_chars: int = MESSAGE_BUFFER_CHARS) -> None:
        self.mode = mode
        self.max_chars = max_chars
        self._message_id: str | None = None
        self._role = "assistant"
        self._content: list[str] = []
        self._chars = 0
        self._seq = 0
        self._created_at = 0.0

    def shape(self, frames: list[Frame], behind: int = 0) -> list[Frame]:
        """The frames to send now for ``frames`` (the next committed ones, in order).

        ``behind``: how many committed events of a live run the subscriber had yet to send.
        """
        if self.mode == "low" and behind < LAG_MERGE_FRAMES:
            return frames
        out: list[Frame] = []
        for frame in frames:
            if frame.type != "message_chunk":
                self._flush(out)
                out.append(frame)
                continue
            data = orjson.loads(frame.data)
            if data["message_id"] != self._message_id:
                self._flush(out)
                self._message_id, self._role = data["message_id"], data["role"]
            self._content.append(data["content"])
            self._chars += len(data["content"])
            self._seq, self._created_at = frame.seq, frame.created_at
            if self._chars >= self.max_chars:
                message_id, role = self._message_id, self._role
                self._flush(out)  # a part; the rest of the message continues it
                self._message_id, self._role = message_id, role
        if self.mode != "message":
            self._flush(out)  # batched and lagging low never hold text back past a write
        return out

    def _flush(self, out: list[Frame]) -> None:
        if self._message_id is None:
            return
        data = {
            "role": self._role,
            "content": "".join(self._content),
            "message_id": self._message_id,
        }
        out.append(Frame.build(self._seq, "message_chunk", orjson.dumps(data), self._created_at))
        self._message_id = None
        self._content = []
        self._chars = 0
