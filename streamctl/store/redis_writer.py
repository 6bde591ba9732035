"""The Redis store's writer: queued writes sent as one pipeline per round trip (``redis.py``).

``append`` and the run statements only queue; the writer task takes whatever is queued (up to
``ROUND_EVENTS`` events) and sends it as ONE pipeline: per run, one fenced ``APPEND`` script call
per chunk of at most ``CHUNK_EVENTS`` events / ``CHUNK_BYTES`` bytes, and each statement's scripts
in queue order. There is no timer: an idle store sends a lone event at once (one ≈0.2 ms round
trip) and a busy one sends ever larger rounds while the previous one is in flight. Events reach
their ``CommitSink`` only after the round's reply says they are stored: commit before send.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from redis.exceptions import NoScriptError, RedisError

from ..errors import RunLost, RunTakenOver, StoreError
from ..events import Frame
from ..stats import StoreStats
from . import redis_keys as k
from .base import CommitSink

logger = logging.getLogger("streamctl.store")

CHUNK_EVENTS = 200
CHUNK_BYTES = 64 * 1024
"""Bounds on one ``APPEND`` script call: a long script blocks every other client of Redis."""
ROUND_EVENTS = 2000
"""Events in one pipeline (one round trip), over every run."""

Call = tuple[Any, list[str], list[Any]]
"""A registered script, its keys and its arguments."""


def refusal(run_id: str, reply: Exception) -> BaseException:
    """A script's refusal as the error of the run: final if the run is another node's now, or
    no longer in the store."""
    text = str(reply)
    if text.startswith("FENCED"):
        return RunTakenOver(f"run {run_id!r} was taken over by another node ({text})")
    if text.startswith("LOST"):
        return RunLost(f"run {run_id!r} was lost: the Redis store lost its data ({text})")
    return reply


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
    calls: list[Call]
    after: Callable[[], None] | None = None
    """Called once the statement's first script is stored (not if Redis refused it)."""
    then: list[Call] | None = None
    """Scripts sent only once the first one is stored, in the same round (a second round trip
    before the round's flushes return): a run's end leaves the index of active runs only if its
    final record was stored, or a refused end (a stale owner's) would hide it from sweepers."""


class RoundWriter:
    """The queue of writes and the task that sends it (``run``), one round trip at a time."""

    def __init__(
        self,
        client: Callable[[], Any],
        scripts: dict[str, Any],
        load_scripts: Callable[[], Awaitable[None]],
        stats: StoreStats,
        on_stored: Callable[[str, CommitSink], None],
        on_final: Callable[[str], None],
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._load_scripts = load_scripts
        self.stats = stats
        self._on_stored = on_stored
        self._on_final = on_final
        """Called with a run whose writes Redis refuses for good (taken over, lost)."""
        self._queue: list[_Append | _Call] = []
        self._queued = 0
        """Ops ever queued; ``_done`` ops ever sent (a flush waits for its own number)."""
        self._done = 0
        self._failures: list[tuple[int, int, dict[str | None, BaseException]]] = []
        """(first op, end op, {run or None for the whole round: error}) of the last 64 failed
        rounds."""
        self._progress = anyio.Event()
        self._wake = anyio.Event()
        self._idle = False
        self.closing = False

    def append(self, op: _Append | _Call) -> None:
        """Queue one op for the next round. Synchronous: never awaits."""
        self._queue.append(op)
        self._queued += 1
        if self._idle:
            self._idle = False
            self._wake.set()

    def close(self) -> None:
        """Let the task return once the queue is empty."""
        self.closing = True
        self._wake.set()

    async def flush(self, run_id: str | None = None) -> None:
        """Return once everything queued so far is sent; raise ``StoreError`` if some was lost:
        with ``run_id``, only if that run's writes were (or the whole round failed): another
        run's refusal (taken over, lost) is that run's alone."""
        start, target = self._done, self._queued
        while self._done < target:
            await self._progress.wait()
        for first, last, errors in self._failures:
            if first >= target or last <= start:
                continue  # a round outside this flush's writes
            if run_id is None:
                error = errors.get(None) or next(iter(errors.values()))
            else:  # another run's refusal is that run's alone
                found = errors.get(run_id) or errors.get(None)
                if found is None:
                    continue
                error = found
            if isinstance(error, StoreError):
                raise error  # taken over, lost: the caller tells those apart
            raise StoreError(f"commit failed: {error}") from error

    async def run(self) -> None:
        while True:
            if not self._queue:
                if self.closing:
                    return
                self._wake = anyio.Event()
                self._idle = True
                await self._wake.wait()
                self._idle = False
                continue
            ops = self._take()
            first = self._done
            errors: dict[str | None, BaseException] = {}
            began = time.perf_counter()
            try:
                with anyio.CancelScope(shield=True):
                    errors = await self._send(ops)
            finally:
                self._done += len(ops)
                if errors:
                    self._failures = [*self._failures[-63:], (first, self._done, errors)]
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

    async def _send(self, ops: list[_Append | _Call]) -> dict[str | None, BaseException]:
        """Send one round as one pipeline; deliver what was stored. Returns the round's errors:
        (run, error) for each run whose writes were refused or dropped, (None, error) when the
        whole round failed."""
        sent: list[tuple[str, list[_Append] | None]] = []
        afters: dict[int, _Call] = {}
        """Index in ``sent`` of a statement's first script -> the statement (its ``after``,
        ``then``)."""
        calls: list[Call] = []
        open_chunks: dict[str, list[_Append]] = {}
        sizes: dict[str, int] = {}

        def close(run_id: str) -> None:
            chunk = open_chunks.pop(run_id)
            sizes.pop(run_id, None)
            entries = b"\n".join([k.entry(op.frame) for op in chunk])
            keys = [k.meta(run_id), k.events(run_id)]
            args = [chunk[0].fence, chunk[0].frame.seq, entries]
            calls.append((self._scripts["APPEND"], keys, args))
            sent.append((run_id, chunk))

        errors: dict[str | None, BaseException] = {}
        for op in ops:
            if isinstance(op, _Append):
                if op.dropped is not None:
                    errors[op.run_id] = op.dropped
                    continue
                chunk = open_chunks.setdefault(op.run_id, [])
                if chunk and chunk[0].fence != op.fence:
                    close(op.run_id)
                    chunk = open_chunks[op.run_id] = []
                chunk.append(op)
                sizes[op.run_id] = sizes.get(op.run_id, 0) + op.frame.data_size
                if len(chunk) >= CHUNK_EVENTS or sizes[op.run_id] >= CHUNK_BYTES:
                    close(op.run_id)
            else:
                if op.run_id in open_chunks:
                    close(op.run_id)
                if op.after is not None or op.then:
                    afters[len(sent)] = op
                for call in op.calls:
                    calls.append(call)
                    sent.append((op.run_id, None))
        for run_id in list(open_chunks):
            close(run_id)
        if not sent:
            return errors
        try:
            replies = await self._pipeline(calls)
        except RedisError as exc:
            logger.exception("a round of %d calls to redis failed", len(sent))
            lost = {run_id: appended[0].sink for run_id, appended in sent if appended}
            for run_id, sink in lost.items():
                self.fail(run_id, sink, exc)
            return {None: exc}
        delivered: dict[int, CommitSink] = {}
        failed: set[str] = set()
        then: list[Call] = []
        oldest = math.inf
        """The emit time of the round's oldest stored event."""
        for index, ((run_id, stored), reply) in enumerate(zip(sent, replies, strict=True)):
            if isinstance(reply, Exception):
                error = errors[run_id] = refusal(run_id, reply)
                logger.error("run %s: redis refused a write: %s", run_id, reply)
                if isinstance(error, StoreError) and error.final:
                    self._on_final(run_id)
                if stored and run_id not in failed:
                    failed.add(run_id)
                    self.fail(run_id, stored[0].sink, error)
                continue
            statement = afters.get(index)
            if statement is not None:
                if statement.after is not None:
                    statement.after()
                then += statement.then or ()
            if stored is None or run_id in failed:
                continue
            self.stats.batches += 1
            self.stats.committed_events += len(stored)
            self.stats.batch_sizes.observe(len(stored))
            oldest = min(oldest, *[op.frame.created_at for op in stored])
            for op in stored:
                try:
                    op.sink.committed(op.frame, op.event)
                except Exception:  # a broken sink must not take the writer down
                    logger.exception("run %s: delivering event %d failed", run_id, op.frame.seq)
                delivered[id(op.sink)] = op.sink
            self._on_stored(run_id, stored[0].sink)
        if oldest != math.inf:  # as SQLite's: the stored events' wait, to their reply
            self.stats.commit_wait_seconds.observe(max(0.0, time.time() - oldest))
        for sink in delivered.values():
            try:
                sink.publish()
            except Exception:
                logger.exception("waking subscribers failed")
        if then:
            await self._then(then)
        return errors

    async def _then(self, calls: list[Call]) -> None:
        """Send the ``then`` scripts of the statements stored. They index what is already
        stored (a run's end): if they fail, a sweep finds the ended run in the index of active runs
        and indexes it as ended, so this is logged and not the statements' failure."""
        try:
            replies = await self._pipeline(calls)
        except RedisError:
            logger.exception("indexing %d stored statements failed", len(calls))
            return
        for reply in replies:
            if isinstance(reply, Exception):
                logger.error("indexing a stored statement failed: %s", reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        """Run scripts in one round trip (without redis-py's SCRIPT EXISTS before each one).
        If the server lost its scripts (restarted, SCRIPT FLUSH): load them, send again. Every
        script is idempotent, so what did run answers "already done"."""
        replies = await self._send_scripts(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self._load_scripts()
            replies = await self._send_scripts(calls)
        return replies

    async def _send_scripts(self, calls: list[Call]) -> list[Any]:
        pipe = self._client().pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def fail(self, run_id: str, sink: CommitSink, exc: BaseException) -> None:
        """A chunk of the run was not stored: its events still queued are dropped (the run must
        not number on past the hole; a flush waiting for them fails), and the run is told."""
        for op in self._queue:
            if isinstance(op, _Append) and op.run_id == run_id:
                op.dropped = exc
        failed = getattr(sink, "failed", None)
        if failed is not None:
            failed(exc)
