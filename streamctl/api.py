"""The HTTP API (DESIGN.md §3). The only module that knows about HTTP status codes.

``create_app`` builds a FastAPI application whose lifespan opens the store and the supervisor;
routes translate requests into supervisor calls and domain errors into JSON error bodies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .agents import Agent, load_agent
from .agents.demo import InvalidDemoOptions
from .auth import principal
from .errors import (
    CursorOutOfRange,
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
from .events import event_json_schema
from .inputs import GraphStreamRequest, RunCreate, StopTarget
from .limits import BodyLimit
from .metrics import CONTENT_TYPE, registry_for, render
from .runs import Run
from .settings import Settings
from .shaping import Granularity
from .sse import EventStream, parse_cursor, parse_thread_cursor
from .store import Store
from .supervisor import Supervisor

logger = logging.getLogger("streamctl.api")

STATIC = Path(__file__).with_name("static")

_STATUS: dict[type[StreamctlError], int] = {
    RunNotFound: 404,
    ThreadNotFound: 404,
    ThreadBusy: 409,
    InvalidCursor: 400,
    CursorOutOfRange: 400,
    InvalidInput: 422,
    RunPurged: 410,
    TooManyRuns: 429,
    InvalidDemoOptions: 422,
    Unavailable: 503,
    StoreError: 503,
}


def _supervisor(request: Request) -> Supervisor:
    sup: Supervisor = request.app.state.supervisor
    return sup


Owner = Annotated[str, Depends(principal)]
Sup = Annotated[Supervisor, Depends(_supervisor)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def create_app(settings: Settings | None = None, *, agent: Agent | None = None) -> FastAPI:
    """The streamctl ASGI application. ``agent`` overrides ``settings.agent`` (tests use it)."""
    settings = settings or Settings.from_env()
    the_agent = agent if agent is not None else load_agent(settings.agent)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Store(settings.db) as store, Supervisor(store, the_agent, settings) as sup:
            app.state.supervisor = sup
            app.state.metrics = registry_for(sup)
            yield

    app = FastAPI(
        title="streamctl",
        version=__version__,
        summary="Stream AI-agent runs over SSE: stoppable, resumable, durable.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)

    async def stream_run(sup: Supervisor, run: Run, body: RunCreate) -> Response:
        stream = await sup.subscribe(run.run_id, run.owner, 0, granularity=body.granularity)
        if stream is None:  # cannot happen: a started run has committed its first event
            return Response(status_code=204)
        cancel = body.on_disconnect == "cancel"
        return event_stream(
            sup,
            stream,
            headers={"X-Run-Id": run.run_id, "X-Thread-Id": run.thread_id},
            on_disconnect=(lambda: sup.request_stop(run.run_id)) if cancel else None,
        )

    def event_stream(
        sup: Supervisor,
        stream: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> EventStream:
        def slow() -> None:
            sup.counters.slow_closed += 1

        return EventStream(
            stream,
            retry_ms=settings.retry_ms,
            send_timeout=settings.send_timeout,
            headers=headers,
            on_disconnect=on_disconnect,
            on_slow=slow,
        )

    def stream_or_204(sup: Supervisor, stream: AsyncIterator[bytes] | None) -> Response:
        if stream is None:
            return Response(status_code=204)
        return event_stream(sup, stream)

    def stopped(state: tuple[dict[str, Any], bool]) -> JSONResponse:
        snapshot, finished = state
        return JSONResponse({**snapshot, "stopping": not finished}, 200 if finished else 202)

    # -- runs ------------------------------------------------------------------------------------

    @app.post("/v1/runs", status_code=201, tags=["runs"])
    async def create_run(body: RunCreate, sup: Sup, owner: Owner) -> dict[str, Any]:
        """Start a run in the background."""
        run = await sup.start(body, owner)
        return run.snapshot()

    @app.post("/v1/runs/stream", tags=["runs"], response_class=EventStream)
    async def create_run_stream(body: RunCreate, sup: Sup, owner: Owner) -> Response:
        """Start a run and stream its events (SSE)."""
        run = await sup.start(body, owner)
        return await stream_run(sup, run, body)

    @app.post("/v1/graph/stream", tags=["runs"], response_class=EventStream)
    async def graph_stream(body: GraphStreamRequest, sup: Sup, owner: Owner) -> Response:
        """Start a run from an AgentFlow-shaped body and stream it (SSE)."""
        request = body.to_run_create()
        run = await sup.start(request, owner)
        return await stream_run(sup, run, request)

    @app.get("/v1/runs", tags=["runs"])
    async def list_runs(
        sup: Sup,
        owner: Owner,
        thread_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Runs, newest first, optionally of one thread."""
        return {"runs": await sup.list_runs(owner, thread_id, limit)}

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    async def get_run(run_id: str, sup: Sup, owner: Owner) -> dict[str, Any]:
        """Snapshot of a run as of its ``last_seq``."""
        return await sup.get_run(run_id, owner)

    @app.get("/v1/runs/{run_id}/stream", tags=["runs"], response_class=EventStream)
    async def run_stream(
        run_id: str,
        sup: Sup,
        owner: Owner,
        last_event_id: LastEventId = None,
        after: str | None = None,
        granularity: Granularity = "low",
    ) -> Response:
        """Replay after the cursor (``Last-Event-ID`` wins over ``?after=``), then the live tail."""
        cursor = parse_cursor(last_event_id, after)
        stream = await sup.subscribe(run_id, owner, cursor, granularity=granularity)
        return stream_or_204(sup, stream)

    @app.get("/v1/runs/{run_id}/events", tags=["runs"])
    async def run_events(
        run_id: str,
        sup: Sup,
        owner: Owner,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Committed events after ``after``, as a JSON page (for polling clients)."""
        return await sup.events_page(run_id, owner, parse_cursor(None, after), limit)

    @app.post("/v1/runs/{run_id}/stop", tags=["runs"])
    async def stop_run(run_id: str, sup: Sup, owner: Owner, wait: bool = True) -> JSONResponse:
        """Stop a run. 200 with the final state once its task has exited; 202 if still stopping."""
        return stopped(await sup.stop(run_id, owner, wait=wait))

    @app.post("/stop", tags=["runs"])
    async def stop_any(body: StopTarget, sup: Sup, owner: Owner) -> JSONResponse:
        """Stop a run by ``run_id``, or a thread's active run by ``thread_id``."""
        if body.run_id is not None:
            return stopped(await sup.stop(body.run_id, owner))
        assert body.thread_id is not None
        return stopped(await sup.stop_thread(body.thread_id, owner))

    # -- threads ---------------------------------------------------------------------------------

    @app.get("/v1/threads/{thread_id}", tags=["threads"])
    async def get_thread(thread_id: str, sup: Sup, owner: Owner) -> dict[str, Any]:
        """The thread's messages so far, its active run and its last run."""
        return await sup.get_thread(thread_id, owner)

    @app.get("/v1/threads/{thread_id}/stream", tags=["threads"], response_class=EventStream)
    async def thread_stream(
        thread_id: str,
        sup: Sup,
        owner: Owner,
        last_event_id: LastEventId = None,
        granularity: Granularity = "low",
    ) -> Response:
        """Join the thread's active run. Event ids are ``run_id:seq``."""
        cursor = parse_thread_cursor(last_event_id)
        stream = await sup.subscribe_thread(thread_id, owner, cursor, granularity)
        return stream_or_204(sup, stream)

    @app.post("/v1/threads/{thread_id}/stop", tags=["threads"])
    async def stop_thread(thread_id: str, sup: Sup, owner: Owner) -> JSONResponse:
        """Stop the thread's active run (or return its last run's final state)."""
        return stopped(await sup.stop_thread(thread_id, owner))

    # -- the web page ----------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", tags=["page"], response_class=FileResponse, include_in_schema=False)
    async def page() -> FileResponse:
        """The chat page: the demo agent, live tokens, a Stop button, resume after reload."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # -- service ---------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the store is open and the server accepts runs."""
        sup: Supervisor | None = getattr(request.app.state, "supervisor", None)
        if sup is None or not sup.accepting:
            return JSONResponse(error_body("unavailable", "not accepting runs"), 503)
        return JSONResponse({"status": "ready", "active_runs": sup.active_runs})

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text format); see docs/metrics.md."""
        return Response(render(request.app.state.metrics), media_type=CONTENT_TYPE)

    @app.get("/v1/schema/events", tags=["service"])
    async def events_schema() -> dict[str, Any]:
        """JSON Schema of every event on the wire (``type`` is the SSE ``event:`` name)."""
        return event_json_schema()

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StreamctlError)
    async def domain_error(request: Request, exc: StreamctlError) -> JSONResponse:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        headers = None
        if isinstance(exc, TooManyRuns):
            headers = {"Retry-After": str(exc.retry_after)}
        elif status == 503:
            headers = {"Retry-After": "1"}
        return JSONResponse(error_body(exc.code, exc.message), status, headers=headers)

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
