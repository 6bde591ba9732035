"""``Streamctl``: streamctl inside any FastAPI application (docs/embedding.md).

    sc = streamctl.Streamctl(agent=my_agent, db="app.db", authenticate=current_user)
    app = FastAPI(lifespan=sc.lifespan)  # or in the host's lifespan: async with sc.lifespan(app)
    app.include_router(sc.router, prefix="/agent")

- ``sc.lifespan`` opens the store (taking the database's lock), the supervisor and the send watch,
  and while it runs, chains streamctl's drain in front of the server's SIGTERM handler
  (``exit_signals.py``), so that under plain uvicorn every open stream gets its ``done`` and the
  server finds no connection left to wait for.
- ``sc.router`` carries every route of the HTTP contract, the page and its static files. Its own
  dependency hands the routes this instance's ``Services`` through the request's scope (so it
  needs nothing from the host's ``app.state``), and runs the host's ``authenticate`` on the API
  routes; its routes (``StreamctlRoute``) answer their own errors.
- ``stream_gate(app, prefix=...)``: optional, the host's application with the stream GETs served by
  a raw ASGI path in front of its middleware (``stream_gate.py``); ``create_app`` always has it.
- ``start``, ``stream_response``, ``stop`` and ``snapshot``: the same operations for the host's
  own routes, trusted: ``owner`` scopes a call to one principal, ``None`` reaches every run.

``create_app`` is this, plus the middleware and error handlers of a whole application.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import exit_signals
from ..agents import Agent, as_agent, load_agent
from ..auth import ANONYMOUS, Authenticator, Principal
from ..errors import StreamctlError, Unavailable
from ..inputs import RunCreate
from ..metrics import registry_for
from ..settings import Settings
from ..shaping import Granularity
from ..sse import EventStream, SendWatch, parse_cursor
from ..store import open_store
from ..supervisor import Supervisor
from . import page, runs, system, threads
from .errors import StreamctlRoute, error_response
from .protocols import ag_ui, agentflow, ai_sdk
from .services import PRINCIPAL_KEY, SCOPE_KEY, Services
from .stream_gate import StreamGate

logger = logging.getLogger("streamctl.server")

_DRAIN_REPORT_EVERY = 1.0
"""Seconds between two drain progress lines."""
GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector's thresholds while a lifespan runs (``tuned_gc``)."""
_gc_tuned = 0

PUBLIC_ROUTERS = [page.router, system.router]
"""Routes without a principal: the page, its files, health, readiness, metrics, schema."""
API_ROUTERS = [runs.router, threads.router, ai_sdk.router, ag_ui.router, agentflow.router]
"""Routes of the HTTP contract that act for a principal, the frontends' protocols included
(views over the same runs; agentflow owns ``/v1/graph/*``)."""

RunInput = str | list[dict[str, Any]] | dict[str, Any] | RunCreate


class Streamctl:
    """streamctl as parts of a host application: ``lifespan``, ``router``, and programmatic
    control. One instance serves one database."""

    def __init__(
        self,
        agent: Any = None,
        db: str | Path | None = None,
        authenticate: Callable[..., Any] | None = None,
        settings: Settings | None = None,
    ) -> None:
        """``agent``: an agent callable, a generator function, a compiled LangGraph graph, or a
        spec (``demo``, ``openai``, ``MODULE:ATTR``); default ``settings.agent``. ``db``: the
        SQLite file (overrides ``settings.db``). ``authenticate``: a FastAPI dependency returning
        a ``Principal`` or a subject string (raise ``HTTPException(401)`` to refuse); without
        it, ``settings.auth`` applies. ``settings``: default ``Settings.from_env()``."""
        settings = settings or Settings.from_env()
        updates: dict[str, Any] = {}
        if db is not None:
            updates["db"] = Path(db)
        if isinstance(agent, str):
            updates["agent"] = agent
        if updates:
            settings = Settings.model_validate({**settings.model_dump(), **updates})
        self.settings = settings
        self.agent: Agent = (
            as_agent(agent)
            if agent is not None and not isinstance(agent, str)
            else load_agent(settings.agent, model=settings.model)
        )
        self.authenticate = authenticate
        # With the host's authenticate, the settings' own credentials are not read (and no
        # stream tokens are issued: the host's credential must reach the stream URLs too).
        auth_settings = settings if authenticate is None else _without_auth(settings)
        self.services = Services(
            settings=settings,
            auth=Authenticator(auth_settings),
            watch=SendWatch(settings.send_timeout),
            host_auth=authenticate is not None,
            agent_name=page.agent_name(agent, settings),
        )
        self.drain_on_signal = True
        """Drain on SIGTERM/SIGINT from inside the lifespan (``streamctl serve`` drains itself)."""
        self.tune_gc = True
        """Tune the process's cyclic garbage collector while the lifespan runs (``tuned_gc``);
        a host that tunes its own sets this to False before the lifespan starts."""
        self.router = self._build_router()
        self._running = False
        self._drained: anyio.Event | None = None

    # -- the parts of the host application ---------------------------------------------------------

    def _build_router(self) -> APIRouter:
        services = self.services

        async def bind(request: Request) -> None:
            request.scope[SCOPE_KEY] = services

        router = APIRouter(route_class=StreamctlRoute)
        public = APIRouter(route_class=StreamctlRoute, dependencies=[Depends(bind)])
        api_dependencies = [Depends(bind)]
        if self.authenticate is not None:
            api_dependencies.append(Depends(_principal_from(self.authenticate, services)))
        api = APIRouter(route_class=StreamctlRoute, dependencies=api_dependencies)
        for inner, routers in ((api, API_ROUTERS), (public, PUBLIC_ROUTERS)):
            for each in routers:
                inner.include_router(each)
            router.include_router(inner)
        return router

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Open the store and the supervisor for the life of the host application."""
        if self._running:
            raise RuntimeError("this Streamctl's lifespan is already running: enter it once")
        self._running = True
        self._drained = None
        settings = self.settings
        per_principal = self._per_principal()
        try:
            with tuned_gc() if self.tune_gc else nullcontext():
                async with (
                    open_store(settings) as store,
                    Supervisor(store, self.agent, settings, per_principal=per_principal) as sup,
                    anyio.create_task_group() as tg,
                ):
                    self.services.supervisor = sup
                    self.services.metrics = registry_for(sup)
                    tg.start_soon(self.services.watch.run, name="streamctl send watch")
                    asked = anyio.Event()
                    tg.start_soon(self._drain_when, asked, name="streamctl drain on exit signal")
                    with exit_signals.chained(lambda: self._exit_signal(asked)):
                        yield
                    tg.cancel_scope.cancel()
        finally:
            self.services.supervisor = None
            self.services.metrics = None
            self._running = False

    def _per_principal(self) -> bool:
        # With auth=none everyone is `anonymous`: a per-principal cap would cap the whole server.
        return self.authenticate is not None or self.settings.auth != "none"

    def _exit_signal(self, asked: anyio.Event) -> None:
        sup = self.services.supervisor
        if not self.drain_on_signal or sup is None:
            return
        sup.control.stop_accepting()  # readiness fails and new runs get 503 at once
        asked.set()

    async def _drain_when(self, asked: anyio.Event) -> None:
        await asked.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop accepting runs, give the active ones ``drain_grace`` seconds, interrupt the rest:
        every run ends with its ``done``, so every open stream receives it and closes. Once per
        lifespan; a second caller waits for the first drain."""
        sup = self._supervisor()
        if self._drained is not None:
            await self._drained.wait()
            return
        self._drained = anyio.Event()
        try:
            grace = self.settings.drain_grace
            logger.info("draining: %d active runs get %g s to finish", sup.active_runs, grace)
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._report_drain, sup)
                await sup.control.drain(grace)
                tg.cancel_scope.cancel()
            logger.info("drained in %.1f s", time.monotonic() - started)
        finally:
            self._drained.set()

    async def _report_drain(self, sup: Supervisor) -> None:
        while True:
            await anyio.sleep(_DRAIN_REPORT_EVERY)
            logger.info("draining: %d runs still active", sup.active_runs)

    def stream_gate(
        self, app: ASGIApp, *, prefix: str = "", cors: CORSMiddleware | None = None
    ) -> StreamGate:
        """``app`` (the host's whole application) behind a raw ASGI path that serves the run and
        thread stream GETs of ``self.router`` included at ``prefix`` itself, with every check of
        those routes, skipping the host's middleware chain for their thousands of writes (the
        host's middleware never sees those requests: pass its ``CORSMiddleware`` as ``cors``
        for their CORS headers). Everything else, every error, and every request when the host
        gave ``authenticate`` (a FastAPI dependency) goes to ``app``. Serve what it returns:
        ``uvicorn.run(sc.stream_gate(app, prefix="/agent"))``."""
        return StreamGate(app, self, prefix=prefix, cors=cors)

    # -- programmatic control ----------------------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor | None:
        """The supervisor while the lifespan runs."""
        return self.services.supervisor

    def _supervisor(self) -> Supervisor:
        sup = self.services.supervisor
        if sup is None:
            raise Unavailable("streamctl is not running: its lifespan has not started")
        return sup

    async def start(
        self,
        input: RunInput,
        *,
        thread_id: str | None = None,
        owner: str = ANONYMOUS,
        **options: Any,
    ) -> dict[str, Any]:
        """Start a run for ``owner`` (``options``: ``multitask``, ``config``, ... as in
        ``POST /v1/runs``); returns its snapshot once its first event is committed.

        ``input``: the user's text, a list of messages, or a whole ``RunCreate`` body."""
        request = _run_create(input, thread_id, options)
        run = await self._supervisor().control.start(request, owner)
        return run.snapshot()

    def stream_response(
        self,
        run_id: str,
        *,
        after: int | str | None = 0,
        owner: str | None = None,
        granularity: Granularity = "low",
    ) -> Response:
        """The run's events after ``after`` (a seq: pass the client's ``Last-Event-ID``) as
        an SSE response, then its live tail, closing after ``done``: return it from a route.
        An error (no such run, cursor out of range) answers in the JSON error shape; a run
        read to its end answers 204."""
        return _RunStream(self, run_id, after, owner, granularity)

    async def stop(
        self, run_id: str, *, owner: str | None = None, wait: bool = True
    ) -> dict[str, Any]:
        """Stop a run (idempotent); its final state (``stopping`` true if still stopping)."""
        snapshot, finished = await self._supervisor().control.stop(run_id, owner, wait=wait)
        return {**snapshot, "stopping": not finished}

    async def snapshot(self, run_id: str, *, owner: str | None = None) -> dict[str, Any]:
        """The run as of its last committed event (``RunNotFound`` if not ``owner``'s)."""
        return await self._supervisor().reads.get_run(run_id, owner)


class _RunStream(Response):
    """``stream_response``: subscribes when sent, so an error can still answer as JSON."""

    def __init__(
        self,
        sc: Streamctl,
        run_id: str,
        after: int | str | None,
        owner: str | None,
        granularity: Granularity,
    ) -> None:
        self.sc, self.run_id, self.after, self.owner = sc, run_id, after, owner
        self.granularity: Granularity = granularity
        self.status_code = 200
        self.background = None
        self.raw_headers = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sc = self.sc
        holder = self.owner or ANONYMOUS
        try:
            sup = sc._supervisor()
            cursor = parse_cursor(None, None if self.after is None else str(self.after))
            stream = await sup.reads.subscribe(
                self.run_id, self.owner, cursor, granularity=self.granularity
            )
            if stream is not None:
                sup.streams.open(holder)
        except StreamctlError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if stream is None:
            await Response(status_code=204)(scope, receive, send)
            return
        settings = sc.settings
        response = EventStream(
            stream,
            headers={"X-Run-Id": self.run_id},
            retry_ms=settings.retry_ms,
            send_timeout=settings.send_timeout,
            on_slow=lambda _scope: None,
            on_close=lambda: sup.streams.close(holder),
            watch=sc.services.watch,
        )
        await response(scope, receive, send)


@contextmanager
def tuned_gc() -> Iterator[None]:
    """The cyclic garbage collector tuned for streaming, for as long as the context runs.

    The hot path allocates a few objects per event and holds them until their batch commits;
    with the default thresholds the collector runs every few hundred events and walks them all
    (measured: server CPU per event 16 -> 11.5 µs). Objects alive at start-up are frozen out of
    its way, and generation 0 is collected every 50,000 allocations instead of 700: cycles are
    still collected, less often. It is the process's collector: nested lifespans tune it once,
    and the last to end restores the thresholds and unfreezes."""
    global _gc_tuned
    saved = gc.get_threshold()
    if _gc_tuned == 0:
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _gc_tuned += 1
    try:
        yield
    finally:
        _gc_tuned -= 1
        if _gc_tuned == 0:
            gc.set_threshold(*saved)
            gc.unfreeze()


def _run_create(input: RunInput, thread_id: str | None, options: dict[str, Any]) -> RunCreate:
    if isinstance(input, RunCreate):
        body: dict[str, Any] = input.model_dump(exclude_unset=True)
    elif isinstance(input, str):
        body = {"input": {"messages": [{"role": "user", "content": input}]}}
    elif isinstance(input, list):
        body = {"input": {"messages": input}}
    else:
        body = dict(input)
    body.update(options)
    if thread_id is not None:
        body["thread_id"] = thread_id
    return RunCreate.model_validate(body)


def _without_auth(settings: Settings) -> Settings:
    return Settings.model_validate({**settings.model_dump(), "auth": "none"})


def _principal_from(authenticate: Callable[..., Any], services: Services) -> Callable[..., Any]:
    """The API routers' dependency: the host's ``authenticate``, its answer as a ``Principal``."""
    admins = services.auth.admins

    async def principal(request: Request, who: Any) -> None:
        if isinstance(who, Principal):
            found = who
        elif isinstance(who, str) and who:
            found = Principal(who, admin=who in admins)
        else:
            raise TypeError(
                "authenticate must return a streamctl.Principal or a non-empty subject string,"
                f" not {type(who).__name__}"
            )
        request.scope[PRINCIPAL_KEY] = found

    # A real signature, not annotations: under `from __future__ import annotations` FastAPI
    # would have to evaluate "Depends(authenticate)" where `authenticate` is not a global.
    principal.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
            inspect.Parameter(
                "who",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[Any, Depends(authenticate)],
            ),
        ]
    )
    return principal
