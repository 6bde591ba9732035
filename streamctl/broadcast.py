"""Fan-out: subscribers that are cursors into a run's committed log (``run_log.RunLog``).

A subscriber holds one integer, the last seq it sent. When the log advances it is woken, reads
every committed frame after its cursor and writes them in one go (docs/architecture.md, invariant
4). There is no per-subscriber queue: a slow subscriber simply finds more frames waiting on its
next wake, and an idle one costs a suspended coroutine and a cursor. A caught-up ``low`` stream
whose response can be written from outside its task parks on the log instead, which writes to it
at each commit without waking it (``run_log.py``).

The in-memory tail is bounded (``tail_events`` and ``tail_bytes``); a cursor older than the tail
is served from the store transparently, so memory does not grow with the length of a run.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
import anyio.lowlevel

from .events import Frame
from .run_log import MAX_FRAMES_PER_WRITE, PING, Outlet, Reader, RunLog, reframe
from .shaping import LAG_MERGE_FRAMES, MESSAGE_BUFFER_CHARS, Granularity, Shaper
from .stats import Counters
from .store.base import RunStore

_MAX_FRAMES_PER_MERGED_WRITE = 8192
"""Shaped (batched/message) writes merge chunks, so they may cover more events at once; bounded
so that one subscriber's merge (a JSON decode per chunk) holds the event loop a few ms at most."""
_DB_PAGE = LAG_MERGE_FRAMES  # a full page from SQLite is, by definition, a lagging read


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
) -> AsyncGenerator[bytes, Outlet | None]:
    """Yield the SSE bytes of every committed event after ``cursor``, then the live tail.

    Ends after the terminal event. With ``log=None`` the run is finished and fully in SQLite.
    After ``ping_interval`` seconds without a write, yields a ``: ping`` comment. With
    ``heartbeat``, someone (the supervisor) publishes idle logs periodically, and the subscriber
    pings when woken idle for long enough; otherwise each wait has its own timer. Events are
    shaped by ``granularity`` (see ``shaping.py``).

    The response may send its ``Outlet`` in (``asend``): then, with ``heartbeat``, a caught-up
    ``low`` subscriber parks on the log, which writes to the outlet itself (``run_log.py``), and
    resumes here when the log hands it back; it then yields ``b""`` once, for the response to
    end a write the log left under way.
    """
    counters = counters if counters is not None else Counters()
    shaper = Shaper(granularity, message_buffer)
    pause = batch_ms / 1000 if granularity == "batched" else 0.0
    limit = MAX_FRAMES_PER_WRITE if granularity == "low" else _MAX_FRAMES_PER_MERGED_WRITE
    counters.subscribers += 1
    if log is not None:
        log.subscribers += 1
        log.follows += 1
    last_write = time.monotonic()
    share = granularity == "low" and log is not None
    outlet: Outlet | None = None
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
                outlet = (yield data) or outlet
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
                    outlet = (yield b"".join(reframe(f, id_prefix) for f in out)) or outlet
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
                    outlet = (yield PING) or outlet
                    last_write = time.monotonic()
                if outlet is not None and outlet.direct and share and log is not None:
                    # Caught up: the log writes the next frames itself, until it hands back.
                    reader = Reader(cursor, id_prefix, outlet, counters, last_write, ping_interval)
                    log.park(reader)
                    try:
                        await reader.woken
                    finally:
                        log.unpark(reader)
                    cursor, last_write = reader.cursor, reader.last_write
                    outlet = (yield b"") or outlet
                    continue
                await changed.wait()
                continue
            with anyio.move_on_after(ping_interval):
                await changed.wait()
            if not changed.is_set():
                counters.pings += 1
                outlet = (yield PING) or outlet
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
                frames = log.frames_after(cursor, MAX_FRAMES_PER_WRITE)
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
