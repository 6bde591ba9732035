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
from .services import PRINCIPAL_KEY, Services, get_services


async def principal_of(request: Request, services: Services) -> Principal:
    """The principal of this request's credential, stream tokens included (401 if it is bad)."""
    if services.host_auth:  # the host's authenticate ran first (a dependency of the router)
        found: Principal | None = request.scope.get(PRINCIPAL_KEY)
        if found is None:
            raise AuthError("missing_token", "the host's authenticate named no principal")
        return found
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
    try:
        return auth.authenticate(token)
    except AuthError as exc:
        return await _outlived(request, services, token, exc)


async def _outlived(
    request: Request, services: Services, token: str | None, exc: AuthError
) -> Principal:
    """A stream token lives as long as its run: past its ``exp`` it still reopens the stream of
    its run while that run is queued or running. A native ``EventSource`` reconnects with the URL
    it was given, so without this a long run's stream would end in a 401 at its next drop, with
    no way for the page to renew the token. Once the run has ended, the expired token gets 401;
    the run's final state is then one ``GET /v1/runs/{id}`` away with the principal's own
    credential."""
    route = getattr(request.scope.get("route"), "path", "")
    sup = services.supervisor
    if (
        exc.code != "expired_token"
        or token is None
        or sup is None
        or request.method != "GET"
        or route != "/v1/runs/{run_id}/stream"
    ):
        raise exc
    principal = services.auth.expired_stream_principal(token)
    assert principal.stream_run is not None
    try:
        run = await sup.reads.get_run(principal.stream_run, principal.scope)
    except RunNotFound:
        raise exc from None
    if run["status"] not in ("queued", "running"):
        raise exc
    return principal


def _insufficient_scope() -> AuthError:
    return AuthError(
        "insufficient_scope", "a stream token only opens its own run's stream and snapshot"
    )


async def authenticate(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    """The principal making this request (401 if its credential is bad); no stream tokens."""
    principal = await principal_of(request, services)
    if principal.stream_run is not None:
        raise _insufficient_scope()
    return principal


async def authenticate_reader(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    """As ``authenticate``, for a GET of one run (path parameter ``run_id``): a stream token for
    that run is accepted too. Another run's id answers 404, as a run that does not exist."""
    principal = await principal_of(request, services)
    if principal.stream_run is not None:
        if request.method != "GET":
            raise _insufficient_scope()
        run_id = str(request.path_params.get("run_id", ""))
        if run_id != principal.stream_run:
            raise RunNotFound(run_id)
    return principal


Me = Annotated[Principal, Depends(authenticate)]
Reader = Annotated[Principal, Depends(authenticate_reader)]
