"""Counters and histograms of streamctl's work: plain numbers the hot path bumps.

A leaf module (it imports nothing from streamctl), so that whoever counts (the store, the fan-out,
the supervisor) and whoever reads the counts (``metrics.py``) never import each other.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field


class Buckets:
    """A histogram as plain counts (cumulative only when exported)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


@dataclass(slots=True)
class Counters:
    """Process-wide fan-out counters, owned by the supervisor (for tests, readiness, metrics)."""

    subscribers: int = 0
    """Streams open right now."""
    writes: int = 0
    events_sent: int = 0
    """Socket writes handed to the server (one per wake with something to send)."""
    direct_writes: int = 0
    """Of ``writes``, those a run's log made to a parked stream (``run_log.py``), no task woken."""
    pings: int = 0
    slow_closed: int = 0
    """Streams closed because their client accepted no write within ``send_timeout``."""


@dataclass
class RunStats:
    """Counters of the supervisor's work since it started (tests, readiness, metrics)."""

    started: int = 0
    stop_requests: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    """Runs by terminal status."""
    purged: int = 0
    loop_restarts: int = 0
    """Background loops (retention, heartbeat) restarted after an unexpected error."""
    run_seconds: Buckets = field(
        default_factory=lambda: Buckets((0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
    )
    """Runs' durations, from creation (queueing included) to their terminal event."""
    first_event_seconds: Buckets = field(
        default_factory=lambda: Buckets((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    )
    """Time from a run's start (its agent called) to the agent's first event."""


@dataclass
class StoreStats:
    """The store's group commits since it opened."""

    batches: int = 0
    """Transactions committed."""
    inline_batches: int = 0
    """Of those, the ones committed on the event loop's thread (small ones, SQLite)."""
    committed_events: int = 0
    batch_sizes: Buckets = field(
        default_factory=lambda: Buckets((1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000))
    )
    """Events per group commit."""
    commit_seconds: Buckets = field(
        default_factory=lambda: Buckets((0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
    )
    commit_wait_seconds: Buckets = field(
        default_factory=lambda: Buckets((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
    )
    """Per commit that stored events, the longest an event of it waited: from its emit (its
    ``created_at``, wall-clock time, when it was queued) to the commit's end. A commit's own
    duration misses the queue: the commits ahead of it, and the writer's turn on a busy loop."""
    failed_batches: int = 0
    """Transactions that failed (their events were lost; their runs end ``failed``)."""
    max_batch_rows: int = 0
    max_batch_bytes: int = 0
    """The largest transaction so far, in rows and in bytes (bounded by the batch caps)."""
    max_backlog_events: int = 0
    max_backlog_bytes: int = 0
    """The largest backlog of one run in the store so far (queued or being committed, in rows
    and bytes of the byte caps): what ``max_backlog_events`` / ``max_backlog_bytes`` bound."""
    backpressure_waits: int = 0
    """Times a run waited at an emit for the store to catch up with it."""
