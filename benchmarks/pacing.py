"""Deadline pacing, shared by the paced agent (``paced_agent.py``) and the baseline: item k is
due at t0 + (k + 1) x delay, whatever the time spent between two items (a model's clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from itertools import chain, cycle, islice

WORDS = (
    "Sunny and 22°C in Tokyo right now. The forecast says it stays like this for the rest of "
    "the day, with a light breeze in the afternoon and a slightly cooler evening."
).split()


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
