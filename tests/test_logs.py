"""What an operator reads: the log lines of ``streamctl serve`` as a real process."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from streamctl import __version__
from streamctl.logs import JsonFormatter, TextFormatter, log_config

from .support import ServerProcess

Spawn = Callable[..., ServerProcess]
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ \S"
)


def start(server: ServerProcess, thread_id: str, **demo: Any) -> dict[str, Any]:
    body = {
        "thread_id": thread_id,
        "input": {"messages": [{"role": "user", "content": "What is the weather in Tokyo?"}]},
        "config": {"demo": {"delay_ms": 0, "tool_ms": 0, "tokens": 6, **demo}},
    }
    response = httpx.post(server.url + "/v1/runs", json=body, timeout=10)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def finished(server: ServerProcess, run_id: str) -> dict[str, Any]:
    """The run once it has ended (a bounded wait on its stream, which closes at ``done``)."""
    with httpx.stream("GET", f"{server.url}/v1/runs/{run_id}/stream", timeout=10) as response:
        for _ in response.iter_bytes():
            pass
    snapshot: dict[str, Any] = httpx.get(f"{server.url}/v1/runs/{run_id}", timeout=10).json()
    return snapshot


def test_json_lines_carry_the_run_fields_the_banner_and_the_drain(spawn_server: Spawn) -> None:
    server = spawn_server("--log-format", "json", env={"STREAMCTL_DRAIN_GRACE": "2"})
    done = finished(server, start(server, "thread-log")["run_id"])
    held = start(server, "thread-held", tokens=100_000, delay_ms=20)  # still running at SIGTERM
    server.stop()

    lines = server.output().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # each one object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]{12}Z", r["time"]) for r in records)

    banner = next(r for r in records if r["message"].startswith("streamctl "))
    assert banner["logger"] == "streamctl.server" and banner["level"] == "INFO"
    for part in (__version__, f"serving {server.url} ", "agent demo", "auth none", "1000 runs"):
        assert part in banner["message"], part

    def run_line(run_id: str, message: str) -> dict[str, Any]:
        found = [r for r in records if r.get("run_id") == run_id and r["message"] == message]
        assert len(found) == 1, (run_id, message, records)
        return found[0]

    started = run_line(done["run_id"], "run started")
    assert started["logger"] == "streamctl.run_task"
    assert started["thread_id"] == "thread-log" and started["owner"] == "anonymous"
    assert started["status"] == "running"
    ended = run_line(done["run_id"], "run ended")
    assert ended["status"] == "completed" and ended["events"] == done["last_seq"]
    assert ended["thread_id"] == "thread-log" and ended["owner"] == "anonymous"
    assert isinstance(ended["duration"], float) and ended["duration"] >= 0

    # The drain, in order: its start, progress while the held run goes on, its end.
    messages = [r["message"] for r in records]
    first = messages.index("draining: 1 active runs get 2 s to finish")
    assert messages[first + 1] == "draining: 1 runs still active"
    interrupted = run_line(held["run_id"], "run ended")
    assert interrupted["status"] == "interrupted"
    drained = next(i for i, m in enumerate(messages) if m.startswith("drained in "))
    assert first < records.index(interrupted) < drained
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("POST /v1/runs HTTP/1.1" in r["message"] for r in access)


def test_text_lines_and_debug_level(spawn_server: Spawn) -> None:
    server = spawn_server("--log-level", "debug")
    done = finished(server, start(server, "thread-text")["run_id"])
    server.stop()
    lines = server.output().splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    assert any(" DEBUG streamctl.server settings: {" in line for line in lines)
    ended = next(line for line in lines if " INFO streamctl.run_task run ended " in line)
    assert f"run_id={done['run_id']}" in ended and "status=completed" in ended

    quiet = spawn_server()  # info, the default: streamctl's INFO lines, no DEBUG ones
    finished(quiet, start(quiet, "thread-info")["run_id"])
    quiet.stop()
    lines = quiet.output().splitlines()
    assert not any(" DEBUG " in line for line in lines)
    assert any(" INFO streamctl.run_task run ended " in line for line in lines)


def test_formatters_keep_extra_fields_and_exceptions() -> None:
    logger = logging.getLogger("streamctl.test")
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logger.makeRecord(
        "streamctl.test",
        logging.WARNING,
        __file__,
        1,
        "run %s ended",
        ("r1",),
        exc_info,
        extra={"run_id": "r1", "duration": 1.5, "color_message": "ignored"},
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "run r1 ended" and entry["level"] == "WARNING"
    assert entry["run_id"] == "r1" and entry["duration"] == 1.5
    assert "color_message" not in entry and "ValueError: boom" in entry["exception"]
    text = TextFormatter().format(record)
    assert TEXT_LINE.match(text)
    assert text.splitlines()[0].endswith(
        "WARNING streamctl.test run r1 ended run_id=r1 duration=1.5"
    )
    assert text.splitlines()[-1] == "ValueError: boom"


def test_every_level_of_the_settings_is_a_level_of_the_config() -> None:
    for name, number in [("trace", 5), ("DEBUG", 10), ("info", 20), ("critical", 50)]:
        config = log_config(name, "json")
        assert config["loggers"]["streamctl"]["level"] == number
        assert config["loggers"]["uvicorn.error"]["level"] == number
        assert config["formatters"]["line"]["()"] is JsonFormatter
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        log_config("loud")
