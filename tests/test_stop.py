"""Stop really stops, in every situation, and shutdown drains (DESIGN.md invariants 6-9): during a
tool call, while the agent blocks in a worker thread, while the run starts, racing its own end,
under a storm of concurrent stops, and when the supervisor drains.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio.abc import TaskStatus
from httpx_sse import ServerSentEvent, aconnect_sse

from streamctl.agents import AgentContext, ScriptedAgent, Sleep, Wait
from streamctl.agents.scripted import Step
from streamctl.events import AgentEvent, MessageChunk, ToolEnd, ToolStart
from streamctl.inputs import RunCreate
from streamctl.runs import Run
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

from .support import Server, StartServer, ask, chunks, data, next_events, read_sse, supervisor_of
from .support.stored import assert_one_done, frames_in_file, stored_events

pytestmark = pytest.mark.anyio


def sqlite_of(sup: Supervisor) -> Store:
    """The supervisor's store, as the SQLite store it is in these tests."""
    assert isinstance(sup.store, Store)
    return sup.store


# -- stop during a tool call, and while the agent blocks in a thread ------------------------------


class SlowTool:
    """Starts a tool call and awaits it (inside the run's scope) practically forever."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.cancelled = anyio.Event()

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        yield MessageChunk(content="Looking up ", message_id="m")
        yield ToolStart(name="get_weather", args={"location": "Tokyo"}, call_id="c1")
        try:
            self.entered.set()
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        yield ToolEnd(name="get_weather", output="too late", call_id="c1")


async def test_stop_during_a_tool_call_cancels_the_tool(serve: StartServer) -> None:
    agent = SlowTool()
    server = await serve(agent=agent, stop_timeout=5)
    async with server.client() as client:
        with anyio.fail_after(10):
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=ask("go")) as source:
                events = source.aiter_sse()
                head = await next_events(events, 3)
                await agent.entered.wait()
                run_id = source.response.headers["x-run-id"]
                began = anyio.current_time()
                stop = await client.post(f"/v1/runs/{run_id}/stop")
                took = anyio.current_time() - began
                tail = await next_events(events)
            log = await stored_events(client, run_id)
    assert [e.event for e in head] == ["run", "message_chunk", "tool_start"]
    assert stop.status_code == 200 and stop.json()["stopping"] is False
    assert took < 2  # not the stop_timeout: the tool was cancelled, not waited for
    assert agent.cancelled.is_set()
    assert [(e.event, data(e)["status"]) for e in tail] == [("done", "cancelled")]
    assert [e["type"] for e in log] == ["run", "message_chunk", "tool_start", "done"]
    state = stop.json()
    assert state["status"] == "cancelled" and state["output"]["text"] == "Looking up "
    assert [(c["call_id"], c["output"]) for c in state["output"]["tool_calls"]] == [("c1", None)]


class Blocking:
    """Runs ``work`` in a worker thread between a tool's start and end; the test releases it."""

    def __init__(self, *, abandon: bool) -> None:
        self.abandon = abandon
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def work(self) -> str:
        self.entered.set()
        self.release.wait(30)
        self.returned.set()
        return "Sunny"

    async def __call__(self, ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        yield ToolStart(name="blocking", call_id="c1")
        output = await anyio.to_thread.run_sync(self.work, abandon_on_cancel=self.abandon)
        yield ToolEnd(name="blocking", output=output, call_id="c1")
        yield MessageChunk(content="after the tool", message_id="m")


async def stop_while_blocked(
    server: Server, agent: Blocking
) -> tuple[list[httpx.Response], dict[str, Any], list[dict[str, Any]]]:
    """Stop a run whose agent blocks in a thread (twice), then let the thread return.

    Returns the stop answers, the run's state while the thread still ran, and its events."""
    try:
        async with server.client() as client:
            with anyio.fail_after(10):
                run_id = (await client.post("/v1/runs", json=ask("go"))).json()["run_id"]
                await anyio.to_thread.run_sync(agent.entered.wait, 5)
                stops = [
                    await client.post(f"/v1/runs/{run_id}/stop"),  # waits out stop_timeout
                    await client.post("/stop", json={"run_id": run_id}),
                ]
                during = (await client.get(f"/v1/runs/{run_id}")).json()
                assert not agent.returned.is_set()
                agent.release.set()
                _, streamed = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream")
                assert streamed[-1].event == "done"
                return stops, during, await stored_events(client, run_id)
    finally:
        agent.release.set()  # never leave a worker thread blocked


async def test_stop_is_honest_while_the_agent_blocks_in_a_worker_thread(
    serve: StartServer,
) -> None:
    agent = Blocking(abandon=False)
    server = await serve(agent=agent, stop_timeout=0.3)
    stops, during, log = await stop_while_blocked(server, agent)
    for stop in stops:  # the agent's code still runs in the run's scope: not cancelled yet
        assert stop.status_code == 202, stop.text
        assert stop.json()["stopping"] is True and stop.json()["status"] == "running"
    assert during["status"] == "running" and during["ended_at"] is None
    assert agent.returned.is_set()
    assert assert_one_done(log) in ("cancelled", "completed")


async def test_a_stopped_agent_does_not_run_on_after_its_worker_thread_returns(
    serve: StartServer,
) -> None:
    agent = Blocking(abandon=False)
    server = await serve(agent=agent, stop_timeout=0.3)
    _, _, log = await stop_while_blocked(server, agent)
    assert [e["type"] for e in log] == ["run", "tool_start", "done"]
    assert assert_one_done(log) == "cancelled"


async def test_stop_is_prompt_when_the_worker_thread_can_be_abandoned(serve: StartServer) -> None:
    agent = Blocking(abandon=True)
    server = await serve(agent=agent, stop_timeout=5)
    try:
        async with server.client() as client:
            with anyio.fail_after(4):  # well inside stop_timeout
                run_id = (await client.post("/v1/runs", json=ask("go"))).json()["run_id"]
                await anyio.to_thread.run_sync(agent.entered.wait, 5)
                stop = await client.post(f"/v1/runs/{run_id}/stop")
                log = await stored_events(client, run_id)
                assert not agent.returned.is_set()  # abandoned, still blocked
    finally:
        agent.release.set()
        await anyio.to_thread.run_sync(agent.returned.wait, 5)  # the thread is done with us
    assert stop.status_code == 200 and stop.json()["status"] == "cancelled"
    assert [e["type"] for e in log] == ["run", "tool_start", "done"]
    assert assert_one_done(log) == "cancelled"


# -- stop while starting, and racing the run's own end --------------------------------------------


class HeldStore(Store):
    """A store whose next ``flush`` waits for the test: holds a run's task before it reports
    started (its row and first event are queued; its cancel scope does not exist yet)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold: anyio.Event | None = None
        self.held = anyio.Event()

    async def flush(self, run_id: str | None = None) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            self.held.set()
            await hold.wait()
        await super().flush(run_id)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param([Wait(anyio.Event()), *chunks(3)], id="agent-awaits-first"),
        pytest.param(chunks(3), id="agent-yields-at-once"),
    ],
)
async def test_stop_while_the_run_is_starting(db_path: Path, script: list[Step]) -> None:
    agent = ScriptedAgent(script)
    settings = Settings.from_env({}, db=db_path, retention_days=0)  # no purge flushes
    request = RunCreate.model_validate(ask("go", thread_id="t"))
    runs: list[Run] = []
    stops: list[tuple[dict[str, Any], bool]] = []
    store = HeldStore(db_path)
    async with store, Supervisor(store, agent, settings) as sup:

        async def start() -> None:
            runs.append(await sup.control.start(request, "u"))

        async def stop() -> None:
            stops.append(await sup.control.stop_thread("u", "t"))

        release = store.hold = anyio.Event()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(start)
                await store.held.wait()
                for _ in range(3):
                    tg.start_soon(stop)
                await anyio.wait_all_tasks_blocked()
                assert sup.stats.stop_requests == 3 and runs == []
                release.set()
        log = [f.type for f in await store.read_frames(runs[0].run_id, 0)]
        assert sup.active_runs == 0
    assert [(state["status"], exited) for state, exited in stops] == [("cancelled", True)] * 3
    assert log == ["run", "done"]


async def test_stop_racing_the_runs_own_end_gives_exactly_one_done(serve: StartServer) -> None:
    script: list[Step] = [*chunks(1), Sleep(0), *chunks(1, "m2"), Sleep(0), *chunks(1, "m3")]
    server = await serve(agent=ScriptedAgent(script))
    async with server.client() as client:

        async def start_then_stop(thread: str, answers: list[httpx.Response]) -> None:
            run = await client.post("/v1/runs", json=ask("go", thread_id=thread))
            answers.append(await client.post(f"/v1/runs/{run.json()['run_id']}/stop"))

        async def stop_thread(thread: str, answers: list[httpx.Response]) -> None:
            answers.append(await client.post("/stop", json={"thread_id": thread}))

        for i in range(20):  # each round lands the stops at a different moment of the run
            thread, answers = f"race-{i}", list[httpx.Response]()
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_thread, thread, answers)
                    tg.start_soon(start_then_stop, thread, answers)
                listed = await client.get("/v1/runs", params={"thread_id": thread})
                (run,) = listed.json()["runs"]
                status = assert_one_done(await stored_events(client, run["run_id"]))
            assert status in ("completed", "cancelled")
            for answer in answers:
                if answer.status_code == 404:  # the thread did not exist yet
                    assert answer.json()["error"]["code"] == "thread_not_found"
                    continue
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == status  # the final state, whoever won


# -- a storm of stops -----------------------------------------------------------------------------


async def test_a_storm_of_stops_ends_every_run_once_and_leaks_nothing(serve: StartServer) -> None:
    n = 200
    server = await serve(
        agent=ScriptedAgent([*chunks(1), Wait(anyio.Event())]),
        max_runs_per_owner=n,
        runs_per_minute=n,
    )
    # httpx's pool slows down with hundreds of queued requests: let 12 be in flight at a time,
    # in the order they were made (each run's three stops one after the other, so together).
    in_flight = anyio.CapacityLimiter(12)
    limits = httpx.Limits(max_connections=12)
    streamed: dict[str, list[ServerSentEvent]] = {}
    run_ids: dict[int, str] = {}
    async with server.client(limits=limits) as client, server.client() as watcher:
        sup = await supervisor_of(server, client)

        async def start(i: int) -> None:
            async with in_flight:
                answer = await client.post("/v1/runs", json=ask("go", thread_id=f"storm-{i}"))
            assert answer.status_code == 201, answer.text
            run_ids[i] = answer.json()["run_id"]

        async def watch(run_id: str, *, task_status: TaskStatus[None]) -> None:
            async with aconnect_sse(watcher, "GET", f"/v1/runs/{run_id}/stream") as source:
                events = source.aiter_sse()
                streamed[run_id] = await next_events(events, 2)  # run, chunk: parked
                task_status.started()
                streamed[run_id] += await next_events(events)

        answers: list[httpx.Response] = []

        async def stop(method: str, url: str, body: dict[str, str] | None) -> None:
            async with in_flight:
                answers.append(await client.request(method, url, json=body))

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(start, i)
            async with anyio.create_task_group() as streams:
                for i in range(0, n, 4):
                    await streams.start(watch, run_ids[i])
                async with anyio.create_task_group() as tg:
                    for i, run_id in run_ids.items():
                        tg.start_soon(stop, "POST", f"/v1/runs/{run_id}/stop", None)
                        tg.start_soon(stop, "POST", "/stop", {"run_id": run_id})
                        tg.start_soon(stop, "POST", f"/v1/threads/storm-{i}/stop", None)
            stored = frames_in_file(sqlite_of(sup).path)
            runs = await sqlite_of(sup).fetch_all("SELECT run_id, status, last_seq FROM runs")
    dones = {run: [f for f in frames if f.type == "done"] for run, frames in stored.items()}
    assert len(answers) == 3 * n
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled" and answer.json()["stopping"] is False
    assert set(dones) == set(run_ids.values())
    for run, ends in dones.items():  # exactly one done per run, and it is the run's last event
        assert ends == [stored[run][-1]] and orjson.loads(ends[0].data)["status"] == "cancelled"
    assert {(r["run_id"], r["status"], r["last_seq"]) for r in runs} == {
        (run, "cancelled", ends[0].seq) for run, ends in dones.items()
    }
    assert len(streamed) == n // 4
    for events in streamed.values():  # every stream got its done and closed
        assert [e.event for e in events] == ["run", "message_chunk", "done"]
    assert sup.active_runs == 0 and sup.counters.subscribers == 0
    assert sup.stats.ended == {"cancelled": n} and sup.stats.started == n


# -- drain ----------------------------------------------------------------------------------------


async def test_drain_lets_runs_finish_in_the_grace_then_interrupts_the_rest(
    serve: StartServer,
) -> None:
    gate = anyio.Event()
    quick = ScriptedAgent([*chunks(1), Wait(gate), *chunks(1, "m2")])
    parked = ScriptedAgent([*chunks(1), Wait(anyio.Event())])

    def agent(ctx: AgentContext) -> AsyncIterator[AgentEvent]:
        return (quick if ctx.messages[-1].content == "quick" else parked)(ctx)

    grace = 1.0
    server = await serve(agent=agent)
    async with server.client() as client:
        sup = await supervisor_of(server, client)
        with anyio.fail_after(10):
            finishing = (await client.post("/v1/runs", json=ask("quick"))).json()["run_id"]
            body = ask("parked")
            async with aconnect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
                events = source.aiter_sse()
                head = await next_events(events, 2)
                parked_id = source.response.headers["x-run-id"]
                drained: list[float] = []

                async def drain(*, task_status: TaskStatus[None]) -> None:
                    began = anyio.current_time()
                    task_status.started()
                    await sup.control.drain(grace)
                    drained.append(anyio.current_time() - began)

                async with anyio.create_task_group() as tg:
                    await tg.start(drain)
                    ready = await client.get("/readyz")
                    refused = [
                        await client.post(url, json=ask("late"))
                        for url in ("/v1/runs", "/v1/runs/stream")
                    ]
                    meanwhile = (await client.get(f"/v1/runs/{parked_id}")).json()
                    gate.set()
                    _, finished = await read_sse(client, "GET", f"/v1/runs/{finishing}/stream")
                    still = (await client.get(f"/v1/runs/{parked_id}")).json()
                    tail = await next_events(events)  # the stream ends: done, then it closes
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "unavailable"
    for answer in refused:
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "unavailable"
        assert int(answer.headers["retry-after"]) >= 1
    assert meanwhile["status"] == "running"  # snapshots keep working
    assert data(finished[-1])["status"] == "completed"
    assert still["status"] == "running"  # the grace is not over when the other run finished
    assert [e.event for e in head + tail] == ["run", "message_chunk", "done"]
    assert data(tail[-1])["status"] == "interrupted"
    assert data(tail[-1])["reason"] == "the server is shutting down"
    assert grace <= drained[0] < grace + 2
    assert sup.active_runs == 0 and sup.counters.subscribers == 0
    assert sup.stats.ended == {"completed": 1, "interrupted": 1}
