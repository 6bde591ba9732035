"""Small pieces the protocol routers share."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ...errors import InvalidInput
from ..errors import error_responses

PING = b": ping\n"
"""An SSE comment line, ended by one newline (a blank line would dispatch an empty event)."""


# The error answers of the protocols' routes, for /openapi.json (JSON ``Error`` bodies).
START_STREAM = error_responses(400, 401, 404, 409, 413, 422, 429, 503, stream=True)
READ_STREAM = error_responses(400, 401, 404, 410, 422, 429, 503, stream=True)
STOP = error_responses(401, 404, 413, 422, 503)


def invalid(exc: ValidationError, where: str) -> InvalidInput:
    """A request that parsed but cannot become a run: a 422 naming the first problem."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return InvalidInput(f"{where}{'.' + loc if loc else ''}: {first.get('msg', 'invalid')}")


def stopped(state: tuple[dict[str, object], bool]) -> JSONResponse:
    """A stop's answer: 200 with the final state once the task exited, 202 while stopping."""
    snapshot, finished = state
    return JSONResponse({**snapshot, "stopping": not finished}, 200 if finished else 202)


def token_usage(usage: dict[str, int] | None) -> dict[str, int] | None:
    """``done.usage`` in the camelCase counts both protocols use (the AI SDK's
    ``LanguageModelUsage``, AG-UI's ``TokenUsage``); None when the model reported none."""
    if not usage:
        return None
    tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "inputTokens": tokens_in,
        "outputTokens": tokens_out,
        "totalTokens": tokens_in + tokens_out,
    }
