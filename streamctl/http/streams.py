"""The SSE answers of the run and thread routes: a stream slot per principal, then ``EventStream``.

Every stream holds one of its principal's ``max_streams_per_owner`` slots from before it starts
until it closes, and is watched by the services' ``SendWatch`` (``send_timeout``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response
from starlette.types import Scope

from ..auth import Principal
from ..inputs import RunCreate
from ..sse import EventStream, parse_cursor, unsent_probe
from ..supervisor import Supervisor
from .idempotency import REPLAYED, start_once
from .services import Services

TRANSPORT_KEY = "streamctl.transport"
"""The request scope's key for its connection's transport, where ``StreamGate`` found it."""


def slow_reset(request: Request, sup: Supervisor) -> Callable[[Scope], None]:
    """What to do with a client that accepts no write within ``send_timeout``: count it and,
    under ``streamctl serve``, reset its connection rather than wait to flush to it (plain
    uvicorn has no such hook: the stream then closes normally)."""
    app = request.app

    def slow(scope: Scope) -> None:
        sup.counters.slow_closed += 1
        abort = getattr(app.state, "abort_connection", None)
        if abort is not None:
            abort(scope.get("client"))

    return slow


def event_stream(
    request: Request,
    services: Services,
    sup: Supervisor,
    me: Principal,
    stream: AsyncIterator[bytes] | None,
    *,
    headers: dict[str, str] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    claimed: bool = False,
) -> Response:
    """The SSE response for ``stream``; ``204`` when there is nothing left to stream.

    ``claimed``: the principal's stream slot is already taken (``start_streaming``).
    """
    if stream is None:
        return Response(status_code=204)
    if not claimed:
        sup.streams.open(me.name)  # 429 past max_streams_per_owner; the stream never starts
    # Under `streamctl serve`: how much of what was written the client has not taken yet, so a
    # client that stopped reading is cut off even while the socket's buffers still take writes.
    probe_for = getattr(request.app.state, "unsent_probe", None)
    probe = None
    transport = request.scope.get(TRANSPORT_KEY)
    if probe_for is not None and transport is not None:
        probe = unsent_probe(transport)  # O(1), where the lookup by client is O(connections)
    elif probe_for is not None:
        probe = probe_for(request.scope.get("client"))
    settings = services.settings
    return EventStream(
        stream,
        retry_ms=settings.retry_ms,
        send_timeout=settings.send_timeout,
        headers=headers,
        on_disconnect=on_disconnect,
        on_slow=slow_reset(request, sup),
        on_close=lambda: sup.streams.close(me.name),
        watch=services.watch,
        probe=probe,
    )


async def start_streaming(
    request: Request,
    services: Services,
    sup: Supervisor,
    body: RunCreate,
    me: Principal,
    *,
    key: str | None = None,
    last_event_id: str | None = None,
) -> Response:
    """Start a run and answer with its stream from the first event. With an ``Idempotency-Key``
    that names a run already, that run's stream instead, after ``last_event_id``."""
    with sup.streams.claim(me.name):
        started = await start_once(request, sup, services.keys, me, key, body)
        cursor = 0 if started.created else parse_cursor(last_event_id, None)
        stream = await sup.reads.subscribe(
            started.run_id, me.name, cursor, granularity=body.granularity
        )
    headers = {"X-Run-Id": started.run_id, "X-Thread-Id": started.thread_id}
    if not started.created:
        headers[REPLAYED] = "true"
    if stream is None:  # a retry from the run's last event: nothing is left to send
        sup.streams.close(me.name)
        return Response(status_code=204, headers=headers)
    if (token := services.auth.issue_stream_token(started.run_id, me)) is not None:
        headers["X-Stream-Token"] = token
    run_id = started.run_id
    return event_stream(
        request,
        services,
        sup,
        me,
        stream,
        headers=headers,
        on_disconnect=(
            (lambda: sup.control.request_stop(run_id)) if body.on_disconnect == "cancel" else None
        ),
        claimed=True,
    )
