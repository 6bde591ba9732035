"""``Idempotency-Key`` on every run-creating POST: a retry gets the run the first request started
(its state, or its stream after ``Last-Event-ID``), never a second run; the same key with another
request is a 422; keys are per principal; concurrent requests with one key start one run. And the
case the issue found: ``@microsoft/fetch-event-source``'s automatic retry of a POST cut mid-run
(through a proxy) re-attaches to the same run, losing and duplicating nothing."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from streamctl.agents import ScriptedAgent, Wait
from streamctl.http.idempotency import request_digest
from streamctl.store.base import IdempotencyKey

from .support import StartServer, assert_error, chunks, run_body, supervisor_of, tool_call
from .support.auth import ALICE, API_KEYS, BOB, bearer
from .support.node_clients import NODE_DIR, require_node
from .support.redis_server import RedisServer, redis_server
from .support.tcp_proxy import Proxy

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]  # a fixture this module uses

KEY = "order-7f3a-retry-safe"
STEPS = [*chunks(3), *tool_call(), *chunks(2, "m2", word="v")]

# Every run-creating POST, with a body and (for the 422 case) another body.
ENDPOINTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "runs-stream": ("/v1/runs/stream", run_body(thread_id="t1"), run_body(thread_id="t2")),
    "graph-stream-sse": (
        "/v1/graph/stream",
        {"messages": [{"role": "user", "content": "hi"}], "config": {"thread_id": "t1"}},
        {"messages": [{"role": "user", "content": "bye"}], "config": {"thread_id": "t1"}},
    ),
    "ai-sdk-chat": (
        "/v1/ai-sdk/chat",
        {
            "id": "t1",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        },
        {
            "id": "t1",
            "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "yo"}]}],
        },
    ),
    "ag-ui": (
        "/v1/ag-ui",
        {
            "threadId": "t1",
            "runId": "run-a",
            "messages": [{"id": "u1", "role": "user", "content": "hi"}],
        },
        {
            "threadId": "t1",
            "runId": "run-b",
            "messages": [{"id": "u1", "role": "user", "content": "hi"}],
        },
    ),
}


async def stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str
) -> tuple[httpx.Response, list[tuple[str, str]]]:
    """POST and read the SSE answer to its end: ``(id, data)`` of every event."""
    events: list[tuple[str, str]] = []
    async with aconnect_sse(client, "POST", path, json=body, headers=headers) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            return response, events
        async for event in source.aiter_sse():
            if event.data:
                events.append((event.id, event.data))
    return response, events


async def run_ids(client: httpx.AsyncClient) -> list[str]:
    return [run["run_id"] for run in (await client.get("/v1/runs")).json()["runs"]]


# -- POST /v1/runs ---------------------------------------------------------------------------------


async def test_the_same_key_answers_the_same_run(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(2)))
    async with server.client() as client:
        first = await client.post("/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY})
        # The same request in another spelling (key order, spacing) is the same request.
        spelled = orjson.dumps(run_body(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        again = await client.post(
            "/v1/runs",
            content=spelled,
            headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
        )
        unkeyed = await client.post("/v1/runs", json=run_body())
        ids = await run_ids(client)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    run_id = first.json()["run_id"]
    assert (
        again.json()["run_id"] == run_id and again.json()["thread_id"] == first.json()["thread_id"]
    )
    assert unkeyed.status_code == 201 and unkeyed.json()["run_id"] != run_id
    assert sorted(ids) == sorted([run_id, unkeyed.json()["run_id"]])  # two runs, not three


async def test_the_same_key_with_another_request_is_422(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        first = await client.post("/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY})
        other = await client.post(
            "/v1/runs", json=run_body(thread_id="elsewhere"), headers={"Idempotency-Key": KEY}
        )
        # Another route with the same key and body is another request too.
        other_route = await client.post(
            "/v1/runs/stream", json=run_body(), headers={"Idempotency-Key": KEY}
        )
        ids = await run_ids(client)
    assert first.status_code == 201
    message = assert_error(other, 422, "idempotency_key_reused")
    assert KEY in message and "different request" in message
    assert_error(other_route, 422, "idempotency_key_reused")
    assert ids == [first.json()["run_id"]]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * 256, id="too-long"),
        pytest.param(b"caf\xe9", id="not-ascii"),
        pytest.param(b"a\tb", id="tab"),
    ],
)
async def test_a_bad_key_is_400_and_starts_nothing(serve: StartServer, key: bytes) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        for path, body, _ in ENDPOINTS.values():
            response = await client.post(path, json=body, headers={b"Idempotency-Key": key})
            assert_error(response, 400, "invalid_idempotency_key")
        ok = await client.post("/v1/runs", json=run_body(), headers={"Idempotency-Key": "k" * 255})
        ids = await run_ids(client)
    assert ok.status_code == 201 and ids == [ok.json()["run_id"]]


async def test_keys_are_per_principal(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), auth="api-key", api_keys=API_KEYS)
    async with server.client() as client:
        alice = await client.post(
            "/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY, **bearer(ALICE)}
        )
        # Bob's key of the same spelling is his own: another body is no 422 (nothing of
        # Alice's key shows), and the same body is a run of his own.
        bob_other = await client.post(
            "/v1/runs",
            json=run_body(thread_id="b"),
            headers={"Idempotency-Key": KEY, **bearer(BOB)},
        )
        bob_again = await client.post(
            "/v1/runs",
            json=run_body(thread_id="b"),
            headers={"Idempotency-Key": KEY, **bearer(BOB)},
        )
        alice_again = await client.post(
            "/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY, **bearer(ALICE)}
        )
    assert alice.status_code == bob_other.status_code == 201
    assert bob_other.json()["run_id"] != alice.json()["run_id"]
    async with server.client(headers=bearer(BOB)) as client:
        bob_runs = await run_ids(client)
    assert bob_runs == [bob_other.json()["run_id"]]
    assert bob_again.status_code == 200 and bob_again.json()["run_id"] == bob_other.json()["run_id"]
    assert alice_again.json()["run_id"] == alice.json()["run_id"]


async def test_concurrent_requests_with_one_key_start_one_run(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(1), Wait(gate)]))
    answers: list[httpx.Response] = []
    async with server.client() as client:
        await supervisor_of(server, client)  # started: the requests below race each other only

        async def post() -> None:
            headers = {"Idempotency-Key": KEY}
            answers.append(await client.post("/v1/runs", json=run_body(), headers=headers))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(post)
        gate.set()
        ids = await run_ids(client)
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert {a.json()["run_id"] for a in answers} == set(ids) and len(ids) == 1


async def test_a_start_that_failed_frees_its_key(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(1), Wait(gate)]))
    async with server.client() as client:
        busy = await client.post("/v1/runs", json=run_body(thread_id="t"))
        refused = await client.post(
            "/v1/runs", json=run_body(thread_id="t"), headers={"Idempotency-Key": KEY}
        )
        assert_error(refused, 409, "thread_busy")
        stopped = await client.post(f"/v1/runs/{busy.json()['run_id']}/stop")
        assert stopped.status_code == 200
        retried = await client.post(
            "/v1/runs", json=run_body(thread_id="t"), headers={"Idempotency-Key": KEY}
        )
    assert retried.status_code == 201 and retried.json()["run_id"] != busy.json()["run_id"]


async def test_expired_keys_are_free_and_purged(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), idempotency_ttl=60)
    async with server.client() as client:
        sup = await supervisor_of(server, client)
        old = IdempotencyKey("gone-run", "h", time.time() - 3600)  # claimed an hour ago
        assert await sup.store.claim_idempotency_key("anonymous", KEY, old, 7200) == old
        fresh = await client.post("/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY})
        assert fresh.status_code == 201  # past the 60 s window the key is free again
        stale = IdempotencyKey("other-run", "h", time.time() - 3600)
        assert await sup.store.claim_idempotency_key("anonymous", "old", stale, 7200) == stale
        await sup.control.purge()
        store: Any = sup.store
        keys = await store.fetch_all("SELECT key, run_id FROM idempotency_keys")
    assert keys == [{"key": KEY, "run_id": fresh.json()["run_id"]}]


async def test_a_browser_may_send_the_key_and_read_the_replay_header(serve: StartServer) -> None:
    app = "https://app.example"
    server = await serve(agent=ScriptedAgent(chunks(1)), cors_origins=app)
    async with server.client() as client:
        preflight = await client.options(
            "/v1/runs/stream",
            headers={
                "Origin": app,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key,last-event-id",
            },
        )
        headers = {"Origin": app, "Idempotency-Key": KEY}
        await client.post("/v1/runs", json=run_body(), headers=headers)
        again = await client.post("/v1/runs", json=run_body(), headers=headers)
    assert preflight.status_code == 200
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
    exposed = again.headers["access-control-expose-headers"].lower()
    assert "idempotent-replayed" in exposed and "x-run-id" in exposed


def seed(store: Any, run_id: str, created_at: float) -> Any:
    """Bind KEY (anonymous's, for ``POST /v1/runs`` with ``run_body()``) to ``run_id``, as a
    process that claimed it and has not (or never) started the run would have left it."""
    digest = request_digest("POST", "/v1/runs", orjson.dumps(run_body()))
    claim = IdempotencyKey(run_id, digest, created_at)
    return store.claim_idempotency_key("anonymous", KEY, claim, 86400)


async def test_a_key_whose_run_never_appears_is_in_flight_then_taken_over(
    serve: StartServer,
) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), stop_timeout=0.1)
    async with server.client() as client:
        sup = await supervisor_of(server, client)
        await seed(sup.store, "being-started-elsewhere", time.time())
        with anyio.fail_after(30):
            waiting = await client.post(
                "/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY}
            )
        assert_error(waiting, 409, "idempotency_key_in_flight")
        # A binding older than stop_timeout + 30 s whose run never appeared: its process died.
        await sup.store.release_idempotency_key("anonymous", KEY, "being-started-elsewhere")
        await seed(sup.store, "died-before-starting", time.time() - 3600)
        taken = await client.post("/v1/runs", json=run_body(), headers={"Idempotency-Key": KEY})
        ids = await run_ids(client)
    assert taken.status_code == 201 and ids == [taken.json()["run_id"]]


# -- the streaming POSTs ---------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_a_streaming_retry_replays_the_same_run(serve: StartServer, endpoint: str) -> None:
    path, body, other = ENDPOINTS[endpoint]
    server = await serve(agent=ScriptedAgent(STEPS))
    async with server.client() as client:
        first, events = await stream(client, path, body, **{"Idempotency-Key": KEY})
        again, replayed = await stream(client, path, body, **{"Idempotency-Key": KEY})
        ids = [ident for ident, _ in events if ident]
        middle = ids[len(ids) // 2]
        resumed_response, resumed = await stream(
            client, path, body, **{"Idempotency-Key": KEY, "Last-Event-ID": middle}
        )
        at_end = await client.post(
            path, json=body, headers={"Idempotency-Key": KEY, "Last-Event-ID": ids[-1]}
        )
        reused = await client.post(path, json=other, headers={"Idempotency-Key": KEY})
        runs = await run_ids(client)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    run_id = first.headers["x-run-id"]
    assert runs == [run_id]
    for response in (again, resumed_response):
        assert response.status_code == 200 and response.headers["x-run-id"] == run_id
    assert replayed == events  # from the start: every event again, the same ids and bytes
    cut = [ident for ident, _ in events].index(middle) + 1
    assert resumed == events[cut:]  # exactly the events after Last-Event-ID
    assert at_end.status_code == 204 and at_end.headers["x-run-id"] == run_id
    assert_error(reused, 422, "idempotency_key_reused")


async def test_an_ndjson_retry_replays_the_run_from_its_start(serve: StartServer) -> None:
    path, body, _ = ENDPOINTS["graph-stream-sse"]
    server = await serve(agent=ScriptedAgent(STEPS))
    headers = {"Idempotency-Key": KEY, "Accept": "application/x-ndjson"}
    async with server.client() as client:
        first = await client.post(path, json=body, headers=headers)
        again = await client.post(path, json=body, headers=headers)
        runs = await run_ids(client)
    assert first.headers["x-run-id"] == again.headers["x-run-id"] and len(runs) == 1
    assert again.headers["idempotent-replayed"] == "true"
    lines = [line for line in first.text.splitlines() if line]
    assert lines and [line for line in again.text.splitlines() if line] == lines


async def test_a_live_streaming_retry_resumes_after_last_event_id(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, "m2", "v")]))
    headers = {"Idempotency-Key": KEY}
    async with server.client() as client:
        seen: list[tuple[str, str]] = []
        async with aconnect_sse(
            client, "POST", "/v1/runs/stream", json=run_body(), headers=headers
        ) as source:
            async for event in source.aiter_sse():
                if event.data:
                    seen.append((event.id, event.event))
                if len(seen) == 4:  # `run` and three chunks: the agent waits at the gate
                    break
        # The client's connection is gone; the run goes on. Its retry re-attaches.
        async with aconnect_sse(
            client,
            "POST",
            "/v1/runs/stream",
            json=run_body(),
            headers={**headers, "Last-Event-ID": seen[-1][0]},
        ) as source:
            assert source.response.headers["idempotent-replayed"] == "true"
            gate.set()
            async for event in source.aiter_sse():
                if event.data:
                    seen.append((event.id, event.event))
        runs = await run_ids(client)
    assert [ident for ident, _ in seen] == [str(i) for i in range(1, 9)]  # dense, once each
    assert [kind for _, kind in seen].count("done") == 1 and seen[-1][1] == "done"
    assert len(runs) == 1


async def test_two_nodes_on_one_redis_keep_one_run_per_key(
    serve: StartServer, redis_server: RedisServer
) -> None:
    with redis_server.client() as redis:
        redis.flushall()
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, "m2", word="v")])
    nodes = [await serve(agent=agent, backend="redis", redis_url=redis_server.url) for _ in "ab"]
    async with nodes[0].client() as a, nodes[1].client() as b:
        for node, client in zip(nodes, (a, b), strict=True):
            await supervisor_of(node, client)
        answers: list[httpx.Response] = []

        async def post(client: httpx.AsyncClient) -> None:
            headers = {"Idempotency-Key": KEY}
            answers.append(await client.post("/v1/runs", json=run_body(), headers=headers))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for client in (a, b, a, b, a, b):
                    tg.start_soon(post, client)
            # A stream started on node a, dropped, retried on node b: the same run, exactly.
            seen: list[tuple[str, str]] = []
            body = run_body(thread_id="s")
            headers = {"Idempotency-Key": "stream-key"}
            async with aconnect_sse(
                a, "POST", "/v1/runs/stream", json=body, headers=headers
            ) as sse:
                async for event in sse.aiter_sse():
                    if event.data:
                        seen.append((event.id, event.event))
                    if len(seen) == 4:
                        break
            retry = {**headers, "Last-Event-ID": seen[-1][0]}
            async with aconnect_sse(b, "POST", "/v1/runs/stream", json=body, headers=retry) as sse:
                assert sse.response.headers["idempotent-replayed"] == "true"
                gate.set()
                async for event in sse.aiter_sse():
                    if event.data:
                        seen.append((event.id, event.event))
        runs = await run_ids(b)
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201]
    assert len({r.json()["run_id"] for r in answers}) == 1
    assert [ident for ident, _ in seen] == [str(i) for i in range(1, 9)]
    assert seen[-1][1] == "done" and len(runs) == 2  # one per key


# -- the real fetch-event-source, cut mid-run by a proxy -----------------------------------------


async def test_fetch_event_source_retry_of_a_cut_post_keeps_one_run(serve: StartServer) -> None:
    require_node("@microsoft/fetch-event-source")
    gate = anyio.Event()
    steps = [*chunks(3), *tool_call(), Wait(gate), *chunks(4, "m2", word="v")]
    server = await serve(agent=ScriptedAgent(steps))
    async with Proxy(server.port) as proxy, server.client() as client:
        args = [str(NODE_DIR / "fetch_post.mjs"), f"{proxy.url}/v1/runs/stream"]
        args += [orjson.dumps(run_body(thread_id="fes")).decode(), "--key", KEY]
        lines: list[dict[str, Any]] = []
        with anyio.fail_after(60):
            async with await anyio.open_process(["node", *args]) as node:
                assert node.stdout is not None
                buffered = b""
                async for data in node.stdout:
                    buffered += data
                    *complete, buffered = buffered.split(b"\n")
                    for raw in complete:
                        line = orjson.loads(raw)
                        lines.append(line)
                        if line.get("message", {}).get("id") == "6":  # the tool's result
                            assert proxy.cut() == 1  # the POST's connection, mid-run
                        if "open" in line and len(proxy.connections) == 2:
                            gate.set()  # the retry is attached: let the run go on
                assert await node.wait() == 0
        log = (await client.get("/v1/runs?thread_id=fes")).json()["runs"]
        run_id = log[0]["run_id"]
        events = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
    summary = lines[-1]
    assert summary["ended"] == "done"
    assert len(log) == 1  # one run on the server, whatever the client retried
    opens = summary["opens"]
    assert [o["open"] for o in opens] == [200, 200] and {o["run"] for o in opens} == {run_id}
    assert opens[0]["replayed"] is None and opens[1]["replayed"] == "true"
    assert opens[1]["lastEventId"] == "6"
    retry_head = bytes(proxy.connections[1].sent).split(b"\r\n\r\n")[0].lower()
    assert f"idempotency-key: {KEY}".lower().encode() in retry_head
    assert b"last-event-id: 6" in retry_head  # what the library itself sent
    got = [(m["id"], m["event"], m["data"]) for m in summary["messages"]]
    stored = [(str(e["seq"]), e["type"], orjson.dumps(e["data"]).decode()) for e in events]
    assert [g[:2] for g in got] == [s[:2] for s in stored]  # 0 lost, 0 duplicated, in order
    assert [orjson.loads(g[2]) for g in got] == [orjson.loads(s[2]) for s in stored]
    assert [g[1] for g in got].count("done") == 1 and got[-1][1] == "done"
    assert orjson.loads(got[-1][2])["status"] == "completed"
