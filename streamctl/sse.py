"""The SSE wire: cursors in, an event stream out.

``EventStream`` is a small raw ASGI response: it sends the headers and a first ``retry:`` line at
once (so proxies and clients see a live stream immediately), then whatever the subscriber yields,
one socket write per wake. It watches for the client's disconnect itself, so an abandoned stream
ends at once and never keeps the run (or anything else) alive.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any

import anyio
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import InvalidCursor

logger = logging.getLogger("streamctl.api")

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_MAX_CURSOR_DIGITS = 18
RAW_SEND_KEY = "streamctl.send"
"""The request scope's key for the server's own ``send`` (set by ``StreamGate``)."""


def parse_cursor(last_event_id: str | None, after: str | None) -> int:
    """The cursor of a run stream: ``Last-Event-ID`` if sent (it wins), else ``?after=``.

    An empty value means "from the start". Anything but ASCII digits is an ``InvalidCursor``.
    """
    raw = last_event_id if last_event_id is not None else after
    source = "Last-Event-ID" if last_event_id is not None else "after"
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_CURSOR_DIGITS:
        shown = raw[:40].encode("unicode_escape").decode("ascii")
        raise InvalidCursor(f"{source} must be a sequence number (ASCII digits), got {shown!r}")
    return int(raw)


def parse_thread_cursor(last_event_id: str | None) -> tuple[str, int] | None:
    """The cursor of a thread stream: ``Last-Event-ID: run_id:seq`` (absent or empty: none)."""
    if not last_event_id:
        return None
    run_id, sep, seq = last_event_id.rpartition(":")
    if not sep or not run_id or not seq or len(last_event_id) > 128:
        shown = last_event_id[:40].encode("unicode_escape").decode("ascii")
        raise InvalidCursor(f"Last-Event-ID of a thread stream is run_id:seq, got {shown!r}")
    return run_id, parse_cursor(seq, None)


def unsent_probe(transport: asyncio.BaseTransport | None) -> Callable[[], int] | None:
    """For a connection's transport: a function giving the bytes written to it that its client
    has not taken yet (the transport's buffer and the kernel's send queue, unsent or
    unacknowledged). None where the kernel does not tell (not Linux)."""
    try:
        import fcntl
        import termios
    except ImportError:  # not a POSIX system
        return None
    sock = transport.get_extra_info("socket") if transport is not None else None
    # uvloop's transports are not asyncio's classes: what is needed is looked up, not the type.
    buffered: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
    if sock is None or buffered is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    fd = sock.fileno()
    request = termios.TIOCOUTQ  # = SIOCOUTQ on a TCP socket

    def unsent() -> int:
        queued = struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
        return buffered() + int(queued)

    return unsent


class SendWatch:
    """Cuts off streams whose client has accepted no write for ``timeout`` seconds.

    One timer for every stream, instead of a cancel scope around each write (that scope cost a
    measurable share of the per-write CPU at high fan-out). A stuck stream is cut off between
    ``timeout`` and 1.25 x ``timeout`` after its write began.

    A write only blocks once the socket's buffers are full (≈1.7 MB on loopback): at a model's
    speed that is never within a run. So a stream with a ``probe`` (the bytes its client has not
    taken yet, under ``streamctl serve``) is also cut when those bytes have not gone down for
    ``timeout`` while more were written: its client stopped reading, whatever the buffers hold.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.streams: set[EventStream] = set()

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.timeout / 4)
            now = time.monotonic()
            for stream in list(self.streams):
                since = stream.sending_since
                if (since is not None and now - since > self.timeout) or stream.stalled(
                    now, self.timeout
                ):
                    stream.cut_off()


class _Rest:
    """Awaitable: the rest of a coroutine that suspended while it was driven outside a task (a
    send an ``Outlet`` began); the awaiting task passes on what it waits for, and back."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Generator[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                value = yield waiting
            except BaseException as exc:  # cancelled (cut off, disconnected): the send is too
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    raise exc from None  # the send ended anyway: the cancellation still stands
                continue
            try:
                waiting = coro.send(value)
            except StopIteration:
                return


class SendOutlet:
    """An ``EventStream``'s writes made outside its task (``run_log.Outlet``): the log of a run
    writes a caught-up stream's next frames here as they are committed. A send that does not
    end at once (the client's socket is full, the server waits for it to drain) is left
    ``pending`` and ended by the stream's task, under the send watch like any write.

    Driving the server's ``send`` outside a task suits uvicorn's (it awaits only its flow
    control). A server whose ``send`` fails there with anything but ``OSError`` (one that needs
    a current task) turns the outlet off: the stream's task sends everything itself."""

    __slots__ = ("direct", "error", "pending", "send", "stream")

    def __init__(self, stream: EventStream, send: Send) -> None:
        self.stream = stream
        self.send = send
        self.pending: _Rest | None = None
        self.error: OSError | None = None
        self.direct = True
        """Whether the log may write here (False once closed, or turned off)."""

    def write(self, data: bytes) -> bool | None:
        if not self.direct or self.pending is not None or self.error is not None:
            return None  # the log hands the reader back: its task knows what to do
        message = {"type": "http.response.body", "body": data, "more_body": True}
        coro = self.send(message).__await__()
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.stream._written += len(data)
            return True
        except OSError as exc:  # the connection is gone: the stream's task raises it
            self.error = exc
            return None
        except Exception:
            logger.warning(
                "the server's send fails outside its task: this stream's writes stay in it",
                exc_info=True,
            )
            self.direct = False
            return None
        self.stream._written += len(data)
        self.pending = _Rest(coro, waiting)
        return False

    async def finish(self) -> None:
        """End a send ``write`` began and could not end; raise what a write raised."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.pending is None:
            return
        rest, stream = self.pending, self.stream
        stream.sending_since = time.monotonic()
        try:
            await rest
        finally:
            self.pending = None
            stream.sending_since = None

    def close(self) -> None:
        """The response is over: no more writes (a send left under way is dropped)."""
        self.direct = False
        if self.pending is not None:
            self.pending.coro.close()
            self.pending = None


class EventStream(Response):
    """A ``text/event-stream`` response fed by an async iterator of ready-made SSE bytes."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        retry_ms: int,
        send_timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_slow: Callable[[Scope], None] | None = None,
        on_close: Callable[[], None] | None = None,
        status_code: int = 200,
        watch: SendWatch | None = None,
        probe: Callable[[], int] | None = None,
    ) -> None:
        self.status_code = status_code  # always 200; the keyword is for FastAPI's OpenAPI
        self.body_iter = body
        self.retry_ms = retry_ms
        # One newline, not a blank line: a blank line would end an empty event, which some
        # parsers (httpx-sse, fetch-event-source) surface as an event with no data.
        self.preamble = b"retry: %d\n" % retry_ms
        self.on_disconnect = on_disconnect
        self.send_timeout = send_timeout
        self.on_slow = on_slow
        self.on_close = on_close
        self.raw_headers = HEADERS + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        self.background = None
        self.watch = watch
        self.sending_since: float | None = None
        """When the write in progress began (the watch's clock); None between writes."""
        self._slow = False
        self._scope: anyio.CancelScope | None = None
        self.probe = probe
        """Bytes written to the connection that its client has not taken yet (None: unknown)."""
        self._written = 0
        self._unsent = 0
        self._unsent_written = 0
        self._taking_since = time.monotonic()

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether the client has taken nothing for ``timeout`` while bytes waited for it."""
        if self.probe is None:
            return False
        try:
            unsent = self.probe()
        except OSError:  # the connection is gone: the disconnect ends the stream
            return False
        # Taken since the last look: what was unsent, plus what was written since, minus what is
        # unsent now. The server's own framing (chunk sizes) only makes it smaller: a client that
        # takes nothing never looks as if it had.
        taken = self._unsent + (self._written - self._unsent_written) - unsent
        self._unsent, self._unsent_written = unsent, self._written
        if unsent == 0 or taken > 0:
            self._taking_since = now
            return False
        return now - self._taking_since > timeout

    def cut_off(self) -> None:
        """The client accepts nothing: end this stream (it can resume with Last-Event-ID)."""
        self._slow = True
        if self._scope is not None:
            self._scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = False
        outlet: SendOutlet | None = None

        async def watch_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                if self.watch is not None:
                    self.watch.streams.add(self)
                tg.start_soon(watch_disconnect)
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                if self.preamble:
                    await send(
                        {"type": "http.response.body", "body": self.preamble, "more_body": True}
                    )
                # The head went through the application's middleware (CORS headers, "response
                # started" flags); the body, thousands of writes, goes straight to the server
                # where ``StreamGate`` handed its send down (``RAW_SEND_KEY``). Its send can also
                # be driven from outside this task: a body that takes the outlet (``follow``)
                # has its log write it while it is caught up.
                raw = scope.get(RAW_SEND_KEY)
                send = raw if raw is not None else send
                body = self.body_iter
                if raw is not None and isinstance(body, AsyncGenerator):
                    outlet = SendOutlet(self, raw)
                taken = body.__anext__()
                while True:
                    try:
                        chunk = await taken
                    except StopAsyncIteration:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        break
                    if outlet is not None:
                        if self.watch is not None:  # the watch times a send under way
                            await outlet.finish()
                        else:
                            with anyio.move_on_after(self.send_timeout) as timer:
                                await outlet.finish()
                            if timer.cancelled_caught:
                                self._slow = True
                                break
                        taken = body.asend(outlet)  # type: ignore[attr-defined]
                    else:
                        taken = body.__anext__()
                    if not chunk:
                        continue
                    # The server's send waits while the client's socket is full (backpressure):
                    # the subscriber falls behind by a cursor, not a queue. A client that accepts
                    # nothing for send_timeout is cut off; it can resume with Last-Event-ID.
                    message = {"type": "http.response.body", "body": chunk, "more_body": True}
                    self._written += len(chunk)
                    if self.watch is not None:
                        self.sending_since = time.monotonic()
                        await send(message)
                        self.sending_since = None
                    else:  # no watch (a bare EventStream): a timer around each write
                        with anyio.move_on_after(self.send_timeout) as timer:
                            await send(message)
                        if timer.cancelled_caught:
                            self._slow = True
                            break
                tg.cancel_scope.cancel()
        except* OSError:  # the server reports a write to a closed socket (from the task group)
            disconnected = True
        finally:
            self.sending_since = None
            if outlet is not None:
                outlet.close()
            if self.watch is not None:
                self.watch.streams.discard(self)
            with anyio.CancelScope(shield=True):
                await self.body_iter.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()
        if self._slow and self.on_slow is not None:
            self.on_slow(scope)
            # A connection reset by ``on_slow`` is reported lost on the loop's next turn: let the
            # server see that first, or it logs the unfinished response as an ERROR per client.
            await anyio.lowlevel.checkpoint()
        if disconnected and self.on_disconnect is not None:
            self.on_disconnect()
