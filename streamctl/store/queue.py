"""The write queue of a group-committing store: one FIFO lane per run, bounded fair batches.

Everything a store is asked to write (a run's events, its row's statements) is queued in that
run's *lane*, in order; statements that belong to no run (retention) have a lane of their own. The
writer takes one batch at a time and commits it in one transaction:

- a batch holds at most ``max_rows`` items and ``max_bytes`` bytes (a lone larger item still goes
  alone), so no transaction grows with a firehose's backlog;
- lanes are served round robin, each at most its share (``max_rows`` / lanes waiting) per turn,
  and a lane served goes to the back: a run with one event waiting is in the next batch, however
  much another run has queued; and while such short lanes wait beside a long one (a firehose's
  backlog), that batch is small (their items and ``max_rows`` / 8 of the backlog), so its commit
  is short too;
- a lane's items leave in order, so a run's row is written before its events and its final row
  with (or after) its last event.

A stopped run's events that wait in its lane, not taken into a batch yet, can be dropped
(``drop_events``): nobody has seen them (commit before send), so the run numbers on after the
last one kept and its ``done`` follows that, without waiting for a backlog nobody will read.

``flush`` needs "everything queued before now is settled": each lane counts the items it was
given (``queued``) and the items whose batch has ended (``settled``); a flush waits until every
lane reaches the count it had, and fails if items of that range were lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..events import Frame
from ..stats import StoreStats
from .base import CommitSink
from .chunks import Chunking

Pending = tuple[str, Frame, object, CommitSink]
"""An event waiting for its commit: run id, frame, what the sink is given back with the frame
(a ``Run`` queues its event's fields, ``event.__dict__``), the sink told once it is durable."""

SHORT_LANE = 16
"""A lane with at most this many items waiting is short: beside a long one, it is served first
in a small batch (see ``WriteQueue.take``)."""
BACKLOG_SHARE = 8
"""In a batch that serves short lanes, long lanes give at most ``max_rows`` / this."""

EVENT_OVERHEAD = 64
"""Bytes an event row costs besides its SSE block (run id, time), for the byte cap. The block
stands in for the row's JSON payload: a few bytes more (its ``id:`` and ``event:`` lines), and
its length is known without a search, twice per event (queued, taken)."""


@dataclass(frozen=True, slots=True)
class Statement:
    """A write of a run's row (or of retention) queued in a lane."""

    sql: str
    params: Sequence[Any]
    ends_run: str | None = None
    """The run whose final row this writes (the SQLite store forgets its seq once committed)."""

    @property
    def size(self) -> int:
        return 64 + sum(len(p) for p in self.params if isinstance(p, bytes | str))


Item = Pending | Statement


def size_of(item: Item) -> int:
    """What an item weighs against the byte caps. ``WriteQueue.put`` and ``take`` compute the
    same inline (they run once per event): change all three together."""
    if isinstance(item, Statement):
        return item.size
    return len(item[1].sse) + EVENT_OVERHEAD


class Lane:
    """One run's queued writes, in order."""

    __slots__ = ("bytes", "items", "key", "losses", "queued", "settled")

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: deque[Item] = deque()
        self.bytes = 0
        """Bytes of the items not settled yet (queued or in the batch being committed)."""
        self.queued = 0
        """Items ever queued in this lane (item k is the k-th, from 1)."""
        self.settled = 0
        """Items whose batch has ended, committed or lost (always the first ones)."""
        self.losses: list[tuple[int, int, BaseException]] = []
        """Ranges (after, upto] of items lost, and why."""


@dataclass(slots=True)
class Batch:
    """Items taken for one transaction: statements first (in order), then events."""

    statements: list[Statement] = field(default_factory=list)
    events: list[Pending] = field(default_factory=list)
    lanes: dict[Lane, list[int]] = field(default_factory=dict)
    """How many items, and how many bytes, each lane gave."""
    bytes: int = 0
    journal_id: int = 0
    """The journal id of its first event (the SQLite store's; ``chunks.py``)."""
    chunking: Chunking | None = None
    """Runs' journaled events this commit chunks too (the SQLite store's)."""

    @property
    def rows(self) -> int:
        return len(self.statements) + len(self.events)


@dataclass(frozen=True, slots=True)
class Mark:
    """What one ``flush`` waits for in one lane: items (start, upto]."""

    lane: Lane
    start: int
    upto: int

    @property
    def reached(self) -> bool:
        return self.lane.settled >= self.upto

    def loss(self) -> BaseException | None:
        for after, upto, exc in self.lane.losses:
            if after < self.upto and upto > self.start:
                return exc
        return None


class WriteQueue:
    """Lanes with something queued, and the batches the writer takes from them."""

    def __init__(self, max_rows: int, max_bytes: int, stats: StoreStats) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.stats = stats
        """Where the high-water marks of a lane's backlog go."""
        self._lanes: dict[str, Lane] = {}
        self._ready: deque[Lane] = deque()
        """Lanes with items waiting, in round-robin order."""
        self._progress: anyio.Event | None = None
        self._inflight: Batch | None = None
        """The batch taken and not settled yet (the writer takes one at a time)."""

    def __bool__(self) -> bool:
        return bool(self._ready)

    def put(self, key: str, item: Item) -> None:
        # Runs once per event a run emits: no helper calls, one type test.
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        items = lane.items
        if not items:
            self._ready.append(lane)
        items.append(item)
        lane.queued += 1
        if isinstance(item, Statement):
            lane.bytes += item.size
            return  # a run's rows are not what backpressure bounds (the final one is big)
        lane.bytes += len(item[1].sse) + EVENT_OVERHEAD
        # High-water marks: what the backlog bounds (``Run.backlogged``) must keep small.
        stats = self.stats
        if lane.queued - lane.settled > stats.max_backlog_events:
            stats.max_backlog_events = lane.queued - lane.settled
        if lane.bytes > stats.max_backlog_bytes:
            stats.max_backlog_bytes = lane.bytes

    def marks(self, key: str | None = None) -> list[Mark]:
        """Everything queued so far that is not settled yet, lane by lane (only lane ``key``'s,
        when given)."""
        lanes = self._lanes.values() if key is None else [self._lanes.get(key)]
        return [
            Mark(lane, lane.settled, lane.queued)
            for lane in lanes
            if lane is not None and lane.settled < lane.queued
        ]

    def take(self) -> Batch:
        """The next batch: round robin over the lanes waiting, within both caps."""
        batch = Batch()
        ready = self._ready
        cap = self.max_rows
        short = [len(lane.items) for lane in ready if len(lane.items) <= SHORT_LANE]
        if short and len(short) < len(ready):
            # Lanes with a few items (a run's start, an ordinary run's next events) beside a
            # backlog: a small batch, so that they wait for it and not for a full one of the
            # backlog (its commit is the latency of every other run's events and POSTs).
            cap = min(cap, sum(short) + max(1, self.max_rows // BACKLOG_SHARE))
        quantum = max(1, cap // max(1, len(ready)))
        max_bytes = self.max_bytes
        statements, events, lanes = batch.statements, batch.events, batch.lanes
        rows = size = 0  # the batch's, kept here: this loop runs once per event committed
        full = False
        while ready and not full:
            lane = ready.popleft()
            items, taken, size_before = lane.items, 0, size
            while items and taken < quantum:
                item = items[0]
                if isinstance(item, Statement):
                    item_size = item.size
                else:
                    item_size = len(item[1].sse) + EVENT_OVERHEAD
                if rows and (rows >= cap or size + item_size > max_bytes):
                    full = True
                    break
                items.popleft()
                if isinstance(item, Statement):
                    statements.append(item)
                else:
                    events.append(item)
                size += item_size
                rows += 1
                taken += 1
            if taken:
                given = lanes.setdefault(lane, [0, 0])
                given[0] += taken
                given[1] += size - size_before
            if items:
                ready.append(lane)  # served: to the back of the line
            full = full or rows >= cap
        batch.bytes = size
        self._inflight = batch
        return batch

    def drop_events(self, key: str) -> list[Pending]:
        """Drop the events waiting in lane ``key`` (not those of the batch being committed) and
        return them, oldest first. Only when the lane holds nothing but events: a statement
        among them (a run's row) must be written, and the counts below assume that the dropped
        items are the lane's last ones. Dropped items count as settled (not lost) once the
        items before them are, so that flushes holding marks on the lane still end."""
        lane = self._lanes.get(key)
        if lane is None or not lane.items:
            return []
        if any(isinstance(item, Statement) for item in lane.items):
            return []
        dropped: list[Pending] = [item for item in lane.items if not isinstance(item, Statement)]
        lane.items.clear()
        self._ready.remove(lane)
        lane.bytes -= sum(size_of(item) for item in dropped)
        given = None if self._inflight is None else self._inflight.lanes.get(lane)
        if given is not None:
            given[0] += len(dropped)  # settled with the batch that holds the items before them
        else:
            lane.settled += len(dropped)
            if lane.settled == lane.queued:
                del self._lanes[key]
            self._signal()
        return dropped

    def settle(self, batch: Batch, error: BaseException | None) -> list[Pending]:
        """The batch has ended. If it was lost, its lanes lose what they still queue too (a run
        must not number on past a hole): returns those dropped events."""
        self._inflight = None
        dropped: list[Pending] = []
        for lane, (count, size) in batch.lanes.items():
            if error is None:
                lane.settled += count
                lane.bytes -= size
            else:
                dropped += (item for item in lane.items if not isinstance(item, Statement))
                lane.items.clear()
                lane.losses.append((lane.settled, lane.queued, error))
                lane.settled, lane.bytes = lane.queued, 0
                if lane in self._ready:
                    self._ready.remove(lane)
            if lane.settled == lane.queued and self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]  # flushes still holding it keep it alive
        self._signal()
        return dropped

    def abandon(self, error: BaseException) -> None:
        """The store closed with writes still queued: every one of them is lost."""
        self._inflight = None
        for lane in list(self._lanes.values()):
            lane.items.clear()
            lane.losses.append((lane.settled, lane.queued, error))
            lane.settled = lane.queued
        self._lanes.clear()
        self._ready.clear()
        self._signal()

    @property
    def progress(self) -> anyio.Event:
        """Set (and replaced) when a batch ends: flushes re-check their marks. Made when asked
        for: most batches end with no flush waiting, and an ``anyio.Event`` costs 2 µs."""
        if self._progress is None:
            self._progress = anyio.Event()
        return self._progress

    def _signal(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()
