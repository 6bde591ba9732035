"""Hostile and broken input over HTTP (docs/security.md, "Hostile input"): every bad request is a
clear 4xx, nothing is stored, nothing crashes; and no text from a user, an agent or a tool can
create an SSE field or event on the wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import ServerSentEvent

from streamctl.agents import AgentContext, Fail, ScriptedAgent
from streamctl.agents.scripted import Step
from streamctl.events import AgentEvent, MessageChunk, ToolEnd, ToolStart
from streamctl.run_task import AGENT_ERROR_MESSAGE

from .conftest import Server, StartServer, chunks, read_sse, run_body

pytestmark = pytest.mark.anyio

KEY = "k" * 24
MAX_BODY = 65_536


def nested(levels: int) -> Any:
    value: Any = "deep"
    for _ in range(levels):
        value = {"a": value}
    return value


def raw(obj: Any) -> bytes:
    """JSON with every non-ASCII character escaped (so lone surrogates can be sent)."""
    return json.dumps(obj).encode()


DEEP = b'{"input": {"messages": [{"role": "user", "content": "x"}]}, "config": {"a": %s%s}}' % (
    b"[" * 10_000,
    b"]" * 10_000,
)
JSON = {"content-type": "application/json"}
HUGE = str(10**30)


async def in_chunks(body: bytes, size: int = 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def ask(*messages: Any, **fields: Any) -> bytes:
    return raw({"input": {"messages": list(messages) or [HI]}, **fields})


HI = {"role": "user", "content": "hi"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
MULTIPART = {"content-type": "multipart/form-data; boundary=b"}
BAD_UTF8 = b'{"input": {"messages": [{"role": "user", "content": "\xff\xfe"}]}}'


def bodies() -> list[tuple[str, str, bytes, dict[str, str], int]]:
    """(name, path, content, headers, status): request bodies a server must refuse."""
    return [
        ("deep-json", "/v1/runs", DEEP, JSON, 400),
        ("deep-array", "/stop", b"[" * 10_000 + b"]" * 10_000, JSON, 400),
        ("config-40-levels", "/v1/runs", ask(config=nested(40)), JSON, 422),
        ("text-plain", "/v1/runs", ask(), {"content-type": "text/plain"}, 422),
        ("form", "/v1/runs", b"input=hi&thread_id=t", FORM, 422),
        ("multipart", "/v1/runs", b"--b\r\n\r\nx\r\n--b--\r\n", MULTIPART, 422),
        ("invalid-utf8", "/v1/runs", BAD_UTF8, JSON, 400),
        ("truncated", "/v1/runs", ask()[:-3], JSON, 400),
        ("empty", "/v1/runs", b"", JSON, 422),
        ("null", "/v1/runs", b"null", JSON, 422),
        ("array", "/v1/runs/stream", b"[1, 2]", JSON, 422),
        ("nan-limit", "/v1/runs", ask(config={"recursion_limit": float("nan")}), JSON, 422),
        ("negative-limit", "/v1/runs", ask(config={"recursion_limit": -1}), JSON, 422),
        ("unknown-field", "/v1/runs", ask(owner="root"), JSON, 422),
        ("unknown-input-field", "/v1/runs", raw({"input": {"messages": [HI], "x": 1}}), JSON, 422),
        ("unknown-message-field", "/v1/runs", ask({**HI, "name": "x"}), JSON, 422),
        ("unknown-stop-field", "/stop", raw({"run_id": "r", "force": True}), JSON, 422),
        ("no-messages", "/v1/runs", raw({"input": {"messages": []}}), JSON, 422),
        ("bad-role", "/v1/runs", ask({**HI, "role": "root"}), JSON, 422),
        ("content-not-text", "/v1/runs", ask({**HI, "content": 5}), JSON, 422),
        ("thread-crlf", "/v1/runs", ask(thread_id="t\r\nX-Evil: 1"), JSON, 422),
        ("thread-nul", "/v1/runs/stream", ask(thread_id="t\x00"), JSON, 422),
        ("thread-empty", "/v1/runs", ask(thread_id=""), JSON, 422),
        ("stop-run-crlf", "/stop", raw({"run_id": "a\r\nb"}), JSON, 422),
        ("stop-both", "/stop", raw({"run_id": "a", "thread_id": "b"}), JSON, 422),
        ("stop-neither", "/stop", raw({}), JSON, 422),
        ("image-block", "/v1/graph/stream", raw({"messages": [IMAGE]}), JSON, 422),
    ]


IMAGE = {"role": "user", "content": [{"type": "image", "url": "x"}]}


async def hostile_server(serve: StartServer, auth: str) -> tuple[Server, dict[str, str], str]:
    """A server with one finished run (whose id the cursor cases use)."""
    settings: dict[str, Any] = {"max_body_bytes": MAX_BODY}
    if auth == "api-key":
        settings |= {"auth": "api-key", "api_keys": f"alice:{KEY}"}
    headers = {"Authorization": f"Bearer {KEY}"} if auth == "api-key" else {}
    server = await serve(agent=ScriptedAgent(chunks(2)), **settings)
    async with server.client(headers=headers) as client:
        _, events = await read_sse(client, "POST", "/v1/runs/stream", json=run_body())
    return server, headers, orjson.loads(events[-1].data)["run_id"]


async def assert_nothing_stored(client: httpx.AsyncClient, run_id: str) -> None:
    runs = (await client.get("/v1/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [run_id]
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200


def assert_4xx_json(response: httpx.Response, status: int | None = None, case: object = "") -> None:
    assert 400 <= response.status_code < 500, (case, response.text)
    if status is not None:
        assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.mark.parametrize("auth", ["none", "api-key"])
async def test_bad_bodies_are_4xx_and_store_nothing(serve: StartServer, auth: str) -> None:
    server, headers, run_id = await hostile_server(serve, auth)
    async with server.client(headers=headers) as client:
        for name, path, content, extra, status in bodies():
            response = await client.post(path, content=content, headers=extra)
            assert_4xx_json(response, status, name)
        oversized = raw(run_body(config={"pad": "x" * MAX_BODY}))
        sent: list[bytes | AsyncIterator[bytes]] = [oversized, in_chunks(oversized)]
        for payload in sent:  # declared, then chunked (only reading it shows it is too large)
            response = await client.post("/v1/runs", content=payload, headers=JSON)
            assert_4xx_json(response, 413)
            assert response.json()["error"]["code"] == "body_too_large"
        await assert_nothing_stored(client, run_id)


async def test_bad_numbers_cursors_and_ids_are_4xx(serve: StartServer) -> None:
    server, headers, run_id = await hostile_server(serve, "none")
    run = f"/v1/runs/{run_id}"
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/runs", {"params": {"limit": HUGE}}, 422),
        ("/v1/runs", {"params": {"limit": "-1"}}, 422),
        ("/v1/runs", {"params": {"limit": "0"}}, 422),
        ("/v1/runs", {"params": {"limit": "1e3"}}, 422),
        (f"{run}/events", {"params": {"limit": HUGE}}, 422),
        (f"{run}/events", {"params": {"after": HUGE}}, 400),
        (f"{run}/events", {"params": {"after": "-1"}}, 400),
        (f"{run}/events", {"params": {"after": "1.5"}}, 400),
        (f"{run}/events", {"params": {"after": "99"}}, 400),
        (f"{run}/stream", {"params": {"after": HUGE}}, 400),
        (f"{run}/stream", {"params": {"after": "-1"}}, 400),
        (f"{run}/stream", {"params": {"granularity": "all"}}, 422),
        (f"{run}/stream", {"headers": {"Last-Event-ID": HUGE}}, 400),
        (f"{run}/stream", {"headers": {"Last-Event-ID": "-1"}}, 400),
        (f"{run}/stream", {"headers": {"Last-Event-ID": "é".encode()}}, 400),
        (f"{run}/stream", {"headers": {"Last-Event-ID": "²".encode()}}, 400),  # isdigit()
        (f"{run}/stream", {"headers": {"Last-Event-ID": "\uff11".encode()}}, 400),  # fullwidth 1
        ("/v1/runs/%00", {}, 404),
        ("/v1/runs/%0d%0a/stream", {}, 404),
        ("/v1/runs/%0D%0AX-Evil:%201/events", {}, 404),
        ("/v1/runs/%FF%FE", {}, 404),
        ("/v1/runs/" + "r" * 5000, {}, 404),
        ("/v1/threads/%00", {}, 404),
        ("/v1/threads/%0d%0a/stream", {}, 404),
    ]
    async with server.client(headers=headers) as client:
        for path, how, status in cases:
            response = await client.get(path, **how)
            assert_4xx_json(response, status, (path, how))
            assert "x-evil" not in response.headers
        for path in ("/v1/runs/%00/stop", "/v1/threads/%0d%0a/stop"):
            assert_4xx_json(await client.post(path), 404)
        await assert_nothing_stored(client, run_id)


async def raw_status(server: Server, request: bytes) -> bytes:
    """The status line a raw HTTP/1.1 request gets (for bytes httpx refuses to send)."""
    host, port = server.url.removeprefix("http://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request)
        answer = b""
        while b"\r\n" not in answer:
            answer += await stream.receive()
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("byte", [b"\x00", b"\x01", b"\x7f", b"\r"])
async def test_control_bytes_in_last_event_id_are_400(serve: StartServer, byte: bytes) -> None:
    server, _, run_id = await hostile_server(serve, "none")
    for path in (f"/v1/runs/{run_id}/stream", "/v1/threads/t/stream"):
        request = b"GET %s HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1%s2\r\n\r\n" % (
            path.encode(),
            byte,
        )
        with anyio.fail_after(10):
            assert (await raw_status(server, request)).startswith(b"HTTP/1.1 400 ")
    async with server.client() as client:
        await assert_nothing_stored(client, run_id)


ORJSON_BUG = (
    "Once a bug: JSON Python parses but orjson cannot encode (a lone surrogate, an int beyond"
    " 64 bits) passes validation, then runner.run's orjson.dumps raises: a 500, after the"
    " thread row was already queued for insert. Fix: reject both in inputs.py (a validator on"
    " message content and config values; recursion_limit le=10_000) so they are 422"
)
GRAPH_BUG = (
    "Once a bug: /v1/graph/stream validates its config with GraphConfig, which has no depth check;"
    " GraphStreamRequest.to_run_create() then builds RunConfig inside the route, whose"
    " ValidationError is a 500. Fix: give GraphConfig RunConfig's _shallow validator"
)
GRAPH = "/v1/graph/stream"
LONE = {"messages": [{**HI, "content": "\ud800"}]}


def crash(name: str, path: str, body: Any, reason: str) -> Any:
    """A body that once crashed the server (``reason`` says how); now a 422."""
    return pytest.param(path, body, id=name)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        crash("content-surrogate", "/v1/runs", run_body(input=LONE), ORJSON_BUG),
        crash("config-surrogate", "/v1/runs", run_body(config={"note": "\udfff"}), ORJSON_BUG),
        crash("config-int", "/v1/runs", run_body(config={"n": 2**64}), ORJSON_BUG),
        crash("recursion-limit", "/v1/runs/stream", run_body(config={"recursion_limit": 2**70}),
              ORJSON_BUG),
        crash("graph-int", GRAPH, {"messages": [HI], "config": {"n": -(2**65)}}, ORJSON_BUG),
        crash("graph-config-40", GRAPH, {"messages": [HI], "config": nested(40)}, GRAPH_BUG),
    ],
)  # fmt: skip
async def test_bodies_that_once_crashed_the_server_are_422(
    serve: StartServer, path: str, body: Any
) -> None:
    server, _, run_id = await hostile_server(serve, "none")
    async with server.client() as client:
        assert_4xx_json(await client.post(path, content=raw(body), headers=JSON), 422)
        await assert_nothing_stored(client, run_id)


# -- SSE injection ---------------------------------------------------------------------------------

INJECTIONS = [
    "\n\nevent: done\ndata: {}\n\nid: 999\n",
    "\r\revent: done\rdata: {}\r\rid: 999\r",
    "\r\n\r\nevent: done\r\ndata: {}\r\n\r\nid: 999\r\n",
    "x\n\nretry: 1\n: comment\nevent: error\n\n",
    "\u2028event: done\u2029id: 999\x85data: {}\x0b\x0c\x1c\x1d\x1e\n",
    'json": "break", "type": "done"}\n\ndata: {"',
]


class Echo(ScriptedAgent):
    """Says the user's last message back, then plays its script (tool calls, a failure)."""

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        yield MessageChunk(content=ctx.messages[-1].content, message_id="m1")
        async for event in super().__call__(ctx):
            yield event


def wire_blocks(raw_bytes: bytes) -> list[list[bytes]]:
    """The SSE blocks on the wire: each a list of lines; every line must be a known field."""
    assert b"\r" not in raw_bytes
    blocks = [b.split(b"\n") for b in raw_bytes.split(b"\n\n") if b]
    for block in blocks:
        for line in block:
            assert line.split(b":", 1)[0] in (b"id", b"event", b"data", b"retry", b""), line
    return blocks


@pytest.mark.parametrize("granularity", ["low", "message"])
@pytest.mark.parametrize("text", INJECTIONS, ids=range(len(INJECTIONS)))
async def test_no_text_can_make_an_sse_field(
    serve: StartServer, text: str, granularity: str
) -> None:
    script: list[Step] = [
        ToolStart(name=text, args={"q": text}, call_id=text),
        ToolEnd(name=text, output={"text": text, "list": [text]}, call_id=text),
        Fail(RuntimeError(text)),
    ]
    server = await serve(agent=Echo(script))
    body = {"input": {"messages": [{"role": "user", "content": text}]}, "granularity": granularity}
    async with server.client() as client:
        response, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
        run_id = response.headers["x-run-id"]
        async with client.stream("GET", f"/v1/runs/{run_id}/stream") as replay:
            wire = b"".join([chunk async for chunk in replay.aiter_bytes()])
        page = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
    expected = ["run", "message_chunk", "tool_start", "tool_end", "error", "done"]
    assert [e.event for e in events] == expected
    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [(e["seq"], e["type"], e["data"]) for e in page] == [
        (int(e.id), e.event, orjson.loads(e.data)) for e in events
    ]
    payload = [orjson.loads(e.data) for e in events]
    assert payload[1]["content"] == text and payload[2]["args"] == {"q": text}
    assert payload[3]["output"] == {"text": text, "list": [text]} and payload[2]["name"] == text
    assert payload[4]["message"] == AGENT_ERROR_MESSAGE  # the exception's text is only logged
    assert payload[5]["status"] == "failed"
    # The retry line opens the first event's block (one newline: no empty event of its own).
    assert wire.startswith(b"retry: 2000\nid: 1\n")
    blocks = wire_blocks(wire.removeprefix(b"retry: 2000\n"))
    assert [len(b) for b in blocks] == [3] * 6  # id, event, data: one line each
    assert [b[0] for b in blocks] == [b"id: %d" % i for i in range(1, 7)]
    assert [b[1] for b in blocks] == [b"event: " + e.encode() for e in expected]
    assert [orjson.loads(b[2].removeprefix(b"data: ")) for b in blocks] == payload
    assert_same_as_parsed(events, blocks)


def assert_same_as_parsed(events: list[ServerSentEvent], blocks: list[list[bytes]]) -> None:
    """httpx-sse read the same events the raw bytes hold."""
    assert [(e.id, e.event, e.data) for e in events] == [
        (b[0][4:].decode(), b[1][7:].decode(), b[2][6:].decode()) for b in blocks
    ]
