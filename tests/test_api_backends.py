"""A representative slice of the HTTP contract, run on every backend (SQLite and Redis): a stream
to its `done`, resume exactly once while the run appends (cursors older than the in-memory tail
come from the store), stop, threads and their history, pages and lists, a restart that finds a
run left active."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from streamctl.agents import ScriptedAgent, Wait
from streamctl.events import MessageChunk
from streamctl.settings import Settings
from streamctl.store import NewRun, open_store

from .support import StartServer, chunks, read_sse, run_body
from .support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]  # a fixture this module uses


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides choosing the backend (the Redis one emptied for this test)."""
    if request.param == "sqlite":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as client:
        client.flushall()
    return {"backend": "redis", "redis_url": server.url}


def data(event: ServerSentEvent) -> Any:
    return orjson.loads(event.data)


async def take(events: AsyncIterator[ServerSentEvent], n: int) -> list[ServerSentEvent]:
    got: list[ServerSentEvent] = []
    async for event in events:
        if event.data == "":
            continue
        got.append(event)
        if len(got) >= n:
            break
    return got


@pytest.mark.parametrize("seed", range(3))
async def test_resume_while_appending_is_exactly_once(
    serve: StartServer, backend: dict[str, Any], seed: int
) -> None:
    rng = random.Random(seed)
    server = await serve(tail_events=16, **backend)  # old cursors are served from the store
    demo = {"tokens": 150, "delay_ms": 1, "tool": True, "tool_ms": 5}
    statuses: list[str] = []
    async with server.client() as client:
        with anyio.fail_after(30):
            body = run_body(config={"demo": demo})
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                received = await take(source.aiter_sse(), rng.randint(1, 20))
            run_id = source.response.headers["x-run-id"]
            while received[-1].event != "done":
                statuses.append((await client.get(f"/v1/runs/{run_id}")).json()["status"])
                url = f"/v1/runs/{run_id}/stream"
                headers = {"Last-Event-ID": received[-1].id}
                response, events = await read_sse(
                    client, "GET", url, limit=rng.randint(1, 20), headers=headers
                )
                assert response.status_code == 200
                received += events
            page = (await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
            run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert "running" in statuses, "the run ended before any reconnect: nothing was tested"
    assert [int(e.id) for e in received] == list(range(1, len(received) + 1))
    assert [(int(e.id), e.event, data(e)) for e in received] == [
        (p["seq"], p["type"], p["data"]) for p in page["events"]
    ]
    assert [e.event for e in received].count("done") == 1
    assert page["last_seq"] == run["last_seq"] == len(received)
    assert page["status"] == run["status"] == "completed"


async def test_stop_returns_after_the_run_ended_and_keeps_its_output(
    serve: StartServer, backend: dict[str, Any]
) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(3), Wait(gate)]), **backend)
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=run_body()) as source:
                events = source.aiter_sse()
                head = await take(events, 4)
                run_id = source.response.headers["x-run-id"]
                stop = await client.post(f"/v1/runs/{run_id}/stop")
                tail = await take(events, 1)
            again = await client.post(f"/v1/runs/{run_id}/stop")
            _, replay = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
            resumed = await client.get(
                f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": tail[-1].id}
            )
    assert stop.status_code == 200 and stop.json()["stopping"] is False
    assert stop.json()["status"] == "cancelled" and stop.json()["output"]["text"] == "w0 w1 w2 "
    assert again.json()["status"] == "cancelled"  # idempotent
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]
    assert [e.id for e in replay] == [e.id for e in head + tail]
    assert [e.data for e in replay] == [e.data for e in head + tail]
    assert resumed.status_code == 204  # nothing after the terminal event


async def test_a_thread_carries_its_history_across_runs(
    serve: StartServer, backend: dict[str, Any]
) -> None:
    seen: list[list[str]] = []

    async def remember(ctx: Any) -> Any:
        seen.append([m.content for m in ctx.history])
        yield MessageChunk(content=f"answer {len(seen)}", message_id="m")

    server = await serve(agent=remember, **backend)
    async with server.client() as client:
        with anyio.fail_after(10):
            for n in range(3):
                body: dict[str, Any] = {"thread_id": "t-h"}
                body["input"] = {"messages": [{"role": "user", "content": f"q{n}"}]}
                resp, events = await read_sse(client, "POST", "/v1/runs/stream", json=body)
                assert events, (n, resp.status_code, resp.text)
                assert data(events[-1])["status"] == "completed"
            thread = (await client.get("/v1/threads/t-h")).json()
            runs = (await client.get("/v1/runs", params={"thread_id": "t-h"})).json()
            listed = (await client.get("/v1/runs", params={"limit": 2})).json()
    assert seen == [[], ["q0", "answer 1"], ["q0", "answer 1", "q1", "answer 2"]]
    assert [m["content"] for m in thread["messages"]] == [
        "q0",
        "answer 1",
        "q1",
        "answer 2",
        "q2",
        "answer 3",
    ]
    assert [r["status"] for r in runs["runs"]] == ["completed"] * 3  # newest first
    assert [r["run_id"] for r in listed["runs"]] == [r["run_id"] for r in runs["runs"][:2]]
    assert runs["runs"][-1]["run_id"] == thread["messages"][0]["run_id"]


async def test_a_run_left_active_is_interrupted_by_the_next_server(
    serve: StartServer, backend: dict[str, Any], db_path: Path
) -> None:
    settings = Settings.from_env({}, db=db_path, **backend)
    async with open_store(settings) as store:  # a process that died mid-run, as the store sees it
        store.create_run(
            NewRun("gone", "t-gone", "anonymous", "running", {"messages": []}, {}, 1, 1)
        )
        store.append("gone", _frame(1), None, _Sink())
        await store.flush()
    server = await serve(**backend)
    async with server.client() as client:
        with anyio.fail_after(10):
            run = (await client.get("/v1/runs/gone")).json()
            _, events = await read_sse(client, "GET", "/v1/runs/gone/stream")
    assert (run["status"], run["last_seq"]) == ("interrupted", 2)
    assert [e.event for e in events] == ["message_chunk", "done"]


def _frame(seq: int) -> Any:
    from streamctl.events import Frame

    return Frame.encode(seq, MessageChunk(content="partial", message_id="m"), 1.0)


class _Sink:
    def committed(self, frame: Any, event: object) -> None:
        pass

    def publish(self) -> None:
        pass
