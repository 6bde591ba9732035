"""streamctl: stream AI-agent runs to browsers and programs over Server-Sent Events, stoppable
and resumable."""

from __future__ import annotations

__version__ = "0.1.0"

from .agents import Agent, AgentContext, Message, ScriptedAgent, demo_agent
from .auth import Principal
from .client import Client, ClientError
from .errors import (
    CursorOutOfRange,
    InvalidCursor,
    RunNotFound,
    StreamctlError,
    ThreadBusy,
    ThreadNotFound,
)
from .events import Done, ErrorEvent, MessageChunk, RunStarted, ToolEnd, ToolStart
from .http import Streamctl, create_app
from .settings import Settings
from .store import Store
from .supervisor import Supervisor

__all__ = [
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
