"""Routes of threads: the checkpoint (messages, active and last run), its stream, its stop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ..shaping import Granularity
from ..sse import EventStream, parse_thread_cursor
from .auth import Me
from .errors import error_responses
from .models import Stopped, Thread
from .runs import STOP_RESPONSES, LastEventId, stop_answer
from .services import Sup, Svc
from .streams import event_stream

router = APIRouter(tags=["threads"])


@router.get(
    "/v1/threads/{thread_id}",
    response_model=Thread,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
async def get_thread(thread_id: str, sup: Sup, me: Me) -> Any:
    """The thread's messages so far, its active run and its last run."""
    return await sup.reads.get_thread(thread_id, me.scope)


@router.get(
    "/v1/threads/{thread_id}/stream",
    response_class=EventStream,
    responses={
        204: {"description": "Nothing to stream: no active run, or no run after the cursor's."},
        **error_responses(400, 401, 404, 410, 422, 429, 503, stream=True),
    },
)
async def thread_stream(
    request: Request,
    thread_id: str,
    svc: Svc,
    sup: Sup,
    me: Me,
    last_event_id: LastEventId = None,
    granularity: Granularity = "low",
) -> Response:
    """Join the thread's active run. Event ids are ``run_id:seq``."""
    cursor = parse_thread_cursor(last_event_id)
    stream = await sup.reads.subscribe_thread(thread_id, me.scope, cursor, granularity)
    return event_stream(request, svc, sup, me, stream)


@router.post(
    "/v1/threads/{thread_id}/stop",
    response_model=Stopped,
    response_model_exclude_unset=True,
    responses=STOP_RESPONSES,
)
async def stop_thread(thread_id: str, response: Response, sup: Sup, me: Me) -> Any:
    """Stop the thread's active run (or return its last run's final state)."""
    return stop_answer(await sup.control.stop_thread(thread_id, me.scope), response)
