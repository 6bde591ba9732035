"""One HTTP response as the benchmarks' client reads it: SSE events with their receive times.

The parsing is done by hand (no httpx) so that the client costs as little CPU as possible and the
receive time of each event is the time its bytes were read from the socket (``time.perf_counter``,
CLOCK_MONOTONIC: the same clock in every process on this machine).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

HEAD_BYTES = 65536
"""Count mode keeps the first bytes of a body (to time its first chunk) and the last ones."""
_DONE = re.compile(rb"id: (\d+)\nevent: done\ndata: ([^\n]*)\n")


class Response:
    """One response. ``mode``: "auto" (SSE parsed if text/event-stream, else body kept),
    "raw" (the raw chunked bytes are kept and decoded after the clock stops) or "count" (like
    raw, but only the first and last ``HEAD_BYTES`` are kept: for millions of events)."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.status = 0
        self.headers: dict[str, str] = {}
        self.sse = False
        self.body = bytearray()
        self.raw: list[bytes] = []
        self._tail = b""
        self.reads: list[tuple[float, int]] = []
        """Raw mode: (receive time, bytes received so far) per read (count mode: the head's)."""
        self.raw_bytes = 0
        self.tail = b""
        """Count mode: the last ``HEAD_BYTES`` received."""
        self.done_seen_at: float | None = None
        """Raw and count modes: receive time of the read holding ``event: done``."""
        self.sent_at = 0.0
        self.headers_at = 0.0
        self.end_at = 0.0
        self.ids: list[int] = []
        self.types: list[bytes] = []
        self.times: list[float] = []
        self.done_data: bytes | None = None
        self.pings: list[float] = []
        """Receive times of ``: ping`` comments."""
        self._pending = b""
        self._count_wait: tuple[int, asyncio.Future[float]] | None = None
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def wait_count(self, n: int) -> asyncio.Future[float]:
        """A future set (to the receive time) once ``n`` SSE events have been read."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if len(self.ids) >= n:
            fut.set_result(self.times[n - 1])
        elif self.done.done():
            fut.set_exception(ConnectionError(f"stream ended after {len(self.ids)} events"))
        else:
            self._count_wait = (n, fut)
        return fut

    def feed(self, data: bytes, t: float) -> None:
        if not self.sse:
            self.body += data
            return
        if b": ping\n" in data:  # one line, not a block: seen in the read that brings it
            self.pings += [t] * data.count(b": ping\n")
        pending = self._pending + data if self._pending else data
        start = 0
        while True:
            end = pending.find(b"\n\n", start)
            if end < 0:
                break
            self._block(pending[start:end], t)
            start = end + 2
        self._pending = pending[start:]

    def _block(self, block: bytes, t: float) -> None:
        seq = -1
        type = b"message"
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                seq = int(line[4:])
            elif line.startswith(b"event: "):
                type = line[7:]
            elif line.startswith(b"data: ") and type == b"done":
                self.done_data = line[6:]
        if seq < 0:
            return  # `retry:` or a `: ping` comment
        self.ids.append(seq)
        self.types.append(type)
        self.times.append(t)
        waiting = self._count_wait
        if waiting is not None and len(self.ids) >= waiting[0]:
            self._count_wait = None
            if not waiting[1].done():
                waiting[1].set_result(t)

    def finish(self, t: float, error: BaseException | None = None) -> None:
        self.end_at = t
        waiting, self._count_wait = self._count_wait, None
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(ConnectionError(f"stream ended after {len(self.ids)} events"))
            waiting[1].exception()  # retrieved: whoever awaits it still gets it
        if not self.done.done():
            if error is not None:
                self.done.set_exception(error)
            else:
                self.done.set_result(t)

    def first(self, type: bytes) -> float:
        return self.times[self.types.index(type)]

    def json(self) -> Any:
        return json.loads(self.body)

    def add_raw(self, data: bytes, t: float) -> bool:
        """Raw and count modes: one read of the chunked body; True once its last chunk is in."""
        before = self.raw_bytes
        self.raw_bytes += len(data)
        if self.mode == "raw" or before < HEAD_BYTES:
            self.raw.append(data)
            self.reads.append((t, self.raw_bytes))
        if self.mode == "count":
            self.tail = (self.tail + data)[-HEAD_BYTES:]
        # The last bytes of the previous read too: a needle may straddle two reads.
        if self.done_seen_at is None and b"event: done\n" in self._tail + data[:16]:
            self.done_seen_at = t
        if self.done_seen_at is None and b"event: done\n" in data:
            self.done_seen_at = t
        self._tail = (self._tail + data[-16:])[-16:]
        return self._tail.endswith(b"0\r\n\r\n")  # the last chunk (a data chunk ends "\n\n\r\n")

    def first_raw(self, needle: bytes) -> float:
        """Raw mode: receive time of the read that completed the first ``needle`` (NaN if it is
        not in what was kept)."""
        found = b"".join(self.raw).find(needle)
        if found < 0:
            return float("nan")
        end = found + len(needle)
        return next(t for t, total in self.reads if total >= end)

    def tail_done(self) -> tuple[int, Any] | None:
        """Count mode: (id, data) of the ``done`` event among the last bytes, if it came."""
        found = list(_DONE.finditer(self.tail))
        if not found:
            return None
        return int(found[-1].group(1)), json.loads(found[-1].group(2))

    def decode_raw(self) -> tuple[list[int], list[bytes]]:
        """Ids and types of the events in a "raw" response (after the clock stopped)."""
        data = b"".join(self.raw)
        out = bytearray()
        pos = 0
        while True:
            nl = data.index(b"\r\n", pos)
            size = int(data[pos:nl].split(b";")[0], 16)
            if size == 0:
                break
            out += data[nl + 2 : nl + 2 + size]
            pos = nl + 2 + size + 2
        ids: list[int] = []
        types: list[bytes] = []
        for block in bytes(out).split(b"\n\n"):
            if block.startswith(b"id: "):
                head, _, rest = block.partition(b"\n")
                ids.append(int(head[4:]))
                types.append(rest.partition(b"\n")[0][7:])
        return ids, types
