"""Prometheus metrics, read from streamctl's own counters (``stats.py``) at scrape time.

Nothing here runs per event: the hot path keeps plain integer counters (and two small bucket
arrays per commit), and ``Collector`` turns them into Prometheus families when ``/metrics`` is
scraped. Each application has its own registry: no process-global state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .stats import Buckets

if TYPE_CHECKING:
    from .supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    """A Prometheus histogram from plain counts (made cumulative here)."""
    cumulative, running = [], 0
    for bound, count in zip((*buckets.bounds, float("inf")), buckets.counts, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=buckets.sum)


class Collector:
    """Everything ``/metrics`` shows, from one supervisor and its store."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        store, counters, stats = sup.store.stats, sup.counters, sup.stats
        yield GaugeMetricFamily(
            "streamctl_active_runs", "Runs running or queued right now.", value=sup.active_runs
        )
        by_status = GaugeMetricFamily(
            "streamctl_live_runs", "Runs alive right now, by status.", labels=["status"]
        )
        live = {"queued": 0, "running": 0}
        for run in sup.live:
            live["queued" if run.ahead else "running"] += 1
        for status, count in live.items():
            by_status.add_metric([status], count)
        yield by_status
        yield histogram(
            "streamctl_run_seconds",
            "Duration of ended runs, from creation (queueing included) to their terminal event.",
            stats.run_seconds,
        )
        yield histogram(
            "streamctl_first_event_seconds",
            "Time from a run's start to its agent's first event.",
            stats.first_event_seconds,
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
            "streamctl_stream_writes_direct",
            "Of the writes to subscribers, those a run's log made to a caught-up stream itself.",
            value=counters.direct_writes,
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
        yield CounterMetricFamily(
            "streamctl_commits_inline",
            "Group commits made on the event loop's thread (small ones; SQLite).",
            value=store.inline_batches,
        )
        yield histogram(
            "streamctl_commit_batch_events", "Events per group commit.", store.batch_sizes
        )
        yield histogram(
            "streamctl_commit_seconds",
            "Duration of one group commit, in seconds.",
            store.commit_seconds,
        )
        yield histogram(
            "streamctl_commit_wait_seconds",
            "Longest wait of a group commit's events, from their emit to the commit's end, in"
            " seconds.",
            store.commit_wait_seconds,
        )
        yield CounterMetricFamily(
            "streamctl_commits_failed",
            "Group commits that failed (their runs end failed, store_error).",
            value=store.failed_batches,
        )
        yield CounterMetricFamily(
            "streamctl_backpressure_waits",
            "Times a run's agent waited for the store to commit its backlog.",
            value=store.backpressure_waits,
        )
        yield GaugeMetricFamily(
            "streamctl_backlog_events_max",
            "Largest uncommitted backlog of one run so far, in events.",
            value=store.max_backlog_events,
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
