"""The Redis store: runs as hashes, their events as Redis Streams, written by fenced Lua scripts.

Writes never await per event: ``append`` and the run statements queue, and the writer
(``redis_writer.py``) sends whatever is queued as one pipeline per round trip, each run's events
in fenced ``APPEND`` calls that refuse a gap, a stale owner or an ended run. Only after the reply
are events handed to their ``CommitSink``: commit before send (docs/architecture.md, invariant 3).
redis-py re-sends a pipeline whose reply was lost after the server ran it, so every script is
idempotent for that (``APPEND`` answers 0, "already stored by this very call").

Ownership (``redis_leases.py``) is a lease per run renewed by a heartbeat; another store claims
runs whose lease expired (``claim_orphans``, atomic per run). This is a ``SharedStore``: any node
may stop (``request_stop``) and follow (``tail``) a run owned by another. Key layout and scripts:
``redis_keys.py``. ``redis`` errors become ``StoreError`` here and nowhere else. Durability:
docs/redis.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskGroup
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..errors import StoreError
from ..events import Frame
from ..stats import StoreStats
from . import redis_keys as k
from .base import ACTIVE_STATUSES, CommitSink, FinalState, NewRun, Orphan, RunRecord, ThreadRecord
from .redis_idempotency import RedisIdempotency
from .redis_leases import Leases
from .redis_writer import Call, RoundWriter, _Append, _Call

logger = logging.getLogger("streamctl.store")

LEASE_SECONDS = 10.0
BLOCK_MS = 2000
"""How long one XREAD of a follower blocks before it may look around (and give up)."""
SOCKET_TIMEOUT = 5.0
"""Above every blocking read's BLOCK, so a quiet XREAD is not mistaken for a dead socket."""
RETRIES = 3
CLOSE_TIMEOUT = 30.0

SCRIPTS = (
    *("APPEND", "CREATE", "INDEX_RUN", "UPDATE", "FINISH", "INDEX_END"),
    *("CLAIM", "RENEW", "RELEASE", "REQUEST_STOP", "PURGE"),
)

T = TypeVar("T")


def connect(url: str) -> aioredis.Redis:
    """A client with our retry policy, not redis-py's defaults: a few quick retries on
    connection errors and timeouts, and a socket timeout above every BLOCK we use."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        health_check_interval=30,
    )


class RedisStore(RedisIdempotency):
    """Redis (or anything speaking its protocol, 7.0+). ``async with RedisStore(url) as s``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        lease_seconds: float = LEASE_SECONDS,
        close_timeout: float = CLOSE_TIMEOUT,
        node: str | None = None,
    ) -> None:
        self.url = url
        self.lease_ms = int(lease_seconds * 1000)
        self.close_timeout = close_timeout
        self.node = node or uuid.uuid4().hex[:12]
        """This store's name in leases (one per process)."""
        self.stats = StoreStats()
        self._redis: aioredis.Redis | None = None
        self._tg: TaskGroup | None = None
        self._scripts: dict[str, Any] = {}
        self._writer = RoundWriter(
            lambda: self.redis, self._scripts, self._load_scripts, self.stats, self._stored
        )
        self.leases = Leases(
            self.node, self.lease_ms, lambda: self.redis, self._scripts, self._writer.fail
        )
        self.sweep_interval = min(1.0, self.lease_ms / 3000)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        self._redis = connect(self.url)
        try:
            await self._redis.ping()
            for name in SCRIPTS:
                self._scripts[name] = self._redis.register_script(getattr(k, name))
            await self._load_scripts()
        except RedisError as exc:
            await self._redis.aclose()
            raise StoreError(f"cannot open store {self.url!r}: {exc}") from exc
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._writer.run, name="streamctl redis writer")
        self._tg.start_soon(self.leases.renew_loop, name="streamctl redis leases")
        self._tg.start_soon(self.leases.listen, name="streamctl redis control channel")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.move_on_after(self.close_timeout, shield=True):
            try:
                await self.flush()
            except StoreError:
                logger.exception("last batch could not be committed at shutdown")
            # Runs left unfinished are handed over now (as a process that exited), not at the
            # end of their lease: the next store to look claims them at once.
            await self.leases.release_all()
        self._writer.close()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        if self._redis is not None:
            with anyio.move_on_after(self.close_timeout, shield=True):
                await self._redis.aclose()

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

    # -- writing ---------------------------------------------------------------------------------

    def append(self, run_id: str, frame: Frame, event: object, sink: CommitSink) -> None:
        """Queue one event for the next round. Synchronous: never awaits."""
        self._writer.append(_Append(run_id, frame, event, sink, self.leases.fence(run_id)))

    def _later(self, run_id: str, *calls: Call) -> None:
        self._writer.append(_Call(run_id, list(calls)))

    def _stored(self, run_id: str, sink: CommitSink) -> None:
        self.leases.stored(run_id, sink)  # the sink to tell if the run's lease is lost

    def create_run(self, run: NewRun) -> None:
        fields = {
            "run_id": run.run_id,
            "thread_id": run.thread_id,
            "owner": run.owner,
            "status": run.status,
            "input": orjson.dumps(run.input),
            "config": orjson.dumps(run.config),
            "created_at": repr(run.created_at),
            "started_at": k.num(run.started_at),
        }
        deadline = int(time.time() * 1000) + self.lease_ms
        self.leases.owned[run.run_id] = 1
        self._later(
            run.run_id,
            (
                self._scripts["CREATE"],
                [k.meta(run.run_id), k.lease(run.run_id)],
                [self.node, self.lease_ms, *k.flat(fields)],
            ),
            (
                self._scripts["INDEX_RUN"],
                [
                    k.ORDER,
                    k.RUNS,
                    k.owner_runs(run.owner),
                    k.thread(run.owner, run.thread_id),
                    k.thread_runs(run.owner, run.thread_id),
                    k.ACTIVE,
                    k.thread_id_runs(run.thread_id),
                ],
                [run.run_id, run.owner, repr(run.created_at), deadline],
            ),
        )

    def mark_running(self, run_id: str, started_at: float) -> None:
        fence = self.leases.fence(run_id)
        args = [fence, "status", "running", "started_at", repr(started_at)]
        self._later(run_id, (self._scripts["UPDATE"], [k.meta(run_id)], args))

    def finish_run(self, run_id: str, final: FinalState) -> None:
        fence = self.leases.give_back(run_id)
        fields = {
            "status": final.status,
            "reason": final.reason or "",
            "error": orjson.dumps(final.error) if final.error else "",
            "tokens": final.tokens,
            "usage": orjson.dumps({"tokens": final.tokens, **(final.usage or {})}),
            "output": orjson.dumps(final.output),
            "ended_at": repr(final.ended_at),
        }
        self._later(
            run_id,
            (
                self._scripts["FINISH"],
                [k.meta(run_id), k.lease(run_id)],
                [fence, final.last_seq, *k.flat(fields)],
            ),
            (self._scripts["INDEX_END"], [k.ACTIVE, k.ENDED], [run_id, repr(final.ended_at)]),
        )

    def drop_queued(self, run_id: str) -> list[Frame]:
        return []  # appends are not dropped here: a stopped run's queue is short (one call)

    async def flush(self, run_id: str | None = None) -> None:
        """Return once everything queued so far is stored (all runs' writes, even with
        ``run_id``); raise ``StoreError`` if some was lost."""
        await self._writer.flush()

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            script.sha = await self.redis.script_load(script.script)

    async def claim_orphans(self) -> list[Orphan]:
        """Claim the active runs whose lease has expired (each atomically: one store wins)."""

        async def claim() -> list[Orphan]:
            now = int(time.time() * 1000)
            due = await self.redis.zrangebyscore(k.ACTIVE, "-inf", now)
            orphans: list[Orphan] = []
            for raw in due:
                run_id = raw.decode()
                if run_id in self.leases.owned:
                    continue  # ours and alive: its renewal takes its lease again
                keys = [k.meta(run_id), k.lease(run_id)]
                fence = int(await self._scripts["CLAIM"](keys, [self.node, self.lease_ms]))
                if fence == -1:
                    await self.redis.zrem(k.ACTIVE, run_id)
                elif fence > 0:
                    self.leases.owned[run_id] = fence
                    thread_id = await self.redis.hget(k.meta(run_id), "thread_id")
                    orphans.append(Orphan(run_id, (thread_id or b"").decode()))
            return orphans

        return await self._call("claiming orphaned runs", claim)

    @property
    def on_stop_request(self) -> Callable[[str], None] | None:
        """Called with a run's id when another node asked to stop it (see ``request_stop``)."""
        return self.leases.on_stop_request

    @on_stop_request.setter
    def on_stop_request(self, callback: Callable[[str], None] | None) -> None:
        self.leases.on_stop_request = callback

    async def request_stop(self, run_id: str) -> bool:
        """Ask the run's owner, wherever it runs, to stop it: a durable flag in the run's record
        (its owner sees it at its next heartbeat), then a message on the owner's channel (at once,
        at most once). False if the run is not active."""

        async def ask() -> bool:
            node = await self._scripts["REQUEST_STOP"]([k.meta(run_id)], [])
            if node is None:
                return False
            await self.redis.publish(k.control_channel(node.decode()), run_id)
            return True

        return await self._call("requesting a stop", ask)

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
            if not frames and not await self._call("following a run", self._exists(run_id)):
                # A blocked XREAD on a key that is gone just blocks: never follow it silently.
                raise StoreError(f"run {run_id!r} is no longer in the store (Redis lost it?)")
            yield frames
            if frames:
                cursor = frames[-1].seq
                if frames[-1].type == "done":
                    return

    def _exists(self, run_id: str) -> Callable[[], Awaitable[int]]:
        return lambda: self.redis.exists(k.meta(run_id))

    # -- reading ---------------------------------------------------------------------------------

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
        return k.record_of(raw) if raw and b"run_id" in raw else None

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

    # -- maintenance -----------------------------------------------------------------------------

    async def purge(self, ended_before: float, now: float, limit: int = 500) -> int:
        async def purge() -> int:
            due = await self.redis.zrangebyscore(
                k.ENDED, "-inf", f"({ended_before!r}", start=0, num=limit
            )
            pipe = self.redis.pipeline(transaction=False)
            for raw in due:
                run_id = raw.decode()
                keys = [k.meta(run_id), k.events(run_id)]
                pipe.evalsha(self._scripts["PURGE"].sha, 2, *keys, repr(now))
                pipe.zrem(k.ENDED, run_id)
            await pipe.execute()
            return len(due)

        return await self._call("purging events", purge)
