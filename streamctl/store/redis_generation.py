"""Which Redis "generation" a store writes to, and the runs a lost generation took with it.

A Redis restarted without persistence (or flushed) comes back empty: every run is gone, and a
blocked ``XREAD`` on a key that no longer exists just blocks. So that a client sees a clear
``run_lost`` (an ``error`` event, a 410) rather than a silent stream or a 404, the first store to
open a Redis writes a random generation id under ``{sc}:gen`` (``SET NX``); every store reads it
at start and at each heartbeat. A store that finds another id (or none) knows the data it had
seen is gone: the run ids it remembers (runs it created, read or followed: the newest
``KNOWN_RUNS``) are lost. It keeps them, and adds them to the shared set ``{sc}:lost`` in the new
generation, so that every node answers 410 for them, not only the ones that had seen them. A run
id no node remembered answers 404, as any unknown id does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from . import redis_keys as k

logger = logging.getLogger("streamctl.store")

KNOWN_RUNS = 100_000
"""Run ids remembered per store (the newest), for each of the current and the lost generations."""
LOST_TTL_SECONDS = 30 * 86400
"""How long the shared set of lost run ids lives (refreshed at each loss)."""
_SADD_CHUNK = 1000


class Generations:
    """This store's generation of the data, and the run ids it has seen in it and before it."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client
        self.current = ""
        self._known: dict[str, None] = {}
        """Run ids seen in the current generation, oldest first (a dict keeps the order)."""
        self._lost: dict[str, None] = {}
        self._checking = anyio.Lock()

    async def open(self) -> None:
        """Adopt the generation of the data, writing a new one if the data has none."""
        self.current = await self._adopt()

    async def _adopt(self) -> str:
        redis = self._client()
        await redis.set(k.GENERATION, uuid.uuid4().hex, nx=True)
        return (await redis.get(k.GENERATION) or b"").decode()

    def remember(self, run_id: str) -> None:
        known = self._known
        if run_id in known:
            return
        if len(known) >= KNOWN_RUNS:
            del known[next(iter(known))]
        known[run_id] = None

    async def check(self) -> bool:
        """True if the data was lost since the last check (another generation, or none): the
        run ids seen until now are lost from then on."""
        async with self._checking:  # one finding per loss, however many ask at once
            seen = await self._client().get(k.GENERATION)
            if seen is not None and seen.decode() == self.current:
                return False
            await self._lose()
            return True

    async def _lose(self) -> None:
        lost, self._known = list(self._known), {}
        self.current = await self._adopt()
        logger.error(
            "the Redis store lost its data (restarted without persistence?): %d runs seen here"
            " are lost; their ids answer 410 run_lost",
            len(lost),
        )
        for run_id in lost:
            self._lost[run_id] = None
        while len(self._lost) > KNOWN_RUNS:
            del self._lost[next(iter(self._lost))]
        pipe = self._client().pipeline(transaction=False)
        for start in range(0, len(lost), _SADD_CHUNK):
            pipe.sadd(k.LOST, *lost[start : start + _SADD_CHUNK])
        pipe.expire(k.LOST, LOST_TTL_SECONDS)
        await pipe.execute()

    async def is_lost(self, run_id: str) -> bool:
        """Whether a run id missing from the store belongs to a lost generation."""
        await self.check()
        if run_id in self._lost:
            return True
        return bool(await self._client().sismember(k.LOST, run_id))
