"""The supervisor: owns every run as a task in one long-lived task group.

A run is a resource, not a connection: it lives here, not in the request that started it, so a
client that disconnects never ends it (DESIGN.md invariant 1). ``stop`` cancels a run's scope and
returns only after its task has exited (invariant 7); ``drain`` stops taking runs, gives the active
ones a grace period and interrupts the rest (invariant 8). Every cap on concurrent runs is checked
and claimed in one synchronous step, so a burst of requests cannot slip past it (invariant 10).

Enter it in the application's lifespan (``async with Supervisor(...)``), never in a request.
The read side (snapshots, event pages, streams, threads) lives in ``queries.RunQueries``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .agents.base import Agent
from .broadcast import Counters
from .errors import (
    InvalidInput,
    StreamctlError,
    ThreadBusy,
    ThreadNotFound,
    TooManyRuns,
    TooManyStreams,
    Unavailable,
)
from .events import TERMINAL_STATUSES, TerminalStatus
from .inputs import RunCreate
from .queries import RunQueries
from .ratelimit import SlidingWindow
from .runner import Runner, recover
from .runs import Run, row_json
from .settings import Settings
from .store import Store

logger = logging.getLogger("streamctl.supervisor")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunStats:
    """Counters of the supervisor's work since it started (tests, readiness, metrics)."""

    started: int = 0
    stop_requests: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    """Runs by terminal status."""
    purged: int = 0


class Supervisor(RunQueries):
    """Starts, queues, stops and drains runs; answers every question about them."""

    def __init__(self, store: Store, agent: Agent, settings: Settings) -> None:
        self.store = store
        self.agent = agent
        self.settings = settings
        self._runs: dict[str, Run] = {}
        self._threads: dict[str, list[Run]] = {}
        self._per_owner: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        """Open streams per principal."""
        self._run_rate = SlidingWindow(settings.runs_per_minute, 60.0)
        self._tg: TaskGroup | None = None
        self._runner: Runner | None = None
        self.accepting = False
        self.recovered_runs = 0
        self.counters = Counters()
        self.stats = RunStats()
        # TEMP(merge): composed parts land from wave-core. The HTTP layer speaks through
        # `control`, `reads` and `streams`; until the composed supervisor arrives they are this
        # object itself and a wrapper of its stream counting. The coordinator deletes this block.
        self.control = self.reads = self
        self.streams = _TempStreams(self)
        # end TEMP(merge)

    @property
    def active_runs(self) -> int:
        """Runs running or queued right now."""
        return len(self._runs)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        self.recovered_runs = await recover(self.store)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._runner = Runner(self.store, self.agent, self.settings, self._tg)
        if self.settings.retention_days > 0:
            self._tg.start_soon(self._purge_loop, name="streamctl retention")
        self._tg.start_soon(self._heartbeat_loop, name="streamctl heartbeat")
        self.accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            await self.drain(0)
        self._tg.cancel_scope.cancel()  # the retention loop; runs have ended in drain
        # An exception of the body propagates as itself, not wrapped in an ExceptionGroup.
        await self._tg.__aexit__(None, None, None)

    def stop_accepting(self) -> None:
        """From now on, new runs get 503 and readiness fails (the first step of a drain)."""
        self.accepting = False

    async def drain(self, grace: float) -> None:
        """Stop accepting runs; give active ones ``grace`` seconds; interrupt the rest.

        Every run then ends with its terminal event, so every open stream receives it and closes.
        """
        self.stop_accepting()
        with anyio.move_on_after(grace):
            await self._until_idle()
        for run in list(self._runs.values()):
            run.request_stop("interrupted", "the server is shutting down")
        with anyio.move_on_after(self.settings.stop_timeout):
            await self._until_idle()
        if self._runs:
            logger.error("%d runs did not stop within stop_timeout", len(self._runs))

    async def _until_idle(self) -> None:
        while self._runs:
            await next(iter(self._runs.values())).finished.wait()

    # -- starting --------------------------------------------------------------------------------

    async def start(self, request: RunCreate, owner: str) -> Run:
        """Start (or queue) a run; return once its row and its first event are committed."""
        if not self.accepting or self._tg is None or self._runner is None:
            raise Unavailable("the server is not accepting new runs (starting up or shutting down)")
        self._check_input(request)
        thread_id = request.thread_id or new_id()
        if request.thread_id is not None:
            row = await self.store.fetch_one(
                "SELECT owner FROM threads WHERE thread_id = ?", (thread_id,)
            )
            if row is not None and row["owner"] != owner:
                raise ThreadNotFound(thread_id)
        ahead = await self._make_room(thread_id, owner, request.multitask)
        if not self.accepting:  # a drain began while this request awaited: it must not slip in
            raise Unavailable("the server is shutting down and accepts no new runs")
        self._check_capacity(owner)
        run = Run(
            run_id=new_id(),
            thread_id=thread_id,
            owner=owner,
            input=request.input.model_dump(),
            config=request.config.model_dump(exclude_none=True)
            | {"multitask": request.multitask, "on_disconnect": request.on_disconnect},
            store=self.store,
            tail_events=self.settings.tail_events,
            tail_bytes=self.settings.tail_bytes,
            recursion_limit=int(
                min(self.settings.recursion_limit, request.config.recursion_limit or math.inf)
            ),
            agent_config=request.agent_config(),
            ahead=ahead,
        )
        # Registered with no await since the checks above, so no concurrent start slips between.
        self._runs[run.run_id] = run
        self._threads.setdefault(thread_id, []).append(run)
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        try:
            # Shielded: once the run's row may be committed, the run must reach its `done`,
            # even if the request that started it is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await self._tg.start(self._run_task, run)
        except BaseException:
            self._forget(run)
            raise
        self.stats.started += 1
        return run

    async def _make_room(self, thread_id: str, owner: str, multitask: str) -> list[Run]:
        """Apply ``multitask`` to a busy thread. Returns the runs to queue behind (enqueue)."""
        queue = self._threads.get(thread_id)
        if not queue:
            return []
        if queue[0].owner != owner:  # a thread another principal is creating right now
            raise ThreadNotFound(thread_id)
        if multitask == "enqueue":
            return list(queue)
        if multitask == "interrupt":
            for run in reversed(queue):  # newest first, so no queued run starts meanwhile
                run.request_stop("cancelled", "interrupted by a newer run on the thread")
            with anyio.move_on_after(self.settings.stop_timeout):
                for run in list(queue):
                    await run.finished.wait()
            queue = self._threads.get(thread_id)
            if not queue:
                return []
            raise ThreadBusy(
                thread_id,
                queue[0].run_id,
                "its runs did not stop within stop_timeout, or another run started meanwhile",
            )
        raise ThreadBusy(thread_id, queue[0].run_id)

    def _check_capacity(self, owner: str) -> None:
        settings = self.settings
        if len(self._runs) >= settings.max_runs:
            raise TooManyRuns(
                f"the server is running its maximum of {settings.max_runs} runs; retry shortly"
            )
        if self._per_owner.get(owner, 0) >= settings.max_runs_per_owner:
            raise TooManyRuns(
                f"you have {settings.max_runs_per_owner} active runs, the most allowed at once;"
                " stop one or wait for one to finish"
            )
        wait = self._run_rate.hit(owner)
        if wait is not None:
            raise TooManyRuns(
                f"you started {settings.runs_per_minute} runs in the last minute, the most"
                " allowed; retry shortly",
                retry_after=max(1, math.ceil(wait)),
            )

    def open_stream(self, owner: str) -> None:
        """Count a stream the principal opens; ``TooManyStreams`` past the cap."""
        held = self._streams.get(owner, 0)
        if held >= self.settings.max_streams_per_owner:
            raise TooManyStreams(
                f"you have {held} streams open, the most allowed at once; close one first"
            )
        self._streams[owner] = held + 1

    def close_stream(self, owner: str) -> None:
        left = self._streams.get(owner, 1) - 1
        if left:
            self._streams[owner] = left
        else:
            self._streams.pop(owner, None)

    def _check_input(self, request: RunCreate) -> None:
        # An agent may check its own options up front (the demo agent does), so a bad option
        # is a 422 for the request, not a failed run.
        validate = getattr(self.agent, "validate_config", None)
        if validate is not None:
            validate(request.agent_config())
        messages = request.input.messages
        if len(messages) > self.settings.max_messages:
            raise InvalidInput(
                f"{len(messages)} input messages; at most {self.settings.max_messages} are accepted"
            )
        for i, message in enumerate(messages):
            if len(message.content) > self.settings.max_message_chars:
                raise InvalidInput(
                    f"input message {i} has {len(message.content)} characters; "
                    f"at most {self.settings.max_message_chars} are accepted"
                )

    async def _run_task(
        self,
        run: Run,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._runner is not None
        try:
            await self._runner.run(run, task_status=task_status)
        finally:
            self._forget(run)
            status = run.output.status
            if status in TERMINAL_STATUSES:  # not a run whose start failed (never begun)
                self.stats.ended[status] = self.stats.ended.get(status, 0) + 1
            run.finished.set()

    def _forget(self, run: Run) -> None:
        if self._runs.pop(run.run_id, None) is None:
            return
        queue = self._threads.get(run.thread_id, [])
        if run in queue:
            queue.remove(run)
        if not queue:
            self._threads.pop(run.thread_id, None)
        left = self._per_owner.get(run.owner, 1) - 1
        if left:
            self._per_owner[run.owner] = left
        else:
            self._per_owner.pop(run.owner, None)

    # -- stopping --------------------------------------------------------------------------------

    async def stop(
        self, run_id: str, owner: str | None, *, wait: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """Stop a run (idempotent). Returns its state and whether its task has exited."""
        run = self._live(run_id, owner)
        if run is None:
            return await self.get_run(run_id, owner), True
        self.stats.stop_requests += 1
        run.request_stop("cancelled", "stopped by request")
        if wait:
            await self._wait_stopped(run)
        return run.snapshot(), run.finished.is_set()

    async def _wait_stopped(self, run: Run) -> None:
        with anyio.move_on_after(self.settings.stop_timeout):
            await run.finished.wait()

    async def stop_thread(self, thread_id: str, owner: str | None) -> tuple[dict[str, Any], bool]:
        """Stop the thread's active run; with none active, return its last run's final state."""
        active = self._active(thread_id)
        if active is not None and owner in (None, active.owner):
            return await self.stop(active.run_id, owner)
        await self._thread_row(thread_id, owner)
        row = await self.store.fetch_one(
            "SELECT * FROM runs WHERE thread_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (thread_id,),
        )
        if row is None:
            raise ThreadNotFound(thread_id)
        return row_json(row), True

    def request_stop(self, run_id: str, status: TerminalStatus = "cancelled") -> None:
        """Ask a run to stop without waiting (a streaming client with on_disconnect=cancel left)."""
        run = self._runs.get(run_id)
        if run is not None:
            self.stats.stop_requests += 1
            run.request_stop(status, "the client disconnected")

    async def _heartbeat_loop(self) -> None:
        """Wake the subscribers of logs idle for half a ping interval, so that each stream idle
        for a whole interval sends a `: ping` (one timer here instead of one per waiting stream).
        """
        half = self.settings.ping_interval / 2
        while True:
            await anyio.sleep(half)
            due = time.monotonic() - half
            for run in list(self._runs.values()):
                log = run.log
                if log.subscribers and log.last_publish <= due:
                    log.publish()

    # -- retention -------------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge()
            except StreamctlError:
                logger.exception("purging old events failed; will retry")
            await anyio.sleep(self.settings.purge_interval)

    async def purge(self, now: float | None = None) -> int:
        """Delete the events of runs that ended more than ``retention_days`` ago.

        Their rows (status, output snapshot) and their threads' messages stay.
        """
        if self.settings.retention_days <= 0:
            return 0  # 0 keeps events forever
        now = time.time() if now is None else now
        cutoff = now - self.settings.retention_days * 86400
        rows = await self.store.fetch_all(
            "SELECT run_id FROM runs WHERE purged_at IS NULL AND ended_at < ?"
            " AND status NOT IN ('queued', 'running') ORDER BY ended_at LIMIT 500",
            (cutoff,),
        )
        for row in rows:
            self.store.execute_later("DELETE FROM events WHERE run_id = ?", (row["run_id"],))
            self.store.execute_later(
                "UPDATE runs SET purged_at = ? WHERE run_id = ?", (now, row["run_id"])
            )
        await self.store.flush()
        self.stats.purged += len(rows)
        if rows:
            logger.info("purged the events of %d runs that ended before the retention", len(rows))
        return len(rows)


# TEMP(merge): composed parts land from wave-core (see Supervisor.__init__); delete at merge.
class _TempStreams:
    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def open(self, owner: str) -> None:
        self._sup.open_stream(owner)

    def close(self, owner: str) -> None:
        self._sup.close_stream(owner)


# end TEMP(merge)
