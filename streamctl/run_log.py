"""A live run's committed log in memory, and the caught-up streams it writes to itself.

``RunLog`` holds the committed frames of one live run (a bounded tail: ``tail_events`` and
``tail_bytes``; a cursor older than it is served from the store by ``broadcast.follow``) and
wakes its subscribers at each ``publish``.

At high fan-out the cost of one event is paid once per subscriber, so it is shared: subscribers
at the same cursor (the common case: all caught up) take one joined ``bytes`` object per wake
(``shared``), and ``publish`` wakes waiters in groups of ``WAKE_BATCH``, one group per turn of
the event loop, so that one event at 5,000 subscribers does not put 5,000 task steps in one turn
ahead of every timer (pings, an agent's pacing) and every other run.

A caught-up ``low`` stream need not be woken at all: it *parks* on the log (a ``Reader``: its
cursor and its response's ``Outlet``), and each publish writes the new frames to it from a
callback, ``WAKE_BATCH`` readers per turn of the loop, without a task switch per event. The log
hands a reader back to its task (wakes it) whenever the write is not that simple: the reader
fell behind the tail or lags, the run ended or failed, or the server could not take the write at
once (``Outlet.write`` returned False: the client's socket is full, and the stream's task waits
for it as it does for any write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import anyio

from .events import Frame
from .shaping import LAG_MERGE_FRAMES
from .stats import Counters

logger = logging.getLogger("streamctl.broadcast")

PING = b": ping\n"
"""A comment line, ended by one newline (a blank line would dispatch an empty event)."""
MAX_FRAMES_PER_WRITE = 1024
WAKE_BATCH = 128
"""Waiters woken, and parked readers written, per turn of the event loop by one ``publish``."""
_MAX_SHARED = 64
"""Distinct (cursor, id prefix) pairs a log keeps joined bytes for between two commits."""


class Outlet(Protocol):
    """Where a parked reader's bytes go: its response (``sse.EventStream``)."""

    direct: bool
    """Whether the log may write here now (a reader parks only then)."""

    def write(self, data: bytes) -> bool | None:
        """Send ``data`` now, from outside the stream's task. True: sent. False: the stream's task
        must take over (the send is still under way, or failed), ``data`` is the response's.
        None: refused, nothing was sent (the response is over, a send is still under way, the
        connection is gone, or the outlet is off)."""
        ...


class Reader:
    """A caught-up ``low`` subscriber parked on a log: the log writes to its outlet itself."""

    __slots__ = (
        "counters",
        "cursor",
        "id_prefix",
        "last_write",
        "outlet",
        "ping_interval",
        "woken",
    )

    def __init__(
        self,
        cursor: int,
        id_prefix: bytes,
        outlet: Outlet,
        counters: Counters,
        last_write: float,
        ping_interval: float,
    ) -> None:
        self.cursor = cursor
        self.id_prefix = id_prefix
        self.outlet = outlet
        self.counters = counters
        self.last_write = last_write
        self.ping_interval = ping_interval
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the log hands the reader back to its task. A bare future, not an
        ``anyio.Event`` (≈ 1.1 KiB with its waiters' deque): an idle stream stays parked."""


class RunLog:
    """The committed frames of one live run, as its subscribers see them."""

    __slots__ = (
        "_filled",
        "_frames",
        "_groups",
        "_max",
        "_max_bytes",
        "_readers",
        "_rewrite",
        "_shared",
        "_unpublished",
        "bytes",
        "closed",
        "committed_seq",
        "failure",
        "follows",
        "last_publish",
        "run_id",
        "subscribers",
    )

    def __init__(
        self,
        run_id: str,
        tail_events: int,
        committed_seq: int = 0,
        tail_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.run_id = run_id
        self._max = tail_events
        self._max_bytes = tail_bytes
        self._frames: list[Frame] = []
        self.bytes = 0
        """SSE bytes of the frames held in memory."""
        self.committed_seq = committed_seq
        self.closed = False
        """True once the terminal event is committed: nothing will follow it."""
        self.failure: bytes | None = None
        """An SSE ``error`` without ``id:``: the store cannot write the run's end for now, so
        each subscriber sends it once caught up, and closes (see ``fail``)."""
        self.subscribers = 0
        self.follows = 0
        """Subscriptions ever opened on this log (a count that never goes down, for tests that
        wait for a client to have read, dropped and resumed: ``subscribers`` may pass 0 unseen)."""
        self.last_publish = time.monotonic()
        """When subscribers were last woken (the supervisor's heartbeat wakes idle logs)."""
        self._groups: list[anyio.Event] = []
        """The waiters of the next publish, in groups of ``WAKE_BATCH`` takers each."""
        self._filled = 0
        self._unpublished = 0
        """Frames added since the last publish: a trim keeps them, so that a subscriber caught up
        at that publish finds the whole next commit in memory, however many events it holds."""
        self._readers: dict[Reader, None] = {}
        """Parked readers, in order of parking (a dict: removal is O(1))."""
        self._rewrite: bool | None = None
        """None: no pass over the readers is under way; False: one is; True: one is, and a
        publish since asks for another once it ends."""
        self._shared: dict[tuple[int, bytes], tuple[bytes, int, int]] = {}
        """(cursor, id prefix) -> (joined SSE bytes, last seq, events): what subscribers at that
        cursor send now; emptied by every ``add``."""

    @property
    def changed(self) -> anyio.Event:
        """Set at the next publish. Take it *before* reading, so no wake-up is lost; keep it
        until it is set (each take counts a waiter: groups are filled in order of taking)."""
        if not self._groups or self._filled >= WAKE_BATCH:
            self._groups.append(anyio.Event())  # none until taken: a parked reader takes none
            self._filled = 0
        self._filled += 1
        return self._groups[-1]

    @property
    def first_seq(self) -> int:
        """Lowest seq still held in memory (``committed_seq + 1`` when empty)."""
        return self._frames[0].seq if self._frames else self.committed_seq + 1

    def add(self, frame: Frame) -> None:
        """Record a committed frame. Subscribers learn of it at the next ``publish``."""
        self._frames.append(frame)
        self._unpublished += 1
        if self._shared:
            self._shared = {}
        self.bytes += len(frame.sse)
        self.committed_seq = frame.seq
        if frame.type == "done":
            self.closed = True
        if len(self._frames) > self._max or self.bytes > self._max_bytes:
            self._trim()

    def _trim(self) -> None:
        # Drop older frames until both bounds are halved, so trimming costs O(1) per event
        # amortised. The frames not published yet always stay (the newest one at least): a
        # commit of more events than the tail would otherwise send every subscriber that was
        # caught up to the store for it. The tail may so hold one commit beyond its bounds.
        frames, drop, size = self._frames, 0, self.bytes
        keep_events, keep_bytes = self._max // 2, self._max_bytes // 2
        last = len(frames) - max(1, self._unpublished)
        while drop < last and (len(frames) - drop > keep_events or size > keep_bytes):
            size -= len(frames[drop].sse)
            drop += 1
        del frames[:drop]
        self.bytes = size

    def fail(self, sse: bytes) -> None:
        """End every stream of the run with ``sse`` (not part of the log) once caught up."""
        self.failure = sse
        self.publish()

    def publish(self) -> None:
        """Wake every subscriber waiting on this log: the first ``WAKE_BATCH`` at once, then
        one more group per turn of the event loop; and write to the parked readers, from
        callbacks (``WAKE_BATCH`` per turn), so that the committer is not held up by them."""
        self.last_publish = time.monotonic()
        self._unpublished = 0
        groups = self._groups
        if groups:
            self._groups, self._filled = [], 0
            groups[0].set()
            if len(groups) > 1:
                asyncio.get_running_loop().call_soon(_wake, groups, 1)
        if self._readers:
            if self._rewrite is None:
                self._rewrite = False
                asyncio.get_running_loop().call_soon(self._write_readers, list(self._readers), 0)
            else:
                self._rewrite = True

    @property
    def parked(self) -> int:
        """Readers parked on this log now."""
        return len(self._readers)

    def park(self, reader: Reader) -> None:
        """From now on each publish writes what ``reader`` has not sent yet to its outlet, until
        the log sets ``reader.woken``: the reader's task takes over again. A reader that is not
        caught up (the log moved on while it last wrote: a ping the client was slow to take) is
        woken at once: no publish may come to write what it missed."""
        if reader.cursor < self.committed_seq or self.closed or self.failure is not None:
            reader.woken.set_result(None)
            return
        self._readers[reader] = None

    def unpark(self, reader: Reader) -> None:
        self._readers.pop(reader, None)

    def _write_readers(self, readers: list[Reader], start: int) -> None:
        now = time.monotonic()
        parked = self._readers
        try:
            for reader in readers[start : start + WAKE_BATCH]:
                if reader not in parked:
                    continue
                try:
                    self._write_reader(reader, now)
                except Exception:  # a broken stream must not stop the others' writes
                    logger.exception("run %s: writing to a caught-up stream failed", self.run_id)
                    if reader in parked:
                        self._hand_back(reader)
        finally:
            loop = asyncio.get_running_loop()
            if start + WAKE_BATCH < len(readers):
                loop.call_soon(self._write_readers, readers, start + WAKE_BATCH)
            elif self._rewrite and parked:
                self._rewrite = False  # published again meanwhile: one more pass
                loop.call_soon(self._write_readers, list(parked), 0)
            else:
                self._rewrite = None

    def _write_reader(self, reader: Reader, now: float) -> None:
        """Write to one parked reader what it has not sent; hand it back to its task when that
        is not a plain write of frames held in memory."""
        if self.failure is not None:
            self._hand_back(reader)  # its task sends the failure once caught up
            return
        found = self.shared(reader.cursor, reader.id_prefix)
        if found is None:  # behind the tail, or lagging (its task merges the chunks)
            self._hand_back(reader)
            return
        data, last, events = found
        if events:
            written = reader.outlet.write(data)
            if written is None:  # refused, nothing sent: its task sends it
                self._hand_back(reader)
                return
            reader.cursor, reader.last_write = last, now
            counters = reader.counters
            counters.writes += 1
            counters.direct_writes += 1
            counters.events_sent += events
            if not written or self.closed:
                self._hand_back(reader)  # a send under way, or the run's end: its task ends it
        elif self.closed:
            self._hand_back(reader)
        elif now - reader.last_write >= reader.ping_interval:  # the heartbeat's publish
            written = reader.outlet.write(PING)
            if written is not None:
                reader.counters.pings += 1
                reader.last_write = now
            if not written:  # under way or refused
                self._hand_back(reader)

    def _hand_back(self, reader: Reader) -> None:
        del self._readers[reader]
        if not reader.woken.done():  # cancelled with its task, not unparked yet
            reader.woken.set_result(None)

    def shared(self, cursor: int, id_prefix: bytes) -> tuple[bytes, int, int] | None:
        """What a ``low`` subscriber at ``cursor`` sends now from memory: its joined SSE bytes,
        the last seq they cover and how many events; the same object for every subscriber at
        that cursor until the next commit. ``None``: not all in memory, or lagging (a lagging
        ``low`` subscriber merges chunks: ``Shaper``)."""
        key = (cursor, id_prefix)
        found = self._shared.get(key)
        if found is not None:
            return found
        if self.committed_seq - cursor >= LAG_MERGE_FRAMES:
            return None
        frames = self.frames_after(cursor)
        if frames is None:
            return None
        if not frames:
            return (b"", cursor, 0)
        if id_prefix:
            data = b"".join([reframe(f, id_prefix) for f in frames])
        elif len(frames) == 1:
            data = frames[0].sse  # a run's next token: nothing to join
        else:
            data = b"".join([f.sse for f in frames])
        found = (data, frames[-1].seq, len(frames))
        if len(self._shared) < _MAX_SHARED:
            self._shared[key] = found
        return found

    def frames_after(self, cursor: int, limit: int = MAX_FRAMES_PER_WRITE) -> list[Frame] | None:
        """Up to ``limit`` frames with seq > cursor held in memory; ``None`` if some are only in
        SQLite."""
        first = self.first_seq
        if cursor + 1 < first:
            return None
        start = cursor + 1 - first
        return self._frames[start : start + limit]


def _wake(groups: list[anyio.Event], next_group: int) -> None:
    groups[next_group].set()
    if next_group + 1 < len(groups):
        asyncio.get_running_loop().call_soon(_wake, groups, next_group + 1)


def reframe(frame: Frame, id_prefix: bytes) -> bytes:
    """The frame with its id written as ``<prefix><seq>`` (thread streams use ``run_id:seq``)."""
    if not id_prefix:
        return frame.sse
    return b"id: " + id_prefix + frame.sse[4:]
