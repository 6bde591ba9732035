"""Domain errors → JSON error answers: the one place that picks an HTTP status for an error.

The status is chosen by the error's class (``STATUS``, walked along the class's MRO, so a subclass
answers like its parent unless listed); the body is ``{"error": {"code", "message"}}`` with the
error's own ``code``. ``error_responses`` documents the same answers in ``/openapi.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AuthError,
    CursorOutOfRange,
    IdempotencyKeyInFlight,
    InvalidAgentConfig,
    InvalidCursor,
    InvalidIdempotencyKey,
    InvalidInput,
    RunIdTaken,
    RunLost,
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
    InvalidIdempotencyKey: 400,
    IdempotencyKeyInFlight: 409,
    AuthError: 401,
    RunNotFound: 404,
    ThreadNotFound: 404,
    ThreadBusy: 409,
    RunIdTaken: 409,
    RunPurged: 410,
    RunLost: 410,
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


async def domain_error(request: Request, exc: StreamctlError) -> JSONResponse:
    response = error_response(exc)
    if response.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc)
    return response


async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
    message = "the request body is nested too deeply"
    return JSONResponse(error_body("invalid_json", message), 400)


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


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal server error"), 500)


async def error_answer(request: Request, exc: Exception) -> JSONResponse:
    """The JSON answer to any exception a route lets out."""
    if isinstance(exc, StreamctlError):
        return await domain_error(request, exc)
    if isinstance(exc, RequestValidationError):
        return await invalid_request(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return await http_error(request, exc)
    if isinstance(exc, RecursionError):
        return await too_deep(request, exc)
    return await internal_error(request, exc)


class StreamctlRoute(APIRoute):
    """A route that answers its own errors in the one JSON shape.

    Exception handlers belong to an application; a host that only does
    ``app.include_router(sc.router)`` has none of streamctl's, and would answer a ``RunNotFound``
    with a bare 500. Every streamctl route is of this class, and ``include_router`` keeps a
    route's class, so the errors of its dependencies (authentication included) and of its
    endpoint are mapped wherever it is mounted.
    """

    strict_query = True
    """Refuse query parameters the route does not take (422), rather than ignore them: a
    misspelt ``?status=`` must not silently list everything."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = _query_names(self) if self.strict_query else None

        async def answer(request: Request) -> Response:
            try:
                if known is not None:
                    unknown = sorted(set(request.query_params) - known)
                    if unknown:
                        return _unknown_query(unknown, known)
                return await handler(request)
            except Exception as exc:
                return await error_answer(request, exc)

        return answer


_ALWAYS_KNOWN = frozenset({"token"})
"""Read by the authentication itself (a stream token on a GET), not declared by routes."""


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters of the route, its dependencies' included (a host's ``authenticate``
    may take its own). Included into another router, the route is built with that inclusion's
    dependencies (FastAPI >= 0.16x passes them in a context variable)."""
    dependant = route.dependant
    context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    if context is not None and getattr(context, "original_route", None) is route:
        dependant = context.dependant
    names: set[str] = set()
    pending: list[Dependant] = [dependant]
    while pending:
        current = pending.pop()
        names.update(field.alias for field in current.query_params)
        pending.extend(current.dependencies)
    return _ALWAYS_KNOWN | names


def _unknown_query(unknown: list[str], known: frozenset[str]) -> JSONResponse:
    taken = ", ".join(sorted(known - _ALWAYS_KNOWN)) or "none"
    message = f"unknown query parameter {unknown[0]!r}; this route takes: {taken}"
    details = [
        {"loc": ["query", name], "msg": "unknown query parameter", "type": "extra_forbidden"}
        for name in unknown
    ]
    return JSONResponse(error_body("invalid_request", message, details=details), 422)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers (outside routes too: 404, 405), in the one JSON shape."""
    app.add_exception_handler(StreamctlError, domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RecursionError, too_deep)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


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
    400: "`invalid_json`, `invalid_cursor`, `cursor_out_of_range` or `invalid_idempotency_key`",
    401: "authentication failed (`WWW-Authenticate` says why)",
    404: "no such run, thread or path, or not yours",
    409: "`thread_busy`: the thread has an active run; `run_id_taken`: a chosen run id in use;"
    " `idempotency_key_in_flight`: the key's run is still starting elsewhere",
    410: "`run_purged`: retention deleted the run's events",
    413: "`body_too_large`",
    422: "`invalid_request` (with `details`), `invalid_input` or `idempotency_key_reused`",
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
