"""The edge every request passes: authentication (a bearer token from the header, the JSON body
of a POST, or ``?token=`` on a GET stream), the stream-token scope, and the translation of domain
errors into JSON error responses with the right status. With ``api.py`` and ``sse.py``, the only
code that knows HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .agents.demo import InvalidDemoOptions
from .auth import STREAM_TOKEN_PREFIX, Authenticator, AuthError, Principal
from .errors import (
    CursorOutOfRange,
    InvalidCursor,
    InvalidInput,
    RunIdTaken,
    RunNotFound,
    RunPurged,
    StoreError,
    StreamctlError,
    ThreadBusy,
    ThreadNotFound,
    TooManyRuns,
    Unavailable,
)

logger = logging.getLogger("streamctl.api")

_STATUS: dict[type[StreamctlError], int] = {
    AuthError: 401,
    RunNotFound: 404,
    ThreadNotFound: 404,
    ThreadBusy: 409,
    RunIdTaken: 409,
    InvalidCursor: 400,
    CursorOutOfRange: 400,
    InvalidInput: 422,
    RunPurged: 410,
    TooManyRuns: 429,
    InvalidDemoOptions: 422,
    Unavailable: 503,
    StoreError: 503,
}

_STREAM_TOKEN_ROUTES = frozenset({"/v1/runs/{run_id}", "/v1/runs/{run_id}/stream"})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the principal making this request (401 if its credential is bad)."""
    auth: Authenticator = request.app.state.auth
    token: str | None = None
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("malformed_token", "the Authorization header must be 'Bearer <token>'")
        token = value.strip()
    elif request.method == "POST" and auth.enabled:
        try:
            body = await request.json()  # parsed once: FastAPI reuses it for the route
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("token"), str):
            token = body["token"]
    if token is None and request.method == "GET":
        # Only stream tokens travel in URLs (for a plain EventSource): URLs end up in logs.
        token = request.query_params.get("token")
        if token is not None and not token.startswith(STREAM_TOKEN_PREFIX):
            raise AuthError("malformed_token", "only a stream token may be given as ?token=")
    try:
        principal = auth.authenticate(token)
    except AuthError as exc:
        principal = await _outlived(request, auth, token, exc)
    if principal.stream_run is not None:
        route = getattr(request.scope.get("route"), "path", "")
        if request.method != "GET" or route not in _STREAM_TOKEN_ROUTES:
            raise AuthError(
                "insufficient_scope", "a stream token only opens its own run's stream and snapshot"
            )
        run_id = str(request.path_params.get("run_id", ""))
        if run_id != principal.stream_run:
            raise RunNotFound(run_id)
    return principal


async def _outlived(
    request: Request, auth: Authenticator, token: str | None, exc: AuthError
) -> Principal:
    """A stream token lives as long as its run: past its ``exp`` it still reopens the stream of
    its run while that run is queued or running. A native ``EventSource`` reconnects with the URL
    it was given, so without this a long run's stream would end in a 401 at its next drop, with
    no way for the page to renew the token. Once the run has ended, the expired token gets 401;
    the run's final state is then one ``GET /v1/runs/{id}`` away with the principal's own
    credential."""
    route = getattr(request.scope.get("route"), "path", "")
    if (
        exc.code != "expired_token"
        or token is None
        or request.method != "GET"
        or route != "/v1/runs/{run_id}/stream"
    ):
        raise exc
    principal = auth.expired_stream_principal(token)
    sup = getattr(request.app.state, "supervisor", None)  # TEMP(merge): sup.reads.get_run
    assert principal.stream_run is not None
    try:
        run = await sup.get_run(principal.stream_run, principal.scope) if sup else None
    except RunNotFound:
        run = None
    if run is None or run["status"] not in ("queued", "running"):
        raise exc
    return principal


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StreamctlError)
    async def domain_error(request: Request, exc: StreamctlError) -> JSONResponse:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        headers = None
        if isinstance(exc, AuthError):
            headers = {"WWW-Authenticate": _challenge(exc)}
        elif isinstance(exc, TooManyRuns):
            headers = {"Retry-After": str(exc.retry_after)}
        elif status == 503:
            headers = {"Retry-After": "1"}
        return JSONResponse(error_body(exc.code, exc.message), status, headers=headers)

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
