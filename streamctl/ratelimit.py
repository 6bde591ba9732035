"""A sliding-window rate limit per key (a principal), exact: the timestamps of the hits in the
window are kept, at most ``limit`` per key. Checking and recording are one synchronous step, so a
burst of parallel requests cannot slip past it."""

from __future__ import annotations

import time
from collections import deque

_PRUNE_AT = 10_000


class SlidingWindow:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Record a hit and return None, or return the seconds until one is allowed."""
        now = time.monotonic() if now is None else now
        horizon = now - self.window
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= _PRUNE_AT:
                self._prune(horizon)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] - horizon
        hits.append(now)
        return None

    def _prune(self, horizon: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]
