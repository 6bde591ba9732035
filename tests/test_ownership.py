"""Ownership, per-principal limits and CORS over HTTP (docs/security.md).

Three principals on an ``api-key`` server: ``alice`` and ``bob``, and the admin ``root``. Another
principal's run or thread must answer exactly like one that does not exist, on every path and on
every resume and page; limits count per principal and hold under bursts of parallel requests.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from streamctl.agents import ScriptedAgent, Wait
from streamctl.supervisor import Supervisor

from .support import HANG, Server, StartServer, chunks, read_sse, run_body

pytestmark = pytest.mark.anyio

KEYS = {"alice": "a" * 24, "bob": "b" * 24, "root": "r" * 24}
AUTH: dict[str, Any] = {
    "auth": "api-key",
    "api_keys": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
    "admins": "root",
}


def as_(name: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}", **headers}


def held_agent(gate: anyio.Event) -> ScriptedAgent:
    return ScriptedAgent([*chunks(3), Wait(gate), *chunks(1, "m2", "v")])


def supervisor(server: Server) -> Supervisor:
    sup: Supervisor = cast(FastAPI, server.uvicorn.config.app).state.supervisor
    return sup


async def start(client: httpx.AsyncClient, who: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/runs", json=run_body(**body), headers=as_(who))
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def ask(
    client: httpx.AsyncClient, who: str, method: str, url: str, how: dict[str, Any]
) -> httpx.Response:
    headers = {**as_(who), **how.get("headers", {})}
    return await client.request(method, url, json=how.get("json"), headers=headers)


async def snapshot(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """Alice's view of her run, without the stream token minted afresh for each look."""
    run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}", headers=as_("alice"))).json()
    run.pop("stream_token", None)
    return run


def probes(run_id: str, thread_id: str, own_thread: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every way to read, follow, resume, page or stop a run or a thread (``own_thread`` is the
    asker's own thread, resumed from the run's cursor)."""
    return [
        ("GET", f"/v1/runs/{run_id}", {}),
        ("GET", f"/v1/runs/{run_id}/stream", {}),
        ("GET", f"/v1/runs/{run_id}/stream", {"headers": {"Last-Event-ID": "2"}}),
        ("GET", f"/v1/runs/{run_id}/stream?after=1&granularity=message", {}),
        ("GET", f"/v1/runs/{run_id}/events", {}),
        ("GET", f"/v1/runs/{run_id}/events?after=2&limit=1", {}),
        ("POST", f"/v1/runs/{run_id}/stop", {}),
        ("POST", f"/v1/runs/{run_id}/stop?wait=false", {}),
        ("POST", "/stop", {"json": {"run_id": run_id}}),
        ("GET", f"/v1/threads/{thread_id}", {}),
        ("GET", f"/v1/threads/{thread_id}/stream", {}),
        ("GET", f"/v1/threads/{thread_id}/stream", {"headers": {"Last-Event-ID": f"{run_id}:1"}}),
        ("POST", f"/v1/threads/{thread_id}/stop", {}),
        ("POST", "/stop", {"json": {"thread_id": thread_id}}),
        ("GET", f"/v1/threads/{own_thread}/stream", {"headers": {"Last-Event-ID": f"{run_id}:1"}}),
    ]


@pytest.mark.parametrize("state", ["live", "finished"])
async def test_anothers_run_is_exactly_a_missing_one(serve: StartServer, state: str) -> None:
    gate = anyio.Event()
    server = await serve(agent=held_agent(gate), **AUTH)
    async with server.client() as client:
        with anyio.fail_after(20):
            run = await start(client, "alice")
            run_id, thread_id = run["run_id"], run["thread_id"]
            if state == "finished":
                gate.set()
            # Live: held at the gate once its first four events are read; finished: to its end.
            limit = 4 if state == "live" else None
            url = f"/v1/runs/{run_id}/stream"
            await read_sse(client, "GET", url, limit=limit, headers=as_("alice"))
            before = await snapshot(client, run_id)
            bobs = await start(client, "bob")
            own = bobs["thread_id"]
            missing_run, missing_thread = uuid.uuid4().hex, uuid.uuid4().hex
            for (method, url, how), (_, missing_url, missing_how) in zip(
                probes(run_id, thread_id, own),
                probes(missing_run, missing_thread, own),
                strict=True,
            ):
                got = await ask(client, "bob", method, url, how)
                assert got.status_code == 404, (method, url, got.text)
                missing = await ask(client, "bob", method, missing_url, missing_how)
                ids = got.text.replace(run_id, missing_run).replace(thread_id, missing_thread)
                assert ids == missing.text, (method, url)
                assert {k: v for k, v in got.headers.items() if k != "date"} == {
                    k: v for k, v in missing.headers.items() if k != "date"
                }
            listed = (await client.get("/v1/runs", headers=as_("bob"))).json()["runs"]
            assert [r["run_id"] for r in listed] == [bobs["run_id"]]
            of_thread = await client.get(f"/v1/runs?thread_id={thread_id}", headers=as_("bob"))
            assert of_thread.json() == {"runs": []}
            # Alice's thread id is free in bob's namespace: exactly like a fresh id, a new thread
            # of bob's (no 404 to probe with, no way to squat alice's thread).
            taken = {}
            for fresh in (thread_id, missing_thread):
                body = run_body(thread_id=fresh, multitask="reject")
                response = await client.post("/v1/runs", json=body, headers=as_("bob"))
                assert response.status_code == 201, response.text
                assert response.json()["thread_id"] == fresh
                taken[fresh] = response.json()["run_id"]
            bobs_thread = await client.get(f"/v1/threads/{thread_id}", headers=as_("bob"))
            assert {m["run_id"] for m in bobs_thread.json()["messages"]} == {taken[thread_id]}
            alices_thread = await client.get(f"/v1/threads/{thread_id}", headers=as_("alice"))
            assert {m["run_id"] for m in alices_thread.json()["messages"]} == {run_id}
            after = await snapshot(client, run_id)
            assert after == before  # bob's stops and starts changed nothing
            assert after["status"] == ("running" if state == "live" else "completed")
            gate.set()


async def test_admin_sees_follows_and_stops_every_run(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=held_agent(gate), **AUTH)
    async with server.client() as client:
        with anyio.fail_after(20):
            first, second = await start(client, "alice"), await start(client, "alice")
            bobs = await start(client, "bob")
            listed = (await client.get("/v1/runs", headers=as_("root"))).json()["runs"]
            assert {r["run_id"] for r in listed} == {
                first["run_id"],
                second["run_id"],
                bobs["run_id"],
            }
            assert len((await client.get("/v1/runs", headers=as_("alice"))).json()["runs"]) == 2
            url = f"/v1/runs/{first['run_id']}"
            assert (await client.get(url, headers=as_("root"))).json()["status"] == "running"
            _, events = await read_sse(client, "GET", url + "/stream", limit=4, headers=as_("root"))
            assert [e.id for e in events] == ["1", "2", "3", "4"]  # now held at the gate
            page = (await client.get(url + "/events", headers=as_("root"))).json()
            assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4]
            # Threads are per owner: an admin names whose thread with ?owner= (its own without).
            threads = f"/v1/threads/{first['thread_id']}"
            assert (await client.get(threads, headers=as_("root"))).status_code == 404
            thread = await client.get(threads, params={"owner": "alice"}, headers=as_("root"))
            assert thread.json()["active_run"]["run_id"] == first["run_id"]
            not_admin = await client.get(threads, params={"owner": "alice"}, headers=as_("bob"))
            assert not_admin.status_code == 404
            stopped = await client.post(url + "/stop", headers=as_("root"))
            assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
            by_thread = await client.post(
                f"/v1/threads/{second['thread_id']}/stop",
                params={"owner": "alice"},
                headers=as_("root"),
            )
            assert by_thread.json()["status"] == "cancelled"
            assert by_thread.json()["run_id"] == second["run_id"]
            bobs_url = f"/v1/runs/{bobs['run_id']}"
            assert (await client.post(bobs_url + "/stop", headers=as_("alice"))).status_code == 404
            assert (await client.get(bobs_url, headers=as_("bob"))).json()["status"] == "running"
            gate.set()


async def test_an_admins_stream_token_opens_the_run_it_was_issued_for(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=held_agent(gate), **AUTH)
    async with server.client() as client:
        run = await start(client, "alice")
        url = f"/v1/runs/{run['run_id']}"
        token = (await client.get(url, headers=as_("root"))).json()["stream_token"]
        gate.set()
        assert (await client.get(url, params={"token": token})).status_code == 200


# -- limits ----------------------------------------------------------------------------------------


async def test_run_rate_holds_under_a_burst_and_is_per_principal(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), runs_per_minute=5, **AUTH)
    responses: list[httpx.Response] = []
    async with server.client() as client:

        async def post() -> None:
            responses.append(await client.post("/v1/runs", json=run_body(), headers=as_("alice")))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(post)
            assert sorted(r.status_code for r in responses) == [201] * 5 + [429] * 15
            for refused in (r for r in responses if r.status_code == 429):
                assert refused.json()["error"]["code"] == "too_many_runs"
                assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert len((await client.get("/v1/runs", headers=as_("alice"))).json()["runs"]) == 5
            assert (await client.post("/v1/runs", json=run_body(), headers=as_("bob"))).is_success


async def test_open_streams_are_capped_per_principal(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=held_agent(gate), max_streams_per_owner=3, **AUTH)
    statuses: list[int] = []
    holding: list[anyio.Event] = []
    answered = anyio.Event()

    async def follow(client: httpx.AsyncClient, url: str) -> None:
        async with aconnect_sse(client, "GET", url, headers=as_("alice")) as source:
            statuses.append(source.response.status_code)
            if source.response.status_code == 200:
                release = anyio.Event()
                holding.append(release)
                if len(statuses) == 10:
                    answered.set()
                await release.wait()
                return
            body = orjson.loads(await source.response.aread())
            assert body["error"]["code"] == "too_many_streams"
            assert int(source.response.headers["retry-after"]) >= 1
            if len(statuses) == 10:
                answered.set()

    async with server.client() as client, anyio.create_task_group() as tg:
        with anyio.fail_after(HANG):
            url = f"/v1/runs/{(await start(client, 'alice'))['run_id']}/stream"
            bobs = f"/v1/runs/{(await start(client, 'bob'))['run_id']}/stream"
            sup = supervisor(server)  # its lifespan has started: it answered
            for _ in range(10):  # a burst: the cap is checked and claimed in one step
                tg.start_soon(follow, client, url)
            await answered.wait()
            assert sorted(statuses) == [200] * 3 + [429] * 7
            assert (sup.streams.held("alice"), sup.streams.total) == (3, 3)
            async with aconnect_sse(client, "GET", bobs, headers=as_("bob")) as source:
                assert source.response.status_code == 200  # bob's own budget is untouched
                assert (sup.streams.held("alice"), sup.streams.held("bob")) == (3, 1)
            holding[0].set()  # close one of alice's streams: the count comes back
            while (sup.streams.held("alice"), sup.streams.total) != (2, 2):
                await anyio.wait_all_tasks_blocked()
            _, events = await read_sse(client, "GET", url, limit=1, headers=as_("alice"))
            assert [e.id for e in events] == ["1"]
            for release in holding:
                release.set()
            gate.set()
            while sup.streams.total:  # every stream, closed or ended, gave its slot back
                await anyio.wait_all_tasks_blocked()


async def test_a_refused_streaming_post_starts_no_run(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=held_agent(gate), max_streams_per_owner=1, **AUTH)
    async with server.client() as client:
        with anyio.fail_after(20):
            run = await start(client, "alice")
            url = f"/v1/runs/{run['run_id']}/stream"
            async with aconnect_sse(client, "GET", url, headers=as_("alice")) as held:
                assert held.response.status_code == 200
                refused = await client.post(
                    "/v1/runs/stream", json=run_body(), headers=as_("alice")
                )
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "too_many_streams"
                listed = (await client.get("/v1/runs", headers=as_("alice"))).json()["runs"]
                gate.set()
            assert [r["run_id"] for r in listed] == [run["run_id"]]


# -- CORS and compression --------------------------------------------------------------------------

APP = "https://app.example"


def preflight(
    origin: str, method: str = "GET", headers: str = "authorization,last-event-id"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def test_cors_answers_allowed_origins_only(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), cors_origins=APP, **AUTH)
    async with server.client() as client:
        ok = await client.options("/v1/runs/x/stream", headers=preflight(APP))
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == APP
        allowed = {h.strip().lower() for h in ok.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "last-event-id", "content-type"} <= allowed
        assert "GET" in ok.headers["access-control-allow-methods"]
        post = await client.options("/v1/runs", headers=preflight(APP, "POST", "content-type"))
        assert post.status_code == 200 and "POST" in post.headers["access-control-allow-methods"]
        created = await client.post("/v1/runs", json=run_body(), headers=as_("alice", Origin=APP))
        assert created.headers["access-control-allow-origin"] == APP
        assert "x-stream-token" in created.headers["access-control-expose-headers"].lower()
        for origin in ("https://evil.example", APP + ".evil.example", "null"):
            refused = await client.options("/v1/runs/x/stream", headers=preflight(origin))
            assert refused.status_code >= 400
            assert "access-control-allow-origin" not in refused.headers
        for method, headers in (("POST", "x-evil"), ("DELETE", "authorization")):
            refused = await client.options("/v1/runs", headers=preflight(APP, method, headers))
            assert refused.status_code >= 400  # the allowed origin, asking for too much
        evil = await client.get("/v1/runs", headers=as_("alice", Origin="https://evil.example"))
        assert evil.status_code == 200  # answered, but without the header the browser needs
        assert "access-control-allow-origin" not in evil.headers


async def test_no_cors_headers_unless_origins_are_set(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), **AUTH)
    async with server.client() as client:
        asked = await client.options("/v1/runs", headers=preflight(APP, "POST"))
        assert asked.status_code >= 400 and cors_headers(asked) == {}
        response = await client.get("/v1/runs", headers=as_("alice", Origin=APP))
        assert response.status_code == 200 and cors_headers(response) == {}


async def test_streams_are_never_compressed(serve: StartServer) -> None:
    big = [*chunks(1), *(chunk.model_copy(update={"content": "x" * 4096}) for chunk in chunks(8))]
    server = await serve(agent=ScriptedAgent(big), cors_origins=APP, **AUTH)
    gzip = as_("alice", **{"Accept-Encoding": "gzip, deflate, br", "Origin": APP})
    async with server.client() as client:
        posted, events = await read_sse(
            client, "POST", "/v1/runs/stream", json=run_body(), headers=gzip
        )
        run_id = posted.headers["x-run-id"]
        replayed, again = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream", headers=gzip)
        for response in (posted, replayed):
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in response.headers
        assert events[-1].event == "done" and [e.id for e in again] == [e.id for e in events]
