"""What a benchmark run is asked to do: the sizes of each measurement and the run's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sizes:
    ttfe_runs: int = 300
    ttfe_warmup: int = 30
    throughput_tokens: int = 100_000
    fanout_subscribers: int = 1000
    fanout_seconds: float = 10.0
    many_runs: int = 500
    many_tokens: int = 200
    idle_connections: int = 5000
    idle_per_run: int = 100
    stops: int = 300
    resumes: int = 300
    firehose_tokens: int = 1_000_000
    firehose_stops: int = 10
    firehose_seconds: float = 120.0
    """Bound on the firehose run's time: then its server is killed (the run: "timed out")."""
    probe_seconds: float = 3.0
    """How long the other principal's probe runs alone first (its idle figures: the baseline)."""
    growth_runs: tuple[int, ...] = (100, 500, 1000, 2000)
    growth_subscribers: tuple[int, ...] = (100, 1000, 5000)
    growth_idle: tuple[int, ...] = (1000, 5000, 10_000)
    growth_seconds: float = 8.0
    """The steady window of each runs and fan-out size (``growth.py``)."""
    idle_hold_seconds: float = 12.0
    idle_ping_seconds: float = 5.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            ttfe_runs=60,
            ttfe_warmup=10,
            throughput_tokens=20_000,
            fanout_subscribers=100,
            fanout_seconds=3.0,
            many_runs=100,
            many_tokens=40,
            idle_connections=500,
            stops=40,
            resumes=40,
            firehose_tokens=200_000,
            firehose_stops=3,
            firehose_seconds=60.0,
            probe_seconds=2.0,
            growth_runs=(20, 50),
            growth_subscribers=(20, 50),
            growth_idle=(100, 200),
            growth_seconds=2.0,
            idle_hold_seconds=3.0,
            idle_ping_seconds=1.0,
        )


@dataclass
class Options:
    src: Path
    """The checkout whose streamctl is benchmarked."""
    sizes: Sizes = field(default_factory=Sizes)
    fanout_procs: int = 1
    """Client processes of the fan-out measurement."""
    profile: Path | None = None
    """Also cProfile the ``low`` throughput case, writing the stats here."""
    redis_workers: int = 0
    """The growth sweeps' streamctl servers: 0 on SQLite (one process), N on a private Redis
    with ``--workers N``."""
    rss_limit_mb: int = 3072
    """The firehose's server is killed once its RSS passes this (reported as exceeded)."""
