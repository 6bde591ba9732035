"""``done.usage`` (the model's tokens) reaches the frontends' real clients where their protocol
has a place for it: the AI SDK's message metadata (``finish.messageMetadata``; a
``message-metadata`` part before ``abort`` / ``error``), validated by the chat against a strict
schema; AG-UI's ``usage`` of ``RUN_FINISHED`` and ``RUN_ERROR``, through ``HttpAgent``'s schema
enforcement and verifier, and the official Python models."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from streamctl.agents import ScriptedAgent, Wait
from streamctl.agents.scripted import Fail, Step
from streamctl.events import Usage

from .support import StartServer, chunks
from .support.node_clients import node_json, require_node

pytestmark = pytest.mark.anyio

USAGE: list[Step] = [
    Usage(input_tokens=12, output_tokens=5),
    Usage(input_tokens=3, output_tokens=1),
]
TOTAL = {"inputTokens": 15, "outputTokens": 6, "totalTokens": 21}


def assistant(result: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = result["messages"][-1]
    assert message["role"] == "assistant"
    return message


async def test_ai_sdk_finish_carries_the_usage_as_message_metadata(serve: StartServer) -> None:
    require_node("ai", "zod")
    server = await serve(agent=ScriptedAgent([*chunks(2), *USAGE]))
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, "c1", "send", "--usage-schema")
    assert result["error"] is None and result["errors"] == [], result
    assert result["chunks"][-1] == "finish"
    assert assistant(result)["metadata"] == {"totalUsage": TOTAL}


@pytest.mark.parametrize("ending", ["stop", "fail"])
async def test_ai_sdk_abort_and_error_carry_it_in_a_metadata_part(
    serve: StartServer, ending: str
) -> None:
    require_node("ai", "zod")
    gate = anyio.Event()
    last: Step = Wait(gate) if ending == "stop" else Fail(RuntimeError("boom"))
    server = await serve(agent=ScriptedAgent([*chunks(3), *USAGE, last]))
    args = ["--usage-schema", *(["--after", "w2"] if ending == "stop" else [])]
    with anyio.fail_after(30):
        result = await node_json(
            "ai_sdk.mjs", server.url, "c1", ending.replace("fail", "send"), *args
        )
    assert result["chunks"][-2:] == ["message-metadata", "abort" if ending == "stop" else "error"]
    assert assistant(result)["metadata"] == {"totalUsage": TOTAL}


async def test_ai_sdk_without_usage_sends_no_metadata(serve: StartServer) -> None:
    require_node("ai", "zod")
    server = await serve(agent=ScriptedAgent(chunks(2)))
    with anyio.fail_after(30):
        result = await node_json("ai_sdk.mjs", server.url, "c1", "send")
    assert result["chunks"][-1] == "finish" and "metadata" not in assistant(result)


@pytest.mark.parametrize("ending", ["completed", "failed"])
async def test_ag_ui_run_finished_and_run_error_carry_the_usage(
    serve: StartServer, ending: str
) -> None:
    require_node("@ag-ui/client", "rxjs")
    tail: list[Step] = [] if ending == "completed" else [Fail(RuntimeError("boom"))]
    server = await serve(agent=ScriptedAgent([*chunks(2), *USAGE, *tail]))
    with anyio.fail_after(30):
        result = await node_json("ag_ui.mjs", server.url, "t1", "run-1", "run")
    assert result["error"] is None or ending == "failed"
    last = result["events"][-1]
    assert last["type"] == ("RUN_FINISHED" if ending == "completed" else "RUN_ERROR")
    assert last["usage"] == [TOTAL]  # kept by the client's schema enforcement
    for event in result["events"]:
        TypeAdapter(Event).validate_python(event)  # and the official models accept it
