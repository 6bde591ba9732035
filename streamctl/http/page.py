"""The web page: ``/``, its static files, and the browser module's types.

The static files are served by a route, not a ``Mount``: a route is carried by ``include_router``
in every FastAPI version (a mount inside an ``APIRouter`` is dropped by older ones), so the page
comes along wherever the router is included.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from .errors import StreamctlRoute

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


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    """The chat page: the demo agent, live tokens, a Stop button, resume after reload."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
