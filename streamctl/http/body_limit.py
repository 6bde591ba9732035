"""``BodyLimit``: the request body's size limit (``max_body_bytes``) and read timeout
(``body_timeout``), as pure ASGI middleware (never ``BaseHTTPMiddleware``, which would buffer and
break streaming responses).

The head of a request is read by the server before any application sees it: a timeout on it
must come from the proxy in front (nginx ``client_header_timeout``, docs/deployment.md).
"""

from __future__ import annotations

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimit:
    """Answer ``413`` to a request body over ``max_bytes``, declared or actually sent, and
    ``408`` to a client that sends nothing of its body for ``timeout`` seconds (a half-sent body
    held open would otherwise keep its connection, and a request slot, for ever).

    The body (at most ``max_bytes``) is read here and handed on, so an oversized one is refused
    before anything parses or stores it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        read = await read_body(scope, receive, self.max_bytes, self.timeout)
        if read is None:
            return  # the client left before sending its body: nobody to answer
        if isinstance(read, Response):
            await read(scope, receive, send)
            return
        await self.app(scope, replaying(read, receive), send)


async def read_body(
    scope: Scope, receive: Receive, max_bytes: int, stall: float
) -> bytes | Response | None:
    """The request's whole body; or the answer to a body over ``max_bytes`` (413, declared or
    sent) or one of which nothing comes for ``stall`` seconds (408); or None if the client left
    meanwhile."""
    declared = Headers(scope=scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return _too_large(max_bytes)
    body = bytearray()
    more = True
    while more:
        message: Message | None = None
        with anyio.move_on_after(stall):
            message = await receive()
        if message is None:
            return _timed_out(stall)
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > max_bytes:
            return _too_large(max_bytes)
    return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an application after ``body`` was read: the body once, then the rest."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _timed_out(timeout: float) -> Response:
    message = f"no part of the request body came for {timeout:g} s"
    return _refused(408, "body_timeout", message)


def _too_large(max_bytes: int) -> Response:
    message = f"the request body is larger than {max_bytes} bytes"
    return _refused(413, "body_too_large", message)


def _refused(status: int, code: str, message: str) -> Response:
    """The answer to a body refused: the connection closes (the rest of the body is not read)."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"Connection": "close"},
    )
