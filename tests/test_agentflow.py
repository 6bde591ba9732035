"""AgentFlow's own API shape: ``POST /v1/graph/stream`` answers NDJSON ``StreamChunk``s to
AgentFlow's TypeScript client (its request and its line parser, reproduced from its published
source in ``tests/node/agentflow.mjs``) and SSE to everyone else; a top-level ``recursion_limit``
counts; ``POST /v1/graph/stop {thread_id}`` stops the thread's run mid-node."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from streamctl.agents import ScriptedAgent, Wait
from streamctl.agents.scripted import Step

from .conftest import StartServer, chunks, read_sse, tool_call
from .node_clients import node_json, require_node

pytestmark = pytest.mark.anyio

STEPS: list[Step] = [*chunks(3), *tool_call(), *chunks(2, "m2", word="v")]


@pytest.fixture
def node() -> None:
    require_node()


def messages(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["message"] for c in result["chunks"] if c["event"] == "message"]


async def test_agentflow_client_reads_ndjson_stream_chunks(serve: StartServer, node: None) -> None:
    server = await serve(agent=ScriptedAgent(STEPS))
    with anyio.fail_after(30):
        result = await node_json("agentflow.mjs", server.url)
    assert result["status"] == 200 and result["unparsed"] == []
    assert result["contentType"] == "application/x-ndjson"
    found = result["chunks"]
    run_id, thread_id = found[0]["run_id"], found[0]["thread_id"]
    assert all(c["run_id"] == run_id and c["thread_id"] == thread_id for c in found)
    assert [c["metadata"]["seq"] for c in found] == sorted(c["metadata"]["seq"] for c in found)
    assert found[0]["event"] == "updates" and found[0]["data"]["status"] == "invoking_graph"
    assert found[0]["metadata"]["is_new_thread"] is True
    assert found[-1]["event"] == "updates" and found[-1]["data"]["status"] == "graph_invoked"
    shown = [(m["role"], m["delta"], [b["type"] for b in m["content"]]) for m in messages(result)]
    assert shown == [
        *[("assistant", True, ["text"])] * 3,
        ("assistant", False, ["text"]),  # the whole message once it ended
        ("assistant", False, ["tool_call"]),
        ("tool", False, ["tool_result"]),
        *[("assistant", True, ["text"])] * 2,
        ("assistant", False, ["text"]),
    ]
    whole = [
        m["content"][0]["text"]
        for m in messages(result)
        if m["role"] == "assistant" and not m["delta"] and m["content"][0]["type"] == "text"
    ]
    assert whole == ["w0 w1 w2 ", "v0 v1 "]
    call = messages(result)[4]
    assert call["tools_calls"][0]["function"]["name"] == "get_weather"
    result_block = messages(result)[5]["content"][0]
    assert result_block["call_id"] == call["content"][0]["id"]
    assert result_block["output"] == "Sunny, 22°C"
    async with server.client() as client:
        snapshot = (await client.get(f"/v1/runs/{run_id}")).json()
    assert snapshot["output"]["text"] == "w0 w1 w2 v0 v1 "


async def test_graph_stop_stops_the_threads_run_mid_node(serve: StartServer, node: None) -> None:
    gate = anyio.Event()  # never set: only the stop ends this run (a "node" that never ends)
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, word="late")])
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        result = await node_json("agentflow.mjs", server.url, "--stop-after", "w2")
    stop = result["stop"]
    assert stop["status"] == 200 and stop["body"]["data"]["success"] is True
    assert stop["body"]["data"]["run"]["status"] == "cancelled"
    assert set(stop["body"]["metadata"]) == {"request_id", "timestamp", "message"}
    last = result["chunks"][-1]
    assert last["event"] == "updates" and last["data"]["run_status"] == "cancelled"
    texts = [m["content"][0]["text"] for m in messages(result) if not m["delta"]]
    assert texts == ["w0 w1 w2 "] and not gate.is_set()


async def test_top_level_recursion_limit_counts(serve: StartServer) -> None:
    # Two steps (a message, then a tool call) under a limit of one: the run fails at the second.
    server = await serve(agent=ScriptedAgent(STEPS))
    body = {"messages": [{"role": "user", "content": "hi"}], "recursion_limit": 1}
    async with server.client() as client:
        async with client.stream(
            "POST", "/v1/graph/stream", json=body, headers={"accept": "application/x-ndjson"}
        ) as response:
            assert response.status_code == 200
            found = [orjson.loads(line) async for line in response.aiter_lines() if line.strip()]
    error = next(c for c in found if c["event"] == "error")
    assert error["data"]["status"] == "failed" and "recursion" in error["data"]["code"]
    assert found[-1]["data"]["run_status"] == "failed"


async def test_sse_stays_the_answer_without_ndjson_accept(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(2)))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    async with server.client() as client:
        response, events = await read_sse(client, "POST", "/v1/graph/stream", json=body)
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert [e.event for e in events] == ["run", "message_chunk", "message_chunk", "done"]
        response = await client.post("/v1/graph/stop", json={"thread_id": "nope"})
        assert response.status_code == 404
        response = await client.post("/v1/graph/stop", json={"thread_id": "a b"})
        assert response.status_code == 422
