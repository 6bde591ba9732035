"""AG-UI, tested with the real ``@ag-ui/client`` under Node (``tests/node/ag_ui.mjs``): its
``HttpAgent`` pipeline (schema enforcement and its own event verifier) accepts a normal, a stopped
and a failed run; a stream cut anywhere and resumed with ``Last-Event-ID`` loses and duplicates
nothing; posting a ``runId`` again joins that run. Every event also validates against the
official Python models (``ag-ui-protocol``)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from streamctl.agents import ScriptedAgent, Wait
from streamctl.agents.scripted import Fail, Step
from streamctl.events import Custom, Interrupt, MessageChunk, ReasoningChunk

from .support import StartServer, chunks, tool_call
from .support.node_clients import node_json, require_node, until_resumed

pytestmark = pytest.mark.anyio

EVENT: TypeAdapter[Any] = TypeAdapter(Event)
STEPS: list[Step] = [*chunks(3), *tool_call(), *chunks(2, "m2", word="v")]
NORMAL = [
    "RUN_STARTED",
    "TEXT_MESSAGE_START",
    *["TEXT_MESSAGE_CONTENT"] * 3,
    "TEXT_MESSAGE_END",
    "TOOL_CALL_START",
    "TOOL_CALL_ARGS",
    "TOOL_CALL_END",
    "TOOL_CALL_RESULT",
    "TEXT_MESSAGE_START",
    *["TEXT_MESSAGE_CONTENT"] * 2,
    "TEXT_MESSAGE_END",
    "RUN_FINISHED",
]


@pytest.fixture
def ag_ui() -> None:
    require_node("@ag-ui/client", "rxjs")


def check_models(events: list[dict[str, Any]]) -> None:
    for event in events:
        EVENT.validate_python(event)  # the official models accept every event as sent


async def test_http_agent_accepts_a_normal_run(serve: StartServer, ag_ui: None) -> None:
    server = await serve(agent=ScriptedAgent(STEPS))
    with anyio.fail_after(30):
        result = await node_json("ag_ui.mjs", server.url, "t1", "run-1", "run")
    assert result["error"] is None
    events = result["events"]
    assert [e["type"] for e in events] == NORMAL
    check_models(events)
    assert events[0]["runId"] == "run-1" and events[-1]["runId"] == "run-1"
    assert "outcome" not in events[-1]
    roles = [(m["role"], m.get("content")) for m in result["messages"]]
    assert roles[-3:] == [
        ("assistant", "w0 w1 w2 "),
        ("tool", "Sunny, 22°C"),
        ("assistant", "v0 v1 "),
    ]
    call = result["messages"][-3]["toolCalls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"location":"Tokyo"}'}
    async with server.client() as client:
        run = (await client.get("/v1/runs/run-1")).json()  # the client's runId is the run's id
    assert run["status"] == "completed" and run["thread_id"] == "t1"


async def test_http_agent_accepts_reasoning_custom_events_and_an_interrupt(
    serve: StartServer, ag_ui: None
) -> None:
    steps: list[Step] = [
        ReasoningChunk(content="The user wants", message_id="m1"),
        MessageChunk(content="Refund 20 EUR?", message_id="m1"),
        Custom(name="progress", data={"pct": 50}),
        Interrupt(value="Approve the refund?", interrupt_id="i1"),
    ]
    server = await serve(agent=ScriptedAgent(steps))
    with anyio.fail_after(30):
        result = await node_json("ag_ui.mjs", server.url, "t1", "run-1", "run")
    assert result["error"] is None  # the client's verifier accepts the reasoning events
    events = result["events"]
    check_models(events)
    kinds = [e["type"] for e in events]
    assert kinds.count("REASONING_START") == kinds.count("REASONING_END") == 1
    custom = [(e["name"], e["value"]) for e in events if e["type"] == "CUSTOM"]
    assert custom == [("progress", {"pct": 50}), ("on_interrupt", "Approve the refund?")]
    assert events[-1]["outcome"] == {
        "type": "interrupt",
        "interrupts": [{"id": "i1", "reason": "input_required", "message": "Approve the refund?"}],
    }


async def test_http_agent_accepts_a_stopped_run(serve: StartServer, ag_ui: None) -> None:
    gate = anyio.Event()  # never set: only the stop ends the run
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, word="late")])
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        result = await node_json(
            "ag_ui.mjs", server.url, "t1", "run-1", "run", "--stop-after", "w2"
        )
    assert result["error"] is None
    events = result["events"]
    check_models(events)
    assert [e["type"] for e in events][-2:] == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert events[-1]["outcome"] == {"type": "cancelled"}
    assert result["stop"]["status"] == 200 and result["stop"]["body"]["status"] == "cancelled"
    assert "".join(e.get("delta", "") for e in events) == "w0 w1 w2 "
    assert not gate.is_set()


async def test_http_agent_accepts_a_failed_run(serve: StartServer, ag_ui: None) -> None:
    server = await serve(agent=ScriptedAgent([*chunks(2), Fail(RuntimeError("boom"))]))
    with anyio.fail_after(30):
        result = await node_json("ag_ui.mjs", server.url, "t1", "run-1", "run")
    events = result["events"]
    check_models(events)
    assert [e["type"] for e in events][-2:] == ["TEXT_MESSAGE_END", "RUN_ERROR"]
    assert events[-1]["code"] == "agent_error"
    # The run's failure reaches the app as the run's error, not as a protocol violation.
    assert result["error"] is None or "Cannot send" not in result["error"]


async def test_cut_anywhere_and_resume_loses_and_duplicates_nothing(
    serve: StartServer, ag_ui: None
) -> None:
    agent = ScriptedAgent(STEPS)
    server = await serve(agent=agent)
    cuts = ",".join(str(n) for n in (1, 60, 150, 400, 700, 900, 1100, 1300, 1500, 1700, 99999))
    with anyio.fail_after(60):
        result = await node_json("ag_ui.mjs", server.url, "t1", "run-1", "cut", "--cuts", cuts)
    assert result["fullVerified"] is None
    assert [b["event"]["type"] for b in result["full"]] == NORMAL
    ids = [b["id"] for b in result["full"]]
    # One frame (the tool_start) is four events: the text message's end and the tool call's three.
    assert ids[5:9] == ["5.1", "5.2", "5.3", "5"]
    check_models([b["event"] for b in result["full"]])
    for cut in result["cuts"]:
        assert cut["same"] and cut["verified"] is None, cut
    last_ids = [c["lastId"] for c in result["cuts"]]
    assert "" in last_ids and any("." in i for i in last_ids), last_ids  # cuts inside a frame
    assert len(agent.runs) == 1  # every later POST of the runId joined the first run


async def test_cut_and_resume_of_a_live_run(serve: StartServer, ag_ui: None) -> None:
    gate = anyio.Event()
    steps: list[Step] = [*chunks(3), *tool_call(), Wait(gate), *chunks(2, "m2", word="v")]
    agent = ScriptedAgent(steps)
    server = await serve(agent=agent)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            result: dict[str, Any] = {}

            async def client() -> None:
                nonlocal result
                result = await node_json(
                    "ag_ui.mjs", server.url, "t1", "run-1", "cut", "--cuts", "500"
                )

            tg.start_soon(client)
            await agent.started.wait()
            # The client reads, drops and resumes (a second subscription): then let the run go on.
            await until_resumed(server, "run-1")
            gate.set()
    (cut,) = result["cuts"]
    assert cut["same"] and cut["verified"] is None and cut["first"] > 0 and cut["resumed"] > 0
    assert [b["event"]["type"] for b in result["full"]] == NORMAL


async def test_run_ids_and_cursors_are_checked(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    body = {"threadId": "t1", "runId": "run-1", "messages": [{"id": "u", "role": "user",
                                                              "content": "hi"}]}  # fmt: skip
    async with server.client() as client:
        async with client.stream("POST", "/v1/ag-ui", json=body) as response:
            assert response.status_code == 200
            await response.aread()
        # The same runId on another thread is taken.
        response = await client.post("/v1/ag-ui", json={**body, "threadId": "t2"})
        assert response.status_code == 409 and response.json()["error"]["code"] == "run_id_taken"
        stream = "/v1/ag-ui/runs/run-1/stream"
        for bad in ("x", "1.x", "-1", "1..2", "9" * 50):
            response = await client.get(stream, headers={"Last-Event-ID": bad})
            assert response.status_code == 400, bad
        response = await client.get(stream, headers={"Last-Event-ID": "999"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "cursor_out_of_range"
        last = (await client.get("/v1/runs/run-1")).json()["last_seq"]
        response = await client.get(stream, headers={"Last-Event-ID": str(last)})
        assert response.status_code == 204  # nothing after the end of a finished run
        assert (await client.get("/v1/ag-ui/runs/nope/stream")).status_code == 404
        assert (await client.post("/v1/ag-ui/runs/nope/stop")).status_code == 404
        for bad_body in ({**body, "runId": "a b"}, {**body, "messages": []}, {"threadId": "t"}):
            response = await client.post("/v1/ag-ui", json=bad_body)
            assert response.status_code == 422, bad_body
