"""Routes of the service itself: liveness, readiness, Prometheus metrics, the events' schema.

``/healthz`` is public. When auth is on (or ``metrics_token`` is set), ``/metrics`` needs the
``metrics_token`` as a bearer token or an admin's credential, and ``/readyz`` answers its status
code to anyone (probes send no credentials) but its detail (``active_runs``) only to them: how busy
the server is tells an outsider when to strike.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import AuthError, Unavailable
from ..events import event_json_schema
from ..metrics import CONTENT_TYPE, render
from .auth import principal_of
from .errors import StreamctlRoute, error_body, error_responses
from .models import Health, Ready
from .services import Services, Svc, find_services

router = APIRouter(tags=["service"], route_class=StreamctlRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> Any:
    """Liveness: the process answers."""
    return {"status": "ok"}


async def _check_operator(request: Request, services: Services) -> None:
    """Pass for the ``metrics_token`` or an admin; raise ``AuthError`` otherwise. Open to anyone
    while auth is off and no ``metrics_token`` is set."""
    expected = services.settings.metrics_token
    if not expected and not services.auth.enabled:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = value.strip().encode("utf-8", "surrogateescape")
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(given, expected.encode()):
        return
    if not services.auth.enabled:
        raise AuthError("invalid_token", "this needs the metrics token")
    principal = await principal_of(request, services)  # 401 for a bad credential
    if not principal.admin or principal.stream_run is not None:
        raise AuthError("insufficient_scope", "this needs the metrics token or an admin")


@router.get(
    "/readyz",
    response_model=Ready,
    response_model_exclude_unset=True,
    responses=error_responses(503),
)
async def readyz(request: Request) -> Any:
    """Readiness: the store is open and the server accepts runs. ``active_runs`` only for the
    metrics token or an admin when auth is on; the status code for everyone."""
    services = find_services(request)
    sup = services.supervisor if services is not None else None
    if services is None or sup is None or not sup.accepting:
        # Without Retry-After, unlike other 503s: a probe polls on its own schedule.
        return JSONResponse(error_body("unavailable", "not accepting runs"), 503)
    try:
        await _check_operator(request, services)
    except AuthError:
        return {"status": "ready"}
    return {"status": "ready", "active_runs": sup.active_runs}


@router.get("/metrics", response_class=Response, responses=error_responses(401))
async def metrics(request: Request, svc: Svc) -> Response:
    """Prometheus metrics (text format); see docs/metrics.md. Needs the ``metrics_token`` or an
    admin's credential when auth is on."""
    await _check_operator(request, svc)
    if svc.metrics is None:
        raise Unavailable("the server is starting: no metrics yet")
    return Response(render(svc.metrics), media_type=CONTENT_TYPE)


@router.get("/v1/schema/events")
async def events_schema() -> dict[str, Any]:
    """JSON Schema of every event on the wire (``type`` is the SSE ``event:`` name)."""
    return event_json_schema()
