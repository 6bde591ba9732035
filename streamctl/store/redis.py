"""The Redis store: runs as hashes, their events as Redis Streams, group-committed by fenced Lua.

Writes never await per event. ``append`` queues an encoded event; one writer task sends whatever
is queued as ONE pipeline per round trip: per run, one ``APPEND`` script call per chunk of at most
``CHUNK_EVENTS`` events / ``CHUNK_BYTES`` bytes, which checks that the run is active, that this
store still holds the run's fence, and that the chunk's first seq follows the stored ``last_seq``
(XADD itself would accept a gap), then XADDs it. There is no timer: an idle store sends a lone
event at once and a busy one sends ever larger rounds. Only after the round's reply does the writer
hand the events to their ``CommitSink``: commit before send (docs/architecture.md, invariant 3).

redis-py re-sends a pipeline whose reply was lost after the server ran it: every script is
idempotent for that (``APPEND`` answers 0, "already stored under this fence").

Ownership is a lease per run (``<node>:<fence>``, PX TTL) renewed by the store's heartbeat; a run
whose lease cannot be renewed is told it failed (``sink.failed``), and another store claims runs
whose lease expired (``claim_orphans``, atomic per run). ``redis`` errors become ``StoreError``
here and nowhere else. See docs/redis.md for the durability this gives.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskGroup
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisError

from ..errors import StoreError
from ..events import Frame
from ..stats import StoreStats
from . import redis_keys as k
from .base import CommitSink, FinalState, NewRun, Orphan, RunRecord, ThreadRecord

logger = logging.getLogger("streamctl.store")

CHUNK_EVENTS = 200
CHUNK_BYTES = 64 * 1024
"""Bounds on one ``APPEND`` script call: a long script blocks every other client of Redis."""
ROUND_EVENTS = 2000
"""Events in one pipeline (one round trip), over every run."""
LEASE_SECONDS = 10.0
SOCKET_TIMEOUT = 5.0
"""Above every blocking read's BLOCK, so a quiet XREAD is not mistaken for a dead socket."""
RETRIES = 3
CLOSE_TIMEOUT = 30.0

SCRIPTS = (
    *("APPEND", "CREATE", "INDEX_RUN", "UPDATE", "FINISH", "INDEX_END"),
    *("CLAIM", "RENEW", "RELEASE", "REQUEST_STOP"),
)

T = TypeVar("T")


@dataclass(slots=True)
class _Append:
    run_id: str
    frame: Frame
    event: object
    sink: CommitSink
    fence: int
    """The run's fence when the event was queued (a later ``finish_run`` gives the run up)."""
    dropped: BaseException | None = None
    """Set when an earlier chunk of the run was lost: this event is not sent."""


@dataclass(slots=True)
class _Call:
    """One statement: scripts sent in order in the round, for one run."""

    run_id: str
    calls: list[tuple[Any, list[str], list[Any]]]


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


class RedisStore:
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
        self._queue: list[_Append | _Call] = []
        self._queued = 0
        """Ops ever queued; ``_done`` ops ever sent (a flush waits for its own number)."""
        self._done = 0
        self._failures: list[tuple[int, int, BaseException]] = []
        self._progress = anyio.Event()
        self._wake = anyio.Event()
        self._idle = False
        self._closing = False
        self._owned: dict[str, int] = {}
        """Runs this store owns (created or claimed, not finished), with their fence."""
        self._sinks: dict[str, CommitSink] = {}
        self.stop_requested: Callable[[str], None] | None = None
        """Called with a run's id when another node asked to stop it (see ``request_stop``)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        self._redis = connect(self.url)
        try:
            await self._redis.ping()
            self._scripts = {
                name: self._redis.register_script(getattr(k, name)) for name in SCRIPTS
            }
            await self._load_scripts()
        except RedisError as exc:
            await self._redis.aclose()
            raise StoreError(f"cannot open store {self.url!r}: {exc}") from exc
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._write_loop, name="streamctl redis writer")
        self._tg.start_soon(self._lease_loop, name="streamctl redis leases")
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
            await self._release_all()
        self._closing = True
        self._wake.set()
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
        self._queue.append(_Append(run_id, frame, event, sink, self._owned.get(run_id, 0)))
        self._queued += 1
        if self._idle:
            self._idle = False
            self._wake.set()

    def _later(self, run_id: str, *calls: tuple[Any, list[str], list[Any]]) -> None:
        self._queue.append(_Call(run_id, list(calls)))
        self._queued += 1
        if self._idle:
            self._idle = False
            self._wake.set()

    def create_run(self, run: NewRun) -> None:
        fields = {
            "run_id": run.run_id,
            "thread_id": run.thread_id,
            "owner": run.owner,
            "status": run.status,
            "input": orjson.dumps(run.input),
            "config": orjson.dumps(run.config),
            "created_at": repr(run.created_at),
            "started_at": _num(run.started_at),
        }
        deadline = int(time.time() * 1000) + self.lease_ms
        self._owned[run.run_id] = 1
        self._later(
            run.run_id,
            (
                self._scripts["CREATE"],
                [k.meta(run.run_id), k.lease(run.run_id)],
                [self.node, self.lease_ms, *_flat(fields)],
            ),
            (
                self._scripts["INDEX_RUN"],
                [
                    k.ORDER,
                    k.RUNS,
                    k.owner_runs(run.owner),
                    k.thread(run.thread_id),
                    k.thread_runs(run.thread_id),
                    k.ACTIVE,
                ],
                [run.run_id, run.owner, repr(run.created_at), deadline],
            ),
        )

    def mark_running(self, run_id: str, started_at: float) -> None:
        fence = self._owned.get(run_id, 0)
        args = [fence, "status", "running", "started_at", repr(started_at)]
        self._later(run_id, (self._scripts["UPDATE"], [k.meta(run_id)], args))

    def finish_run(self, run_id: str, final: FinalState) -> None:
        fence = self._owned.pop(run_id, 0)
        self._sinks.pop(run_id, None)
        fields = {
            "status": final.status,
            "reason": final.reason or "",
            "error": orjson.dumps(final.error) if final.error else "",
            "tokens": final.tokens,
            "output": orjson.dumps(final.output),
            "ended_at": repr(final.ended_at),
        }
        self._later(
            run_id,
            (
                self._scripts["FINISH"],
                [k.meta(run_id), k.lease(run_id)],
                [fence, final.last_seq, *_flat(fields)],
            ),
            (self._scripts["INDEX_END"], [k.ACTIVE, k.ENDED], [run_id, repr(final.ended_at)]),
        )

    async def flush(self) -> None:
        """Return once everything queued so far is sent; raise ``StoreError`` if some was lost."""
        start, target = self._done, self._queued
        while self._done < target:
            await self._progress.wait()
        for first, last, error in self._failures:
            if first < target and last > start:
                raise StoreError(f"commit failed: {error}") from error

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake = anyio.Event()
                self._idle = True
                await self._wake.wait()
                self._idle = False
                continue
            ops = self._take()
            first = self._done
            error: BaseException | None = None
            began = time.perf_counter()
            try:
                with anyio.CancelScope(shield=True):
                    error = await self._send(ops)
            finally:
                self._done += len(ops)
                if error is not None:
                    self._failures = [*self._failures[-63:], (first, self._done, error)]
                progress, self._progress = self._progress, anyio.Event()
                progress.set()
            self.stats.commit_seconds.observe(time.perf_counter() - began)

    def _take(self) -> list[_Append | _Call]:
        """The next round: queued ops in order, up to ``ROUND_EVENTS`` events."""
        queue, events = self._queue, 0
        end = 0
        while end < len(queue) and events < ROUND_EVENTS:
            if isinstance(queue[end], _Append):
                events += 1
            end += 1
        ops, self._queue = queue[:end], queue[end:]
        return ops

    async def _send(self, ops: list[_Append | _Call]) -> BaseException | None:
        """Send one round as one pipeline; deliver what was stored. Returns the round's error."""
        sent: list[tuple[str, list[_Append] | None]] = []
        calls: list[tuple[Any, list[str], list[Any]]] = []
        open_chunks: dict[str, list[_Append]] = {}
        sizes: dict[str, int] = {}

        def close(run_id: str) -> None:
            chunk = open_chunks.pop(run_id)
            sizes.pop(run_id, None)
            entries = [_entry(op.frame) for op in chunk]
            keys = [k.meta(run_id), k.events(run_id)]
            args = [chunk[0].fence, chunk[0].frame.seq, *entries]
            calls.append((self._scripts["APPEND"], keys, args))
            sent.append((run_id, chunk))

        dropped: BaseException | None = None
        for op in ops:
            if isinstance(op, _Append):
                if op.dropped is not None:
                    dropped = op.dropped
                    continue
                chunk = open_chunks.setdefault(op.run_id, [])
                if chunk and chunk[0].fence != op.fence:
                    close(op.run_id)
                    chunk = open_chunks[op.run_id] = []
                chunk.append(op)
                sizes[op.run_id] = sizes.get(op.run_id, 0) + len(op.frame.data)
                if len(chunk) >= CHUNK_EVENTS or sizes[op.run_id] >= CHUNK_BYTES:
                    close(op.run_id)
            else:
                if op.run_id in open_chunks:
                    close(op.run_id)
                for call in op.calls:
                    calls.append(call)
                    sent.append((op.run_id, None))
        for run_id in list(open_chunks):
            close(run_id)
        if not sent:
            return dropped
        try:
            replies = await self._pipeline(calls)
            if any(isinstance(r, NoScriptError) for r in replies):
                # The server lost its scripts (restarted, SCRIPT FLUSH): load them, send again.
                # Every script is idempotent, so what did run answers "already done".
                await self._load_scripts()
                replies = await self._pipeline(calls)
        except RedisError as exc:
            logger.exception("a round of %d calls to redis failed", len(sent))
            lost = {run_id: appended[0].sink for run_id, appended in sent if appended}
            for run_id, sink in lost.items():
                self._fail(run_id, sink, exc)
            return exc
        error = dropped
        delivered: dict[int, CommitSink] = {}
        failed: set[str] = set()
        for (run_id, stored), reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                error = reply
                logger.error("run %s: redis refused a write: %s", run_id, reply)
                if stored and run_id not in failed:
                    failed.add(run_id)
                    self._fail(run_id, stored[0].sink, reply)
                continue
            if stored is None or run_id in failed:
                continue
            self.stats.batches += 1
            self.stats.committed_events += len(stored)
            self.stats.batch_sizes.observe(len(stored))
            for op in stored:
                try:
                    op.sink.committed(op.frame, op.event)
                except Exception:  # a broken sink must not take the writer down
                    logger.exception("run %s: delivering event %d failed", run_id, op.frame.seq)
                delivered[id(op.sink)] = op.sink
            self._sinks.setdefault(run_id, stored[0].sink)
        for sink in delivered.values():
            try:
                sink.publish()
            except Exception:
                logger.exception("waking subscribers failed")
        return error

    async def _pipeline(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run scripts in one round trip (without redis-py's SCRIPT EXISTS before each one)."""
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    async def _load_scripts(self) -> None:
        for script in self._scripts.values():
            script.sha = await self.redis.script_load(script.script)

    def _fail(self, run_id: str, sink: CommitSink, exc: BaseException) -> None:
        """A chunk of the run was not stored: its events still queued are dropped (the run must
        not number on past the hole; a flush waiting for them fails), and the run is told."""
        for op in self._queue:
            if isinstance(op, _Append) and op.run_id == run_id:
                op.dropped = exc
        failed = getattr(sink, "failed", None)
        if failed is not None:
            failed(exc)

    # -- leases ----------------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew the lease of every run this store owns, every third of the lease. A run whose
        lease cannot be renewed before it expires here is told it failed: another node may
        finalise it, and its writes would be refused (fenced) anyway."""
        interval = self.lease_ms / 3000
        renewed = time.monotonic()
        while True:
            await anyio.sleep(interval)
            owned = dict(self._owned)
            if not owned:
                renewed = time.monotonic()
                continue
            try:
                replies = await self._renew(owned)
            except RedisError as exc:
                if time.monotonic() - renewed > self.lease_ms / 1000:
                    logger.error("leases could not be renewed for a whole lease: %s", exc)
                    for run_id in owned:
                        self._give_up(run_id, StoreError(f"lease lost: {exc}"))
                continue
            renewed = time.monotonic()
            for run_id, reply in zip(owned, replies, strict=True):
                if reply == -1:
                    self._give_up(run_id, StoreError("the run's lease went to another node"))
                elif reply == 1 and self.stop_requested is not None:
                    self.stop_requested(run_id)

    async def _renew(self, owned: dict[str, int]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        deadline = int(time.time() * 1000) + self.lease_ms
        for run_id, fence in owned.items():
            keys = [k.meta(run_id), k.lease(run_id)]
            pipe.evalsha(self._scripts["RENEW"].sha, 2, *keys, fence, self.node, self.lease_ms)
        pipe.zadd(k.ACTIVE, {run_id: deadline for run_id in owned}, xx=True)
        replies = await pipe.execute()
        return [int(r) for r in replies[:-1]]

    def _give_up(self, run_id: str, exc: StoreError) -> None:
        if self._owned.pop(run_id, None) is None:
            return
        sink = self._sinks.pop(run_id, None)
        if sink is not None:
            self._fail(run_id, sink, exc)

    async def _release_all(self) -> None:
        owned, self._owned = self._owned, {}
        if not owned:
            return
        pipe = self.redis.pipeline(transaction=False)
        for run_id, fence in owned.items():
            pipe.evalsha(self._scripts["RELEASE"].sha, 1, k.lease(run_id), f"{self.node}:{fence}")
        pipe.zadd(k.ACTIVE, dict.fromkeys(owned, 0), xx=True)
        try:
            await pipe.execute()
        except RedisError:
            logger.exception("releasing the leases of %d unfinished runs failed", len(owned))

    async def claim_orphans(self) -> list[Orphan]:
        """Claim the active runs whose lease has expired (each atomically: one store wins)."""

        async def claim() -> list[Orphan]:
            now = int(time.time() * 1000)
            due = await self.redis.zrangebyscore(k.ACTIVE, "-inf", now)
            orphans: list[Orphan] = []
            for raw in due:
                run_id = raw.decode()
                keys = [k.meta(run_id), k.lease(run_id)]
                fence = int(await self._scripts["CLAIM"](keys, [self.node, self.lease_ms]))
                if fence == -1:
                    await self.redis.zrem(k.ACTIVE, run_id)
                elif fence > 0:
                    self._owned[run_id] = fence
                    thread_id = await self.redis.hget(k.meta(run_id), "thread_id")
                    orphans.append(Orphan(run_id, (thread_id or b"").decode()))
            return orphans

        return await self._call("claiming orphaned runs", claim)

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

    # -- reading ---------------------------------------------------------------------------------

    async def read_frames(self, run_id: str, after: int, upto: int | None = None) -> list[Frame]:
        high = "+" if upto is None else f"0-{upto}"

        async def read() -> list[Any]:
            return await self.redis.xrange(k.events(run_id), f"0-{after + 1}", high)  # type: ignore[no-any-return]

        if upto is not None and upto <= after:
            return []
        entries = await self._call("reading events", read)
        return [_frame(entry_id, fields) for entry_id, fields in entries]

    async def get_run(self, run_id: str) -> RunRecord | None:
        raw = await self._call("reading a run", lambda: self.redis.hgetall(k.meta(run_id)))
        return _record(raw) if raw else None

    async def _records(self, run_ids: list[bytes]) -> list[RunRecord]:
        if not run_ids:
            return []

        async def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hgetall(k.meta(run_id.decode()))
            return await pipe.execute()  # type: ignore[no-any-return]

        return [_record(raw) for raw in await self._call("reading runs", read) if raw]

    async def list_runs(
        self, owner: str | None, thread_id: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        if thread_id is not None:
            key, stop = k.thread_runs(thread_id), -1
        else:
            key, stop = (k.RUNS if owner is None else k.owner_runs(owner)), limit - 1
        ids = await self._call("listing runs", lambda: self.redis.zrevrange(key, 0, stop))
        records = await self._records(ids)
        if owner is not None:
            records = [r for r in records if r.owner == owner]
        return records[:limit]

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        raw = await self._call("reading a thread", lambda: self.redis.hgetall(k.thread(thread_id)))
        if not raw:
            return None
        return ThreadRecord(thread_id, raw[b"owner"].decode(), float(raw[b"created_at"]))

    async def thread_runs(self, thread_id: str) -> list[RunRecord]:
        ids = await self._call(
            "reading a thread", lambda: self.redis.zrange(k.thread_runs(thread_id), 0, -1)
        )
        return await self._records(ids)

    async def next_run_on_thread(self, thread_id: str, run_id: str) -> str | None:
        async def after() -> str | None:
            key = k.thread_runs(thread_id)
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
                pipe.delete(k.events(run_id))
                pipe.hset(k.meta(run_id), "purged_at", repr(now))
                pipe.zrem(k.ENDED, run_id)
            await pipe.execute()
            return len(due)

        return await self._call("purging events", purge)


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _entry(frame: Frame) -> bytes:
    """A stream entry's one field: ``type created_at json`` (the JSON last: it may hold spaces)."""
    return b"%s %r %s" % (frame.type.encode(), frame.created_at, frame.data)


def _frame(entry_id: bytes, fields: dict[bytes, bytes]) -> Frame:
    type_, created_at, data = fields[b"e"].split(b" ", 2)
    seq = int(entry_id.split(b"-", 1)[1])
    return Frame.build(seq, type_.decode(), data, float(created_at))


def _opt_float(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def _record(raw: dict[bytes, bytes]) -> RunRecord:
    def text(name: str) -> str:
        return raw.get(name.encode(), b"").decode()

    def json(name: str) -> Any:
        value = raw.get(name.encode())
        return orjson.loads(value) if value else None

    return RunRecord(
        run_id=text("run_id"),
        thread_id=text("thread_id"),
        owner=text("owner"),
        status=text("status"),
        input=json("input"),
        created_at=float(raw[b"created_at"]),
        started_at=_opt_float(raw.get(b"started_at")),
        ended_at=_opt_float(raw.get(b"ended_at")),
        last_seq=int(raw.get(b"last_seq", b"0")),
        reason=text("reason") or None,
        output=json("output"),
        error=json("error"),
        tokens=int(raw.get(b"tokens") or 0),
        purged_at=_opt_float(raw.get(b"purged_at")),
    )
