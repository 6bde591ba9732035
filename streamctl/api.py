"""The HTTP API (docs/api.md). The only module that knows about HTTP status codes.

``create_app`` builds a FastAPI application whose lifespan opens the store and the supervisor;
routes translate requests into supervisor calls and domain errors into JSON error bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from . import __version__
from .agents import Agent, load_agent
from .auth import Authenticator, Principal
from .body_limit import BodyLimit
from .edge import authenticate, error_body, install_error_handlers
from .events import event_json_schema
from .inputs import GraphStreamRequest, RunCreate, StopTarget
from .metrics import CONTENT_TYPE, registry_for, render
from .runs import Run
from .settings import Settings
from .shaping import Granularity
from .sse import EventStream, SendWatch, parse_cursor, parse_thread_cursor
from .store import open_store
from .supervisor import Supervisor

STATIC = Path(__file__).with_name("static")


def _supervisor(request: Request) -> Supervisor:
    sup: Supervisor = request.app.state.supervisor
    return sup


Me = Annotated[Principal, Depends(authenticate)]
Sup = Annotated[Supervisor, Depends(_supervisor)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


def create_app(settings: Settings | None = None, *, agent: Agent | None = None) -> FastAPI:
    """The streamctl ASGI application. ``agent`` overrides ``settings.agent`` (tests use it)."""
    settings = settings or Settings.from_env()
    the_agent = agent if agent is not None else load_agent(settings.agent)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_store(settings) as store,
            Supervisor(store, the_agent, settings) as sup,
            anyio.create_task_group() as tg,
        ):
            app.state.supervisor = sup
            app.state.metrics = registry_for(sup)
            tg.start_soon(watch.run, name="streamctl send watch")
            yield
            tg.cancel_scope.cancel()

    app = FastAPI(
        title="streamctl",
        version=__version__,
        summary="Stream AI-agent runs over SSE: stoppable, resumable, durable.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.auth = auth = Authenticator(settings)
    watch = SendWatch(settings.send_timeout)
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

    def with_token(run: Run, me: Principal) -> dict[str, Any]:
        """The run's snapshot, plus a read-only stream token for it when auth is on."""
        return {**run.snapshot(), "stream_token": auth.issue_stream_token(run.run_id, me)}

    async def start_streaming(sup: Supervisor, body: RunCreate, me: Principal) -> Response:
        # The stream's slot is claimed first: a stream refused (429) must not leave a run going.
        sup.streams.open(me.name)
        try:
            run = await sup.control.start(body, me.name)
            stream = await sup.reads.subscribe(
                run.run_id, run.owner, 0, granularity=body.granularity
            )
        except BaseException:
            sup.streams.close(me.name)
            raise
        assert stream is not None  # a started run has committed its first event
        cancel = body.on_disconnect == "cancel"
        headers = {"X-Run-Id": run.run_id, "X-Thread-Id": run.thread_id}
        if (token := auth.issue_stream_token(run.run_id, me)) is not None:
            headers["X-Stream-Token"] = token
        return event_stream(
            sup,
            me,
            stream,
            headers=headers,
            on_disconnect=(lambda: sup.control.request_stop(run.run_id)) if cancel else None,
            claimed=True,
        )

    def event_stream(
        sup: Supervisor,
        me: Principal,
        stream: AsyncIterator[bytes] | None,
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        claimed: bool = False,
    ) -> Response:
        if stream is None:
            return Response(status_code=204)
        if not claimed:
            sup.streams.open(me.name)  # 429 past max_streams_per_owner; the stream never starts

        def slow(scope: Scope) -> None:
            sup.counters.slow_closed += 1
            # Under `streamctl serve`, reset the connection rather than wait to flush to a
            # client that does not read (plain uvicorn has no such hook: it closes normally).
            abort = getattr(app.state, "abort_connection", None)
            if abort is not None:
                abort(scope.get("client"))

        return EventStream(
            stream,
            retry_ms=settings.retry_ms,
            send_timeout=settings.send_timeout,
            headers=headers,
            on_disconnect=on_disconnect,
            on_slow=slow,
            on_close=lambda: sup.streams.close(me.name),
            watch=watch,
        )

    def stopped(state: tuple[dict[str, Any], bool]) -> JSONResponse:
        snapshot, finished = state
        return JSONResponse({**snapshot, "stopping": not finished}, 200 if finished else 202)

    # -- runs ------------------------------------------------------------------------------------

    @app.post("/v1/runs", status_code=201, tags=["runs"])
    async def create_run(body: RunCreate, sup: Sup, me: Me) -> dict[str, Any]:
        """Start a run in the background."""
        run = await sup.control.start(body, me.name)
        return with_token(run, me)

    @app.post("/v1/runs/stream", tags=["runs"], response_class=EventStream)
    async def create_run_stream(body: RunCreate, sup: Sup, me: Me) -> Response:
        """Start a run and stream its events (SSE)."""
        return await start_streaming(sup, body, me)

    @app.post("/v1/graph/stream", tags=["runs"], response_class=EventStream)
    async def graph_stream(body: GraphStreamRequest, sup: Sup, me: Me) -> Response:
        """Start a run from an AgentFlow-shaped body and stream it (SSE)."""
        return await start_streaming(sup, body.to_run_create(), me)

    @app.get("/v1/runs", tags=["runs"])
    async def list_runs(
        sup: Sup,
        me: Me,
        thread_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Runs, newest first, optionally of one thread."""
        return {"runs": await sup.reads.list_runs(me.scope, thread_id, limit)}

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    async def get_run(run_id: str, sup: Sup, me: Me) -> dict[str, Any]:
        """Snapshot of a run as of its ``last_seq``."""
        run = await sup.reads.get_run(run_id, me.scope)
        if me.stream_run is None and run["status"] in ("queued", "running"):
            run["stream_token"] = auth.issue_stream_token(run_id, me)
        return run

    @app.get("/v1/runs/{run_id}/stream", tags=["runs"], response_class=EventStream)
    async def run_stream(
        run_id: str,
        sup: Sup,
        me: Me,
        last_event_id: LastEventId = None,
        after: str | None = None,
        granularity: Granularity = "low",
    ) -> Response:
        """Replay after the cursor (``Last-Event-ID`` wins over ``?after=``), then the live tail."""
        cursor = parse_cursor(last_event_id, after)
        stream = await sup.reads.subscribe(run_id, me.scope, cursor, granularity=granularity)
        return event_stream(sup, me, stream)

    @app.get("/v1/runs/{run_id}/events", tags=["runs"])
    async def run_events(
        run_id: str,
        sup: Sup,
        me: Me,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Committed events after ``after``, as a JSON page (for polling clients)."""
        return await sup.reads.events_page(run_id, me.scope, parse_cursor(None, after), limit)

    @app.post("/v1/runs/{run_id}/stop", tags=["runs"])
    async def stop_run(run_id: str, sup: Sup, me: Me, wait: bool = True) -> JSONResponse:
        """Stop a run. 200 with the final state once its task has exited; 202 if still stopping."""
        return stopped(await sup.control.stop(run_id, me.scope, wait=wait))

    @app.post("/stop", tags=["runs"])
    async def stop_any(body: StopTarget, sup: Sup, me: Me) -> JSONResponse:
        """Stop a run by ``run_id``, or a thread's active run by ``thread_id``."""
        if body.run_id is not None:
            return stopped(await sup.control.stop(body.run_id, me.scope))
        assert body.thread_id is not None
        return stopped(await sup.control.stop_thread(body.thread_id, me.scope))

    # -- threads ---------------------------------------------------------------------------------

    @app.get("/v1/threads/{thread_id}", tags=["threads"])
    async def get_thread(thread_id: str, sup: Sup, me: Me) -> dict[str, Any]:
        """The thread's messages so far, its active run and its last run."""
        return await sup.reads.get_thread(thread_id, me.scope)

    @app.get("/v1/threads/{thread_id}/stream", tags=["threads"], response_class=EventStream)
    async def thread_stream(
        thread_id: str,
        sup: Sup,
        me: Me,
        last_event_id: LastEventId = None,
        granularity: Granularity = "low",
    ) -> Response:
        """Join the thread's active run. Event ids are ``run_id:seq``."""
        cursor = parse_thread_cursor(last_event_id)
        stream = await sup.reads.subscribe_thread(thread_id, me.scope, cursor, granularity)
        return event_stream(sup, me, stream)

    @app.post("/v1/threads/{thread_id}/stop", tags=["threads"])
    async def stop_thread(thread_id: str, sup: Sup, me: Me) -> JSONResponse:
        """Stop the thread's active run (or return its last run's final state)."""
        return stopped(await sup.control.stop_thread(thread_id, me.scope))

    # -- the web page ----------------------------------------------------------------------------

    @app.get("/static/streamctl.d.ts", include_in_schema=False)
    async def typings() -> FileResponse:
        # Guessed from ".ts", the type would be a video (MPEG transport stream).
        return FileResponse(STATIC / "streamctl.d.ts", media_type="application/typescript")

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
