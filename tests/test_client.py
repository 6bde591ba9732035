"""``streamctl.client.Client`` against a real server: typed events, resume, stop, snapshots,
errors, and a connection cut mid-stream (by a TCP proxy) that the client resumes on its own."""

from __future__ import annotations

import re
from typing import Any

import anyio
import orjson
import pytest

from streamctl.agents import ScriptedAgent, Wait
from streamctl.client import Client, ClientError
from streamctl.events import Done, Event, MessageChunk, RunStarted, ToolEnd, ToolStart

from .support import Server, StartServer, chunks, tool_call
from .support.tcp_proxy import Proxy

pytestmark = pytest.mark.anyio

TOKYO = "What is the weather in Tokyo?"


def demo(**options: Any) -> dict[str, Any]:
    """A request's ``config`` for the demo agent (the server's default agent)."""
    return {"demo": {"delay_ms": 0, "tool_ms": 0, "tokens": 10, **options}}


def wire(event: Event) -> dict[str, Any]:
    """An event as ``/v1/runs/{id}/events`` shows it: its type and its data."""
    data: dict[str, Any] = orjson.loads(event.model_dump_json())
    return data


async def server_events(server: Server, run_id: str) -> list[dict[str, Any]]:
    async with server.client() as http:
        page = await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
        assert page.status_code == 200, page.text
        return [{"type": e["type"], **e["data"]} for e in page.json()["events"]]


async def test_stream_run_yields_typed_events_ending_with_done(serve: StartServer) -> None:
    server = await serve()
    async with Client(server.url) as client:
        with anyio.fail_after(10):
            events = [e async for e in client.stream_run(TOKYO, config=demo())]
        assert isinstance(events[0], RunStarted) and events[0].status == "running"
        assert isinstance(events[-1], Done) and events[-1].status == "completed"
        kinds = [type(e) for e in events]
        assert kinds.count(ToolStart) == kinds.count(ToolEnd) == 1
        assert kinds.count(MessageChunk) == 6 + 10 and kinds.count(Done) == 1
        run = await client.get_run(events[0].run_id)
        assert run["status"] == "completed" and run["last_seq"] == len(events)
        text = "".join(e.content for e in events if isinstance(e, MessageChunk))
        assert text == run["output"]["text"] and events[-1].tokens == 16
        assert [wire(e) for e in events] == await server_events(server, run["run_id"])
        assert client.reconnects == 0


async def test_events_after_n_resumes_exactly_and_204_ends_quietly(serve: StartServer) -> None:
    server = await serve()
    async with Client(server.url) as client:
        with anyio.fail_after(10):
            run = await client.create_run(TOKYO, config=demo(delay_ms=5))
            everything = [wire(e) async for e in client.events(run["run_id"])]
            assert everything == await server_events(server, run["run_id"])
            for after in (1, 7, len(everything) - 1):
                rest = [wire(e) async for e in client.events(run["run_id"], after=after)]
                assert rest == everything[after:]
            nothing = [e async for e in client.events(run["run_id"], after=len(everything))]
        assert nothing == [] and client.reconnects == 0


async def test_stop_snapshots_lists_and_threads(serve: StartServer) -> None:
    server = await serve()
    async with Client(server.url) as client:
        with anyio.fail_after(10):
            done = await client.create_run(TOKYO, thread_id="t-client", config=demo())
            async for _ in client.events(done["run_id"]):
                pass
            slow = await client.create_run(
                "And in Paris?", thread_id="t-other", config=demo(tokens=10_000, delay_ms=20)
            )
            seen: list[Event] = []
            async for event in client.events(slow["run_id"]):
                seen.append(event)
                if len(seen) == 4:
                    stopped = await client.stop(slow["run_id"])
                    assert stopped["status"] == "cancelled" and stopped["stopping"] is False
            assert isinstance(seen[-1], Done) and seen[-1].status == "cancelled"
            run = await client.get_run(slow["run_id"])
            assert run["status"] == "cancelled" and run["last_seq"] == len(seen)
            shown = "".join(e.content for e in seen if isinstance(e, MessageChunk))
            assert run["output"]["text"] == shown and shown.startswith("Looking up the ")
            runs = await client.list_runs()
            assert [r["run_id"] for r in runs] == [slow["run_id"], done["run_id"]]
            assert [r["run_id"] for r in await client.list_runs("t-client")] == [done["run_id"]]
            assert len(await client.list_runs(limit=1)) == 1
            thread = await client.get_thread("t-client")
        # The demo agent's answer: text, a tool call and its result, more text.
        assert [m["role"] for m in thread["messages"]] == ["user", "assistant", "tool", "assistant"]
        assert thread["messages"][0]["content"] == TOKYO and thread["active_run"] is None
        final = await client.get_run(done["run_id"])
        answer = "".join(m["content"] for m in thread["messages"] if m["role"] == "assistant")
        assert answer == final["output"]["text"] != ""


async def test_errors_carry_status_and_code(serve: StartServer) -> None:
    server = await serve()
    async with Client(server.url) as client:
        with anyio.fail_after(10):
            with pytest.raises(ClientError) as missing:
                await client.get_run("no-such-run")
            assert (missing.value.status, missing.value.code) == (404, "run_not_found")
            with pytest.raises(ClientError) as no_stream:
                async for _ in client.events("no-such-run"):
                    pass
            assert (no_stream.value.status, no_stream.value.code) == (404, "run_not_found")
            with pytest.raises(ClientError) as no_thread:
                await client.get_thread("no-such-thread")
            assert (no_thread.value.status, no_thread.value.code) == (404, "thread_not_found")
            run = await client.create_run(TOKYO, config=demo())
            with pytest.raises(ClientError) as beyond:
                async for _ in client.events(run["run_id"], after=10_000):
                    pass
            assert (beyond.value.status, beyond.value.code) == (400, "cursor_out_of_range")
            with pytest.raises(ClientError) as invalid:
                async for _ in client.stream_run(TOKYO, config=demo(tokens=-1)):
                    pass
            assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
        assert client.reconnects == 0


def resumed_from(proxy: Proxy) -> list[tuple[object, int]]:
    """(events collected when accepted, Last-Event-ID) of each connection that resumed."""
    found = []
    for conn in proxy.connections:
        match = re.search(rb"(?im)^last-event-id: *(\d+)\r$", bytes(conn.sent))
        if match and int(match.group(1)) > 0:
            found.append((conn.note, int(match.group(1))))
    return found


@pytest.mark.parametrize("how", ["stream_run", "events"])
async def test_a_cut_connection_resumes_with_last_event_id(serve: StartServer, how: str) -> None:
    # The run waits at each cut, so the connection is certainly still open when it is cut.
    mid_message, after_tool = anyio.Event(), anyio.Event()
    agent = ScriptedAgent(
        [*chunks(4), Wait(mid_message), *chunks(13), *tool_call(), Wait(after_tool), *chunks(5)]
    )
    server = await serve(agent=agent, retry_ms=50)
    collected: list[Event] = []
    gates = {5: mid_message, 20: after_tool}  # run + 4 chunks; then 13 chunks and the tool call
    async with Proxy(server.port, on_accept=lambda: len(collected)) as proxy:
        async with Client(proxy.url) as client:
            if how == "stream_run":
                events = client.stream_run(TOKYO)
            else:
                run = await client.create_run(TOKYO)
                events = client.events(run["run_id"])
            with anyio.fail_after(20):
                async for event in events:
                    collected.append(event)
                    if len(collected) in gates:
                        assert proxy.cut() >= 1
                        gates[len(collected)].set()
            assert client.reconnects >= 2
    assert isinstance(collected[0], RunStarted) and isinstance(collected[-1], Done)
    assert [wire(e) for e in collected] == await server_events(server, collected[0].run_id)
    resumes = resumed_from(proxy)
    assert len(resumes) >= 2
    # Each reconnection asked for exactly what followed the last event handed out.
    assert all(note == last_id for note, last_id in resumes), resumes


async def test_a_silent_dead_connection_is_noticed(serve: StartServer) -> None:
    # The server pings every 0.1 s, so a stream silent for the client's 1 s timeout is dead.
    gate = anyio.Event()
    server = await serve(
        agent=ScriptedAgent([*chunks(4), Wait(gate), *chunks(5)]), retry_ms=50, ping_interval=0.1
    )
    async with Proxy(server.port) as proxy, Client(proxy.url, timeout=1.0) as client:
        run = await client.create_run(TOKYO)
        collected: list[Event] = []
        with anyio.fail_after(20):
            async for event in client.events(run["run_id"]):
                collected.append(event)
                if len(collected) == 5:  # the run waits: its stream is certainly open
                    assert proxy.freeze() >= 1  # nothing flows, nothing closes
                    gate.set()
        assert client.reconnects >= 1
    assert [wire(e) for e in collected] == await server_events(server, run["run_id"])
