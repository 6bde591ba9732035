"""Who is asking: the ``authenticate`` dependency every route takes.

The bearer token comes from the ``Authorization`` header, else from the JSON body of a POST (for
clients that cannot set headers), else, on a GET, from ``?token=``, where only a stream token is
accepted (URLs end up in logs). ``auth.Authenticator`` turns it into a ``Principal``.

A stream token opens one run's stream and snapshot, read-only: routes that accept one take
``Reader`` (``authenticate_reader``); every other route takes ``Me`` and refuses it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..auth import STREAM_TOKEN_PREFIX, Principal
from ..errors import AuthError, RunNotFound
from .services import Services, get_services


async def _principal(request: Request, services: Services) -> Principal:
    auth = services.auth
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
        token = request.query_params.get("token")
        if token is not None and not token.startswith(STREAM_TOKEN_PREFIX):
            raise AuthError("malformed_token", "only a stream token may be given as ?token=")
    return auth.authenticate(token)


def _insufficient_scope() -> AuthError:
    return AuthError(
        "insufficient_scope", "a stream token only opens its own run's stream and snapshot"
    )


async def authenticate(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    """The principal making this request (401 if its credential is bad); no stream tokens."""
    principal = await _principal(request, services)
    if principal.stream_run is not None:
        raise _insufficient_scope()
    return principal


async def authenticate_reader(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    """As ``authenticate``, for a GET of one run (path parameter ``run_id``): a stream token for
    that run is accepted too. Another run's id answers 404, as a run that does not exist."""
    principal = await _principal(request, services)
    if principal.stream_run is not None:
        if request.method != "GET":
            raise _insufficient_scope()
        run_id = str(request.path_params.get("run_id", ""))
        if run_id != principal.stream_run:
            raise RunNotFound(run_id)
    return principal


Me = Annotated[Principal, Depends(authenticate)]
Reader = Annotated[Principal, Depends(authenticate_reader)]
