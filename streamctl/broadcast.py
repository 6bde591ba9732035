"""Fan-out: a run's committed log in memory, and subscribers that are cursors into it.

A subscriber holds one integer, the last seq it sent. When the log advances it is woken, reads
every committed frame after its cursor and writes them in one go (DESIGN.md invariant 4). There is
no per-subscriber queue: a slow subscriber simply finds more frames waiting on its next wake, and an
idle one costs a suspended coroutine and a cursor.

The in-memory tail is bounded (``tail_events``); a cursor older than the tail is served from SQLite
transparently, so memory does not grow with the length of a run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from .events import Frame
from .store import Store

PING = b": ping\n\n"
_MAX_FRAMES_PER_WRITE = 1024
_DB_PAGE = 1000


@dataclass(slots=True)
class Counters:
    """Process-wide fan-out counters, owned by the supervisor (for tests, readiness, metrics)."""

    subscribers: int = 0
    """Streams open right now."""
    writes: int = 0
    """Socket writes handed to the server (one per wake with something to send)."""
    pings: int = 0


class RunLog:
    """The committed frames of one live run, as its subscribers see them."""

    __slots__ = ("_changed", "_frames", "_max", "closed", "committed_seq", "run_id", "subscribers")

    def __init__(self, run_id: str, tail_events: int, committed_seq: int = 0) -> None:
        self.run_id = run_id
        self._max = tail_events
        self._frames: list[Frame] = []
        self.committed_seq = committed_seq
        self.closed = False
        """True once the terminal event is committed: nothing will follow it."""
        self.subscribers = 0
        self._changed = anyio.Event()

    @property
    def changed(self) -> anyio.Event:
        """Set at the next publish. Take it *before* reading, so no wake-up is lost."""
        return self._changed

    @property
    def first_seq(self) -> int:
        """Lowest seq still held in memory (``committed_seq + 1`` when empty)."""
        return self._frames[0].seq if self._frames else self.committed_seq + 1

    def add(self, frame: Frame) -> None:
        """Record a committed frame. Subscribers learn of it at the next ``publish``."""
        self._frames.append(frame)
        self.committed_seq = frame.seq
        if frame.type == "done":
            self.closed = True
        if len(self._frames) > self._max:
            # Drop the older half at once, so trimming costs O(1) per event amortised.
            del self._frames[: len(self._frames) - self._max // 2]

    def publish(self) -> None:
        """Wake every subscriber waiting on this log."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def frames_after(self, cursor: int) -> list[Frame] | None:
        """Frames with seq > cursor held in memory; ``None`` if some are only in SQLite."""
        first = self.first_seq
        if cursor + 1 < first:
            return None
        start = cursor + 1 - first
        return self._frames[start : start + _MAX_FRAMES_PER_WRITE]


def reframe(frame: Frame, id_prefix: bytes) -> bytes:
    """The frame with its id written as ``<prefix><seq>`` (thread streams use ``run_id:seq``)."""
    if not id_prefix:
        return frame.sse
    return b"id: " + id_prefix + frame.sse[4:]


async def follow(
    store: Store,
    run_id: str,
    log: RunLog | None,
    cursor: int,
    *,
    ping_interval: float,
    id_prefix: bytes = b"",
    counters: Counters | None = None,
) -> AsyncIterator[bytes]:
    """Yield the SSE bytes of every committed event after ``cursor``, then the live tail.

    Ends after the terminal event. With ``log=None`` the run is finished and fully in SQLite.
    While nothing happens for ``ping_interval`` seconds, yields a ``: ping`` comment.
    """
    counters = counters if counters is not None else Counters()
    counters.subscribers += 1
    if log is not None:
        log.subscribers += 1
    try:
        while True:
            if log is None:
                frames = await store.read_frames(run_id, cursor, cursor + _DB_PAGE)
                if not frames:
                    return
            else:
                changed = log.changed
                held = log.frames_after(cursor)
                if held is None:
                    # Behind the in-memory tail: all of that is committed, so read SQLite.
                    held = await store.read_frames(
                        run_id, cursor, min(log.first_seq - 1, cursor + _DB_PAGE)
                    )
                frames = held
                if not frames:
                    if log.closed:
                        return
                    with anyio.move_on_after(ping_interval):
                        await changed.wait()
                    if not changed.is_set():
                        counters.pings += 1
                        yield PING
                    continue
            counters.writes += 1
            yield b"".join(reframe(f, id_prefix) for f in frames)
            cursor = frames[-1].seq
    finally:
        counters.subscribers -= 1
        if log is not None:
            log.subscribers -= 1
