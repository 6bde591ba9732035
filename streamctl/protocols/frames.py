"""A run's committed frames from its first, then its live tail: what the translators read.

The SSE path (``broadcast.follow``) hands out ready-made bytes of our own format; a protocol view
needs the frames themselves (seq, type, data) to translate them. Like ``follow``, a reader is a
cursor into the run's ``RunLog``: woken at each publish, it takes every committed frame after its
cursor (from memory, or from the store when the in-memory tail has moved past it).

A translator keeps state (which message is open, which tool calls are pending), so a view always
reads a run from its first frame, and a resumed view skips what its client already has (see
``wire.render``): the state at any cursor is the same as the first time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..broadcast import RunLog
from ..errors import RunPurged
from ..events import Frame
from .contract import FrameSource, Supervisor

PAGE = 1024
"""Frames per read, from memory or from the store."""


async def run_frames(
    sup: Supervisor, run_id: str, owner: str | None
) -> tuple[dict[str, Any], AsyncIterator[list[Frame]]]:
    """The run's snapshot and its frames from the first on (``RunNotFound``, ``RunPurged``).

    The iterator yields batches of frames in seq order and ends after the terminal event; an
    empty batch means the run was idle for a ping interval (write a keep-alive).
    """
    log = sup.frames.live_log(run_id, owner)
    snapshot = await sup.reads.get_run(run_id, owner)
    if log is None:
        log = sup.frames.live_log(run_id, owner)  # it may have started meanwhile (a chosen id)
    if log is None and snapshot["events_purged_at"] is not None and snapshot["last_seq"] > 0:
        raise RunPurged(run_id, snapshot["events_purged_at"])
    return snapshot, follow_frames(sup.frames, run_id, log)


async def follow_frames(
    source: FrameSource, run_id: str, log: RunLog | None, cursor: int = 0
) -> AsyncIterator[list[Frame]]:
    """Every committed frame after ``cursor``, then the live tail; ``log=None``: a finished run.

    Relies on the supervisor's heartbeat, which publishes logs idle for half a ping interval
    while they have subscribers, to wake an idle reader so it can yield its keep-alive.
    """
    source.count_subscriber(1)
    if log is not None:
        log.subscribers += 1
    last_write = time.monotonic()
    try:
        while True:
            changed = log.changed if log is not None else None  # taken before reading
            frames: list[Frame] | None
            if log is None:
                frames = await source.read_frames(run_id, cursor, cursor + PAGE)
            else:
                frames = log.frames_after(cursor, PAGE)
                if frames is None:  # behind the in-memory tail: all of that is in the store
                    frames = await source.read_frames(
                        run_id, cursor, min(log.first_seq - 1, cursor + PAGE)
                    )
            if frames:
                cursor = frames[-1].seq
                yield frames
                last_write = time.monotonic()
                continue
            if log is None or log.closed:
                return
            assert changed is not None
            if time.monotonic() - last_write >= source.ping_interval:
                yield []
                last_write = time.monotonic()
            await changed.wait()
    finally:
        source.count_subscriber(-1)
        if log is not None:
            log.subscribers -= 1
