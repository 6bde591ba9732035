"""The raw ASGI path of the stream GETs (``streamctl/http/stream_gate.py``): it serves them in front
of the middleware chain, and every check of those routes still holds there: authentication
(bearer, ``?token=`` stream tokens and their scope), CORS headers, the query's and the cursor's
validation, the per-principal stream cap. Errors are answered by the application in its one JSON
shape (the gate hands the request on); ``gate.served`` / ``gate.declined`` say which path
answered. Embedded, the gate is opt-in, and hands everything on under a host's ``authenticate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamctl import ScriptedAgent, Streamctl
from streamctl.agents import Wait
from streamctl.http.stream_gate import GatedApp, StreamGate
from streamctl.sse import unsent_probe

from .support import Server, StartServer, chunks, read_sse, run_body
from .support.auth import ALICE, API_KEYS, BOB, assert_401, bearer
from .test_embedding import ALICE as HOST_ALICE
from .test_embedding import current_user, served, settings

pytestmark = pytest.mark.anyio

APP = "https://app.example"
AUTH: dict[str, Any] = {"auth": "api-key", "api_keys": API_KEYS}


def gate_of(server: Server) -> StreamGate:
    gate = cast(GatedApp, server.uvicorn.config.app).gate
    assert gate is not None  # built by the first request
    return gate


def cors_of(response: httpx.Response) -> dict[str, str]:
    return {
        k: v for k, v in response.headers.items() if k.startswith("access-control-") or k == "vary"
    }


async def test_run_and_thread_streams_are_served_by_the_gate(serve: StartServer) -> None:
    hold = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(3), Wait(hold), *chunks(1, "m2")]), **AUTH)
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        url = f"/v1/runs/{run['run_id']}/stream"
        with anyio.fail_after(20):
            live, first = await read_sse(client, "GET", url, headers=bearer(ALICE), limit=2)
            gate = gate_of(server)
            assert (gate.served, gate.declined) == (1, 0)
            thread = f"/v1/threads/{run['thread_id']}/stream"
            joined, in_thread = await read_sse(
                client, "GET", thread, headers=bearer(ALICE), limit=1
            )
            assert joined.status_code == 200 and in_thread[0].id == f"{run['run_id']}:1"
            hold.set()
            _, events = await read_sse(
                client, "GET", url, headers={**bearer(ALICE), "Last-Event-ID": "2"}
            )
            _, again = await read_sse(
                client, "GET", url, params={"after": "1"}, headers=bearer(ALICE)
            )
            nothing = await client.get(
                url, headers={**bearer(ALICE), "Last-Event-ID": events[-1].id}
            )
            page = (
                await client.get(f"/v1/runs/{run['run_id']}/events", headers=bearer(ALICE))
            ).json()
    assert live.headers["content-type"].startswith("text/event-stream")
    assert [e.id for e in first] == ["1", "2"]
    ids = [str(e["seq"]) for e in page["events"]]
    assert [e.id for e in events] == ids[2:] and [e.id for e in again] == ids[1:]
    assert nothing.status_code == 204  # read to its end
    assert (gate.served, gate.declined) == (5, 0)


async def test_cors_headers_on_the_gate_are_the_chains(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(2)), cors_origins=APP, **AUTH)
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        for origin in (APP, "https://evil.example"):
            asked = {**bearer(ALICE), "Origin": origin}
            with anyio.fail_after(20):
                streamed, _ = await read_sse(
                    client, "GET", f"/v1/runs/{run['run_id']}/stream", headers=asked
                )
            chain = await client.get(f"/v1/runs/{run['run_id']}", headers=asked)
            assert streamed.status_code == 200 and chain.status_code == 200
            assert cors_of(streamed) == cors_of(chain)  # what CORSMiddleware sends, exactly
            allowed = streamed.headers.get("access-control-allow-origin")
            assert allowed == (APP if origin == APP else None)
        plain = await client.get(f"/v1/runs/{run['run_id']}/stream", headers=bearer(ALICE))
        assert "access-control-allow-origin" not in plain.headers
        refused = await client.get(
            f"/v1/runs/{run['run_id']}/stream", headers={"Origin": APP}
        )  # an error on the fast path is the chain's answer, CORS included
        assert_401(refused, "missing_token")
        assert refused.headers["access-control-allow-origin"] == APP
    assert gate_of(server).served == 3


async def test_auth_stream_tokens_and_their_scope_hold_on_the_gate(serve: StartServer) -> None:
    hold = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(2), Wait(hold)]), **AUTH)
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        other = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        url = f"/v1/runs/{run['run_id']}/stream"
        token = run["stream_token"]
        with anyio.fail_after(20):
            opened, events = await read_sse(client, "GET", url, params={"token": token}, limit=2)
        assert opened.status_code == 200 and [e.id for e in events] == ["1", "2"]
        gate = gate_of(server)
        assert (gate.served, gate.declined) == (1, 0)
        assert_401(await client.get(url), "missing_token")
        assert_401(await client.get(url, headers={"Authorization": "Basic x"}), "malformed_token")
        assert_401(await client.get(url, headers=bearer("nope" * 6)), "invalid_token")
        assert_401(await client.get(url, params={"token": ALICE}), "malformed_token")
        elsewhere = await client.get(f"/v1/runs/{other['run_id']}/stream", params={"token": token})
        assert elsewhere.status_code == 404
        assert elsewhere.json()["error"]["code"] == "run_not_found"
        thread = f"/v1/threads/{run['thread_id']}/stream"
        assert_401(await client.get(thread, params={"token": token}), "insufficient_scope")
        bobs = await client.get(url, headers=bearer(BOB))
        assert bobs.status_code == 404 and bobs.json()["error"]["code"] == "run_not_found"
        assert (gate.served, gate.declined) == (1, 7)  # each error answered by the chain
        hold.set()


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ({"after": "x"}, {}, 400, "invalid_cursor"),
        ({}, {"Last-Event-ID": "-1"}, 400, "invalid_cursor"),
        ({"after": "99"}, {}, 400, "cursor_out_of_range"),
        ({"granularity": "huge"}, {}, 422, "invalid_request"),
        ({"afterr": "1"}, {}, 422, "invalid_request"),
    ],
)
async def test_bad_cursors_and_queries_get_the_routes_answers(
    serve: StartServer, query: dict[str, str], headers: dict[str, str], status: int, code: str
) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), **AUTH)
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        response = await client.get(
            f"/v1/runs/{run['run_id']}/stream",
            params=query,
            headers={**bearer(ALICE), **headers},
        )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert gate_of(server).declined == 1


async def test_the_stream_cap_holds_on_the_gate(serve: StartServer) -> None:
    hold = anyio.Event()
    server = await serve(
        agent=ScriptedAgent([*chunks(1), Wait(hold)]), max_streams_per_owner=1, **AUTH
    )
    async with server.client() as client, server.client() as second:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        url = f"/v1/runs/{run['run_id']}/stream"
        with anyio.fail_after(20):
            async with client.stream("GET", url, headers=bearer(ALICE)) as held:
                assert held.status_code == 200
                refused = await second.get(url, headers=bearer(ALICE))
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "too_many_streams"
                assert "retry-after" in refused.headers
        hold.set()
    gate = gate_of(server)
    assert (gate.served, gate.declined) == (1, 1)


async def test_embedded_gate_serves_a_prefix_and_hands_on_under_host_auth(db_path: Path) -> None:
    sc = Streamctl(
        agent=ScriptedAgent(chunks(2)),
        settings=settings(db_path, auth="api-key", api_keys=API_KEYS),
    )
    app = FastAPI(lifespan=sc.lifespan)
    app.include_router(sc.router, prefix="/agent")
    app.add_middleware(CORSMiddleware, allow_origins=[APP])
    gate = sc.stream_gate(app, prefix="/agent", cors=CORSMiddleware(app, allow_origins=[APP]))
    async with served(gate) as url, httpx.AsyncClient(base_url=url) as client:  # type: ignore[arg-type]
        run = (await client.post("/agent/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        with anyio.fail_after(20):
            response, events = await read_sse(
                client,
                "GET",
                f"/agent/v1/runs/{run['run_id']}/stream",
                headers={**bearer(ALICE), "Origin": APP},
            )
        assert response.headers["access-control-allow-origin"] == APP
        assert events[-1].event == "done" and (gate.served, gate.declined) == (1, 0)
        unprefixed = await client.get(f"/v1/runs/{run['run_id']}/stream", headers=bearer(ALICE))
        assert unprefixed.status_code == 404 and gate.served == 1
        # An embedded gate leaves the starts to the host's chain (its middleware sees them).
        _, started = await read_sse(
            client, "POST", "/agent/v1/runs/stream", json=run_body(), headers=bearer(ALICE)
        )
        assert started[-1].event == "done" and gate.served == 1

    hosted = Streamctl(
        agent=ScriptedAgent(chunks(2)),
        settings=settings(db_path.with_name("host.db")),
        authenticate=current_user,
    )
    host = FastAPI(lifespan=hosted.lifespan)
    host.include_router(hosted.router, prefix="/agent")
    handed = hosted.stream_gate(host, prefix="/agent")
    async with served(handed) as url, httpx.AsyncClient(base_url=url) as client:  # type: ignore[arg-type]
        run = (await client.post("/agent/v1/runs", json=run_body(), headers=HOST_ALICE)).json()
        stream = f"/agent/v1/runs/{run['run_id']}/stream"
        with anyio.fail_after(20):
            _, events = await read_sse(client, "GET", stream, headers=HOST_ALICE)
        assert events[-1].event == "done"
        assert (await client.get(stream)).status_code == 401  # the host's own login
        assert (handed.served, handed.declined) == (0, 2)


async def test_the_gate_probes_its_streams_own_connection(serve: StartServer) -> None:
    # Under `streamctl serve` a stream's probe (bytes its client has not taken) was found by
    # searching every connection for the stream's client: quadratic when 10,000 streams open.
    # The gate has the connection's transport at hand (for the chain's streams too), and never
    # searches.
    hold = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(1), Wait(hold)]))
    app = cast(GatedApp, server.uvicorn.config.app)
    searched: list[object] = []
    app.state.unsent_probe = searched.append  # what `streamctl serve` installs: the search
    async with server.client() as client:
        with anyio.fail_after(20):
            async with client.stream("POST", "/v1/runs/stream", json=run_body()) as posted:
                assert posted.status_code == 200
                url = f"/v1/runs/{posted.headers['x-run-id']}/stream"
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    streams = app.state.streamctl.watch.streams
                    assert len(streams) == 2
                    for stream in streams:
                        assert stream.probe is not None and stream.probe() >= 0
                hold.set()
    assert searched == [] and gate_of(server).served == 2  # the start and the GET
    assert unsent_probe(None) is None


class CountSends:
    """A middleware of the chain that counts what its ``send`` carries."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            self.seen.append(message["type"])
            await send(message)

        await self.app(scope, receive, counted)


async def test_a_chain_streams_body_goes_straight_to_the_server(serve: StartServer) -> None:
    # A stream answered by its route through the chain (a protocol's, here the AI SDK's chat):
    # its head (status, headers: CORS) through every middleware, its thousands of writes around
    # them. POST /v1/runs/stream skips the chain altogether (the gate answers it).
    server = await serve(agent=ScriptedAgent(chunks(20)), cors_origins=APP)
    app = cast(GatedApp, server.uvicorn.config.app)
    counting: list[CountSends] = []

    def count(inner: ASGIApp) -> CountSends:
        counting.append(CountSends(inner))
        return counting[-1]

    app.add_middleware(count)
    chat = {
        "id": "t1",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    async with server.client() as client:
        with anyio.fail_after(20):
            response, events = await read_sse(
                client, "POST", "/v1/ai-sdk/chat", json=chat, headers={"Origin": APP}
            )
            started, run_events = await read_sse(
                client, "POST", "/v1/runs/stream", json=run_body(), headers={"Origin": APP}
            )
    assert response.headers["access-control-allow-origin"] == APP
    assert started.headers["access-control-allow-origin"] == APP
    assert len(events) >= 20 and run_events[-1].event == "done"
    (counter,) = counting
    streamed = [t for t in counter.seen if t.startswith("http.response")]
    assert streamed == ["http.response.start"]  # the chat's head only: its body went around
    assert gate_of(server).served == 1  # the run stream's start, wholly on the gate
