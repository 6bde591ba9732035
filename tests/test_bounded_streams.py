"""Memory per stream (docs/events.md, docs/security.md): a ``message`` stream holds at most
``max_message_buffer`` characters of a message before it sends them as a part.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pytest

from streamctl.agents import ScriptedAgent
from streamctl.events import Frame, MessageChunk
from streamctl.shaping import Shaper

from .conftest import ServerProcess, StartServer, run_body
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


# -- a client that never reads ---------------------------------------------------------------------


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_client_that_never_reads_is_cut_at_model_speed_while_the_run_goes_on(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # A model's pace: ≈50 small events a second, far too little to fill a socket's buffers
    # (≈1.7 MB) within the run, which once kept the stuck stream (and its slot) for the whole run.
    server = spawn_server(env={"STREAMCTL_SEND_TIMEOUT": "0.5", "STREAMCTL_LOG_LEVEL": "info"})
    demo = {"tokens": 100_000, "delay_ms": 20, "tool": False}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        run_id = client.post("/v1/runs", json=run_body(config={"demo": demo})).json()["run_id"]
        host, port = server.url.removeprefix("http://").split(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /v1/runs/{run_id}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 30
            while metric(client, "streamctl_slow_subscribers_closed_total") < 1:
                assert time.monotonic() < deadline, "the stuck stream was never cut off"
                time.sleep(0.05)  # another process: poll its metrics, bounded
            snapshot = client.get(f"/v1/runs/{run_id}").json()
            assert snapshot["status"] == "running"  # the run goes on without its reader
            assert metric(client, "streamctl_subscribers") == 0
            # Far less than the socket buffers could have held: cut for not reading, not for
            # a blocked write.
            assert snapshot["last_seq"] < 20_000
            assert client.post(f"/v1/runs/{run_id}/stop").json()["status"] == "cancelled"
    assert server.stop() == 0
    log = server.output()
    assert "Traceback" not in log and " ERROR " not in log, log
