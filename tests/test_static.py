"""The browser side as files: ``streamctl.d.ts`` agrees with the server's event schema, the page
and its modules are served with the right content types and reference nothing external, the page
names the served agent (escaped), and the module's ``SSEParser`` (run under Node) decodes like
``streamctl.decoder.SSEDecoder``."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamctl import Settings
from streamctl.agents import ScriptedAgent, demo_agent
from streamctl.decoder import SSEDecoder
from streamctl.events import event_json_schema
from streamctl.http.page import agent_name

from .support import StartServer
from .support.decoder_cases import CASES, feedings

STATIC = Path(__file__).resolve().parent.parent / "streamctl" / "static"
DTS = (STATIC / "streamctl.d.ts").read_text()


def interfaces() -> dict[str, set[str]]:
    """Field names of each ``export interface Name { ... }`` whose body is flat."""
    found = {}
    for name, body in re.findall(r"export interface (\w+) \{([^{}]*)\}", DTS):
        fields = [part.split(":")[0].strip() for part in re.split(r"[;\n]", body)]
        found[name] = {f.rstrip("?") for f in fields if f and not f.startswith("//")}
    return found


def literal_types() -> dict[str, set[str]]:
    """``export type Name = "a" | "b";`` as {Name: {a, b}}."""
    return {
        name: set(re.findall(r'"(\w+)"', union))
        for name, union in re.findall(r"export type (\w+) = ((?:\s*\|?\s*\"\w+\")+);", DTS)
    }


def schema_events() -> dict[str, dict[str, Any]]:
    """Each event type's JSON Schema (``$defs`` entry), by its wire name."""
    schema = event_json_schema()
    mapping: dict[str, str] = schema["discriminator"]["mapping"]
    return {kind: schema["$defs"][ref.rpartition("/")[2]] for kind, ref in mapping.items()}


def test_the_stream_event_union_names_every_event_type_once() -> None:
    union = re.findall(r'\{ type: "(\w+)"; id: string; data: (\w+) \}', DTS)
    assert sorted(kind for kind, _ in union) == sorted(schema_events())
    assert len({data for _, data in union}) == len(union)


@pytest.mark.parametrize("kind", sorted(schema_events()))
def test_each_data_interface_has_exactly_the_schema_fields(kind: str) -> None:
    data_type = dict(re.findall(r'\{ type: "(\w+)"; id: string; data: (\w+) \}', DTS))[kind]
    fields = set(schema_events()[kind]["properties"]) - {"type"}
    assert interfaces()[data_type] == fields


def test_enumerated_values_match_the_schema() -> None:
    literals = literal_types()
    done = schema_events()["done"]["properties"]["status"]["enum"]
    run = schema_events()["run"]["properties"]["status"]["enum"]
    assert literals["TerminalStatus"] == set(done)
    assert literals["RunStatus"] == set(run)
    assert re.search(r"DoneData \{[^}]*status: TerminalStatus", DTS)
    assert re.search(r"RunData \{[^}]*status: RunStatus", DTS)
    assert re.search(r'MessageChunkData \{ role: "assistant";', DTS)
    assert schema_events()["message_chunk"]["properties"]["role"]["const"] == "assistant"


def test_the_page_references_nothing_external() -> None:
    for name in ("index.html", "app.js", "markdown.js", "style.css", "streamctl.js"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(?i)\bhttps?:|[\"'(=]\s*//", text), name  # absolute or //host
    css = (STATIC / "style.css").read_text()
    assert "@import" not in css and not re.search(r"url\(\s*[\"']?(?!data:)", css)
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    # Relative, so the page works wherever it is mounted (`app.include_router(..., prefix=)`).
    assert refs and all(r.startswith("static/") or r.startswith("data:") for r in refs), refs
    imports = re.compile(r'(?m)^import .* from "([^"]+)"')
    assert imports.findall((STATIC / "app.js").read_text()) == ["./streamctl.js", "./markdown.js"]
    assert imports.findall((STATIC / "markdown.js").read_text()) == []


JS_TYPES = ("text/javascript", "application/javascript")


@pytest.mark.parametrize(
    ("path", "types"),
    [
        ("/", ("text/html",)),
        ("/static/streamctl.js", JS_TYPES),
        ("/static/app.js", JS_TYPES),
        ("/static/markdown.js", JS_TYPES),
        ("/static/style.css", ("text/css",)),
        ("/static/streamctl.d.ts", ("application/typescript", "text/typescript", "text/plain")),
    ],
)
@pytest.mark.anyio
async def test_files_are_served_with_their_content_type(
    serve: StartServer, path: str, types: tuple[str, ...]
) -> None:
    server = await serve()
    async with server.client() as client:
        response = await client.get(path)
    assert response.status_code == 200
    media_type, _, params = response.headers["content-type"].partition(";")
    assert media_type in types, response.headers["content-type"]
    if media_type.startswith("text/"):
        assert params.strip().lower() == "charset=utf-8"
    if path == "/":  # the page, naming the served agent
        assert response.text == (STATIC / "index.html").read_text().replace(
            "{{agent}}", "demo agent"
        )
    else:
        assert response.content == (STATIC / path.rpartition("/")[2]).read_bytes()


class Forecaster(ScriptedAgent):
    name = 'Forecaster <b onmouseover="x()">&'


def test_agent_names() -> None:
    settings = Settings.from_env({})
    assert agent_name(None, settings) == "demo agent"
    assert agent_name(demo_agent, settings) == "demo agent"
    assert agent_name("mymod:graph", settings) == "mymod:graph"
    with_model = Settings.from_env({}, agent="openai", model="qwen2.5")
    assert agent_name(None, with_model) == "qwen2.5"
    assert agent_name(ScriptedAgent([]), settings) == "ScriptedAgent"

    async def my_agent(ctx: Any) -> AsyncIterator[str]:
        yield "hi"

    assert agent_name(my_agent, settings) == "my_agent"


@pytest.mark.anyio
async def test_the_page_names_the_served_agent_as_text(serve: StartServer) -> None:
    server = await serve(agent=Forecaster([]))
    async with server.client() as client:
        page = (await client.get("/")).text
    escaped = "Forecaster &lt;b onmouseover=&quot;x()&quot;&gt;&amp;"
    assert f"<title>streamctl: chat with {escaped}</title>" in page
    assert f'<strong id="agent">{escaped}</strong>' in page
    assert "<b " not in page and "{{agent}}" not in page


NODE_SCRIPT = """
import { SSEParser } from %s;
const cases = JSON.parse(await new Response(process.stdin).text());
const out = {};
for (const [name, feedings] of Object.entries(cases)) {
  out[name] = feedings.map((chunks) => {
    const parser = new SSEParser();
    const events = [];
    for (const chunk of chunks) {
      const bytes = Buffer.from(chunk, "base64");
      for (const e of parser.feed(bytes)) events.push([e.type, e.data, e.id]);
    }
    return [events, parser.lastEventId, parser.retry];
  });
}
process.stdout.write(JSON.stringify(out));
"""


@functools.cache
def node_results() -> dict[str, list[list[Any]]]:
    """Every case of test_decoder.py, in every feeding, through the browser's SSEParser."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing under CI: the JS parser cannot be checked")
        pytest.skip("node is not installed: the JS parser is not checked")
    cases = {
        name: [[base64.b64encode(c).decode() for c in chunks] for chunks in feedings(case.stream)]
        for name, case in CASES.items()
    }
    module = json.dumps((STATIC / "streamctl.js").as_uri())
    result = subprocess.run(
        [node, "--input-type=module", "-e", NODE_SCRIPT % module],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    results: dict[str, list[list[Any]]] = json.loads(result.stdout)
    return results


def python_result(chunks: list[bytes]) -> list[Any]:
    decoder = SSEDecoder()
    events = [[e.event, e.data, e.id] for chunk in chunks for e in decoder.feed(chunk)]
    return [events, decoder.last_event_id, decoder.retry]


@pytest.mark.parametrize("name", list(CASES))
def test_the_js_parser_decodes_like_the_python_decoder(name: str) -> None:
    got = node_results()[name]
    expected = [python_result(chunks) for chunks in feedings(CASES[name].stream)]
    assert len(got) == len(expected)
    for chunks, js, py in zip(feedings(CASES[name].stream), got, expected, strict=True):
        assert js == py, chunks
