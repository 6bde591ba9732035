"""``streamctl runs …`` and ``streamctl chat`` as real processes against a real server process."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from .conftest import ServerProcess

Spawn = Callable[..., ServerProcess]
TOKYO = "What is the weather in Tokyo?"


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMCTL_URL": server.url}
    return subprocess.run(
        [sys.executable, "-m", "streamctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def start(server: ServerProcess, thread_id: str, **demo: Any) -> dict[str, Any]:
    body = {
        "thread_id": thread_id,
        "input": {"messages": [{"role": "user", "content": TOKYO}]},
        "config": {"demo": {"delay_ms": 0, "tool_ms": 0, "tokens": 6, **demo}},
    }
    response = httpx.post(server.url + "/v1/runs", json=body, timeout=10)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def get_run(server: ServerProcess, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/runs/{run_id}", timeout=10)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


def finished(server: ServerProcess, run_id: str) -> dict[str, Any]:
    """The run once it has ended (a bounded wait on its stream, which closes at ``done``)."""
    with httpx.stream("GET", f"{server.url}/v1/runs/{run_id}/stream", timeout=10) as response:
        for _ in response.iter_bytes():
            pass
    return get_run(server, run_id)


def test_runs_list_show_and_tail(spawn_server: Spawn) -> None:
    server = spawn_server()
    first = finished(server, start(server, "thread-one")["run_id"])
    second = finished(server, start(server, "thread-two", tool=False)["run_id"])

    listing = cli(server, "runs", "list")
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    assert header.split() == ["RUN", "THREAD", "STATUS", "EVENTS", "CREATED", "OUTPUT"]
    assert [line.split()[0] for line in lines] == [second["run_id"], first["run_id"]]
    assert lines[1].split()[1:3] == ["thread-one", "completed"]
    assert str(first["last_seq"]) in lines[1].split() and "Looking up the weather" in lines[1]
    # Columns line up under the header.
    assert lines[1].index("thread-one") == header.index("THREAD")
    assert lines[1].index("completed") == header.index("STATUS")
    only = cli(server, "runs", "list", "--thread", "thread-two")
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == [second["run_id"]]

    show = cli(server, "runs", "show", first["run_id"])
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout) == first

    tail = cli(server, "runs", "tail", first["run_id"])
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.startswith(first["output"]["text"].split(". ")[0])
    assert "[tool get_weather" in tail.stdout and "→ Sunny, 22°C]" in tail.stdout
    assert tail.stdout.rstrip().endswith("[completed: the agent finished]")
    text = "".join(line for line in tail.stdout.splitlines(keepends=True) if "[" not in line)
    assert text.replace("\n", "") == first["output"]["text"]

    as_json = cli(server, "runs", "tail", first["run_id"], "--json", "--after", "3")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(events) == first["last_seq"] - 3
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed"
    assert all(e["type"] != "run" for e in events)


def test_runs_stop_stops_the_run_on_the_server(spawn_server: Spawn) -> None:
    server = spawn_server()
    run = start(server, "thread-slow", tokens=100_000, delay_ms=20)
    stopped = cli(server, "runs", "stop", run["run_id"])
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"{run['run_id']}: cancelled\n"
    assert get_run(server, run["run_id"])["status"] == "cancelled"
    again = cli(server, "runs", "stop", run["run_id"])  # idempotent
    assert again.stdout.strip() == f"{run['run_id']}: cancelled"


def test_unknown_runs_and_unreachable_servers_are_errors(spawn_server: Spawn) -> None:
    server = spawn_server()
    for action in ("show", "tail", "stop"):
        result = cli(server, "runs", action, "no-such-run")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("streamctl: ") and "no-such-run" in result.stderr
    server.stop()
    down = cli(server, "runs", "list")
    assert down.returncode == 1 and "cannot reach the server" in down.stderr


def test_chat_streams_the_answer_to_the_end(spawn_server: Spawn) -> None:
    server = spawn_server()
    result = cli(server, "chat", "What is the weather in London?", "--thread", "chat-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Looking up the weather in London. \n[tool get_weather(")
    assert "Light rain and 12°C in London right now." in result.stdout
    assert result.stdout.rstrip().endswith("[completed: the agent finished]")
    runs = httpx.get(server.url + "/v1/runs", params={"thread_id": "chat-1"}).json()["runs"]
    assert [r["status"] for r in runs] == ["completed"]


def read_until(process: subprocess.Popen[bytes], needle: bytes, deadline: float) -> bytes:
    """Read the child's stdout until ``needle`` shows up (or fail at the deadline)."""
    assert process.stdout is not None
    seen = b""
    end = time.monotonic() + deadline
    while needle not in seen:
        left = end - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        ready, _, _ = select.select([process.stdout], [], [], left)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f"stdout closed before {needle!r}: {seen!r}"
            seen += chunk
    return seen


def test_chat_ctrl_c_stops_the_run_on_the_server_and_exits_130(spawn_server: Spawn) -> None:
    server = spawn_server()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamctl", "chat", TOKYO, "--thread", "chat-int"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STREAMCTL_URL": server.url},
    )
    try:
        shown = read_until(process, b"Looking up", deadline=20)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    output = (shown + out).decode()
    assert output.rstrip().endswith("[stopped on the server: cancelled]")
    assert "[completed" not in output
    runs = httpx.get(server.url + "/v1/runs", params={"thread_id": "chat-int"}).json()["runs"]
    assert [r["status"] for r in runs] == ["cancelled"]
    assert runs[0]["output"]["text"].startswith("Looking up")


def test_runs_list_sends_the_status_filter(spawn_server: Spawn) -> None:
    server = spawn_server()
    finished(server, start(server, "thread-status")["run_id"])
    listing = cli(server, "runs", "list", "--status", "completed", "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    # The query the server received, from its access log (the filtering itself is the server's).
    assert "GET /v1/runs?limit=5&status=completed " in server.output()
    bad = cli(server, "runs", "list", "--status", "done")
    assert bad.returncode == 2 and "invalid choice: 'done'" in bad.stderr


def test_url_and_token_are_accepted_after_the_action(spawn_server: Spawn) -> None:
    server = spawn_server()
    run = finished(server, start(server, "thread-url")["run_id"])
    nowhere = {**os.environ, "STREAMCTL_URL": "http://127.0.0.1:9"}  # the discard port: closed
    for args in (
        ["runs", "list", "--url", server.url],
        ["runs", "--url", server.url, "list"],
        ["runs", "--url", "http://127.0.0.1:9", "list", "--url", server.url],  # the last wins
        ["runs", "show", run["run_id"], "--url", server.url, "--token", "unused"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "streamctl", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=nowhere,
        )
        assert result.returncode == 0, (args, result.stderr)
        assert run["run_id"] in result.stdout
    down = subprocess.run(
        [sys.executable, "-m", "streamctl", "runs", "--url", server.url, "list", "--url", "x:/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1 and down.stderr.startswith("streamctl: ")


def test_a_closed_pipe_ends_quietly(spawn_server: Spawn) -> None:
    """`streamctl runs tail … | head -1`: no traceback, the shell's status for SIGPIPE (141)."""
    server = spawn_server()
    run = start(server, "thread-pipe", tokens=100_000, delay_ms=5)
    env = {**os.environ, "STREAMCTL_URL": server.url}
    tail = subprocess.Popen(
        [sys.executable, "-m", "streamctl", "runs", "tail", run["run_id"], "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        first = read_until(tail, b"\n", deadline=20)
        assert json.loads(first.split(b"\n")[0])["type"] == "run"
        assert tail.stdout is not None
        tail.stdout.close()  # the reader goes away mid-stream, as `head` does
        _, err = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 141 and err == b""
    # A listing written into a pipe nobody reads any more: the same, at its first write.
    listing = subprocess.Popen(
        [sys.executable, "-m", "streamctl", "runs", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert listing.stdout is not None
    listing.stdout.close()
    _, err = listing.communicate(timeout=20)
    assert listing.returncode == 141 and err == b""
    assert cli(server, "runs", "stop", run["run_id"]).returncode == 0


def test_chat_renders_custom_events_and_interrupts_on_lines_of_their_own() -> None:
    import io

    from streamctl.console import _Renderer
    from streamctl.events import Custom, Interrupt, MessageChunk, ReasoningChunk

    out = io.StringIO()
    render = _Renderer(out)
    for event in (
        ReasoningChunk(content="thinking", message_id="m"),
        MessageChunk(content="Shall I ", message_id="m"),
        Custom(name="progress", data={"step": 1}),
        Interrupt(value={"question": "Book it?"}),
    ):
        render(event, out)
    assert out.getvalue().splitlines() == [
        "Shall I ",
        '[progress: {"step": 1}]',
        '[interrupt: {"question": "Book it?"}; answer with config {"resume": …}]',
    ]
