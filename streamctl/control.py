"""The write side: start, queue, stop and drain runs, and purge old events.

A run is a resource, not a connection: its task lives in the supervisor's task group, not in the
request that started it, so a client that disconnects never ends it (docs/architecture.md,
invariant 1). ``stop`` cancels a run's scope and returns only after its task has exited
(invariant 7); ``drain`` stops taking runs, gives the active ones a grace period and interrupts the
rest (invariant 8). Every cap on concurrent runs is checked and claimed in one synchronous step, so
a burst of requests cannot slip past it (invariant 10).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .agents.base import Agent
from .errors import RunIdTaken, ThreadBusy, ThreadNotFound, Unavailable
from .events import TERMINAL_STATUSES, TerminalStatus
from .inputs import RunCreate
from .limits import RunCaps, check_input
from .reads import RunReads
from .registry import LiveRuns
from .run_task import RunTask
from .runs import Run, record_json
from .settings import Settings
from .stats import RunStats
from .store.base import ACTIVE_STATUSES, RunStore, SharedStore

logger = logging.getLogger("streamctl.control")


def new_id() -> str:
    return uuid.uuid4().hex


class RunControl:
    """Starts, queues, stops and drains the supervisor's runs."""

    def __init__(
        self,
        store: RunStore,
        agent: Agent,
        settings: Settings,
        live: LiveRuns,
        reads: RunReads,
        stats: RunStats,
    ) -> None:
        self.store = store
        self.agent = agent
        self.settings = settings
        self.live = live
        self.reads = reads
        self.stats = stats
        self.caps = RunCaps(settings, live, store)
        self.accepting = False
        self._tg: TaskGroup | None = None
        self._task: RunTask | None = None

    def open(self, tg: TaskGroup) -> None:
        """Run every run's task in ``tg`` from now on, and accept runs."""
        self._tg = tg
        self._task = RunTask(self.store, self.agent, self.settings, tg)
        self.accepting = True

    def stop_accepting(self) -> None:
        """From now on, new runs get 503 and readiness fails (the first step of a drain)."""
        self.accepting = False

    async def drain(self, grace: float) -> None:
        """Stop accepting runs; give active ones ``grace`` seconds; interrupt the rest.

        Every run then ends with its terminal event, so every open stream receives it and closes.
        """
        self.stop_accepting()
        with anyio.move_on_after(grace):
            await self.live.until_empty()
        for run in self.live:
            run.request_stop("interrupted", "the server is shutting down")
        with anyio.move_on_after(self.settings.stop_timeout):
            await self.live.until_empty()
        if len(self.live):
            logger.error("%d runs did not stop within stop_timeout", len(self.live))

    # -- starting --------------------------------------------------------------------------------

    async def start(self, request: RunCreate, owner: str, *, run_id: str | None = None) -> Run:
        """Start (or queue) a run; return once its row and its first event are committed.

        ``run_id``: an id the client chose (AG-UI's ``runId``); ``RunIdTaken`` if a run has it
        already, live or stored, whoever's it is (the caller decides whether to join that run).
        """
        if not self.accepting or self._tg is None:
            raise Unavailable("the server is not accepting new runs (starting up or shutting down)")
        settings = self.settings
        check_input(request, self.agent, settings)
        # Threads are (owner, thread_id): another principal's `user-1` is not this one's, so a
        # thread id can be neither probed nor squatted.
        thread_id = request.thread_id or new_id()
        if run_id is not None and (
            self.live.get(run_id) is not None or await self.store.get_run(run_id) is not None
        ):
            raise RunIdTaken(run_id)  # before make_room: a taken id must not interrupt a run
        ahead = await self._make_room(owner, thread_id, request.multitask)
        if not self.accepting:  # a drain began while this request awaited: it must not slip in
            raise Unavailable("the server is shutting down and accepts no new runs")
        if run_id is not None and self.live.get(run_id) is not None:
            # Checked with no await before registering: two starts of one id cannot both pass.
            # (A run of that id that started and ended while this request awaited is not
            # caught here: its stored row then makes this start fail in the store.)
            raise RunIdTaken(run_id)
        self.caps.check(owner)
        run = Run(
            run_id=run_id or new_id(),
            thread_id=thread_id,
            owner=owner,
            input=request.input.model_dump(),
            config=request.config.model_dump(exclude_none=True)
            | {"multitask": request.multitask, "on_disconnect": request.on_disconnect},
            store=self.store,
            tail_events=settings.tail_events,
            tail_bytes=settings.tail_bytes,
            recursion_limit=int(
                min(settings.recursion_limit, request.config.recursion_limit or math.inf)
            ),
            agent_config=request.agent_config(),
            ahead=ahead,
            new_thread=request.thread_id is None,
        )
        # Registered with no await since the checks above, so no concurrent start slips between.
        self.live.add(run)
        try:
            await self.caps.claim_shared(run.owner, run.run_id)  # over every process, if shared
            # Shielded: once the run's row may be committed, the run must reach its `done`,
            # even if the request that started it is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await self._tg.start(self._run_task, run)
        except BaseException:
            self.live.remove(run)
            raise
        self.stats.started += 1
        return run

    async def _make_room(self, owner: str, thread_id: str, multitask: str) -> list[Run]:
        """Apply ``multitask`` to a busy thread. Returns the runs to queue behind (enqueue)."""
        queue = self.live.on_thread(owner, thread_id)
        if not queue:
            return []
        if multitask == "enqueue":
            return queue
        if multitask == "interrupt":
            for run in reversed(queue):  # newest first, so no queued run starts meanwhile
                run.request_stop("cancelled", "interrupted by a newer run on the thread")
            with anyio.move_on_after(self.settings.stop_timeout):
                for run in queue:
                    await run.finished.wait()
            active = self.live.active(owner, thread_id)
            if active is None:
                return []
            raise ThreadBusy(
                thread_id,
                active.run_id,
                "its runs did not stop within stop_timeout, or another run started meanwhile",
            )
        if all(run.log.closed for run in queue):
            # Their `done` is committed (its client may have it, and start the next run on
            # seeing it): only their final bookkeeping is left, which does not hold the thread.
            with anyio.move_on_after(self.settings.stop_timeout):
                for run in queue:
                    await run.finished.wait()
            queue = self.live.on_thread(owner, thread_id)
            if not queue:
                return []
        raise ThreadBusy(thread_id, queue[0].run_id)

    async def _run_task(
        self,
        run: Run,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._task is not None
        try:
            await self._task.run(run, task_status=task_status)
        finally:
            self.live.remove(run)
            status = run.output.status
            if status in TERMINAL_STATUSES:  # not a run whose start failed (never begun)
                self.stats.ended[status] = self.stats.ended.get(status, 0) + 1
                self.stats.run_seconds.observe((run.ended_at or time.time()) - run.created_at)
                if run.first_event_at is not None and run.started_at is not None:
                    self.stats.first_event_seconds.observe(run.first_event_at - run.started_at)
            run.finished.set()

    # -- stopping --------------------------------------------------------------------------------

    async def stop(
        self, run_id: str, owner: str | None, wait: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """Stop a run (idempotent). Returns its state and whether its task has exited."""
        run = self.live.get(run_id, owner)
        if run is None:
            if isinstance(self.store, SharedStore):
                return await self._stop_elsewhere(self.store, run_id, owner, wait)
            return await self.reads.get_run(run_id, owner), True
        self.stats.stop_requests += 1
        run.request_stop("cancelled", "stopped by request")
        if wait:
            with anyio.move_on_after(self.settings.stop_timeout):
                await run.finished.wait()
        return run.snapshot(), run.finished.is_set()

    async def _stop_elsewhere(
        self, store: SharedStore, run_id: str, owner: str | None, wait: bool
    ) -> tuple[dict[str, Any], bool]:
        """Stop a run another process owns: ask it through the store, then wait until the run's
        final record is stored (its owner writes it after the run's task has exited)."""
        record = await self.reads.run_record(run_id, owner)
        if record.status not in ACTIVE_STATUSES:
            return record_json(record), True
        self.stats.stop_requests += 1
        await store.request_stop(run_id)
        if wait:
            with anyio.move_on_after(self.settings.stop_timeout):
                record = await store.wait_ended(run_id) or record
        if record.status in ACTIVE_STATUSES:
            record = await self.reads.run_record(run_id, owner)
        return record_json(record), record.status not in ACTIVE_STATUSES

    def stop_asked(self, run_id: str) -> None:
        """Another process asked to stop a run this one owns (a shared store)."""
        run = self.live.get(run_id)
        if run is not None:
            self.stats.stop_requests += 1
            run.request_stop("cancelled", "stopped by request")

    async def stop_thread(self, owner: str, thread_id: str) -> tuple[dict[str, Any], bool]:
        """Stop the thread ``(owner, thread_id)``'s active run; with none active, return its last
        run's final state. The caller has checked that it may address ``owner``'s threads."""
        active = self.live.active(owner, thread_id)
        if active is not None:
            return await self.stop(active.run_id, owner)
        await self.reads.thread_record(owner, thread_id)
        last = await self.store.thread_runs(owner, thread_id, limit=1)
        if not last:
            raise ThreadNotFound(thread_id)
        if isinstance(self.store, SharedStore) and last[0].status in ACTIVE_STATUSES:
            return await self.stop(last[0].run_id, owner)  # active on another process
        return record_json(last[0]), True

    def request_stop(self, run_id: str, status: TerminalStatus = "cancelled") -> None:
        """Ask a run to stop without waiting (a streaming client with on_disconnect=cancel left)."""
        run = self.live.get(run_id)
        if run is not None:
            self.stats.stop_requests += 1
            run.request_stop(status, "the client disconnected")

    # -- retention -------------------------------------------------------------------------------

    async def purge(self, now: float | None = None) -> int:
        """Delete the events of runs that ended more than ``retention_days`` ago.

        Their rows (status, output snapshot) and their threads' messages stay. Idempotency keys
        past their window go too (a key past it is free even before it is deleted).
        """
        if self.settings.retention_days <= 0:
            return 0  # 0 keeps events forever
        now = time.time() if now is None else now
        await self.store.purge_idempotency_keys(now - self.settings.idempotency_ttl)
        cutoff = now - self.settings.retention_days * 86400
        purged = await self.store.purge(cutoff, now)
        self.stats.purged += purged
        if purged:
            logger.info("purged the events of %d runs that ended before the retention", purged)
        return purged
