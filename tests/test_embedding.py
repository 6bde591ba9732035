"""``streamctl.Streamctl`` inside a host FastAPI application (docs/embedding.md): the router under
a prefix with the host's own login, its errors answered without the host's help, 503 before the
lifespan, the lifespan inside the host's own, and programmatic control from the host's routes.
Each host runs under a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Response

import streamctl
from streamctl import Principal, ScriptedAgent, Settings, Streamctl
from streamctl.agents import Wait

from .conftest import chunks, read_sse
from .test_limits import ask, data

pytestmark = pytest.mark.anyio

USERS = {"alice-key": "alice", "bob-key": "bob", "root-key": "root"}


async def current_user(x_user_key: Annotated[str | None, Header()] = None) -> Principal | str:
    """The host's login: a header naming a user; `root` is an admin."""
    user = USERS.get(x_user_key or "")
    if user is None:
        raise HTTPException(401, "who are you?", headers={"WWW-Authenticate": "UserKey"})
    return Principal(user, admin=True) if user == "root" else user


User = Annotated[str, Depends(current_user)]
ALICE = {"X-User-Key": "alice-key"}
BOB = {"X-User-Key": "bob-key"}
ROOT = {"X-User-Key": "root-key"}


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under a real uvicorn server; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


def host(sc: Streamctl, prefix: str = "/agent") -> FastAPI:
    app = FastAPI(lifespan=sc.lifespan)

    @app.get("/mine")
    async def mine() -> dict[str, str]:
        return {"host": "route"}

    app.include_router(sc.router, prefix=prefix)
    return app


def settings(db: Path, **overrides: Any) -> Settings:
    return Settings.from_env({}, db=db, **overrides)


async def test_the_router_under_a_prefix_serves_the_contract_and_the_page(db_path: Path) -> None:
    sc = Streamctl(
        agent=ScriptedAgent(chunks(5)), authenticate=current_user, settings=settings(db_path)
    )
    async with served(host(sc)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/mine")).json() == {"host": "route"}
        assert (await client.get("/agent/healthz")).json() == {"status": "ok"}
        assert (await client.get("/agent/readyz")).status_code == 200
        # The page and everything it references, resolved against where it is mounted.
        page = await client.get("/agent/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for ref in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
            assert (await client.get(f"/agent/{ref}")).status_code == 200, ref
        app_js = (await client.get("/agent/static/app.js")).text
        for module in re.findall(r'from "\./([^"]+)"', app_js):
            assert (await client.get(f"/agent/static/{module}")).status_code == 200, module

        with anyio.fail_after(10):
            response, events = await read_sse(
                client, "POST", "/agent/v1/runs/stream", json=ask("hi"), headers=ALICE
            )
            assert response.status_code == 200
            run_id = response.headers["x-run-id"]
            assert "x-stream-token" not in response.headers  # the host's credential streams
            assert [e.event for e in events][-1] == "done"
            # Exact resume under the prefix.
            _, rest = await read_sse(
                client,
                "GET",
                f"/agent/v1/runs/{run_id}/stream",
                headers={**ALICE, "Last-Event-ID": "3"},
            )
            assert [e.id for e in rest] == [e.id for e in events[3:]]

        # The host's authenticate refuses; its HTTPException answers in streamctl's error shape.
        refused = await client.get("/agent/v1/runs")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "UserKey"
        assert refused.json()["error"]["code"] == "unauthorized"
        # Domain errors are mapped by the router itself: the host installed no handler.
        missing = await client.get("/agent/v1/runs/nope", headers=ALICE)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"
        assert (await client.get(f"/agent/v1/runs/{run_id}", headers=BOB)).status_code == 404
        bad = await client.get("/agent/v1/runs", params={"stauts": "running"}, headers=ALICE)
        assert bad.status_code == 422 and "stauts" in bad.json()["error"]["message"]
        invalid = await client.post("/agent/v1/runs", json={"input": {}}, headers=ALICE)
        assert invalid.status_code == 422
        assert invalid.json()["error"]["code"] == "invalid_request"

        # Runs belong to the host's principals; an admin Principal sees everyone's.
        mine = await client.get("/agent/v1/runs", headers=ALICE)
        assert [r["run_id"] for r in mine.json()["runs"]] == [run_id]
        assert (await client.get("/agent/v1/runs", headers=BOB)).json()["runs"] == []
        everyone = await client.get("/agent/v1/runs", params={"owner": "alice"}, headers=ROOT)
        assert [r["run_id"] for r in everyone.json()["runs"]] == [run_id]


async def test_status_filter_owner_filter_and_the_stop_answer(db_path: Path) -> None:
    gate = anyio.Event()
    sc = Streamctl(
        agent=ScriptedAgent([*chunks(1), Wait(gate)]),
        authenticate=current_user,
        settings=settings(db_path),
    )
    async with served(host(sc, prefix="/x/y")) as url, httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(10):
            held = (await client.post("/x/y/v1/runs", json=ask("a"), headers=ALICE)).json()
            other = (await client.post("/x/y/v1/runs", json=ask("b"), headers=BOB)).json()
            stop = await client.post(f"/x/y/v1/runs/{other['run_id']}/stop", headers=BOB)
            assert stop.json()["status"] == "cancelled"
            assert stop.content.endswith(b"}\n")  # a shell prompt starts on its own line
            running = await client.get("/x/y/v1/runs?status=running", headers=ROOT)
            assert [r["run_id"] for r in running.json()["runs"]] == [held["run_id"]]
            cancelled = await client.get("/x/y/v1/runs?status=cancelled", headers=ROOT)
            assert [r["run_id"] for r in cancelled.json()["runs"]] == [other["run_id"]]
            # Not an admin: another owner's runs answer as none.
            assert (await client.get("/x/y/v1/runs?owner=bob", headers=ALICE)).json()["runs"] == []
            wrong = await client.get("/x/y/v1/runs?status=sleeping", headers=ROOT)
            assert wrong.status_code == 422
            gate.set()


async def test_a_request_before_the_lifespan_gets_503(db_path: Path) -> None:
    sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=settings(db_path))
    app = FastAPI()  # the host forgot `lifespan=sc.lifespan`
    app.include_router(sc.router, prefix="/agent")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        for method, path in (("GET", "/agent/v1/runs"), ("POST", "/agent/v1/runs")):
            answer = await client.request(method, path, json=ask("x"))
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "unavailable"
            assert "lifespan" in answer.json()["error"]["message"]
        assert (await client.get("/agent/readyz")).status_code == 503


async def test_the_lifespan_inside_the_hosts_and_programmatic_control(db_path: Path) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(2, message_id="m2")])
    sc = Streamctl(agent=agent, db=db_path, settings=settings(Path("ignored.db")))
    assert sc.settings.db == db_path
    opened: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened.append("host")
        async with sc.lifespan(app):
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_exception_handler(streamctl.StreamctlError, streamctl.http.error_handler)

    @app.post("/chat")
    async def chat(user: User) -> Response:
        run = await sc.start("hello", thread_id="t1", owner=user)
        return sc.stream_response(run["run_id"], owner=user)

    @app.get("/chat/{run_id}")
    async def resume(
        run_id: str, user: User, last_event_id: Annotated[str | None, Header()] = None
    ) -> Response:
        return sc.stream_response(run_id, after=last_event_id, owner=user)

    @app.post("/chat/{run_id}/stop")
    async def stop(run_id: str, user: User) -> dict[str, Any]:
        return await sc.stop(run_id, owner=user)

    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        with anyio.fail_after(10):
            response, first = await read_sse(client, "POST", "/chat", headers=ALICE, limit=4)
            assert opened == ["host"]
            assert response.status_code == 200, response.text
            run_id = response.headers["x-run-id"]
            assert [e.event for e in first] == ["run", *["message_chunk"] * 3]
            snapshot = await sc.snapshot(run_id, owner="alice")
            assert snapshot["status"] == "running" and snapshot["last_seq"] == 4
            with pytest.raises(streamctl.RunNotFound):
                await sc.snapshot(run_id, owner="bob")
            gone = await client.get(f"/chat/{run_id}", headers=BOB)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "run_not_found"
            bad = await client.get(f"/chat/{run_id}", headers={**ALICE, "Last-Event-ID": "x"})
            assert bad.status_code == 400
            stopped = (await client.post(f"/chat/{run_id}/stop", headers=ALICE)).json()
            assert stopped["status"] == "cancelled" and stopped["stopping"] is False
            _, rest = await read_sse(
                client, "GET", f"/chat/{run_id}", headers={**ALICE, "Last-Event-ID": "4"}
            )
            assert [int(e.id) for e in rest] == list(range(5, 5 + len(rest)))
            assert rest[-1].event == "done" and data(rest[-1])["status"] == "cancelled"
            missing = await client.post("/chat/nope/stop", headers=ALICE)
            assert missing.status_code == 404
        gate.set()
    assert sc.supervisor is None  # the lifespan has closed


async def test_the_lifespan_is_entered_once(db_path: Path) -> None:
    sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=settings(db_path))
    async with sc.lifespan():
        with pytest.raises(RuntimeError, match="already running"):
            async with sc.lifespan():
                pass
        run = await sc.start([{"role": "user", "content": "x"}], owner="carol")
        assert (await sc.snapshot(run["run_id"], owner="carol"))["run_id"] == run["run_id"]


def ten_lines(doc: str) -> str:
    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "Streamctl(" in b)


@pytest.mark.parametrize("doc", ["README.md", "docs/embedding.md"])
async def test_the_ten_lines_of_the_docs_work(
    doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = ten_lines(doc)
    monkeypatch.chdir(tmp_path)  # db="app.db" lands here
    namespace: dict[str, Any] = {"my_agent": ScriptedAgent(chunks(2)), "current_user": current_user}
    exec(compile(block, doc, "exec"), namespace)
    app: FastAPI = namespace["app"]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h") as client,
    ):
        assert (await client.get("/agent/")).status_code == 200
        assert (await client.get("/agent/v1/runs")).status_code == 401  # current_user refuses
        run = await client.post("/agent/v1/runs", json=ask("x"), headers=ALICE)
        assert run.status_code == 201
        stop = await client.post(f"/agent/v1/runs/{run.json()['run_id']}/stop", headers=ALICE)
        assert stop.status_code == 200
    assert (tmp_path / "app.db").exists()


async def test_built_in_auth_and_stream_tokens_under_a_prefix(db_path: Path) -> None:
    # Without `authenticate`, the settings' auth applies: here API keys, with stream tokens.
    key = "k" * 24
    sc = Streamctl(
        agent=ScriptedAgent(chunks(3)),
        settings=settings(db_path, auth="api-key", api_keys=f"dana:{key}"),
    )
    async with served(host(sc)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        with anyio.fail_after(10):
            assert (await client.post("/agent/v1/runs", json=ask("x"))).status_code == 401
            bearer = {"Authorization": f"Bearer {key}"}
            run = (await client.post("/agent/v1/runs", json=ask("x"), headers=bearer)).json()
            token = run["stream_token"]
            assert token.startswith("st.")
            _, events = await read_sse(
                client, "GET", f"/agent/v1/runs/{run['run_id']}/stream", params={"token": token}
            )
            assert [e.event for e in events][-1] == "done"
            listing = await client.get("/agent/v1/runs", params={"token": token})
            assert listing.status_code == 401  # a stream token opens its run's stream only
