"""The web page: ``/``, its static files, and the browser module's types.

``/`` names the agent it chats with (``agent_name``), filled into the page by the server, so the
title is right before any script runs. The static files are served by a route, not a ``Mount``:
a route is carried by ``include_router`` in every FastAPI version (a mount inside an
``APIRouter`` is dropped by older ones), so the page comes along wherever the router is
included.
"""

from __future__ import annotations

import html
import os
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from ..settings import Settings
from .errors import StreamctlRoute
from .services import find_services

STATIC = Path(__file__).resolve().parent.parent / "static"


class PageRoute(StreamctlRoute):
    strict_query = False  # a browser's URL may carry anything (tracking tags, cache busters)


router = APIRouter(tags=["page"], route_class=PageRoute)
_files = StaticFiles(directory=STATIC)


@router.get("/static/streamctl.d.ts", include_in_schema=False)
async def typings() -> FileResponse:
    # Guessed from ".ts", the type would be a video (MPEG transport stream).
    return FileResponse(STATIC / "streamctl.d.ts", media_type="application/typescript")


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def static(path: str, request: Request) -> Response:
    return await _files.get_response(_relative(path), request.scope)


def _relative(path: str) -> str:
    """As StaticFiles does for a mount: '.' and '..' resolved (it refuses what leaves STATIC)."""
    return os.path.normpath(os.path.join(*path.split("/")))


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    """The chat page: the served agent, live Markdown, a Stop button, resume after reload."""
    services = find_services(request)
    name = services.agent_name if services is not None else "the agent"
    return HTMLResponse(render_page(name), headers={"Cache-Control": "no-cache"})


@cache
def _template() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def render_page(agent: str) -> str:
    """``index.html`` naming ``agent``: escaped, so a name is only ever text."""
    return _template().replace("{{agent}}", html.escape(agent, quote=True))


def agent_name(agent: Any, settings: Settings) -> str:
    """What the page calls the agent. A spec names it (``demo``, the model of ``openai``,
    ``MODULE:ATTR``); an object given directly by its ``name`` (a LangGraph graph's, the demo
    agent's), its ``model`` (a ``ChatAgent``), its function's name, or its class's."""
    if agent is None or isinstance(agent, str):
        spec = agent or settings.agent
        if spec == "demo":
            return "demo agent"
        return settings.model if spec == "openai" and settings.model else spec
    for attribute in ("name", "model", "__name__"):
        value = getattr(agent, attribute, None)
        if isinstance(value, str) and value:
            return value
    return type(agent).__name__
