"""What tests share: real servers (in the test's loop and as child processes), SSE reading and
checking, request bodies, scripted agent steps, credentials, a cutting TCP proxy.

Tests import from here (``from .support import ...``), never from another test module or from
``conftest.py``, which only declares the fixtures. Agents that a child-process server loads by
path live here too (``child_agents.py``, ``gated_agent.py``, ``langgraph_agents.py``); so do the
fake OpenAI server, the Node client runners, supervisors below HTTP and stored-log checks.
"""

from __future__ import annotations

from .agents import Paced, Switch, chunks, tool_call
from .servers import (
    Server,
    ServerProcess,
    StartServer,
    free_port,
    listening_socket,
    start_process,
    supervisor_of,
    wait_until,
)
from .streams import (
    HANG,
    RUN_BODY,
    ask,
    assert_error,
    assert_one_done,
    brief,
    data,
    metric,
    next_events,
    read_sse,
    run_body,
    text_of,
    unix,
)

__all__ = [
    "HANG",
    "RUN_BODY",
    "Paced",
    "Server",
    "ServerProcess",
    "StartServer",
    "Switch",
    "ask",
    "assert_error",
    "assert_one_done",
    "brief",
    "chunks",
    "data",
    "free_port",
    "listening_socket",
    "metric",
    "next_events",
    "read_sse",
    "run_body",
    "start_process",
    "supervisor_of",
    "text_of",
    "tool_call",
    "unix",
    "wait_until",
]
