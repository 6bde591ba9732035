"""Runs owned by another process of a shared store (Redis), followed from this one.

A run is live in one process: its owner. Any other process may stream it: the first stream of
such a run here starts ONE reader task (``SharedStore.tail``: XREAD BLOCK from the run's last
stored seq, on its own connection) that feeds a ``RunLog``, exactly like the one the owner's
writer feeds; every local subscriber is a cursor into it (docs/architecture.md, invariant 4).
Only committed events reach the log (the store's stream holds nothing else), so commit before
send holds across processes too.

The reader ends after the terminal event, or after a whole BLOCK period with no subscriber
(then its log is marked closed, so a stream that took it just then ends and its client resumes),
or when the store lost the run (its streams end with an ``error`` ``run_lost``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import aclosing

import anyio
from anyio.abc import TaskGroup

from .errors import RunLost, StreamctlError
from .run_log import RunLog
from .runs import error_sse
from .store.base import SharedStore

logger = logging.getLogger("streamctl.remote")

RETRY_DELAY = 0.5
"""Seconds before a reader whose store failed tries again (while it has subscribers)."""


class RemoteLogs:
    """The logs of runs followed here but owned elsewhere, one reader task each."""

    def __init__(self, store: SharedStore, tail_events: int, tail_bytes: int) -> None:
        self.store = store
        self.tail_events = tail_events
        self.tail_bytes = tail_bytes
        self._logs: dict[str, RunLog] = {}
        self._tg: TaskGroup | None = None

    def open(self, tg: TaskGroup) -> None:
        """Run the readers in ``tg`` (the supervisor's) from now on."""
        self._tg = tg

    def __iter__(self) -> Iterator[RunLog]:
        return iter(list(self._logs.values()))

    def __len__(self) -> int:
        return len(self._logs)

    def log(self, run_id: str, last_seq: int) -> RunLog:
        """The run's log here, with its reader; ``last_seq``: the last seq stored, as just read."""
        log = self._logs.get(run_id)
        if log is None:
            assert self._tg is not None, "RemoteLogs is not open"
            log = RunLog(run_id, self.tail_events, last_seq, self.tail_bytes)
            self._logs[run_id] = log
            self._tg.start_soon(self._read, log, name=f"streamctl follow {run_id}")
        return log

    async def _still_stored(self, run_id: str) -> bool:
        try:
            return await self.store.get_run(run_id) is not None
        except StreamctlError:
            return True  # the store is down, not the run gone: try again

    async def _read(self, log: RunLog) -> None:
        try:
            while not log.closed:
                try:
                    tail = self.store.tail(log.run_id, log.committed_seq)
                    async with aclosing(tail):  # closed here, not by the garbage collector
                        async for frames in tail:
                            for frame in frames:
                                log.add(frame)
                            if frames:
                                log.publish()
                            elif not log.subscribers:
                                return  # nobody has listened for a whole BLOCK period
                            if log.closed:
                                return
                except RunLost as exc:
                    logger.error("run %s followed here was lost: %s", log.run_id, exc)
                    log.fail(error_sse(exc))  # its streams end with `run_lost`
                    return
                except StreamctlError:
                    logger.exception("following run %s failed", log.run_id)
                    if not log.subscribers or not await self._still_stored(log.run_id):
                        return  # its streams end; a resume answers from what is stored
                    await anyio.sleep(RETRY_DELAY)
        finally:
            if self._logs.get(log.run_id) is log:
                del self._logs[log.run_id]
            if not log.closed and log.failure is None:
                log.closed = True  # its streams end (without `done`); their clients resume
                log.publish()
