"""``@microsoft/fetch-event-source`` (what the AgentFlow guide recommends for streams with auth)
reads our streams with the recipe of ``docs/frontends.md``: no empty event ever reaches its
``onmessage`` (the ``retry:`` line and pings end with one newline), and a ``204`` ends it."""

from __future__ import annotations

import anyio
import pytest

from streamctl.agents import ScriptedAgent

from .conftest import StartServer, chunks, run_body, tool_call
from .node_clients import node_json, require_node

pytestmark = pytest.mark.anyio


async def test_fetch_event_source_reads_a_run_and_ends_on_204(serve: StartServer) -> None:
    require_node("@microsoft/fetch-event-source")
    server = await serve(agent=ScriptedAgent([*chunks(3), *tool_call()]))
    async with server.client() as client:
        run_id = (await client.post("/v1/runs", json=run_body())).json()["run_id"]
        url = f"{server.url}/v1/runs/{run_id}/stream"
        with anyio.fail_after(30):
            result = await node_json("fetch_sse.mjs", url)
            log = (await client.get(f"/v1/runs/{run_id}/events")).json()["events"]
            at_end = await node_json("fetch_sse.mjs", url, "--last-event-id", str(len(log)))
    assert result["ended"] == "done" and result["opens"] == [200]
    assert [(m["id"], m["event"]) for m in result["messages"]] == [
        (str(e["seq"]), e["type"]) for e in log
    ]
    assert at_end == {"opens": [204], "messages": [], "ended": "204"}
