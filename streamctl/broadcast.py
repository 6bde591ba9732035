"""Fan-out: a run's committed log in memory, and subscribers that are cursors into it.

A subscriber holds one integer, the last seq it sent. When the log advances it is woken, reads
every committed frame after its cursor and writes them in one go (docs/architecture.md, invariant
4). There is no per-subscriber queue: a slow subscriber simply finds more frames waiting on its
next wake, and an idle one costs a suspended coroutine and a cursor.

The in-memory tail is bounded (``tail_events`` and ``tail_bytes``); a cursor older than the tail
is served from the store transparently, so memory does not grow with the length of a run.

At high fan-out the cost of one event is paid once per subscriber, so two things are shared:
subscribers at the same cursor (the common case: all caught up) take one joined ``bytes`` object
per wake (``RunLog.shared``), and ``publish`` wakes waiters in groups of ``WAKE_BATCH``, one
group per turn of the event loop, so that one event at 5,000 subscribers does not put 5,000 task
steps in one turn ahead of every timer (pings, an agent's pacing) and every other run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

from .events import Frame
from .shaping import LAG_MERGE_FRAMES, MESSAGE_BUFFER_CHARS, Granularity, Shaper
from .stats import Counters
from .store.base import RunStore

PING = b": ping\n"
"""A comment line, ended by one newline (a blank line would dispatch an empty event)."""
_MAX_FRAMES_PER_WRITE = 1024
_MAX_FRAMES_PER_MERGED_WRITE = 8192
"""Shaped (batched/message) writes merge chunks, so they may cover more events at once; bounded
so that one subscriber's merge (a JSON decode per chunk) holds the event loop a few ms at most."""
_DB_PAGE = LAG_MERGE_FRAMES  # a full page from SQLite is, by definition, a lagging read
WAKE_BATCH = 128
"""Waiters woken per turn of the event loop by one ``publish``."""
_MAX_SHARED = 64
"""Distinct (cursor, id prefix) pairs a log keeps joined bytes for between two commits."""


class RunLog:
    """The committed frames of one live run, as its subscribers see them."""

    __slots__ = (
        "_filled",
        "_frames",
        "_groups",
        "_max",
        "_max_bytes",
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
        self._groups: list[anyio.Event] = [anyio.Event()]
        """The waiters of the next publish, in groups of ``WAKE_BATCH`` takers each."""
        self._filled = 0
        self._unpublished = 0
        """Frames added since the last publish: a trim keeps them, so that a subscriber caught up
        at that publish finds the whole next commit in memory, however many events it holds."""
        self._shared: dict[tuple[int, bytes], tuple[bytes, int, int]] = {}
        """(cursor, id prefix) -> (joined SSE bytes, last seq, events): what subscribers at that
        cursor send now; emptied by every ``add``."""

    @property
    def changed(self) -> anyio.Event:
        """Set at the next publish. Take it *before* reading, so no wake-up is lost; keep it
        until it is set (each take counts a waiter: groups are filled in order of taking)."""
        if self._filled >= WAKE_BATCH:
            self._groups.append(anyio.Event())
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
        one more group per turn of the event loop."""
        self.last_publish = time.monotonic()
        self._unpublished = 0
        groups, self._groups, self._filled = self._groups, [anyio.Event()], 0
        groups[0].set()
        if len(groups) > 1:
            asyncio.get_running_loop().call_soon(_wake, groups, 1)

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
        else:
            data = b"".join([f.sse for f in frames])
        found = (data, frames[-1].seq, len(frames))
        if len(self._shared) < _MAX_SHARED:
            self._shared[key] = found
        return found

    def frames_after(self, cursor: int, limit: int = _MAX_FRAMES_PER_WRITE) -> list[Frame] | None:
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


async def follow(
    store: RunStore,
    run_id: str,
    log: RunLog | None,
    cursor: int,
    *,
    ping_interval: float,
    id_prefix: bytes = b"",
    counters: Counters | None = None,
    granularity: Granularity = "low",
    batch_ms: float = 50.0,
    heartbeat: bool = False,
    message_buffer: int = MESSAGE_BUFFER_CHARS,
) -> AsyncIterator[bytes]:
    """Yield the SSE bytes of every committed event after ``cursor``, then the live tail.

    Ends after the terminal event. With ``log=None`` the run is finished and fully in SQLite.
    After ``ping_interval`` seconds without a write, yields a ``: ping`` comment. With
    ``heartbeat``, someone (the supervisor) publishes idle logs periodically, and the subscriber
    pings when woken idle for long enough; otherwise each wait has its own timer. Events are
    shaped by ``granularity`` (see ``shaping.py``).
    """
    counters = counters if counters is not None else Counters()
    shaper = Shaper(granularity, message_buffer)
    pause = batch_ms / 1000 if granularity == "batched" else 0.0
    limit = _MAX_FRAMES_PER_WRITE if granularity == "low" else _MAX_FRAMES_PER_MERGED_WRITE
    counters.subscribers += 1
    if log is not None:
        log.subscribers += 1
        log.follows += 1
    last_write = time.monotonic()
    share = granularity == "low" and log is not None
    changed: anyio.Event | None = None
    try:
        while True:
            if log is not None and (changed is None or changed.is_set()):
                changed = log.changed
            joined = log.shared(cursor, id_prefix) if share and log is not None else None
            if joined is not None and joined[2]:
                # Caught up or nearly (`low`): the bytes every subscriber at this cursor sends.
                data, cursor, events = joined
                counters.writes += 1
                counters.events_sent += events
                yield data
                last_write = time.monotonic()
                continue
            frames: list[Frame]
            if joined is not None:
                frames = []  # nothing new: wait below
            elif log is None:
                frames = await store.read_frames(run_id, cursor, cursor + _DB_PAGE)
            else:
                held = log.frames_after(cursor, limit)
                if held is None:
                    # Behind the in-memory tail: all of that is committed, so read SQLite.
                    held = await store.read_frames(
                        run_id, cursor, min(log.first_seq - 1, cursor + _DB_PAGE)
                    )
                frames = held
            if frames:
                # How far behind the live log this subscriber was: a whole write's worth makes a
                # `low` stream merge its chunks (a replay of a finished run is sent as it is).
                behind = log.committed_seq - cursor if log is not None else 0
                cursor = frames[-1].seq
                out = shaper.shape(frames, behind)
                if out:
                    counters.writes += 1
                    counters.events_sent += len(out)
                    yield b"".join(reframe(f, id_prefix) for f in out)
                    last_write = time.monotonic()
                    if pause and log is not None and cursor >= log.committed_seq:
                        # Caught up: let the next chunks gather into one event. (Behind, the
                        # next read already has plenty to merge: no reason to wait.)
                        await anyio.sleep(pause)
                else:
                    # Nothing to send yet (a `message` stream holds text back): the next page
                    # may be in memory too, so let the loop turn before merging it.
                    await anyio.lowlevel.checkpoint()
                continue
            if log is None or log.closed:
                return
            if log.failure is not None:
                yield log.failure
                return
            assert changed is not None
            if heartbeat:
                if time.monotonic() - last_write >= ping_interval:
                    counters.pings += 1
                    yield PING
                    last_write = time.monotonic()
                await changed.wait()
                continue
            with anyio.move_on_after(ping_interval):
                await changed.wait()
            if not changed.is_set():
                counters.pings += 1
                yield PING
    finally:
        counters.subscribers -= 1
        if log is not None:
            log.subscribers -= 1


async def follow_frames(
    store: RunStore,
    run_id: str,
    log: RunLog | None,
    cursor: int = 0,
    *,
    ping_interval: float,
    counters: Counters,
) -> AsyncIterator[list[Frame]]:
    """As ``follow``, the frames themselves rather than our SSE bytes: what a protocol view
    translates (``protocols/``). Yields batches in seq order and ends after the terminal event;
    an empty batch means the run was idle for ``ping_interval`` (the caller writes its own
    keep-alive). Relies on the supervisor's heartbeat, which publishes logs idle for half a ping
    interval while they have subscribers, to wake an idle reader."""
    counters.subscribers += 1
    if log is not None:
        log.subscribers += 1
        log.follows += 1
    last_write = time.monotonic()
    changed: anyio.Event | None = None
    try:
        while True:
            if log is not None and (changed is None or changed.is_set()):
                changed = log.changed  # taken before reading, kept until it is set
            frames: list[Frame] | None
            if log is None:
                frames = await store.read_frames(run_id, cursor, cursor + _DB_PAGE)
            else:
                frames = log.frames_after(cursor, _MAX_FRAMES_PER_WRITE)
                if frames is None:  # behind the in-memory tail: all of that is in the store
                    frames = await store.read_frames(
                        run_id, cursor, min(log.first_seq - 1, cursor + _DB_PAGE)
                    )
            if frames:
                cursor = frames[-1].seq
                yield frames
                last_write = time.monotonic()
                continue
            if log is None or log.closed or log.failure is not None:
                return  # a failed log's views end (their protocol has no id-less error)
            assert changed is not None
            if time.monotonic() - last_write >= ping_interval:
                counters.pings += 1
                yield []
                last_write = time.monotonic()
            await changed.wait()
    finally:
        counters.subscribers -= 1
        if log is not None:
            log.subscribers -= 1
