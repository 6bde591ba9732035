"""``create_app``: the streamctl ASGI application, assembled from the routers.

The lifespan opens the store, then the supervisor, and hands them to the routes through the
application's ``Services`` (``services.py``); the routers (``runs``, ``threads``, ``system``,
``page``) hold no state of their own. Middleware: the body limit, then CORS when configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..agents import Agent, as_agent, load_agent
from ..auth import Authenticator
from ..metrics import registry_for
from ..settings import Settings
from ..sse import SendWatch
from ..store import open_store
from ..supervisor import Supervisor
from . import page, runs, system, threads
from .body_limit import BodyLimit
from .errors import install_error_handlers
from .services import STATE_KEY, Services

ROUTERS = (runs.router, threads.router, page.router, system.router)


def create_app(settings: Settings | None = None, *, agent: Agent | None = None) -> FastAPI:
    """The streamctl ASGI application. ``agent`` overrides ``settings.agent`` (tests use it)."""
    settings = settings or Settings.from_env()
    the_agent = (
        as_agent(agent) if agent is not None else load_agent(settings.agent, model=settings.model)
    )
    services = Services(
        settings=settings, auth=Authenticator(settings), watch=SendWatch(settings.send_timeout)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_store(settings) as store,
            Supervisor(store, the_agent, settings) as sup,
            anyio.create_task_group() as tg,
        ):
            services.supervisor = sup
            services.metrics = registry_for(sup)
            app.state.supervisor = sup  # `streamctl serve` drains it on SIGTERM
            tg.start_soon(services.watch.run, name="streamctl send watch")
            yield
            tg.cancel_scope.cancel()

    app = FastAPI(
        title="streamctl",
        version=__version__,
        summary="Stream AI-agent runs over SSE: stoppable, resumable, durable.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    setattr(app.state, STATE_KEY, services)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Run-Id", "X-Thread-Id", "X-Stream-Token", "Retry-After"],
            max_age=600,
        )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
