"""The supervisor: owns every run as a task in one long-lived task group, and wires the parts.

- ``live`` (``registry.LiveRuns``): the runs alive in this process;
- ``control`` (``control.RunControl``): the write side, start, queue, stop, drain, purge;
- ``reads`` (``reads.RunReads``): the read side, snapshots, pages, streams, threads;
- ``streams`` (``limits.StreamCaps``): open streams per principal.

Enter it in the application's lifespan (``async with Supervisor(...)``), never in a request: a run
is a resource, not a connection (docs/architecture.md, invariant 1). On entry it finalises the runs
the store hands over because their owner is gone (invariant 8). Its background loops (retention,
heartbeat) run contained like runs: an error in one is logged and the loop restarts; it never
cancels the task group, and so never every run (invariant 9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .agents.base import Agent
from .control import RunControl
from .errors import StreamctlError
from .limits import StreamCaps
from .orphans import finalise_orphans
from .reads import RunReads
from .registry import LiveRuns
from .remote import RemoteLogs
from .settings import Settings
from .stats import Counters, RunStats
from .store.base import RunStore, SharedStore

logger = logging.getLogger("streamctl.supervisor")

RESTART_BACKOFF = (0.1, 30.0)
"""A crashed background loop restarts after the first delay, doubling up to the second."""


class Supervisor:
    """Starts, queues, stops and drains runs (``control``); answers every question about them
    (``reads``); counts streams (``streams``)."""

    def __init__(
        self,
        store: RunStore,
        agent: Agent,
        settings: Settings,
        *,
        per_principal: bool | None = None,
    ) -> None:
        """``per_principal``: whether the per-principal caps apply (default: auth is on; a host's
        ``authenticate`` tells principals apart too). ``max_runs`` always applies."""
        self.store = store
        self.agent = agent
        self.settings = settings
        self.counters = Counters()
        self.stats = RunStats()
        self.live = LiveRuns()
        self.streams = StreamCaps(settings)
        self.remote: RemoteLogs | None = None
        """With a shared store: runs owned by other processes, followed from this one."""
        if isinstance(store, SharedStore):
            self.remote = RemoteLogs(store, settings.tail_events, settings.tail_bytes)
        self.reads = RunReads(store, self.live, settings, self.counters, self.remote)
        self.control = RunControl(store, agent, settings, self.live, self.reads, self.stats)
        if per_principal is not None:
            self.control.caps.per_principal = self.streams.per_principal = per_principal
        if isinstance(store, SharedStore):
            store.on_stop_request = self.control.stop_asked
        self.recovered_runs = 0
        """Runs finalised at entry because their owner was gone."""
        self._tg: TaskGroup | None = None

    @property
    def accepting(self) -> bool:
        """True while new runs are accepted (readiness)."""
        return self.control.accepting

    @property
    def active_runs(self) -> int:
        """Runs running or queued right now."""
        return len(self.live)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        self.recovered_runs = await finalise_orphans(self.store)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self.control.open(self._tg)
        if self.remote is not None:
            self.remote.open(self._tg)
        if isinstance(self.store, SharedStore):
            # An owner may die at any time, not only before this process started.
            self._tg.start_soon(self._contained, "sweep", self._sweep_loop)
        if self.settings.retention_days > 0:
            self._tg.start_soon(self._contained, "retention", self._purge_loop)
        self._tg.start_soon(self._contained, "heartbeat", self._heartbeat_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            await self.control.drain(0)
        self._tg.cancel_scope.cancel()  # the background loops; runs have ended in drain
        # An exception of the body propagates as itself, not wrapped in an ExceptionGroup.
        await self._tg.__aexit__(None, None, None)

    # -- background loops ------------------------------------------------------------------------

    async def _contained(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` for ever: an exception is logged and the loop restarts after a backoff
        (a bug in a loop must not cancel the task group, and with it every run)."""
        delay, most = RESTART_BACKOFF
        while True:
            try:
                await loop()
            except Exception:
                self.stats.loop_restarts += 1
                logger.exception("the %s loop failed; restarting in %g s", name, delay)
            else:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, most)

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.control.purge()
            except StreamctlError:  # the store failed: expected, not a bug; retry next time
                logger.exception("purging old events failed; will retry")
            await anyio.sleep(self.settings.purge_interval)

    async def _sweep_loop(self) -> None:
        assert isinstance(self.store, SharedStore)
        while True:
            await anyio.sleep(self.store.sweep_interval)
            try:
                self.recovered_runs += await finalise_orphans(self.store)
            except StreamctlError:  # the store failed: expected, not a bug; retry next time
                logger.exception("sweeping for runs whose owner is gone failed; will retry")

    async def _heartbeat_loop(self) -> None:
        """Wake the subscribers of logs idle for half a ping interval, so that each stream idle
        for a whole interval sends a `: ping` (one timer here instead of one per waiting stream).
        """
        half = self.settings.ping_interval / 2
        while True:
            await anyio.sleep(half)
            # Every log the last tick published is due again (a tenth of slack): the sleep may
            # end a little early, and a log published late in the last tick would otherwise be
            # skipped once, and its streams ping after 2 intervals instead of 1.5 at most.
            due = time.monotonic() - half * 0.9
            logs = [run.log for run in self.live]
            if self.remote is not None:
                logs += self.remote
            for log in logs:
                if log.subscribers and log.last_publish <= due:
                    log.publish()
