"""``StreamGate``: the long-lived stream GETs served by a small raw ASGI path in front of the
application's middleware chain.

An SSE stream is one request and thousands of writes. Through FastAPI every write is resumed
through the whole chain (error middleware, CORS, the body limit, exception handlers, routing):
measured at ≈ 18 % of the streaming task's CPU at 500 subscribers. The gate answers
``GET /v1/runs/{run_id}/stream`` and ``GET /v1/threads/{thread_id}/stream`` itself, with the same
checks the routes make, in the same order, through the same functions: authentication (bearer
header, ``?token=`` stream tokens, a stream token outliving its ``exp`` while its run is live),
the query's validation, the cursor, the principal's stream slot (``max_streams_per_owner``), the
send watch and the slow-client cut, and CORS headers computed by the application's own
``CORSMiddleware``. Its writes then go straight to the server.

For every HTTP request the gate also puts the connection's transport (``TRANSPORT_KEY``: the
slow-client probe needs no search among all connections) and the server's own ``send``
(``RAW_SEND_KEY``) in the scope: a stream answered through the chain (a protocol's POST, or
``POST /v1/runs/stream`` when embedded) sends its head through every middleware and its body
straight to the server (``EventStream``).

With ``starts`` (``create_app``) the gate answers ``POST /v1/runs/stream`` too: see
``start_gate.py``, whose refusals and errors follow its own rules.

Whatever the gate does not answer itself goes to the full application, unchanged: any other
request, a query it does not recognise exactly (unknown or repeated parameters, a bad
``granularity``), a host's own ``authenticate`` (a FastAPI dependency), and *every error*. An
error found on the fast path is not answered here: the request is handed to the application,
which finds it again and answers it in its one JSON shape, with its CORS headers. Nothing is
sent before that decision, and nothing the gate did has effects (a stream slot is taken last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import StreamctlError
from ..shaping import GRANULARITIES, Granularity
from ..sse import RAW_SEND_KEY, parse_cursor, parse_thread_cursor
from .auth import authenticate, authenticate_reader
from .services import Services
from .start_gate import START_STREAM, serve_start
from .streams import TRANSPORT_KEY, event_stream
from .threads import thread_owner

logger = logging.getLogger("streamctl.api")

RUN_STREAM = "/v1/runs/{run_id}/stream"
THREAD_STREAM = "/v1/threads/{thread_id}/stream"
_RUN_QUERY = frozenset({"after", "granularity", "token"})
_THREAD_QUERY = frozenset({"granularity", "owner", "token"})
_MAX_OWNER = 256  # the thread route's ``owner`` (Query max_length)


class _Decline(Exception):
    """The full application answers this request."""


class Gated(Protocol):
    """What the gate needs of a ``Streamctl`` (``embedding.py``, which imports this module)."""

    @property
    def router(self) -> APIRouter: ...

    @property
    def services(self) -> Services: ...


class StreamGate:
    """The raw ASGI path of the stream GETs of one ``Streamctl``, in front of ``app``.

    ``prefix``: where the host mounted ``sc.router``. ``cors``: the application's CORS
    middleware, whose headers the gate's answers carry (None: no CORS). ``served`` and
    ``declined`` count the requests it answered (a start's errors from the start on included)
    and those it handed on."""

    def __init__(
        self,
        app: ASGIApp,
        sc: Gated,
        *,
        prefix: str = "",
        cors: CORSMiddleware | None = None,
        starts: bool = False,
    ) -> None:
        self.app = app
        self.sc = sc
        self.prefix = prefix.rstrip("/")
        self.cors = cors
        self.starts = starts
        """Also answer ``POST /v1/runs/stream`` (``start_gate.py``; ``create_app`` only)."""
        self.served = 0
        self.declined = 0
        # ``auth._outlived`` recognises the run stream by its route, as the router sets it.
        self._run_route = next(
            (r for r in sc.router.routes if getattr(r, "path", None) == RUN_STREAM), None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The server's send is its connection's (uvicorn: a method of the request's cycle, which
        # holds the transport): every stream's slow-client probe, on this path or through the
        # chain (a protocol's POST), finds it here instead of searching all connections.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            scope[TRANSPORT_KEY] = transport
        # A stream answered through the chain (a protocol's POST) sends its head through it, and
        # its body to the server directly (``EventStream``).
        scope[RAW_SEND_KEY] = send
        if scope["method"] == "POST" and self.starts and self._path(scope) == START_STREAM:
            await serve_start(self, scope, receive, send)
            return
        if scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        target = self._match(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await self._answer(dict(scope), receive, *target)
        except _Decline:
            response = None
        except StreamctlError:  # answered by the route, in its JSON shape
            response = None
        except Exception:
            logger.exception("the stream fast path failed: the application answers instead")
            response = None
        if response is None:
            await self.hand_on(scope, receive, send)
            return
        self.served += 1
        await self.respond(response, Headers(scope=scope), scope, receive, send)

    @property
    def services(self) -> Services:
        return self.sc.services

    async def hand_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application answers this request (in its one JSON shape, if an error)."""
        self.declined += 1
        await self.app(scope, receive, send)

    async def respond(
        self, response: Response, headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Send ``response``, with the CORS headers the application's middleware would add."""
        if self.cors is not None and "origin" in headers:
            response.raw_headers = await _with_cors(self.cors, response, headers)
        await response(scope, receive, send)

    def _path(self, scope: Scope) -> str:
        """The request's path below the root path and the prefix ("" if outside the prefix)."""
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if not path.startswith(self.prefix + "/"):
            return ""
        return path[len(self.prefix) :]

    def _match(self, scope: Scope) -> tuple[str, str] | None:
        """``("run" | "thread", id)`` for a stream GET under the prefix, else None."""
        path = self._path(scope)
        if not path.startswith("/v1/") or not path.endswith("/stream"):
            return None
        parts = path[4 : -len("/stream")].split("/")
        if len(parts) != 2 or not parts[1] or parts[0] not in ("runs", "threads"):
            return None
        return ("run" if parts[0] == "runs" else "thread"), parts[1]

    async def _answer(self, scope: Scope, receive: Receive, kind: str, ident: str) -> Response:
        services = self.sc.services
        sup = services.supervisor
        if sup is None or services.host_auth:
            raise _Decline
        query = _query(scope, _RUN_QUERY if kind == "run" else _THREAD_QUERY)
        granularity = query.get("granularity", "low")
        if granularity not in GRANULARITIES:
            raise _Decline
        shaped: Granularity = granularity
        headers = Headers(scope=scope)
        last_event_ids = headers.getlist("last-event-id")
        if len(last_event_ids) > 1:
            raise _Decline
        last_event_id = last_event_ids[0] if last_event_ids else None
        if "app" not in scope:  # embedded: in front of the host's application itself
            if not hasattr(self.app, "state"):
                raise _Decline
            scope["app"] = self.app
        request = Request(scope, receive)
        if kind == "run":
            scope["path_params"] = {"run_id": ident}
            if self._run_route is not None:
                scope["route"] = self._run_route
            me = await authenticate_reader(request, services)
            cursor = parse_cursor(last_event_id, query.get("after"))
            stream = await sup.reads.subscribe(ident, me.scope, cursor, granularity=shaped)
        else:
            owner = query.get("owner")
            if owner is not None and len(owner) > _MAX_OWNER:
                raise _Decline
            scope["path_params"] = {"thread_id": ident}
            me = await authenticate(request, services)
            thread_cursor = parse_thread_cursor(last_event_id)
            whose = thread_owner(me, owner, ident)
            stream = await sup.reads.subscribe_thread(whose, ident, thread_cursor, shaped)
        return event_stream(request, services, sup, me, stream)  # takes the slot: last


def _query(scope: Scope, known: frozenset[str]) -> dict[str, str]:
    """The query as a dict; declines what the route would refuse or read differently."""
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise _Decline from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in known or name in found:
            raise _Decline
        found[name] = value
    return found


async def _with_cors(
    cors: CORSMiddleware, response: Response, request_headers: Headers
) -> list[tuple[bytes, bytes]]:
    """The response's headers as the application's CORS middleware would send them."""
    sent: list[Message] = []

    async def keep(message: Message) -> None:
        sent.append(message)

    start: MutableMapping[str, Any] = {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": list(response.raw_headers),
    }
    await cors.send(start, keep, request_headers)
    headers: list[tuple[bytes, bytes]] = sent[0]["headers"]
    return headers


class GatedApp(FastAPI):
    """A FastAPI application with a ``StreamGate`` in front of its middleware chain
    (``create_app``). ``gate_for`` makes the gate when the first request builds the chain."""

    gate_for: Callable[[ASGIApp], StreamGate] | None = None
    gate: StreamGate | None = None

    def build_middleware_stack(self) -> ASGIApp:
        chain = super().build_middleware_stack()
        if self.gate_for is None:
            return chain
        self.gate = self.gate_for(chain)
        return self.gate
