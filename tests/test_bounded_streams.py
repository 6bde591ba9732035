"""Memory per stream (docs/events.md, docs/security.md): a ``message`` stream holds at most
``max_message_buffer`` characters of a message before it sends them as a part.
"""

from __future__ import annotations

import pytest

from streamctl.agents import ScriptedAgent
from streamctl.events import Frame, MessageChunk
from streamctl.shaping import Shaper

from .conftest import StartServer, run_body
from .sse_reference import check_shaped, fetch_log, text
from .test_slow_clients import stream

pytestmark = pytest.mark.anyio


def chunk(seq: int, content: str, message_id: str = "m1") -> Frame:
    return Frame.encode(seq, MessageChunk(content=content, message_id=message_id), 1.0)


def test_a_long_message_is_flushed_in_parts_never_held_whole() -> None:
    shaper = Shaper("message", max_chars=10)
    out = shaper.shape([chunk(i, "abcd") for i in range(1, 8)])  # 28 characters, one message
    assert [f.seq for f in out] == [3, 6]  # 12 characters, then 12: each part once past 10
    assert shaper.shape([chunk(8, "!", "m2")])[0].seq == 7  # the rest, when the message ends


async def test_a_message_stream_sends_a_long_message_in_bounded_parts(serve: StartServer) -> None:
    words = [MessageChunk(content=f"word{i:04d} ", message_id="long") for i in range(600)]
    server = await serve(agent=ScriptedAgent(words), max_message_buffer=500)
    async with server.client() as client:
        _, received = await stream(
            client, "POST", "/v1/runs/stream", json=run_body(granularity="message")
        )
        log = await fetch_log(client, received[0].data["run_id"])
    parts = [e.data["content"] for e in received if e.type == "message_chunk"]
    assert len(parts) >= 600 * 9 // 509  # 5,400 characters in parts of 500 (+ one word)
    assert all(len(part) <= 500 + 9 for part in parts), [len(p) for p in parts]
    check_shaped(received, log, 0, None)  # each part continues the last: resumable anywhere
    assert text(received) == "".join(w.content for w in words)
