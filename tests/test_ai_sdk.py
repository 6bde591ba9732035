"""The Vercel AI SDK's UI message stream, tested with the real ``ai`` package under Node
(``tests/node/ai_sdk.mjs``: ``AbstractChat``, the class ``useChat`` wraps, over
``DefaultChatTransport``, whose parser validates every chunk against the SDK's schema).

Runs are held at precise points with gates (the one fake is the agent), so a Stop or a dropped
connection lands mid-answer on every machine, however loaded.
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from streamctl.agents import ScriptedAgent, Wait
from streamctl.agents.scripted import Fail, Step
from streamctl.events import (
    Custom,
    Frame,
    Interrupt,
    MessageChunk,
    ReasoningChunk,
    ToolEnd,
    ToolStart,
)
from streamctl.http.protocols.ai_sdk import UIMessageTranslator

from .support import StartServer, chunks, tool_call
from .support.node_clients import live_runs, node_json, require_node, until_resumed

pytestmark = pytest.mark.anyio

CHAT = "chat-1"


@pytest.fixture
def ai() -> None:
    require_node("ai", "zod")


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def assistant(result: dict[str, Any]) -> dict[str, Any]:
    messages = result["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    return messages[1]  # type: ignore[no-any-return]


async def test_use_chat_sends_and_streams_text_tools_and_finish(
    serve: StartServer, ai: None
) -> None:
    steps: list[Step] = [*chunks(3, "m1"), *tool_call(), *chunks(2, "m2", word="v")]
    server = await serve(agent=ScriptedAgent(steps))
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, CHAT, "send")
        again = await node_json("ai_sdk.mjs", server.url, CHAT, "reconnect")
    assert result["status"] == "ready" and result["error"] is None and result["errors"] == []
    message = assistant(result)
    assert text_of(message) == "w0 w1 w2 v0 v1 "
    tool = next(p for p in message["parts"] if p["type"] == "tool-get_weather")
    assert tool["state"] == "output-available"
    assert (tool["input"], tool["output"]) == ({"location": "Tokyo"}, "Sunny, 22°C")
    assert result["chunks"][:3] == ["start", "start-step", "text-start"]
    assert result["chunks"][-3:] == ["text-end", "finish-step", "finish"]
    # The message id is the run's id; with no active run, resume is a 204 and changes nothing.
    async with server.client() as client:
        snapshot = (await client.get(f"/v1/runs/{message['id']}")).json()
    assert snapshot["status"] == "completed" and snapshot["thread_id"] == CHAT
    assert again["status"] == "ready" and again["messages"] == [] and again["chunks"] == []


async def test_use_chat_takes_reasoning_custom_data_and_an_interrupt(
    serve: StartServer, ai: None
) -> None:
    steps: list[Step] = [
        ReasoningChunk(content="The user wants", message_id="m1"),
        MessageChunk(content="Refund 20 EUR?", message_id="m1"),
        Custom(name="progress", data={"pct": 50}),
        Interrupt(value="Approve the refund?", interrupt_id="i1"),
    ]
    server = await serve(agent=ScriptedAgent(steps))
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, CHAT, "send")
    assert result["status"] == "ready" and result["error"] is None and result["errors"] == []
    parts = [p for p in assistant(result)["parts"] if p["type"] != "step-start"]
    assert [(p["type"], p.get("text", p.get("data"))) for p in parts] == [
        ("reasoning", "The user wants"),
        ("text", "Refund 20 EUR?"),
        ("data-progress", {"pct": 50}),
        ("data-interrupt", {"value": "Approve the refund?", "interrupt_id": "i1"}),
    ]


async def test_stop_endpoint_stops_the_run_mid_answer(serve: StartServer, ai: None) -> None:
    gate = anyio.Event()  # never set: only a stop ends this run
    agent = ScriptedAgent([*chunks(3), Wait(gate), *chunks(3, word="late")])
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, CHAT, "stop", "--after", "w2")
    stop = result["resumed"]
    assert stop["stopStatus"] == 200 and stop["stop"]["status"] == "cancelled"
    assert stop["stop"]["stopping"] is False  # answered after the run's task exited
    assert result["chunks"][-1] == "abort" and result["status"] == "ready"
    assert text_of(assistant(result)) == "w0 w1 w2 "  # no token after the stop
    assert not gate.is_set() and len(agent.runs) == 1
    async with server.client() as client:
        thread = (await client.get(f"/v1/threads/{CHAT}")).json()
    # The partial answer stays in the thread, for the next run's history.
    assert thread["messages"][-1]["content"] == "w0 w1 w2 "
    assert thread["last_run"]["status"] == "cancelled"


async def test_resume_after_a_drop_shows_the_answer_exactly_once(
    serve: StartServer, ai: None
) -> None:
    gate = anyio.Event()
    steps: list[Step] = [*chunks(3), *tool_call(), Wait(gate), *chunks(3, "m2", word="v")]
    agent = ScriptedAgent(steps)
    server = await serve(agent=agent)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def release_after_reconnect() -> None:
                # The client reads, drops and resumes (a second subscription): then let it go on.
                run_id = next(iter(live_runs(server)))
                await until_resumed(server, run_id)
                gate.set()

            result: dict[str, Any] = {}

            async def client() -> None:
                nonlocal result
                result = await node_json("ai_sdk.mjs", server.url, CHAT, "resume", "--after", "w2")

            tg.start_soon(client)
            await agent.started.wait()
            tg.start_soon(release_after_reconnect)
    before = result["resumed"]["before"]
    assert text_of(before[1]) == "w0 w1 w2 "  # what the client had when the connection dropped
    # The resumed stream replays the message from its start; the chat rebuilds it: every
    # word once, the tool call once, then the live tail.
    message = assistant(result)
    assert text_of(message) == "w0 w1 w2 v0 v1 v2 "
    assert [p["type"] for p in message["parts"] if p["type"].startswith("tool-")] == [
        "tool-get_weather"
    ]
    assert result["status"] == "ready" and result["error"] is None
    resumed = result["chunks"][result["chunks"].index("--resume--") + 1 :]
    assert resumed[0] == "start" and resumed[-1] == "finish"


async def test_a_failed_run_ends_with_an_error_part(serve: StartServer, ai: None) -> None:
    server = await serve(agent=ScriptedAgent([*chunks(2), Fail(RuntimeError("boom"))]))
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, CHAT, "send")
    assert result["chunks"][-1] == "error" and result["status"] == "error"
    assert "agent_error" in result["error"] or "boom" in result["error"]
    assert text_of(assistant(result)) == "w0 w1 "


async def test_bad_chat_bodies_are_clear_4xx(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        user = '{"role": "user", "parts": [{"type": "text", "text": "%s"}]}'
        for body in (
            '{"id": "chat-1", "messages": []}',
            '{"id": "chat-1", "messages": [%s]}' % (user.replace("user", "assistant") % "x"),
            '{"id": "bad id!", "messages": [%s]}' % (user % "x"),
            '{"id": "chat-1", "messages": [%s]}' % (user % "\\ud800"),  # a lone surrogate
            '{"id": "chat-1", "messages": [%s], "config": {"recursion_limit": 0}}' % (user % "x"),
        ):
            response = await client.post(
                "/v1/ai-sdk/chat", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"] in ("invalid_request", "invalid_input")
        response = await client.post("/v1/ai-sdk/chat/nope/stop")
        assert response.status_code == 404
        response = await client.get("/v1/ai-sdk/chat/nope/stream")
        assert response.status_code == 204


def frame(seq: int, event: ToolStart | ToolEnd) -> Frame:
    return Frame.encode(seq, event, 0.0)


def test_parallel_tool_calls_end_their_step_once_both_returned() -> None:
    translator = UIMessageTranslator("run")
    run = Frame.build(
        1, "run", orjson.dumps({"run_id": "run", "thread_id": "t", "status": "running"}), 0
    )
    parts = [translator.translate(run)]
    events: list[ToolStart | ToolEnd] = [
        ToolStart(name="a", call_id="1"),
        ToolStart(name="b", call_id="2"),
        ToolEnd(name="a", call_id="1", output=1),
        ToolEnd(name="b", call_id="2", output=2),
        ToolEnd(name="c", call_id="3", output=3),  # an output with no start
    ]
    for seq, event in enumerate(events, start=2):
        parts.append(translator.translate(frame(seq, event)))
    kinds = [[p["type"] for p in out] for out in parts]
    assert kinds == [
        ["start"],
        ["start-step", "tool-input-start", "tool-input-available"],
        ["tool-input-start", "tool-input-available"],
        ["tool-output-available"],
        ["tool-output-available", "finish-step"],
        [
            "start-step",
            "tool-input-start",
            "tool-input-available",
            "tool-output-available",
            "finish-step",
        ],
    ]
