from __future__ import annotations

import orjson
import pytest

from streamctl.agents import ScriptedAgent

from .support import StartServer, chunks, read_sse, run_body, tool_call

pytestmark = pytest.mark.anyio


async def test_full_run_streams_dense_ids_and_replays_identically(serve: StartServer) -> None:
    agent = ScriptedAgent([*chunks(5), *tool_call(), *chunks(3, "m2")])
    server = await serve(agent=agent)
    async with server.client() as client:
        response, events = await read_sse(client, "POST", "/v1/runs/stream", json=run_body())
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        types = [e.event for e in events]
        assert types == ["run"] + ["message_chunk"] * 5 + ["tool_start", "tool_end"] + [
            "message_chunk"
        ] * 3 + ["done"]
        assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
        done = orjson.loads(events[-1].data)
        assert done["status"] == "completed"
        run_id = done["run_id"]

        page = (await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()
        assert [(e["seq"], e["type"]) for e in page["events"]] == [
            (int(e.id), e.event) for e in events
        ]
        assert [orjson.dumps(e["data"]) for e in page["events"]] == [
            e.data.encode() for e in events
        ]
        _, replay = await read_sse(client, "GET", f"/v1/runs/{run_id}/stream?after=0")
        assert [(e.id, e.event, e.data) for e in replay] == [
            (e.id, e.event, e.data) for e in events
        ]
