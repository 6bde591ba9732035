"""Slow and dead clients, granularity and heartbeats (DESIGN.md invariants 4, 5 and 10).

Every stream is checked against the run's log with ``check_shaped``: each event covers the log's
seqs (previous id, its id], merged chunks carry the last seq they cover, nothing is lost or sent
twice. Real uvicorn over TCP; the one fake is the agent.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from streamctl.agents import AgentContext, ScriptedAgent, Wait
from streamctl.agents.demo import demo_agent
from streamctl.agents.scripted import Sleep, Step
from streamctl.events import AgentEvent, MessageChunk

from .support import HANG, Paced, Server, StartServer, chunks, run_body, tool_call
from .support.sse_reference import (
    Ev,
    Mode,
    SpecParser,
    check_shaped,
    decode,
    fetch_log,
    parsed,
    stream,
    text,
)

pytestmark = pytest.mark.anyio


async def supervisor(server: Server) -> Any:
    """The live supervisor, once the server has started (its socket queues requests until then)."""
    async with server.client() as client:
        assert (await client.get("/readyz")).status_code == 200
    return cast(FastAPI, server.uvicorn.config.app).state.supervisor


def firehose(
    n: int, *, block: int = 1000, tail: list[Step] | None = None, pad: int = 0
) -> ScriptedAgent:
    """``n`` chunks (a new message every 10,000), with a loop checkpoint after each block;
    ``pad`` more bytes per chunk (so even merged, the text outgrows every socket buffer)."""
    steps: list[Step] = []
    for i in range(n):
        content = f"c{i} " + "x" * pad
        steps.append(MessageChunk(content=content, message_id=f"m{i // 10_000}"))
        if i % block == block - 1:
            steps.append(Sleep(0))
        if i == n // 2:
            steps += tool_call("half")
    return ScriptedAgent([*steps, *(tail or [])])


async def test_granularity_shapes_the_same_log(serve: StartServer) -> None:
    gates = {mode: anyio.Event() for mode in ("low", "batched", "message")}

    class PerMode:
        def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
            mode = ctx.messages[-1].content
            second_half = [MessageChunk(content=f"v{i} ", message_id="m2") for i in range(25, 50)]
            steps: list[Step] = [*chunks(50), *tool_call(), *chunks(25, "m2", "v")]
            steps += [Wait(gates[mode]), *second_half, *chunks(30, "m3", "x")]
            return ScriptedAgent(steps)(ctx)

    server = await serve(agent=PerMode())
    got: dict[str, list[Ev]] = {}
    async with server.client() as client:
        with anyio.fail_after(HANG):
            for mode, gate in gates.items():
                whole = mode == "message"
                body = {"input": {"messages": [{"role": "user", "content": mode}]}}
                received: list[Any] = []
                async with aconnect_sse(
                    client, "POST", "/v1/runs/stream", json={**body, "granularity": mode}
                ) as source:
                    async for event in source.aiter_sse():
                        if event.data:
                            received.append(event)
                        # Release the agent from its Wait once this stream has shown the first
                        # half of m2 (whole messages only: once the tool call is over), so m2
                        # certainly comes in two parts where a stream does not wait for a whole
                        # message.
                        shown = event.event == "tool_end" if whole else '"m2"' in event.data
                        if shown:
                            gate.set()
                got[mode] = parsed(received)
                log = await fetch_log(client, source.response.headers["x-run-id"])
                check_shaped(got[mode], log, 0, cast(Mode, mode))
                assert text(got[mode]) == text(log)
    low, batched, message = got["low"], got["batched"], got["message"]
    assert len(low) == 1 + 50 + 2 + 50 + 30 + 1  # nothing merged
    assert len(message) < len(batched) < len(low)
    m2 = [e for e in batched if e.type == "message_chunk" and e.data["message_id"] == "m2"]
    assert len(m2) >= 2, "batched must not hold a message back until it is whole"
    assert [e.type for e in message] == [
        "run",
        *["message_chunk", "tool_start", "tool_end", "message_chunk", "message_chunk"],
        "done",
    ]
    assert [e.data["content"] for e in message if e.type == "message_chunk"][1] == "".join(
        f"v{i} " for i in range(50)
    )


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("mode", ["low", "batched", "message"])
async def test_resume_from_any_received_id_is_exactly_once(
    serve: StartServer, mode: Mode, seed: int
) -> None:
    rng = random.Random(f"{mode}-{seed}")
    # The demo agent, held at its 150th event until the first resume: some resumes certainly
    # come while it appends. Old cursors come from SQLite.
    agent = Paced(tokens=200, delay_ms=1, tool=True, tool_ms=5)
    agent.hold_at = 150
    server = await serve(agent=agent, tail_events=16, batch_ms=5)
    body = run_body(granularity=mode)
    statuses = []
    async with server.client() as client:
        with anyio.fail_after(HANG):
            _, received = await stream(
                client, "POST", "/v1/runs/stream", rng.randint(1, 6), json=body
            )
            run_id = received[0].data["run_id"]
            url = f"/v1/runs/{run_id}/stream"
            # Disconnect and resume at random points while the run is appending.
            while received[-1].type != "done":
                statuses.append((await client.get(f"/v1/runs/{run_id}")).json()["status"])
                agent.release.set()
                cursor: dict[str, Any] = (
                    {"params": {"after": str(received[-1].seq), "granularity": mode}}
                    if rng.random() < 0.3
                    else {
                        "headers": {"Last-Event-ID": str(received[-1].seq)},
                        "params": {"granularity": mode},
                    }
                )
                response, more = await stream(client, "GET", url, rng.randint(1, 6), **cursor)
                assert response.status_code == 200
                received += more
            log = await fetch_log(client, run_id)
            check_shaped(received, log, 0, mode)
            # Then from any id received, at random, on the finished run.
            for i in rng.sample(range(len(received)), min(8, len(received))):
                cut = received[i].seq
                params = {"granularity": mode}
                response, rest = await stream(
                    client, "GET", url, headers={"Last-Event-ID": str(cut)}, params=params
                )
                if cut == len(log):
                    assert response.status_code == 204
                check_shaped(rest, log, cut, mode)
                assert text(received[: i + 1]) + text(rest) == text(log)
    assert statuses[0] == "running"


async def test_pings_only_while_idle(serve: StartServer) -> None:
    gate = anyio.Event()

    class IdleOrBusy:
        def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
            if ctx.messages[-1].content == "idle":
                return ScriptedAgent([*chunks(2), Wait(gate), *chunks(2, "m2")])(ctx)
            return demo_agent(ctx)

    # Not shorter: a loaded machine can pause a busy stream for a good part of a second.
    server = await serve(agent=IdleOrBusy(), ping_interval=1.0)
    counters = (await supervisor(server)).counters
    async with server.client() as client:
        with anyio.fail_after(HANG):
            # Busy: an event every ~5 ms for two seconds, never 1 s of silence.
            demo = {"tokens": 400, "delay_ms": 5, "tool": False}
            busy = run_body(config={"demo": demo})
            async with client.stream("POST", "/v1/runs/stream", json=busy) as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            assert b"done" in raw and raw.count(b"\nevent: message_chunk\n") > 400 // 2
            assert b": ping" not in raw and counters.pings == 0
            # Idle: the agent waits; pings keep the connection alive, then the run goes on.
            parser = SpecParser()
            idle = {"input": {"messages": [{"role": "user", "content": "idle"}]}}
            async with client.stream("POST", "/v1/runs/stream", json=idle) as response:
                async for chunk in response.aiter_raw():
                    parser.feed(chunk)
                    if len(parser.comments) == 2 and not gate.is_set():
                        assert len(parser.events) == 3  # run and two chunks, then silence
                        gate.set()
            parser.close()
            log = await fetch_log(client, response.headers["x-run-id"])
    assert parser.comments == [" ping", " ping"] and counters.pings == 2
    check_shaped(decode([(e.id, e.type, e.data) for e in parser.events]), log, 0, "low")


def small_receive_buffer() -> httpx.AsyncHTTPTransport:
    """A client transport whose sockets buffer 256 KiB, not megabytes, so the server feels a
    pause soon. (Not smaller: below two loopback MSS, 64 KiB, window updates stall for seconds.)"""
    option = (socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    return httpx.AsyncHTTPTransport(socket_options=[option])


async def either(*events: anyio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


async def test_a_paused_client_leaves_memory_bounded_then_catches_up(serve: StartServer) -> None:
    n, tail_events, tail_bytes = 100_000, 1000, 64 * 1024
    agent = firehose(n, block=250)
    server = await serve(agent=agent, tail_events=tail_events, tail_bytes=tail_bytes)
    sup = await supervisor(server)
    peaks = {"frames": 0, "bytes": 0, "write_buffer": 0}
    checked_at: list[int] = []

    def check_memory(log: Any) -> None:
        frames = log._frames
        assert len(frames) <= tail_events and log.bytes <= tail_bytes
        assert log.bytes == sum(len(f.sse) for f in frames)
        assert frames[-1].seq == log.committed_seq
        peaks["frames"] = max(peaks["frames"], len(frames))
        peaks["bytes"] = max(peaks["bytes"], log.bytes)
        conns = server.uvicorn.server_state.connections
        buffered = [c.transport.get_write_buffer_size() for c in conns]
        peaks["write_buffer"] = max([peaks["write_buffer"], *buffered])
        checked_at.append(log.committed_seq)

    async with httpx.AsyncClient(
        base_url=server.url, transport=small_receive_buffer(), timeout=30
    ) as client:
        with anyio.fail_after(HANG):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=run_body()) as source:
                events = source.aiter_sse()
                head = [await anext(events) for _ in range(2)]  # retry block, run
                run = sup.live.get(source.response.headers["x-run-id"])
                # The client reads nothing now. Check the run's memory at every commit.
                while not run.finished.is_set():
                    changed = run.log.changed
                    check_memory(run.log)
                    await either(changed, run.finished)
                check_memory(run.log)  # all 100,000 events committed: memory still bounded
                # The agent was never slowed: the run is over while the client has read 1 event.
                assert run.output.status == "completed" and run.output.last_seq == n + 4
                rest = [e async for e in events]
            received = parsed(head + rest)
            full = await fetch_log(client, run.run_id)
    assert len(checked_at) >= 2 and checked_at[-1] == n + 4, checked_at
    assert peaks["frames"] > tail_events // 4 and peaks["bytes"] > tail_bytes // 4, peaks
    assert peaks["write_buffer"] < 1024 * 1024, peaks  # no backlog piled up in the server
    check_shaped(received, full, 0, None)  # merged chunks allowed: it caught up in big writes
    assert text(received) == "".join(f"c{i} " for i in range(n))


async def open_unread_stream(url: str, path: str) -> socket.socket:
    """A raw client that sends a GET and never reads (its receive buffer is tiny)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def drain(sock: socket.socket) -> bytes:
    loop, data = asyncio.get_running_loop(), bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        data += chunk
    return bytes(data)


async def test_a_stuck_client_is_cut_off_after_send_timeout(serve: StartServer) -> None:
    gate = anyio.Event()
    n = 60_000
    agent = firehose(n, tail=[Wait(gate), *chunks(3, "end")], pad=200)
    server = await serve(agent=agent, send_timeout=0.5)
    sup = await supervisor(server)
    async with server.client() as client:
        with anyio.fail_after(HANG):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            run = sup.live.get(run_id)
            sock = await open_unread_stream(server.url, f"/v1/runs/{run_id}/stream")
            try:
                while sup.counters.slow_closed == 0:  # not an event: poll, bounded
                    with anyio.move_on_after(0.05):
                        await run.log.changed.wait()
                assert sup.counters.slow_closed == 1 and sup.counters.subscribers == 0
                # The run went on: it is still live, and finishes when its agent does.
                assert run.output.status == "running" and not run.finished.is_set()
                gate.set()
                await run.finished.wait()
                # What the stuck client had been sent is a valid prefix: resume from it.
                raw = await drain(sock)
            finally:
                sock.close()
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            parser = SpecParser()
            parser.feed(dechunk(body))
            parser.close()
            prefix = decode([(e.id, e.type, e.data) for e in parser.events])
            assert prefix and prefix[-1].type != "done"
            cursor = {"Last-Event-ID": str(prefix[-1].seq)}
            _, rest = await stream(client, "GET", f"/v1/runs/{run_id}/stream", headers=cursor)
            log = await fetch_log(client, run_id)
    assert sup.counters.slow_closed == 1
    check_shaped(prefix + rest, log, 0, None)
    assert log[-1].data["status"] == "completed"


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (possibly cut short)."""
    out, pos = bytearray(), 0
    while (end := body.find(b"\r\n", pos)) != -1:
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


@pytest.mark.parametrize(
    "tail",
    [
        "memory",
        "sqlite",
    ],
)
async def test_a_low_stream_far_behind_catches_up_in_merged_chunks(
    serve: StartServer, tail: str
) -> None:
    # docs/events.md: "A low stream that has fallen a whole write (1,024 events) behind gets its
    # adjacent chunks merged too, so it catches up in fewer bytes."
    gate = anyio.Event()
    n = 5000
    tail_events = 100_000 if tail == "memory" else 16
    server = await serve(agent=firehose(n, tail=[Wait(gate)]), tail_events=tail_events)
    async with server.client() as client:
        with anyio.fail_after(HANG):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            run = (await supervisor(server)).live.get(run_id)
            while run.log.committed_seq < n + 3:  # everything up to the gate is committed
                await either(run.log.changed, run.finished)
            url = f"/v1/runs/{run_id}/stream"
            async with aconnect_sse(client, "GET", url) as source:  # 5,000 events behind
                received: list[Any] = []
                async for event in source.aiter_sse():
                    received.append(event)
                    gate.set()
            log = await fetch_log(client, run_id)
    events = parsed(received)
    check_shaped(events, log, 0, None)
    # Merged while a whole write (1,024 frames) behind; only the last write's worth goes as is.
    assert len(events) < len(log) // 4, f"{len(events)} events for a log of {len(log)}"


def test_a_stuck_client_connection_is_really_closed(spawn_server: Any) -> None:
    server = spawn_server(
        "--agent", "tests.support.child_agents:fat_chunks", env={"STREAMCTL_SEND_TIMEOUT": "0.5"}
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        run_id = client.post("/v1/runs", json=run_body()).json()["run_id"]
        host, port = server.url.removeprefix("http://").split(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /v1/runs/{run_id}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            deadline = time.monotonic() + 20
            while metric(client, "streamctl_slow_subscribers_closed_total") < 1:
                assert time.monotonic() < deadline, "the stream was never cut off"
                time.sleep(0.05)  # another process: poll its metrics, bounded
            # Cut off: the server should drop the connection now (FIN or RST), unread or not.
            deadline = time.monotonic() + 10  # a bound for a loaded machine, not a timing
            while tcp_state(sock) == TCP_ESTABLISHED and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tcp_state(sock) != TCP_ESTABLISHED, "the server still holds the connection"


TCP_ESTABLISHED = 1


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (Linux ``tcp_info.tcpi_state``): 1 is ESTABLISHED."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
