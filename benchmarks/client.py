"""The benchmarks' HTTP/1.1 client: raw asyncio protocol, keep-alive, chunked decoding by hand.

One ``Conn`` carries one request at a time; what it reads goes to a ``Response`` (SSE parsed with
receive times, or the raw bytes kept for decoding after the clock stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from benchmarks.response import Response

HOST = "127.0.0.1"
_HEAD, _LENGTH, _SIZE, _DATA, _CRLF, _TRAILER, _RAW, _UNTIL_CLOSE, _IDLE = range(9)


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        """Sent with every request (e.g. ``Authorization``)."""
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.resp: Response | None = None
        self.state = _IDLE
        self.left = 0
        self.closed = False
        self.closing = False
        """We closed it: a response cut short then is not an error."""

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(headers), HOST, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.resp
        if resp is not None:
            self.resp = None
            if self.state == _UNTIL_CLOSE or self.closing:
                resp.finish(time.perf_counter())
            else:
                resp.finish(time.perf_counter(), ConnectionError("connection closed"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        mode: str = "auto",
    ) -> Response:
        assert self.resp is None and self.transport is not None, "one request at a time"
        resp = Response(mode)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Accept: text/event-stream"]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            lines.append("Content-Type: application/json")
        if body is not None or method == "POST":
            lines.append(f"Content-Length: {len(payload)}")
        for key, value in (self.headers | (headers or {})).items():
            lines.append(f"{key}: {value}")
        self.resp = resp
        self.state = _HEAD
        resp.sent_at = time.perf_counter()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        return resp

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        resp = self.resp
        if resp is None:
            return
        if self.state == _RAW:
            self._raw(resp, data, t)
            return
        self.buf += data
        self._parse(resp, t)

    def _raw(self, resp: Response, data: bytes, t: float) -> None:
        if resp.add_raw(data, t):
            self._done(resp, t)

    def _done(self, resp: Response, t: float) -> None:
        self.resp = None
        self.state = _IDLE
        resp.finish(t)

    def _parse(self, resp: Response, t: float) -> None:
        buf = self.buf
        pos = 0
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                lines = bytes(buf[pos:end]).decode("latin-1").split("\r\n")
                pos = end + 4
                resp.status = int(lines[0].split(" ", 2)[1])
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    resp.headers[key.strip().lower()] = value.strip()
                resp.headers_at = t
                resp.sse = resp.headers.get("content-type", "").startswith("text/event-stream")
                chunked = resp.headers.get("transfer-encoding", "").lower() == "chunked"
                if resp.status in (204, 304):
                    self._done(resp, t)
                elif chunked and resp.mode in ("raw", "count"):
                    self.state = _RAW
                    rest = bytes(buf[pos:])
                    del buf[:]
                    if rest:
                        self._raw(resp, rest, t)
                    return
                elif chunked:
                    self.state = _SIZE
                elif "content-length" in resp.headers:
                    self.left = int(resp.headers["content-length"])
                    self.state = _LENGTH
                    if self.left == 0:
                        self._done(resp, t)
                else:
                    self.state = _UNTIL_CLOSE
            elif state == _LENGTH:
                n = min(self.left, len(buf) - pos)
                if n == 0:
                    break
                resp.feed(bytes(buf[pos : pos + n]), t)
                pos += n
                self.left -= n
                if self.left == 0:
                    self._done(resp, t)
            elif state == _SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                pos = nl + 2
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.left = size
                    self.state = _DATA
            elif state == _DATA:
                n = min(self.left, len(buf) - pos)
                if n == 0:
                    break
                resp.feed(bytes(buf[pos : pos + n]), t)
                pos += n
                self.left -= n
                if self.left == 0:
                    self.state = _CRLF
            elif state == _CRLF:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.state = _SIZE
            elif state == _TRAILER:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                empty = nl == pos
                pos = nl + 2
                if empty:
                    self._done(resp, t)
            elif state == _UNTIL_CLOSE:
                if pos < len(buf):
                    resp.feed(bytes(buf[pos:]), t)
                pos = len(buf)
                break
            else:
                pos = len(buf)  # nothing expected: drop
                break
            if self.resp is None:
                pos = len(buf)
                break
        del buf[:pos]


async def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    conn: Conn | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A plain request (JSON answer); on a fresh connection (with ``headers``) unless one is
    given."""
    own = conn is None
    c = conn or await Conn.open(port, headers)
    try:
        resp = c.send(method, path, body)
        await resp.done
        return resp.status, resp.json() if resp.body else None
    finally:
        if own:
            c.close()


async def start_run(
    port: int,
    body: dict[str, Any],
    conn: Conn | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Start a run in the background (``POST /v1/runs``); its id."""
    status, run = await request(port, "POST", "/v1/runs", body, conn=conn, headers=headers)
    if status != 201:
        raise RuntimeError(f"POST /v1/runs answered {status}: {run}")
    run_id: str = run["run_id"]
    return run_id


async def stop_later(port: int, run_ids: Callable[[], list[str]], after: float) -> int:
    """After ``after`` seconds, stop the runs ``run_ids()`` names (a cap on a step's time when
    the server cannot keep the agent's pace). Returns how many stops were sent."""
    await asyncio.sleep(after)
    ids = run_ids()
    sem = asyncio.Semaphore(20)

    async def one(run_id: str) -> None:
        async with sem:
            await request(port, "POST", f"/v1/runs/{run_id}/stop?wait=false")

    await asyncio.gather(*(one(r) for r in ids))
    return len(ids)


def check(resp: Response, what: str) -> None:
    if resp.status != 200:
        raise RuntimeError(f"{what}: HTTP {resp.status} {bytes(resp.body[:300])!r}")
