"""``POST /v1/runs/stream`` on the raw path of ``StreamGate`` (``streamctl serve`` only).

Time to first event is what a chat's user feels, and before its run even started the request
spent about 0.4 ms in the application: its middleware, routing and dependency solving. The gate
answers this route itself, in front of that chain, with the route's own checks through the same
functions: the body's limits (``body_limit.read_body``), its JSON and ``RunCreate``, the
principal (a bearer header, or a ``token`` in the body), then ``start_streaming`` with the
``Idempotency-Key`` and ``Last-Event-ID`` headers, and the CORS headers of the application's own
``CORSMiddleware``.

Whatever the route would refuse *before* starting a run (no JSON type, no JSON, an invalid
body, a bad credential, a query, a repeated header, no declared length) is handed on to the
application with the body it read, and answered there in its one JSON shape: nothing has happened
yet. From the start on, an error (a busy thread, a cap, an idempotency conflict) is answered here,
by the route's own ``error_answer``: handing it on would start a second time.

Only ``create_app`` turns this on: an embedding host's own middleware (its logging, its limits)
must see the requests that start runs, so ``sc.stream_gate`` serves the stream GETs only.
"""

from __future__ import annotations

import email.message
import json
import logging
from typing import Protocol

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import StreamctlError
from ..inputs import RunCreate
from .auth import authenticate
from .body_limit import read_body, replaying
from .errors import error_answer
from .services import Services
from .streams import start_streaming

logger = logging.getLogger("streamctl.api")

START_STREAM = "/v1/runs/stream"


class Gate(Protocol):
    """What the start needs of the ``StreamGate`` it is served by (``stream_gate.py``)."""

    served: int

    @property
    def services(self) -> Services: ...

    async def hand_on(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    async def respond(
        self, response: Response, headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> None: ...


def is_json(content_type: str | None) -> bool:
    """Whether the route reads a body of this type as JSON: ``application/json`` or ``…+json``
    (FastAPI's ``strict_content_type``: a body with no type is not JSON to it)."""
    if content_type is None:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _single(headers: Headers, name: str) -> tuple[bool, str | None]:
    """(whether the header is at most once, its value)."""
    values = headers.getlist(name)
    return len(values) <= 1, (values[0] if values else None)


async def serve_start(gate: Gate, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``POST …/v1/runs/stream``, or hand it on to ``gate.app`` (see the module)."""
    services = gate.services
    sup = services.supervisor
    headers = Headers(scope=scope)
    once_key, key = _single(headers, "idempotency-key")
    once_id, last_event_id = _single(headers, "last-event-id")
    if (
        sup is None
        or services.host_auth
        or not hasattr(scope.get("app"), "state")  # the stream needs ``request.app.state``
        or scope.get("query_string")
        or not (once_key and once_id)
        or len(headers.getlist("content-type")) > 1
        or not is_json(headers.get("content-type"))
        or not (headers.get("content-length") or "").isdigit()
    ):
        await gate.hand_on(scope, receive, send)
        return
    settings = services.settings
    read = await read_body(scope, receive, settings.max_body_bytes, settings.body_timeout)
    if read is None:
        return  # the client left before sending its body: nobody to answer
    if isinstance(read, Response):  # 413 or 408, as the chain's ``BodyLimit`` answers
        await gate.respond(read, headers, scope, receive, send)
        return
    body = read
    request = Request(dict(scope), replaying(body, receive))
    try:
        # As the route: the JSON, the model, the principal (which may read a token in the body).
        create = RunCreate.model_validate(json.loads(body))
        me = await authenticate(request, services)
    except (ValueError, ValidationError, RecursionError, StreamctlError):
        await gate.hand_on(scope, replaying(body, receive), send)
        return
    except Exception:
        logger.exception("the start's fast path failed: the application answers instead")
        await gate.hand_on(scope, replaying(body, receive), send)
        return
    scope = request.scope
    gate.served += 1
    try:
        response = await start_streaming(
            request, services, sup, create, me, key=key, last_event_id=last_event_id
        )
    except Exception as exc:  # from here on a run may have started: answered here, once
        response = await error_answer(request, exc)
    await gate.respond(response, headers, scope, replaying(body, receive), send)
