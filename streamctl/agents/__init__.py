"""Agents: the built-in ``demo`` and ``scripted`` agents, and loading one by name."""

from __future__ import annotations

import importlib
import inspect

from ..errors import AgentNotFound
from .base import Agent, AgentContext, Message
from .demo import DemoOptions, demo_agent
from .scripted import Fail, ScriptedAgent, Sleep, Wait

__all__ = [
    "Agent",
    "AgentContext",
    "DemoOptions",
    "Fail",
    "Message",
    "ScriptedAgent",
    "Sleep",
    "Wait",
    "demo_agent",
    "load_agent",
]


def load_agent(spec: str) -> Agent:
    """``demo``, or ``MODULE:ATTR`` naming an agent callable (a class is instantiated with no
    arguments)."""
    if spec == "demo":
        return demo_agent
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentNotFound(f"agent {spec!r} is neither 'demo' nor MODULE:ATTR")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentNotFound(f"cannot import agent module {module_name!r}: {exc}") from exc
    try:
        agent = getattr(module, attr)
    except AttributeError as exc:
        raise AgentNotFound(f"module {module_name!r} has no attribute {attr!r}") from exc
    if inspect.isclass(agent):
        agent = agent()
    if not callable(agent):
        raise AgentNotFound(f"agent {spec!r} is not callable")
    return agent  # type: ignore[no-any-return]
