"""Prometheus metrics, read from streamctl's own counters at scrape time.

Nothing here runs per event: the hot path keeps plain integer counters (and two small bucket
arrays per commit), and ``Collector`` turns them into Prometheus families when ``/metrics`` is
scraped. Each application has its own registry: no process-global state.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from .supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class Collector:
    """Everything ``/metrics`` shows, from one supervisor and its store."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        store, counters, stats = sup.store, sup.counters, sup.stats
        yield GaugeMetricFamily(
            "streamctl_active_runs", "Runs running or queued right now.", value=sup.active_runs
        )
        yield GaugeMetricFamily(
            "streamctl_subscribers", "SSE streams open right now.", value=counters.subscribers
        )
        yield CounterMetricFamily(
            "streamctl_runs_started", "Runs started since the server started.", value=stats.started
        )
        ended = CounterMetricFamily(
            "streamctl_runs_ended", "Runs ended, by terminal status.", labels=["status"]
        )
        for status, count in sorted(stats.ended.items()):
            ended.add_metric([status], count)
        yield ended
        yield CounterMetricFamily(
            "streamctl_stop_requests", "Stop requests for live runs.", value=stats.stop_requests
        )
        yield CounterMetricFamily(
            "streamctl_events_committed",
            "Events committed to the store.",
            value=store.committed_events,
        )
        yield CounterMetricFamily(
            "streamctl_events_sent",
            "Events written to subscribers (a merged chunk counts once).",
            value=counters.events_sent,
        )
        yield CounterMetricFamily(
            "streamctl_stream_writes", "Socket writes to subscribers.", value=counters.writes
        )
        yield CounterMetricFamily(
            "streamctl_heartbeats", "`: ping` comments sent to idle streams.", value=counters.pings
        )
        yield CounterMetricFamily(
            "streamctl_slow_subscribers_closed",
            "Streams closed because their client accepted no write within send_timeout.",
            value=counters.slow_closed,
        )
        yield CounterMetricFamily(
            "streamctl_commits", "Group commits (transactions) of the store.", value=store.batches
        )
        yield store.batch_sizes.family("streamctl_commit_batch_events", "Events per group commit.")
        yield store.commit_seconds.family(
            "streamctl_commit_seconds", "Duration of one group commit, in seconds."
        )
        yield CounterMetricFamily(
            "streamctl_runs_purged", "Runs whose events retention deleted.", value=stats.purged
        )


def registry_for(supervisor: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(supervisor))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
