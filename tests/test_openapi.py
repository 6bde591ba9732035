"""``/openapi.json`` documents real shapes: every JSON answer is a named schema with its fields,
every error answer is the ``Error`` body, and the bodies a real run produces carry exactly the
documented fields."""

from __future__ import annotations

from typing import Any

import pytest

from streamctl.agents import ScriptedAgent

from .conftest import StartServer, chunks, run_body, tool_call

RUN_FIELDS = {
    "run_id",
    "thread_id",
    "status",
    "reason",
    "last_seq",
    "output",
    "error",
    "created_at",
    "started_at",
    "ended_at",
    "usage",
    "events_purged_at",
    "stream_token",
}

# (method, path, status) -> (schema name, fields it must document)
ANSWERS: dict[tuple[str, str, str], tuple[str, set[str]]] = {
    ("post", "/v1/runs", "201"): ("Run", RUN_FIELDS),
    ("get", "/v1/runs", "200"): ("RunList", {"runs"}),
    ("get", "/v1/runs/{run_id}", "200"): ("Run", RUN_FIELDS),
    ("get", "/v1/runs/{run_id}/events", "200"): ("EventsPage", {"events", "last_seq", "status"}),
    ("post", "/v1/runs/{run_id}/stop", "200"): ("Stopped", RUN_FIELDS | {"stopping"}),
    ("post", "/v1/runs/{run_id}/stop", "202"): ("Stopped", RUN_FIELDS | {"stopping"}),
    ("post", "/stop", "200"): ("Stopped", RUN_FIELDS | {"stopping"}),
    ("post", "/v1/threads/{thread_id}/stop", "200"): ("Stopped", RUN_FIELDS | {"stopping"}),
    ("get", "/v1/threads/{thread_id}", "200"): (
        "Thread",
        {
            "thread_id",
            "created_at",
            "messages",
            "active_run",
            "last_run",
            "has_more",
            "next_before",
        },
    ),
    ("get", "/healthz", "200"): ("Health", {"status"}),
    ("get", "/readyz", "200"): ("Ready", {"status", "active_runs"}),
}


def _ref(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    assert isinstance(ref, str) and ref.startswith("#/components/schemas/"), schema
    return ref.rsplit("/", 1)[1]


def _items_ref(openapi: dict[str, Any], name: str, field: str) -> str:
    return _ref(openapi["components"]["schemas"][name]["properties"][field]["items"])


pytestmark = pytest.mark.anyio


async def test_json_answers_and_errors_reference_named_schemas(serve: StartServer) -> None:
    server = await serve()
    async with server.client() as client:
        openapi = (await client.get("/openapi.json")).json()
    schemas = openapi["components"]["schemas"]
    for (method, path, status), (name, fields) in ANSWERS.items():
        answer = openapi["paths"][path][method]["responses"][status]
        assert _ref(answer["content"]["application/json"]["schema"]) == name, (method, path)
        assert set(schemas[name]["properties"]) == fields, name
    # The nested shapes are named too, not bare objects.
    assert _ref(schemas["Run"]["properties"]["output"]) == "Output"
    assert set(schemas["Output"]["properties"]) == {
        "text",
        "messages",
        "tool_calls",
        "reasoning",
        "interrupt",
    }
    assert _items_ref(openapi, "Output", "reasoning") == "Reasoning"
    assert _items_ref(openapi, "Output", "tool_calls") == "ToolCall"
    assert _items_ref(openapi, "RunList", "runs") == "Run"
    assert _items_ref(openapi, "EventsPage", "events") == "EventRecord"
    assert _items_ref(openapi, "Thread", "messages") == "ThreadMessage"
    assert set(schemas["Error"]["properties"]) == {"error"}
    assert set(schemas["ErrorInfo"]["properties"]) == {"code", "message", "details"}
    # Every error answer of every operation is the one Error body, in JSON (streams included).
    errors = 0
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    errors += 1
                    schema = answer["content"]["application/json"]["schema"]
                    assert _ref(schema) == "Error", (method, path, status)
                    assert list(answer["content"]) == ["application/json"], (method, path)
    assert errors > 40
    assert "HTTPValidationError" not in schemas


def _check(openapi: dict[str, Any], name: str, body: dict[str, Any]) -> None:
    """The body has every required field of its schema and no field the schema does not name."""
    schema = openapi["components"]["schemas"][name]
    assert set(schema.get("required", ())) <= set(body) <= set(schema["properties"]), name


async def test_real_bodies_carry_exactly_the_documented_fields(serve: StartServer) -> None:
    agent = ScriptedAgent([*chunks(3), *tool_call(), *chunks(2, "m2")])
    server = await serve(agent=agent)
    async with server.client() as client:
        openapi = (await client.get("/openapi.json")).json()
        created = await client.post("/v1/runs", json=run_body(thread_id="t1"))
        assert created.status_code == 201
        run = created.json()
        _check(openapi, "Run", run)
        assert "stream_token" in run  # null with auth off, but always in this answer
        stopped = await client.post(f"/v1/runs/{run['run_id']}/stop")
        assert stopped.status_code == 200
        _check(openapi, "Stopped", stopped.json())
        final = (await client.get(f"/v1/runs/{run['run_id']}")).json()
        _check(openapi, "Run", final)
        assert "stream_token" not in final  # only an active run's snapshot carries one
        _check(openapi, "Output", final["output"])
        for call in final["output"]["tool_calls"]:
            _check(openapi, "ToolCall", call)
        for message in final["output"]["messages"]:
            _check(openapi, "OutputMessage", message)
        listed = (await client.get("/v1/runs")).json()
        _check(openapi, "RunList", listed)
        page = (await client.get(f"/v1/runs/{run['run_id']}/events")).json()
        _check(openapi, "EventsPage", page)
        for record in page["events"]:
            _check(openapi, "EventRecord", record)
        thread = (await client.get("/v1/threads/t1")).json()
        _check(openapi, "Thread", thread)
        kinds = set()
        for message in thread["messages"]:
            _check(openapi, "ThreadMessage", message)
            kinds.add(("status" in message, "output" in message))
        assert kinds == {(False, False), (True, True)}  # input messages, then the answer
        missing = await client.get("/v1/runs/nope")
        assert missing.status_code == 404
        _check(openapi, "Error", missing.json())
        _check(openapi, "ErrorInfo", missing.json()["error"])
        invalid = await client.get("/v1/runs", params={"limit": 0})
        assert invalid.status_code == 422
        _check(openapi, "ErrorInfo", invalid.json()["error"])
        for detail in invalid.json()["error"]["details"]:
            _check(openapi, "ErrorDetail", detail)
