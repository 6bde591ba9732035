"""The Redis store's reads (``redis.py``): records, event ranges, lists, and following a run.

Reads never go through the writer: each is its own command (or pipeline) on the shared client,
and ``tail`` follows a run's stream with ``XREAD BLOCK`` on a connection of its own while
blocked. A run missing from the store is told apart from a run of a lost generation
(``redis_generation.py``): the first is ``None`` (a 404), the second ``RunLost`` (a 410).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import RunLost, StoreError
from ..events import Frame
from . import redis_keys as k
from .base import ACTIVE_STATUSES, RunRecord, ThreadRecord
from .redis_generation import Generations

BLOCK_MS = 2000
"""How long one XREAD of a follower blocks before it may look around (and give up)."""
RETRIES = 3

T = TypeVar("T")


class RedisReads:
    """What a Redis store answers from the data, for any node (base of ``RedisStore``)."""

    _redis: aioredis.Redis | None
    generations: Generations

    @property
    def redis(self) -> Any:
        """The client. Typed ``Any``: redis-py annotates its commands with the union of the sync
        and async clients' results, which no caller can use without a cast per call."""
        assert self._redis is not None, "store is not open"
        return self._redis

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except RedisError as exc:
            raise StoreError(f"{what} failed: {exc}") from exc

    async def _missing(self, run_id: str) -> None:
        """A run is not in the store: ``RunLost`` if its id belongs to a lost generation."""
        if await self._call("looking for a lost run", lambda: self.generations.is_lost(run_id)):
            raise RunLost(
                f"run {run_id!r} was lost: the Redis store lost its data (restarted without"
                " persistence?) after the run started"
            )

    async def read_frames(self, run_id: str, after: int, upto: int | None = None) -> list[Frame]:
        high = "+" if upto is None else f"0-{upto}"

        async def read() -> list[Any]:
            return await self.redis.xrange(k.events(run_id), f"0-{after + 1}", high)  # type: ignore[no-any-return]

        if upto is not None and upto <= after:
            return []
        entries = await self._call("reading events", read)
        return [k.frame_of(entry_id, fields) for entry_id, fields in entries]

    async def get_run(self, run_id: str) -> RunRecord | None:
        raw = await self._call("reading a run", lambda: self.redis.hgetall(k.meta(run_id)))
        if raw and b"run_id" in raw:
            self.generations.remember(run_id)
            return k.record_of(raw)
        await self._missing(run_id)
        return None

    async def wait_ended(self, run_id: str) -> RunRecord | None:
        """Poll the run's record (backing off to 50 ms) until it is no longer active."""
        delay = 0.005
        while True:
            record = await self.get_run(run_id)
            if record is None or record.status not in ACTIVE_STATUSES:
                return record
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def tail(self, run_id: str, after: int) -> AsyncGenerator[list[Frame], None]:
        """XREAD BLOCK from the cursor, one connection while blocked. BLOCK stays below the
        socket timeout, and a lost connection is retried from the cursor: the frames stay exact."""
        key, cursor, failures = k.events(run_id), after, 0
        self.generations.remember(run_id)
        while True:
            try:
                reply = await self.redis.xread({key: f"0-{cursor}"}, count=1000, block=BLOCK_MS)
            except RedisError as exc:
                failures += 1
                if failures > RETRIES:
                    raise StoreError(f"following run {run_id!r} failed: {exc}") from exc
                await anyio.sleep(0.1 * failures)
                continue
            failures = 0
            frames = [k.frame_of(eid, fields) for _, entries in reply for eid, fields in entries]
            if not frames and await self.get_run(run_id) is None:
                # A blocked XREAD on a key that is gone just blocks: never follow it silently.
                raise StoreError(f"run {run_id!r} is no longer in the store")
            yield frames
            if frames:
                cursor = frames[-1].seq
                if frames[-1].type == "done":
                    return

    async def _records(self, run_ids: list[bytes]) -> list[RunRecord]:
        if not run_ids:
            return []

        async def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hgetall(k.meta(run_id.decode()))
            return await pipe.execute()  # type: ignore[no-any-return]

        raws = await self._call("reading runs", read)
        return [k.record_of(raw) for raw in raws if raw and b"run_id" in raw]

    async def list_runs(
        self,
        owner: str | None,
        thread_id: str | None = None,
        limit: int = 50,
        status: str | None = None,
    ) -> list[RunRecord]:
        if thread_id is not None:
            key = k.thread_id_runs(thread_id) if owner is None else k.thread_runs(owner, thread_id)
        else:
            key = k.RUNS if owner is None else k.owner_runs(owner)
        # With a status filter every run of the list is read (no index by status yet).
        stop = limit - 1 if status is None else -1
        ids = await self._call("listing runs", lambda: self.redis.zrevrange(key, 0, stop))
        records = await self._records(ids)
        if status is not None:
            records = [r for r in records if r.status == status]
        return records[:limit]

    async def get_thread(self, owner: str, thread_id: str) -> ThreadRecord | None:
        key = k.thread(owner, thread_id)
        raw = await self._call("reading a thread", lambda: self.redis.hgetall(key))
        if not raw:
            return None
        return ThreadRecord(thread_id, raw[b"owner"].decode(), float(raw[b"created_at"]))

    async def thread_runs(
        self, owner: str, thread_id: str, *, limit: int | None = None, before: str | None = None
    ) -> list[RunRecord]:
        key = k.thread_runs(owner, thread_id)
        ids = await self._call("reading a thread", lambda: self.redis.zrange(key, 0, -1))
        if before is not None:
            mark = before.encode()
            ids = ids[: ids.index(mark)] if mark in ids else ids
        if limit is not None:
            ids = ids[len(ids) - limit :] if limit else []
        return await self._records(ids)

    async def next_run_on_thread(self, owner: str, thread_id: str, run_id: str) -> str | None:
        async def after() -> str | None:
            key = k.thread_runs(owner, thread_id)
            rank = await self.redis.zrank(key, run_id)
            if rank is None:
                return None
            following = await self.redis.zrange(key, rank + 1, rank + 1)
            return following[0].decode() if following else None

        return await self._call("reading a thread", after)
