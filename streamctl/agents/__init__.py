"""Agents: the built-in ``demo`` and ``scripted`` agents, plain generator functions, and loading
one by name. The adapters for real frameworks live in their own modules, each importing its
optional dependency only when used: ``streamctl.agents.openai`` (``ChatAgent``, any
OpenAI-compatible model) and ``streamctl.agents.langgraph`` (``LangGraphAgent``)."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from ..errors import AgentNotFound
from .base import Agent, AgentContext, Message
from .demo import DemoOptions, demo_agent
from .generators import GeneratorAgent, is_generator_function
from .scripted import Fail, ScriptedAgent, Sleep, Wait

__all__ = [
    "Agent",
    "AgentContext",
    "DemoOptions",
    "Fail",
    "GeneratorAgent",
    "Message",
    "ScriptedAgent",
    "Sleep",
    "Wait",
    "as_agent",
    "demo_agent",
    "load_agent",
]


def _is_langgraph(obj: object) -> bool:
    # Only a module that already imported langgraph can hold a compiled graph: never import it.
    pregel = sys.modules.get("langgraph.pregel")
    return pregel is not None and isinstance(obj, pregel.Pregel)


def _is_tenxgraph(obj: object) -> bool:
    # Likewise for 10xGraph (formerly AgentFlow): never import it here.
    compiled = sys.modules.get("tenxgraph.core.graph.compiled_graph")
    return compiled is not None and isinstance(obj, compiled.CompiledGraph)


def as_agent(obj: Any) -> Agent:
    """``obj`` as an ``Agent``: a compiled LangGraph graph gets ``LangGraphAgent``, a compiled
    10xGraph graph ``TenXGraphAgent``, a generator function ``GeneratorAgent``; any other
    callable is taken as an agent already."""
    if _is_langgraph(obj):
        from .langgraph import LangGraphAgent

        return LangGraphAgent(obj)
    if _is_tenxgraph(obj):
        from .tenxgraph import TenXGraphAgent

        return TenXGraphAgent(obj)
    if is_generator_function(obj):
        return GeneratorAgent(obj)
    return obj  # type: ignore[no-any-return]


def load_agent(spec: str, *, model: str = "") -> Agent:
    """``demo``; ``openai`` (an OpenAI-compatible chat ``model``, from ``OPENAI_BASE_URL`` and
    ``OPENAI_API_KEY``); or ``MODULE:ATTR`` naming an agent callable, a generator function or a
    compiled LangGraph or 10xGraph graph (a class is instantiated with no arguments)."""
    if spec == "demo":
        return demo_agent
    if spec == "openai":
        if not model:
            raise AgentNotFound("--agent openai needs the model's name: --model NAME")
        try:
            from .openai import ChatAgent
        except ImportError as exc:
            raise AgentNotFound(
                f"--agent openai needs the openai package: pip install 'streamctl[openai]' ({exc})"
            ) from exc
        return ChatAgent(model=model)
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
    if not callable(agent) and not _is_langgraph(agent) and not _is_tenxgraph(agent):
        raise AgentNotFound(f"agent {spec!r} is not callable")
    return as_agent(agent)
