"""Routes of the service itself: liveness, readiness, Prometheus metrics, the events' schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import Unavailable
from ..events import event_json_schema
from ..metrics import CONTENT_TYPE, render
from .errors import error_body, error_responses
from .models import Health, Ready
from .services import STATE_KEY, Services, Svc

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Any:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=error_responses(503))
async def readyz(request: Request) -> Any:
    """Readiness: the store is open and the server accepts runs."""
    services: Services | None = getattr(request.app.state, STATE_KEY, None)
    sup = services.supervisor if services is not None else None
    if sup is None or not sup.accepting:
        # Without Retry-After, unlike other 503s: a probe polls on its own schedule.
        return JSONResponse(error_body("unavailable", "not accepting runs"), 503)
    return {"status": "ready", "active_runs": sup.active_runs}


@router.get("/metrics", response_class=Response)
async def metrics(svc: Svc) -> Response:
    """Prometheus metrics (text format); see docs/metrics.md."""
    if svc.metrics is None:
        raise Unavailable("the server is starting: no metrics yet")
    return Response(render(svc.metrics), media_type=CONTENT_TYPE)


@router.get("/v1/schema/events")
async def events_schema() -> dict[str, Any]:
    """JSON Schema of every event on the wire (``type`` is the SSE ``event:`` name)."""
    return event_json_schema()
