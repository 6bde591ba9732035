"""The public API is what ``streamctl.__all__`` says, nothing more, nothing less."""

from __future__ import annotations

import inspect

import streamctl


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(streamctl).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(streamctl.__all__) == public | {"__version__"}
    for name in streamctl.__all__:
        assert hasattr(streamctl, name), name


def test_all_is_pinned() -> None:
    assert sorted(streamctl.__all__) == [
        "Agent",
        "AgentContext",
        "Client",
        "ClientError",
        "CursorOutOfRange",
        "Done",
        "ErrorEvent",
        "InvalidCursor",
        "Message",
        "MessageChunk",
        "Principal",
        "RunNotFound",
        "RunStarted",
        "ScriptedAgent",
        "Settings",
        "Store",
        "Streamctl",
        "StreamctlError",
        "Supervisor",
        "ThreadBusy",
        "ThreadNotFound",
        "ToolEnd",
        "ToolStart",
        "__version__",
        "create_app",
        "demo_agent",
    ]
