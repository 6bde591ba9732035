"""The Redis store: runs as hashes, their events as Redis Streams, written by fenced Lua scripts.

Writes never await per event: ``append`` and the run statements queue, and the writer
(``redis_writer.py``) sends whatever is queued as one pipeline per round trip, each run's events
in fenced ``APPEND`` calls that refuse a gap, a stale owner or an ended run. Only after the reply
are events handed to their ``CommitSink``: commit before send (docs/architecture.md, invariant 3).
redis-py re-sends a pipeline whose reply was lost after the server ran it, so every script is
idempotent for that (``APPEND`` answers 0, "already stored by this very call").

Ownership (``redis_leases.py``) is a lease per run renewed by a heartbeat; another store claims
runs whose lease expired (``claim_orphans``, atomic per run). This is a ``SharedStore``: any node
may stop (``request_stop``) and follow (``tail``) a run owned by another. Reads (records, events,
lists, ``tail``) are in ``redis_reads.py``, the base class; a lost store (Redis restarted without
persistence) is found by ``redis_generation.py``. Key layout and scripts: ``redis_keys.py``.
``redis`` errors become ``StoreError`` in these modules and nowhere else (``RunTakenOver`` and
``RunLost`` when a run's writes are refused for good). Durability: docs/redis.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

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
from .base import CommitSink, FinalState, NewRun, Orphan
from .redis_generation import Generations
from .redis_idempotency import RedisIdempotency
from .redis_leases import Leases
from .redis_reads import RETRIES, RedisReads
from .redis_writer import Call, RoundWriter, _Append, _Call

logger = logging.getLogger("streamctl.store")

LEASE_SECONDS = 10.0
SOCKET_TIMEOUT = 5.0
"""Above every blocking read's BLOCK, so a quiet XREAD is not mistaken for a dead socket."""
CLOSE_TIMEOUT = 30.0
MAX_CONNECTIONS = 10_000
"""Connections to Redis one process may hold at once. redis-py 6+ caps its pool at 100 and
fails a command past it ("Too many connections"): a burst of 300 streams starting at once on a
node answered 503. Each run followed here holds one (a blocked XREAD), each request one while
it awaits Redis; the cap is Redis's own default ``maxclients``."""
SLOT_GRACE_MS = 60_000
"""A claimed run slot whose run never became active (its process died first) lasts this long."""

SCRIPTS = (
    *("APPEND", "CREATE", "INDEX_RUN", "UPDATE", "FINISH", "INDEX_END"),
    *("CLAIM", "RENEW", "RELEASE", "REQUEST_STOP", "PURGE", "CLAIM_SLOT"),
)


def connect(url: str) -> aioredis.Redis:
    """A client with our retry policy, not redis-py's defaults: a few quick retries on
    connection errors and timeouts, and a socket timeout above every BLOCK we use."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
    )


class RedisStore(RedisReads, RedisIdempotency):
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
        self.generations = Generations(lambda: self.redis)
        self._writer = RoundWriter(
            lambda: self.redis,
            self._scripts,
            self._load_scripts,
            self.stats,
            self._stored,
            self.abandon,
        )
        self.leases = Leases(
            self.node,
            self.lease_ms,
            lambda: self.redis,
            self._scripts,
            self._writer.fail,
            self.generations.check,
        )
        self.sweep_interval = min(1.0, self.lease_ms / 3000)
        self._owners: dict[str, str] = {}
        """The principal of each run this store will finish (its slot is given back then)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        self._redis = connect(self.url)
        try:
            await self._redis.ping()
            for name in SCRIPTS:
                self._scripts[name] = self._redis.register_script(getattr(k, name))
            await self._load_scripts()
            await self.generations.open()
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

    # -- writing ---------------------------------------------------------------------------------

    def append(self, run_id: str, frame: Frame, event: object, sink: CommitSink) -> None:
        """Queue one event for the next round. Synchronous: never awaits."""
        self._writer.append(_Append(run_id, frame, event, sink, self.leases.fence(run_id)))

    def _later(
        self,
        run_id: str,
        *calls: Call,
        after: Callable[[], None] | None = None,
        then: list[Call] | None = None,
    ) -> None:
        self._writer.append(_Call(run_id, list(calls), after, then))

    def _stored(self, run_id: str, sink: CommitSink) -> None:
        self.leases.stored(run_id, sink)  # the sink to tell if the run's lease is lost

    def abandon(self, run_id: str) -> None:
        """Stop renewing the run's lease. Called once its final row is stored (after FINISH),
        when Redis refused its writes for good (taken over, lost), and when its start or end
        could not be stored: then its lease lapses and a sweeper (this node's too) ends it."""
        self.leases.give_back(run_id)
        self._owners.pop(run_id, None)

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
        self.leases.creating.add(run.run_id)
        self._owners[run.run_id] = run.owner
        self.generations.remember(run.run_id)
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
            after=partial(self.leases.created, run.run_id),
        )

    def mark_running(self, run_id: str, started_at: float) -> None:
        fence = self.leases.fence(run_id)
        args = [fence, "status", "running", "started_at", repr(started_at)]
        self._later(run_id, (self._scripts["UPDATE"], [k.meta(run_id)], args))

    def finish_run(self, run_id: str, final: FinalState) -> None:
        # The lease is renewed until the final row is stored, not only queued: behind a long
        # queue (many firehoses) it would expire first, and a sweeper (this node's too) would
        # claim the run and fence its end.
        fence = self.leases.fence(run_id)
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
            after=partial(self.abandon, run_id),
            then=[
                (
                    self._scripts["INDEX_END"],
                    [k.ACTIVE, k.ENDED, k.owner_live(self._owners.get(run_id, ""))],
                    [run_id, repr(final.ended_at)],
                )
            ],
        )

    def drop_queued(self, run_id: str) -> list[Frame]:
        return []  # appends are not dropped here: a stopped run's queue is short (one call)

    async def flush(self, run_id: str | None = None) -> None:
        """Return once everything queued so far is stored (all runs' writes, even with
        ``run_id``); raise ``StoreError`` if some was lost (with ``run_id``: some of that run's,
        or a whole round)."""
        await self._writer.flush(run_id)

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            script.sha = await self.redis.script_load(script.script)

    async def _index_ended(self, run_id: str) -> None:
        """A run in the index of active runs that is not active: gone from the store, or ended
        without its end indexed (the ``then`` call after its final record failed): index it as
        ended, so that retention purges it."""
        ended_at, owner = await self.redis.hmget(k.meta(run_id), "ended_at", "owner")
        if ended_at is None:
            await self.redis.zrem(k.ACTIVE, run_id)
            return
        keys = [k.ACTIVE, k.ENDED, k.owner_live((owner or b"").decode())]
        await self._scripts["INDEX_END"](keys, [run_id, ended_at.decode()])

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
                    await self._index_ended(run_id)
                elif fence > 0:
                    self.leases.owned[run_id] = fence
                    thread_id, owner = await self.redis.hmget(k.meta(run_id), "thread_id", "owner")
                    self._owners[run_id] = (owner or b"").decode()
                    orphans.append(Orphan(run_id, (thread_id or b"").decode()))
            return orphans

        return await self._call("claiming orphaned runs", claim)

    async def claim_run_slot(self, owner: str, run_id: str, cap: int) -> bool:
        """Claim one of ``owner``'s ``cap`` active-run slots, counted over every node (False:
        none is free). Given back when the run ends, wherever it is finished."""
        args = [run_id, cap, int(time.time() * 1000), SLOT_GRACE_MS]
        keys = [k.owner_live(owner), k.ACTIVE]
        claimed = await self._call(
            "claiming a run slot", lambda: self._scripts["CLAIM_SLOT"](keys, args)
        )
        return bool(claimed)

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
