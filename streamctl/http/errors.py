"""Domain errors → JSON error answers: the one place that picks an HTTP status for an error.

The status is chosen by the error's class (``STATUS``, walked along the class's MRO, so a subclass
answers like its parent unless listed); the body is ``{"error": {"code", "message"}}`` with the
error's own ``code``. ``error_responses`` documents the same answers in ``/openapi.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AuthError,
    CursorOutOfRange,
    InvalidAgentConfig,
    InvalidCursor,
    InvalidInput,
    RunNotFound,
    RunPurged,
    StoreError,
    StreamctlError,
    ThreadBusy,
    ThreadNotFound,
    TooManyRuns,
    Unavailable,
)
from .models import Error

logger = logging.getLogger("streamctl.api")

STATUS: dict[type[StreamctlError], int] = {
    InvalidCursor: 400,
    CursorOutOfRange: 400,
    AuthError: 401,
    RunNotFound: 404,
    ThreadNotFound: 404,
    ThreadBusy: 409,
    RunPurged: 410,
    InvalidInput: 422,
    InvalidAgentConfig: 422,
    TooManyRuns: 429,  # and TooManyStreams
    Unavailable: 503,
    StoreError: 503,
}


def status_of(exc: StreamctlError) -> int:
    """The HTTP status of a domain error; 500 for one no route should let out."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(exc: StreamctlError) -> JSONResponse:
    status = status_of(exc)
    headers = None
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": _challenge(exc)}
    elif isinstance(exc, TooManyRuns):
        headers = {"Retry-After": str(exc.retry_after)}
    elif status == 503:
        headers = {"Retry-After": "1"}
    return JSONResponse(error_body(exc.code, exc.message), status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, in the one JSON shape (``Error``)."""

    @app.exception_handler(StreamctlError)
    async def domain_error(request: Request, exc: StreamctlError) -> JSONResponse:
        response = error_response(exc)
        if response.status_code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return response

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        message = "the request body is nested too deeply"
        return JSONResponse(error_body("invalid_json", message), 400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                error_body("invalid_json", "the request body is not valid JSON", details=details),
                400,
            )
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            error_body("invalid_request", f"{where}: {first['msg']}", details=details), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)


_DESCRIPTIONS = {
    "malformed_token": "the token is malformed",
    "expired_token": "the token has expired",
    "invalid_token": "the token is not valid",
    "insufficient_scope": "a stream token opens only its run's stream and snapshot",
}


def _challenge(exc: AuthError) -> str:
    """RFC 6750 challenge; a fixed description per code (never text from the token itself)."""
    if exc.code == "missing_token":
        return 'Bearer realm="streamctl"'
    error = "insufficient_scope" if exc.code == "insufficient_scope" else "invalid_token"
    description = _DESCRIPTIONS.get(exc.code, "the token is not valid")
    return f'Bearer realm="streamctl", error="{error}", error_description="{description}"'


# -- OpenAPI ---------------------------------------------------------------------------------------

_WHEN = {
    400: "`invalid_json`, `invalid_cursor` or `cursor_out_of_range`",
    401: "authentication failed (`WWW-Authenticate` says why)",
    404: "no such run, thread or path, or not yours",
    409: "`thread_busy`: the thread has an active run",
    410: "`run_purged`: retention deleted the run's events",
    413: "`body_too_large`",
    422: "`invalid_request` (with `details`) or `invalid_input`",
    429: "`too_many_runs` or `too_many_streams` (`Retry-After` set)",
    503: "`unavailable` (starting or draining) or `store_error` (`Retry-After` set)",
}


def error_responses(*statuses: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status answered with an ``Error`` body.

    On a streaming route FastAPI would document a ``model`` under the route's own media type
    (``text/event-stream``); errors are JSON, so there the schema is referenced explicitly.
    """
    if not stream:
        return {s: {"model": Error, "description": _WHEN[s]} for s in statuses}
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {s: {"description": _WHEN[s], "content": content} for s in statuses}
