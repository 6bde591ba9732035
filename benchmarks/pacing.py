"""Deadline pacing, shared by the paced agent (``paced_agent.py``) and the baseline: item k is
due at t0 + (k + 1) x delay, whatever the time spent between two items (a model's clock)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from itertools import chain, cycle, islice
from typing import Any

WORDS = (
    "Sunny and 22°C in Tokyo right now. The forecast says it stays like this for the rest of "
    "the day, with a light breeze in the afternoon and a slightly cooler evening."
).split()


_STARTS: dict[str, asyncio.Event] = {}
"""One watcher per start file in a process: 2,000 runs polling it each would swamp the loop."""


async def held(config: dict[str, Any]) -> None:
    """Wait for ``config["paced"]["start_file"]`` to exist, if given, then ``offset_ms``: the
    growth sweeps connect every stream first, then let the runs go by creating that file."""
    paced = config.get("paced") or {}
    start_file = paced.get("start_file")
    if start_file:
        started = _STARTS.get(start_file)
        if started is None:
            started = _STARTS[start_file] = asyncio.Event()
            _watchers.add(asyncio.get_running_loop().create_task(_watch(start_file, started)))
        await started.wait()
    if paced.get("offset_ms"):
        await asyncio.sleep(float(paced["offset_ms"]) / 1000)


_watchers: set[asyncio.Task[None]] = set()


async def _watch(path: str, started: asyncio.Event) -> None:
    # Another process creates the file: polled, a stat per 10 ms, until it exists.
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.01)
    started.set()


def words(tokens: int) -> Iterator[str]:
    """Two intro words, then ``tokens`` words: what the demo streams without its tool."""
    return islice(chain(("About", "Tokyo:"), cycle(WORDS)), tokens + 2)


async def deadlines(count: int, delay: float) -> AsyncIterator[int]:
    """0 .. count - 1, each at (or, when late, as soon as possible after) t0 + (k + 1) x delay."""
    t0 = time.monotonic()
    for k in range(count):
        wait = t0 + (k + 1) * delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        yield k
