"""Small pieces the protocol routers share."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import InvalidInput

PING = b": ping\n"
"""An SSE comment line, ended by one newline (a blank line would dispatch an empty event)."""


def invalid(exc: ValidationError, where: str) -> InvalidInput:
    """A request that parsed but cannot become a run: a 422 naming the first problem."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidInput(f"{where}{'.' + loc if loc else ''}: {first.get('msg', 'invalid')}")


def stopped(state: tuple[dict[str, object], bool]) -> JSONResponse:
    """A stop's answer: 200 with the final state once the task exited, 202 while stopping."""
    snapshot, finished = state
    return JSONResponse({**snapshot, "stopping": not finished}, 200 if finished else 202)
