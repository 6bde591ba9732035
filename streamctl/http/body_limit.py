"""``BodyLimit``: the request body's size limit (``max_body_bytes``) and read timeout
(``body_timeout``), as pure ASGI middleware (never ``BaseHTTPMiddleware``, which would buffer and
break streaming responses).

The head of a request is read by the server before any application sees it: a timeout on it
must come from the proxy in front (nginx ``client_header_timeout``, docs/deployment.md).
"""

from __future__ import annotations

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
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
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message: Message | None = None
            with anyio.move_on_after(self.timeout):
                message = await receive()
            if message is None:
                await self._timed_out(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _timed_out(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {
                "error": {
                    "code": "body_timeout",
                    "message": f"no part of the request body came for {self.timeout:g} s",
                }
            },
            status_code=408,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {
                "error": {
                    "code": "body_too_large",
                    "message": f"the request body is larger than {self.max_bytes} bytes",
                }
            },
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
