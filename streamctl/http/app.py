"""``create_app``: the streamctl ASGI application, assembled from a ``Streamctl``.

A ``Streamctl`` (``embedding.py``) holds the parts a host application includes: its lifespan
(store, then supervisor) and its router (``runs``, ``threads``, ``system``, ``page``, and the
protocols' ``ai_sdk``, ``ag_ui``, ``agentflow``). The
application adds what a whole application owns: the body limit, CORS when configured, and the
error handlers of what no route answers (404, 405), and in front of all that the raw ASGI path
of the stream GETs and of ``POST /v1/runs/stream`` (``stream_gate.py``, ``start_gate.py``).
``ROUTERS`` lists routers added beside
``sc.router``: they find the ``Services`` in ``app.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from .. import __version__
from ..agents import Agent
from ..settings import Settings
from .body_limit import BodyLimit
from .embedding import Streamctl
from .errors import install_error_handlers
from .services import STATE_KEY
from .stream_gate import GatedApp, StreamGate

ROUTERS: tuple[APIRouter, ...] = ()
"""Routers of the application beyond ``sc.router`` (other protocols)."""


def create_app(settings: Settings | None = None, *, agent: Agent | None = None) -> FastAPI:
    """The streamctl ASGI application. ``agent`` overrides ``settings.agent`` (tests use it)."""
    sc = Streamctl(agent=agent, settings=settings or Settings.from_env())
    settings = sc.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sc.lifespan(app):
            app.state.supervisor = sc.supervisor  # for tests and tools that look inside
            yield

    app = GatedApp(
        title="streamctl",
        version=__version__,
        summary="Stream AI-agent runs over SSE: stoppable, resumable, durable.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.embedding = sc  # `streamctl serve` drains through it
    setattr(app.state, STATE_KEY, sc.services)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    cors: dict[str, Any] = {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        "expose_headers": [
            *("X-Run-Id", "X-Thread-Id", "X-Stream-Token"),
            *("Retry-After", "Idempotent-Replayed"),
        ],
        "max_age": 600,
    }
    if origins:
        app.add_middleware(CORSMiddleware, **cors)

    def gate_for(chain: ASGIApp) -> StreamGate:
        # The stream GETs and POST /v1/runs/stream skip the chain: the gate adds the same CORS
        # headers itself.
        return StreamGate(
            chain, sc, cors=CORSMiddleware(chain, **cors) if origins else None, starts=True
        )

    app.gate_for = gate_for
    install_error_handlers(app)
    app.include_router(sc.router)
    for router in ROUTERS:
        app.include_router(router)
    return app
