"""The wire, parsed by SSE implementations nobody here wrote (SSE-NOTES.md, DESIGN.md §4).

httpx-sse (Python), the npm ``eventsource`` package under Node (``tests/node/collect.mjs``) and a
spec-rules reference parser fed one byte at a time must each see exactly the run's log, whatever
the content: line breaks of every kind, ``data:`` inside text, NUL, emoji, multi-byte characters,
1 MiB chunks, odd tool names. Plus the ``Last-Event-ID`` rules of invariant 5.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import EventSource, aconnect_sse

from streamctl.agents import ScriptedAgent, Wait
from streamctl.agents.scripted import Step
from streamctl.events import MessageChunk, ToolEnd, ToolStart

from .conftest import Server, StartServer, chunks, run_body
from .sse_reference import Ev, check_shaped, decode, fetch_log, parse_bytes, text

pytestmark = pytest.mark.anyio

NODE_DIR = Path(__file__).parent / "node"

NASTY = [
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\nend",
    "lone cr at end\r",
    "\nleading lf",
    "data: x\n\nid: 99\nevent: done\n\n",
    ": not a comment\n",
    "nul\x00byte",
    "emoji 🌦️👩‍👩‍👧 and flags 🇯🇵",
    "multi-byte: 東京 — naïve café — Ωμέγα — עברית — 𝄞",
    "separators \u2028 \u2029 \x85 \x0b \x0c \x1c \x1e \x7f",
    "\ufeffbom inside",
    "retry: 5\n",
    "",
    " leading space",
]
BIG = "0123456789abcdé東🌦\n" * (1024 * 1024 // 28)  # ~1 MiB of mixed-width characters
TOOL_NAMES = ["get weather", 'say "hi"', "multi\nline\r\nname", "天気 ☀️", "id: 7", "x" * 300]
TOOL_ARGS: dict[str, Any] = {
    "nested": {"a": [1, 2.5, None, True, {"b": "c\nd"}], "e": {"f": {"g": []}}},
    "text": "data: y\r\n\r\n",
    "unicode": "𝄞東\x00",
    "json_in_string": '{"k": "v"}',
}


def torture_steps(big: bool = True) -> list[MessageChunk | ToolStart | ToolEnd]:
    steps: list[MessageChunk | ToolStart | ToolEnd] = [
        MessageChunk(content=c, message_id="m1") for c in NASTY
    ]
    for i, name in enumerate(TOOL_NAMES):
        call_id = f"call {i}\n:"
        steps.append(ToolStart(name=name, args={**TOOL_ARGS, "i": i}, call_id=call_id))
        steps.append(ToolEnd(name=name, output={"echo": NASTY, "name": name}, call_id=call_id))
    steps += [MessageChunk(content=c, message_id="m2 \n✓") for c in reversed(NASTY)]
    if big:
        steps.append(MessageChunk(content=BIG, message_id="m3"))
    return steps


def expected_text(big: bool = True) -> str:
    return "".join(NASTY) + "".join(reversed(NASTY)) + (BIG if big else "")


def node_available() -> bool:
    """Whether Node and the installed ``eventsource`` package are here (CI requires them)."""
    found = shutil.which("node") is not None and (NODE_DIR / "node_modules/eventsource").is_dir()
    if not found and os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but node or tests/node/node_modules is missing (npm ci --prefix tests/node)"
        )
    return found


@pytest.fixture
def node() -> None:
    """Skip (fail under CI=true) unless Node and ``tests/node/node_modules`` are installed."""
    if not node_available():
        pytest.skip("node or tests/node/node_modules missing (npm ci --prefix tests/node)")


async def node_collect(url: str, *args: str) -> list[dict[str, Any]]:
    """Run ``collect.mjs`` on ``url``; its JSON lines (events and connects)."""
    result = await anyio.run_process(
        ["node", str(NODE_DIR / "collect.mjs"), url, *args], check=False
    )
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, (result.returncode, lines[-3:], result.stderr[-2000:])
    return lines


def node_events(lines: list[dict[str, Any]]) -> list[Ev]:
    return decode([(line["id"], line["type"], line["data"]) for line in lines if "type" in line])


def httpx_events(events: list[Any]) -> list[Ev]:
    # An empty data block (the retry line; a comment after an event) dispatches nothing (rule 4);
    # httpx-sse reports those blocks anyway, so they are dropped here.
    return decode([(e.id, e.event, e.data) for e in events if e.data != ""])


async def collect_httpx(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[Ev]:
    async with aconnect_sse(client, method, url, **kw) as source:
        assert source.response.status_code == 200
        return httpx_events([e async for e in source.aiter_sse()])


async def raw_stream(client: httpx.AsyncClient, url: str, **kw: Any) -> bytes:
    async with client.stream("GET", url, **kw) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return b"".join([chunk async for chunk in response.aiter_raw()])


def live_run(server: Server, run_id: str) -> Any:
    return cast(FastAPI, server.uvicorn.config.app).state.supervisor.live.get(run_id)


def torture_agent(gate: anyio.Event) -> ScriptedAgent:
    steps: list[Step] = [*torture_steps()[:5], Wait(gate), *torture_steps()[5:]]
    return ScriptedAgent(steps)


async def until_subscribed(server: Server, run_id: str) -> None:
    run = live_run(server, run_id)
    # Another process connects: nothing in this loop can tell us, so poll (bounded by the test).
    while run.log.subscribers < 1:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def check_torture(client: httpx.AsyncClient, run_id: str, received: list[Ev]) -> None:
    log = await fetch_log(client, run_id)
    snapshot = (await client.get(f"/v1/runs/{run_id}")).json()
    check_shaped(received, log, 0, "low")
    assert text(received) == text(log) == expected_text() == snapshot["output"]["text"]
    calls = snapshot["output"]["tool_calls"]
    assert [c["name"] for c in calls] == TOOL_NAMES
    assert all(c["args"] == {**TOOL_ARGS, "i": i} for i, c in enumerate(calls))
    assert next(e.data["call_id"] for e in received if e.type == "tool_start") == "call 0\n:"


async def test_torture_content_round_trips_through_httpx_sse(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=torture_agent(gate))
    async with server.client() as client:
        with anyio.fail_after(40):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=run_body()) as source:
                received: list[Any] = []
                async for event in source.aiter_sse():
                    received.append(event)
                    if len(received) == 5:  # the retry block, run, 3 chunks: the rest comes live
                        gate.set()
            run_id = source.response.headers["x-run-id"]
            await check_torture(client, run_id, httpx_events(received))


async def test_torture_content_round_trips_through_node_eventsource(
    serve: StartServer, node: None
) -> None:
    gate = anyio.Event()
    server = await serve(agent=torture_agent(gate))
    async with server.client() as client:
        with anyio.fail_after(40):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            lines: list[dict[str, Any]] = []
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    lines.extend(await node_collect(f"{server.url}/v1/runs/{run_id}/stream"))

                tg.start_soon(collect)
                await until_subscribed(server, run_id)  # Node follows the live run from here
                gate.set()
            assert [line["connect"] for line in lines if "connect" in line] == [
                {"lastEventId": None}
            ]
            await check_torture(client, run_id, node_events(lines))


async def test_bytes_are_utf8_and_parse_the_same_one_byte_at_a_time(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(torture_steps()))
    async with server.client() as client:
        with anyio.fail_after(40):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            raw = await raw_stream(client, f"/v1/runs/{run_id}/stream")
            log = await fetch_log(client, run_id)
    raw.decode("utf-8")  # strict: every character the server wrote is whole, valid UTF-8
    retry = server.settings.retry_ms
    # The retry line ends with one newline: a blank line would dispatch an empty event to
    # httpx-sse and fetch-event-source.
    assert raw.startswith(b"retry: %d\nid: 1\n" % retry) and b"\r" not in raw
    assert re.fullmatch(rb"(retry: \d+\n)(id: \d+\nevent: [a-z_]+\ndata: [^\n]*\n\n)+", raw)
    reference = parse_bytes(raw, step=1)
    assert reference.retry == retry and reference.comments == []
    check_shaped(decode([(e.id, e.type, e.data) for e in reference.events]), log, 0, "low")
    assert text(log) == expected_text()

    async def one_byte_at_a_time() -> AsyncIterator[bytes]:
        for i in range(len(raw)):
            yield raw[i : i + 1]

    headers = {"content-type": "text/event-stream; charset=utf-8"}
    response = httpx.Response(200, headers=headers, content=one_byte_at_a_time())
    events = [e async for e in EventSource(response).aiter_sse()]
    check_shaped(httpx_events(events), log, 0, "low")
    # Cut anywhere, even inside a character: the incomplete event is dropped, nothing else.
    for cut in (len(raw) // 3, len(raw) - 2, raw.index("東".encode()) + 1):
        partial = parse_bytes(raw[:cut], step=4096).events
        assert partial == reference.events[: len(partial)]
        assert len(partial) < len(reference.events)


async def test_node_eventsource_reconnects_by_itself_with_last_event_id(
    serve: StartServer, node: None
) -> None:
    # Every response body ends cleanly after 1,500 bytes, mid-event: the EventSource drops the
    # torn event, reconnects after `retry` with Last-Event-ID, and sees every event exactly once.
    server = await serve(agent=ScriptedAgent(torture_steps(big=False)), retry_ms=10)
    async with server.client() as client:
        with anyio.fail_after(40):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            url = f"{server.url}/v1/runs/{run_id}/stream"
            lines = await node_collect(url, "--cut-bytes", "1500")
            log = await fetch_log(client, run_id)
    received = node_events(lines)
    check_shaped(received, log, 0, "low")
    connects = [line["connect"]["lastEventId"] for line in lines if "connect" in line]
    assert connects[0] is None and len(connects) > 5
    resumed_at = [int(c) for c in connects[1:]]
    assert resumed_at == sorted(set(resumed_at)), "each reconnect moves the cursor forward"
    assert set(resumed_at) <= {e.seq for e in received}


@pytest.mark.parametrize("how", ["header", "query", "both"])
async def test_node_resumes_from_a_cursor(serve: StartServer, node: None, how: str) -> None:
    server = await serve(agent=ScriptedAgent([*chunks(5), *torture_steps(big=False)]))
    async with server.client() as client:
        with anyio.fail_after(30):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            url = f"{server.url}/v1/runs/{run_id}/stream"
            args: list[str] = []
            if how in ("query", "both"):
                url += "?after=" + ("2" if how == "both" else "4")
            if how in ("header", "both"):
                args = ["--last-event-id", "4"]
            lines = await node_collect(url, *args)
            log = await fetch_log(client, run_id)
    check_shaped(node_events(lines), log, 4, "low")


async def test_last_event_id_rules(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(6)))
    async with server.client() as client:
        with anyio.fail_after(20):
            run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
            url = f"/v1/runs/{run_id}/stream"
            full = await collect_httpx(client, "GET", url)  # to the end: the run is over
            log = await fetch_log(client, run_id)
            check_shaped(full, log, 0, "low")

            async def resume(**kw: Any) -> list[Ev]:
                return await collect_httpx(client, "GET", url, **kw)

            # The header wins over the query, and an empty header means "from the start".
            check_shaped(
                await resume(headers={"Last-Event-ID": "5"}, params={"after": "2"}), log, 5, "low"
            )
            check_shaped(
                await resume(headers={"Last-Event-ID": ""}, params={"after": "3"}), log, 0, "low"
            )
            check_shaped(await resume(params={"after": ""}), log, 0, "low")
            check_shaped(await resume(params={"after": "3"}), log, 3, "low")
            check_shaped(await resume(headers={"Last-Event-ID": "0"}), log, 0, "low")
            at_end = await client.get(url, headers={"Last-Event-ID": str(len(log))})
            assert at_end.status_code == 204 and at_end.content == b""
            # Only ASCII digits: not signs, spaces, hex, Unicode digits ("²", Arabic-Indic one).
            bad_ids = ["x", "-1", "+1", "1.0", "0x1", "1 2", "1" * 19, "9" * 200]
            bad_ids += ["²", "\u0661", "\xff"]
            for bad in bad_ids:
                header = [(b"Last-Event-ID", bad.encode())]  # raw UTF-8 bytes on the wire
                response = await client.get(url, headers=header)
                assert response.status_code == 400, bad
                assert response.json()["error"]["code"] == "invalid_cursor", bad
                query = await client.get(url, params={"after": bad})
                assert query.status_code == 400, bad
            beyond = await client.get(url, headers={"Last-Event-ID": str(len(log) + 1)})
            assert beyond.status_code == 400
            assert beyond.json()["error"]["code"] == "cursor_out_of_range"


async def test_thread_stream_ids_are_short_ascii_and_resumable(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, "m2", "v")]))
    thread = "T.h_r@e-a-d" + "t" * 117  # the longest thread id there is: ids do not carry it
    async with server.client() as client:
        with anyio.fail_after(20):
            run = (await client.post("/v1/runs", json=run_body(thread_id=thread))).json()
            url = f"/v1/threads/{thread}/stream"
            async with aconnect_sse(client, "GET", url) as source:
                head: list[Any] = []
                async for event in source.aiter_sse():
                    if event.data:
                        head.append(event)
                    if len(head) == 4:
                        break
            gate.set()
            async with aconnect_sse(
                client, "GET", url, headers={"Last-Event-ID": head[-1].id}
            ) as source:
                tail = [e async for e in source.aiter_sse() if e.data]
            log = await fetch_log(client, run["run_id"])
            too_long = "a" * 120 + ":" + "1" * 8
            rejected = await client.get(url, headers={"Last-Event-ID": too_long})
    ids = [e.id for e in head + tail]
    for id_ in ids:
        assert re.fullmatch(r"[0-9a-f]{32}:\d{1,18}", id_) and len(id_.encode()) <= 128, id_
    prefix = run["run_id"] + ":"
    received = decode([(e.id.removeprefix(prefix), e.event, e.data) for e in head + tail])
    check_shaped(received, log, 0, "low")
    assert rejected.status_code == 400 and rejected.json()["error"]["code"] == "invalid_cursor"


async def test_retry_and_pings_never_make_an_empty_event(serve: StartServer) -> None:
    # A blank line after `retry:` or `: ping` would end an empty event: httpx-sse (and
    # fetch-event-source) hand those to the application, where `.json()` raises.
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(1), Wait(gate), *chunks(1, word="v")])
    server = await serve(agent=agent, ping_interval=0.1)
    raw = b""
    async with server.client() as client:
        run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
        with anyio.fail_after(20):
            async with client.stream("GET", f"/v1/runs/{run_id}/stream") as response:
                async for chunk in response.aiter_raw():
                    raw += chunk
                    if raw.count(b": ping") >= 2:
                        gate.set()  # idle long enough to be pinged twice: let the run end
    assert raw.count(b": ping\n") >= 2 and b": ping\n\n" not in raw
    assert raw.startswith(b"retry: %d\nid: 1\n" % server.settings.retry_ms)
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    events = [
        e async for e in EventSource(httpx.Response(200, headers=headers, content=raw)).aiter_sse()
    ]
    assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "done"]
    assert all(e.data != "" for e in events) and all(e.json() for e in events)
