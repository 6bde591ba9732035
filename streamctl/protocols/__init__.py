"""The frontends' protocols, each a view over the same runs and the same log.

Each module holds a pure translator from committed frames to its protocol's wire parts and one
``APIRouter``: ``ai_sdk`` (the Vercel AI SDK's UI message stream, ``useChat``), ``ag_ui`` (AG-UI,
``HttpAgent``), ``agentflow`` (AgentFlow's client, NDJSON). They share ``wire`` (cursors that name
a part of a frame, rendering, the response) and ``frames`` (a run's frames, then its live tail),
and call the supervisor only through ``contract``.
"""

from __future__ import annotations

from fastapi import APIRouter

from .ag_ui import ag_ui_router
from .agentflow import agentflow_router
from .ai_sdk import ai_sdk_router


def protocol_routers() -> list[APIRouter]:
    """Every protocol's router, for ``app.include_router``."""
    return [ai_sdk_router(), ag_ui_router(), agentflow_router()]
