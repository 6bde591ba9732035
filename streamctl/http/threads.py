"""Routes of threads: the checkpoint (messages, active and last run), its stream, its stop.

A thread is ``(owner, thread_id)``: every principal has its own namespace of thread ids, and
addresses its own threads. An admin is a principal too, with its own threads; it addresses
another principal's thread with ``?owner=NAME``. ``?owner=`` naming someone else from a
non-admin answers 404, like a missing thread.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from ..auth import Principal
from ..errors import ThreadNotFound
from ..shaping import Granularity
from ..sse import EventStream, parse_thread_cursor
from .auth import Me
from .errors import StreamctlRoute, error_responses
from .models import Stopped, Thread
from .runs import STOP_RESPONSES, JSONLine, LastEventId, stop_answer
from .services import Sup, Svc
from .streams import event_stream

router = APIRouter(tags=["threads"], route_class=StreamctlRoute)

OwnerParam = Annotated[
    str | None,
    Query(
        max_length=256,
        description="Admins only: the principal whose thread this is (default: the caller).",
    ),
]


def thread_owner(me: Principal, owner: str | None, thread_id: str) -> str:
    """Whose namespace of threads the request addresses."""
    if owner is None or owner == me.name:
        return me.name
    if not me.admin:
        raise ThreadNotFound(thread_id)
    return owner


@router.get(
    "/v1/threads/{thread_id}",
    response_model=Thread,
    response_model_exclude_unset=True,
    responses=error_responses(401, 404, 422, 503),
)
async def get_thread(
    thread_id: str,
    sup: Sup,
    me: Me,
    owner: OwnerParam = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs in this page.")] = 100,
    before: Annotated[
        str | None, Query(max_length=64, description="Only runs created before this run.")
    ] = None,
) -> Any:
    """The thread's messages, its active run and its last run: one page of its newest runs
    (``limit``, default 100); ``has_more`` and ``next_before`` lead to older ones."""
    return await sup.reads.get_thread(
        thread_owner(me, owner, thread_id), thread_id, limit=limit, before=before
    )


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
    owner: OwnerParam = None,
) -> Response:
    """Join the thread's active run. Event ids are ``run_id:seq``."""
    cursor = parse_thread_cursor(last_event_id)
    whose = thread_owner(me, owner, thread_id)
    stream = await sup.reads.subscribe_thread(whose, thread_id, cursor, granularity)
    return event_stream(request, svc, sup, me, stream)


@router.post(
    "/v1/threads/{thread_id}/stop",
    response_model=Stopped,
    response_model_exclude_unset=True,
    response_class=JSONLine,
    responses=STOP_RESPONSES,
)
async def stop_thread(
    thread_id: str, response: Response, sup: Sup, me: Me, owner: OwnerParam = None
) -> Any:
    """Stop the thread's active run (or return its last run's final state)."""
    whose = thread_owner(me, owner, thread_id)
    return stop_answer(await sup.control.stop_thread(whose, thread_id), response)
