"""``POST /v1/runs/stream`` on the gate's raw path (``streamctl/http/start_gate.py``): it starts and
streams runs there, and every request the route would refuse before starting gets the very answer
the application gives (status, JSON body, challenge), compared here with the same request sent
through the chain; errors from the start on (a busy thread, a cap) are answered on the gate, once,
with the CORS headers of the application."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from streamctl import ScriptedAgent
from streamctl.agents import Wait
from streamctl.http.stream_gate import GatedApp, StreamGate

from .support import Server, StartServer, chunks, read_sse, run_body
from .support.auth import ALICE, API_KEYS, bearer
from .support.servers import supervisor_of

pytestmark = pytest.mark.anyio

APP = "https://app.example"
AUTH: dict[str, Any] = {"auth": "api-key", "api_keys": API_KEYS, "cors_origins": APP}
URL = "/v1/runs/stream"
JSON = {"content-type": "application/json"}


def gate_of(server: Server) -> StreamGate:
    gate = cast(GatedApp, server.uvicorn.config.app).gate
    assert gate is not None  # built by the first request
    return gate


COMPARED = (
    *("content-type", "www-authenticate", "retry-after", "connection", "vary"),
    *("access-control-allow-origin", "access-control-expose-headers"),
)


def answer(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {name: response.headers[name] for name in COMPARED if name in response.headers}
    return response.status_code, response.json(), headers


class CountRequests:
    """A middleware of the chain: the paths of the requests that reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def count_chain(server: Server) -> list[CountRequests]:
    """A ``CountRequests`` in the chain, once the first request has built it."""
    counting: list[CountRequests] = []

    def count(inner: ASGIApp) -> CountRequests:
        counting.append(CountRequests(inner))
        return counting[-1]

    cast(GatedApp, server.uvicorn.config.app).add_middleware(count)
    return counting


# Requests the route refuses before it starts anything: (what, request keywords).
REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("not JSON", {"content": b"{nope", "headers": JSON}),
    ("an empty body", {"content": b"", "headers": JSON}),
    ("no content type", {"content": json.dumps(run_body()).encode(), "headers": {}}),
    ("deep nesting", {"content": b"[" * 1500 + b"]" * 1500, "headers": JSON}),
    ("an invalid body", {"json": {"input": 5}}),
    ("an invalid value", {"json": {**run_body(), "granularity": "every-byte"}}),
    ("an unknown field", {"json": {**run_body(), "nope": 1}}),
    ("a query", {"json": run_body(), "params": {"after": "1"}}),
    ("a text body", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
    ("no credential", {"json": run_body(), "auth": False}),
    ("a wrong key", {"json": run_body(), "headers": {"authorization": "Bearer sk-nope"}}),
    ("a Basic credential", {"json": run_body(), "headers": {"authorization": "Basic eA=="}}),
    ("a wrong key in the body", {"json": {**run_body(), "token": "sk-nope"}, "auth": False}),
    ("a bad idempotency key", {"json": run_body(), "headers": {"idempotency-key": "k" * 300}}),
    ("a body over the limit", {"json": {**run_body(), "pad": "x" * 5000}}),
]


async def send(client: httpx.AsyncClient, spec: dict[str, Any]) -> httpx.Response:
    spec = dict(spec)
    headers = spec.pop("headers", {})
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if spec.pop("auth", True) and not any(k.lower() == "authorization" for k, _ in pairs):
        pairs += list(bearer(ALICE).items())
    pairs.append(("origin", APP))
    return await client.post(URL, headers=pairs, **spec)


async def test_refusals_get_the_applications_own_answers(serve: StartServer, db_path: Path) -> None:
    agent = ScriptedAgent(chunks(2))
    gated = await serve(agent=agent, max_body_bytes=4096, **AUTH)
    chained = await serve(
        agent=agent, max_body_bytes=4096, db=db_path.with_name("chain.db"), **AUTH
    )
    async with gated.client() as on_gate, chained.client() as on_chain:
        await on_chain.get("/healthz")  # builds the chain, then its gate hands every POST on
        gate_of(chained).starts = False
        for what, spec in REFUSED:
            got, expected = await send(on_gate, spec), await send(on_chain, spec)
            assert expected.status_code >= 400, (what, expected.text)
            assert answer(got) == answer(expected), what
        # A stream token opens its run's stream and snapshot, never a start.
        scoped = []
        for client in (on_gate, on_chain):
            started = await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))
            token = started.json()["stream_token"]
            spec = {"json": run_body(), "headers": {"authorization": f"Bearer {token}"}}
            scoped.append(await send(client, spec))
        assert answer(scoped[0]) == answer(scoped[1])
        assert scoped[0].json()["error"]["code"] == "insufficient_scope"
    # Only the bad idempotency key got past the body and the credential: the gate answered it;
    # every other refusal went on to the application.
    assert gate_of(gated).served == 1
    assert gate_of(gated).declined == len(REFUSED) + 1 - 2  # not the 413 nor the bad key


async def test_a_run_is_started_and_streamed_on_the_gate(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(3)), **AUTH)
    async with server.client() as client:
        with anyio.fail_after(20):
            response, events = await read_sse(
                client, "POST", URL, json=run_body(), headers={**bearer(ALICE), "Origin": APP}
            )
            # The credential may come in the body too (clients that cannot set headers).
            _, by_body = await read_sse(client, "POST", URL, json={**run_body(), "token": ALICE})
            run = (
                await client.get(f"/v1/runs/{response.headers['x-run-id']}", headers=bearer(ALICE))
            ).json()
            runs = (await client.get("/v1/runs", headers=bearer(ALICE))).json()["runs"]
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == APP
    assert {"x-run-id", "x-thread-id", "x-stream-token"} <= set(response.headers)
    assert [e.id for e in events] == [str(seq) for seq in range(1, len(events) + 1)]
    assert events[-1].event == "done" and by_body[-1].event == "done"
    assert run["status"] == "completed" and run["last_seq"] == len(events)
    assert gate_of(server).served == 2 and len(runs) == 2


async def test_errors_after_the_start_are_answered_once_on_the_gate(serve: StartServer) -> None:
    """A busy thread and the run cap: the route's answers (code, ``Retry-After``, CORS), given
    by the gate once, so nothing is started or counted twice."""
    hold = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(1), Wait(hold)]), max_runs=2, **AUTH)
    chain = count_chain(server)
    me = {**bearer(ALICE), "Origin": APP}
    async with server.client() as client:
        sup = await supervisor_of(server, client)
        starts = 0
        start = sup.control.start

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal starts
            starts += 1
            return await start(*args, **kwargs)

        sup.control.start = counted  # type: ignore[method-assign]
        with anyio.fail_after(20):
            async with client.stream("POST", URL, json=run_body(thread_id="t1"), headers=me):
                busy = await client.post(URL, json=run_body(thread_id="t1"), headers=me)
                async with client.stream("POST", URL, json=run_body(thread_id="t2"), headers=me):
                    full = await client.post(URL, json=run_body(thread_id="t3"), headers=me)
                    runs = (await client.get("/v1/runs", headers=me)).json()["runs"]
                hold.set()
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "thread_busy"
    assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_runs"
    assert "retry-after" in full.headers
    for refused in (busy, full):
        assert refused.headers["access-control-allow-origin"] == APP
    assert sorted(r["thread_id"] for r in runs) == ["t1", "t2"]
    assert gate_of(server).served == 4 and starts == 4  # each start tried once
    (counter,) = chain
    assert URL not in counter.paths and "/v1/runs" in counter.paths
