"""Routes of runs: start (in the background or streaming), list, snapshot, stream, page, stop."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from ..events import RunStatus
from ..inputs import RunCreate, StopTarget
from ..shaping import Granularity
from ..sse import EventStream, parse_cursor
from .auth import Me, Reader
from .errors import StreamctlRoute, error_responses
from .idempotency import REPLAYED, KeyHeader, start_once
from .models import EventsPage, Run, RunList, Stopped
from .services import Sup, Svc
from .streams import event_stream, start_streaming

router = APIRouter(tags=["runs"], route_class=StreamctlRoute)

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]

# Every route answers these; each adds its own.
_ANY = (401, 503)
_POST = (400, 413, 422)
_START = error_responses(*_ANY, *_POST, 404, 409, 429)
_START_STREAM = error_responses(*_ANY, *_POST, 404, 409, 429, stream=True)
STOP_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Stopped, "description": "The run is still stopping (`stopping: true`)."},
    **error_responses(*_ANY, 404, 413, 422),
}


class JSONLine(JSONResponse):
    """JSON ending with a newline: ``curl -X POST …/stop`` is often typed at a shell, whose
    next prompt would otherwise start on the answer's line."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


def stop_answer(state: tuple[dict[str, Any], bool], response: Response) -> dict[str, Any]:
    """200 with the final state once the run's task has exited; 202 while it is still stopping."""
    snapshot, finished = state
    if not finished:
        response.status_code = 202
    return {**snapshot, "stopping": not finished}


@router.post(
    "/v1/runs",
    status_code=201,
    response_model=Run,
    response_model_exclude_unset=True,
    responses=_START,
)
async def create_run(
    request: Request,
    response: Response,
    body: RunCreate,
    svc: Svc,
    sup: Sup,
    me: Me,
    idempotency_key: KeyHeader = None,
) -> Any:
    """Start a run in the background. 201 with the new run; 200 with the run an earlier
    request with the same ``Idempotency-Key`` started (``Idempotent-Replayed: true``)."""
    started = await start_once(request, sup, svc.keys, me, idempotency_key, body)
    if started.run is not None:
        snapshot = started.run.snapshot()
    else:
        snapshot = await sup.reads.get_run(started.run_id, me.name)
        response.status_code = 200
        response.headers[REPLAYED] = "true"
    return {**snapshot, "stream_token": svc.auth.issue_stream_token(started.run_id, me)}


@router.post("/v1/runs/stream", response_class=EventStream, responses=_START_STREAM)
async def create_run_stream(
    request: Request,
    body: RunCreate,
    svc: Svc,
    sup: Sup,
    me: Me,
    idempotency_key: KeyHeader = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Start a run and stream its events (SSE). With an ``Idempotency-Key`` an earlier request
    sent, the stream of the run that request started, after ``Last-Event-ID`` if sent."""
    return await start_streaming(
        request, svc, sup, body, me, key=idempotency_key, last_event_id=last_event_id
    )


@router.get(
    "/v1/runs",
    response_model=RunList,
    response_model_exclude_unset=True,
    responses=error_responses(*_ANY, 422),
)
async def list_runs(
    sup: Sup,
    me: Me,
    thread_id: str | None = None,
    status: RunStatus | None = None,
    owner: Annotated[str | None, Query(description="Admins: one owner's runs.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    """Runs, newest first, optionally of one thread, in one status, of one owner (admins)."""
    scope = me.scope
    if owner is not None:
        if scope is not None and owner != scope:
            return {"runs": []}  # another principal's runs answer as if there were none
        scope = owner
    return {"runs": await sup.reads.list_runs(scope, thread_id, limit, status)}


@router.get(
    "/v1/runs/{run_id}",
    response_model=Run,
    response_model_exclude_unset=True,
    responses=error_responses(*_ANY, 404, 422),
)
async def get_run(run_id: str, svc: Svc, sup: Sup, me: Reader) -> Any:
    """Snapshot of a run as of its ``last_seq``."""
    run = await sup.reads.get_run(run_id, me.scope)
    if me.stream_run is None and run["status"] in ("queued", "running"):
        run["stream_token"] = svc.auth.issue_stream_token(run_id, me)
    return run


@router.get(
    "/v1/runs/{run_id}/stream",
    response_class=EventStream,
    responses={
        204: {"description": "Nothing is left to stream: the run is over and read to its end."},
        **error_responses(*_ANY, 400, 404, 410, 422, 429, stream=True),
    },
)
async def run_stream(
    request: Request,
    run_id: str,
    svc: Svc,
    sup: Sup,
    me: Reader,
    last_event_id: LastEventId = None,
    after: str | None = None,
    granularity: Granularity = "low",
) -> Response:
    """Replay after the cursor (``Last-Event-ID`` wins over ``?after=``), then the live tail."""
    cursor = parse_cursor(last_event_id, after)
    stream = await sup.reads.subscribe(run_id, me.scope, cursor, granularity=granularity)
    return event_stream(request, svc, sup, me, stream)


@router.get(
    "/v1/runs/{run_id}/events",
    response_model=EventsPage,
    responses=error_responses(*_ANY, 400, 404, 410, 422),
)
async def run_events(
    run_id: str,
    sup: Sup,
    me: Me,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Committed events after ``after``, as a JSON page (for polling clients)."""
    return await sup.reads.events_page(run_id, me.scope, parse_cursor(None, after), limit)


@router.post(
    "/v1/runs/{run_id}/stop",
    response_model=Stopped,
    response_model_exclude_unset=True,
    response_class=JSONLine,
    responses=STOP_RESPONSES,
)
async def stop_run(run_id: str, response: Response, sup: Sup, me: Me, wait: bool = True) -> Any:
    """Stop a run. 200 with the final state once its task has exited; 202 if still stopping."""
    return stop_answer(await sup.control.stop(run_id, me.scope, wait=wait), response)


@router.post(
    "/stop",
    response_model=Stopped,
    response_model_exclude_unset=True,
    response_class=JSONLine,
    responses={**STOP_RESPONSES, **error_responses(400)},
)
async def stop_any(body: StopTarget, response: Response, sup: Sup, me: Me) -> Any:
    """Stop a run by ``run_id``, or a thread's active run by ``thread_id`` (one of the caller's
    own threads; an admin stops another's with ``POST /v1/threads/{id}/stop?owner=``)."""
    if body.run_id is not None:
        return stop_answer(await sup.control.stop(body.run_id, me.scope), response)
    assert body.thread_id is not None
    return stop_answer(await sup.control.stop_thread(me.name, body.thread_id), response)
