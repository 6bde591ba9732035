"""How one run executes, from its first row to its final row: the body of a run's task.

``RunTask.run`` is the body of a run's task: it writes the run's row and first event, waits for the
runs ahead of it when queued, iterates the agent inside the run's own cancel scope, and always ends
with the terminal events and the final row, written in shielded clean-up after the agent's code is
gone (docs/architecture.md, invariants 6 and 7). An agent's exception is caught here, at the per-run
boundary, and fails that run alone (invariant 9)."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .agents.base import Agent, AgentContext, Message
from .errors import AgentProtocolError, RecursionLimitExceeded, StreamctlError
from .events import (
    Custom,
    Done,
    ErrorEvent,
    Interrupt,
    MessageChunk,
    ReasoningChunk,
    RunStarted,
    TerminalStatus,
    ToolEnd,
    ToolStart,
    Usage,
)
from .history import run_messages, trim_window
from .limits import history_window
from .runs import Run
from .settings import Settings
from .store.base import ACTIVE_STATUSES, FinalState, NewRun, RunStore

AGENT_ERROR_MESSAGE = "the agent failed; the server's log has the details"
"""What clients see of an agent's exception (its text goes to the log only)."""

logger = logging.getLogger("streamctl.run_task")

_FINISH_TIMEOUT = 30.0
"""Upper bound on the shielded clean-up of one run (flush, terminal event, final row)."""

_RETRY_BACKOFF = (0.1, 5.0)
"""Retrying a failed store's terminal events: the first delay, doubling up to the second."""

_STORE_LOST = "the store could not write the run's events"

_CHECKPOINT_EVERY = 32
"""Events an agent may emit without awaiting before the run yields to the event loop once."""

Outcome = tuple[TerminalStatus, str, dict[str, str] | None]


class RunTask:
    """The body of every run's task (one ``run`` call per run), for the supervisor."""

    def __init__(self, store: RunStore, agent: Agent, settings: Settings, tg: TaskGroup) -> None:
        self.store = store
        self.agent = agent
        self.settings = settings
        self._tg = tg
        """The supervisor's task group: each run's watchdog runs there."""

    async def run(
        self,
        run: Run,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The run's task. Reports started once its row and first event are committed."""
        store = self.store
        run.max_backlog_events = self.settings.max_backlog_events
        run.max_backlog_bytes = self.settings.max_backlog_bytes
        status = "queued" if run.ahead else "running"
        history = None
        if not run.ahead:
            # Read before the start is reported, so the agent starts at once; a queued run reads
            # it once the runs ahead of it (whose output belongs in it) have ended.
            history = await self._history(run)
            run.started_at = time.time()
        store.create_run(
            NewRun(
                run_id=run.run_id,
                thread_id=run.thread_id,
                owner=run.owner,
                status=status,
                input=run.input,
                config=run.config,
                created_at=run.created_at,
                started_at=run.started_at,
            )
        )
        run.emit(RunStarted(run_id=run.run_id, thread_id=run.thread_id, status=status))
        try:
            await store.flush(run.run_id)  # this run's writes only: not behind another's backlog
        except StreamctlError:
            store.abandon(run.run_id)  # the start failed (503); whatever was stored is ended
            raise
        task_status.started()
        logger.info(
            "run started",
            extra={
                "run_id": run.run_id,
                "thread_id": run.thread_id,
                "owner": run.owner,
                "status": status,
            },
        )

        # If the supervisor itself is cancelled (it should not be: shutdown stops runs first),
        # the run still ends with a terminal event.
        outcome: Outcome = ("interrupted", "the server stopped the run", None)
        lost: StreamctlError | None = None
        try:
            outcome = await self._drive(run, history)
        finally:
            with anyio.move_on_after(_FINISH_TIMEOUT, shield=True):
                try:
                    await self._finish(run, outcome)
                except StreamctlError as exc:
                    # The store failed under this run (disk full, ...): contain it here, so the
                    # supervisor and every other run go on. Its streams end now, with an error
                    # they cannot resume past; its terminal events are retried below, unless
                    # the refusal is final (taken over, lost: the end is not ours to write).
                    logger.error("run %s: its end could not be stored: %s", run.run_id, exc)
                    if not run.log.closed:  # else its `done` is stored and its streams ended
                        run.streams_failed(exc)
                    lost = exc
        if lost is not None and not lost.final:
            await self._retry_finish(run, lost)

    async def _drive(self, run: Run, history: list[Message] | None) -> Outcome:
        """Run the agent inside the run's own cancel scope; say how the run ended."""
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.stop_status is not None:
                    scope.cancel()
                if run.ahead:
                    for ahead in run.ahead:  # every run queued before this one, in order
                        await ahead.finished.wait()
                    run.ahead = []
                    run.started_at = time.time()
                    self.store.mark_running(run.run_id, run.started_at)
                    run.emit(RunStarted(run_id=run.run_id, thread_id=run.thread_id))
                    history = await self._history(run)
                assert history is not None
                run.last_event_at = time.time()
                self._tg.start_soon(self._watch, run)
                await self._iterate(run, history)
        except RecursionLimitExceeded as exc:
            return "failed", str(exc), {"code": "recursion_limit", "message": str(exc)}
        except StreamctlError as exc:
            logger.error("run %s failed: %s", run.run_id, exc)
            return "failed", exc.message, {"code": exc.code, "message": exc.message}
        except Exception as exc:  # the per-run boundary: one agent's failure is its run's alone
            # The exception's text stays in the log: upstream errors carry URLs, keys, prompts.
            logger.warning("run %s: agent failed: %r", run.run_id, exc, exc_info=True)
            message = AGENT_ERROR_MESSAGE
            return (
                "failed",
                "the agent raised an error",
                {"code": "agent_error", "message": message},
            )
        if scope.cancel_called and run.stop_status is not None:
            return run.stop_status, run.stop_reason, None
        return "completed", "the agent finished", None

    async def _history(self, run: Run) -> list[Message]:
        """The thread's finished runs before this one, as the conversation the agent continues:
        only its latest messages (``history_messages``, ``history_bytes``), so a new run's cost
        does not grow with the thread. Each finished run gives at least one message, so the
        latest ``history_messages`` runs hold every message the window can keep."""
        count = self.settings.history_messages
        if count == 0 or run.new_thread:
            return []
        records = await self.store.thread_runs(
            run.owner, run.thread_id, limit=count, before=run.run_id
        )
        history: list[Message] = []
        for record in records:
            if record.run_id == run.run_id or record.status in ACTIVE_STATUSES:
                continue
            history += run_messages(record.input, record.output)
        return trim_window(history_window(history, count, self.settings.history_bytes))

    async def _iterate(self, run: Run, history: list[Message]) -> None:
        """Emit what the agent yields; count steps (new messages, tool calls) against the limit."""
        limit = run.recursion_limit
        ctx = AgentContext(
            run_id=run.run_id,
            thread_id=run.thread_id,
            messages=[Message(**m) for m in run.input["messages"]],
            history=history,
            recursion_limit=limit,
            config=run.agent_config,
        )
        steps = emitted = 0
        message_id: str | None = None
        if run.stop_status is not None:  # stopped before the agent started: never start it
            return
        events = self.agent(ctx)
        try:
            async for event in events:
                if run.stop_status is not None:
                    # Stopped while the agent could not be cancelled (no await since, or a
                    # worker thread): nothing it yields from now on belongs to the run.
                    break
                if isinstance(event, MessageChunk):
                    if event.message_id != message_id:
                        message_id = event.message_id
                        steps += 1
                elif isinstance(event, ToolStart):
                    steps += 1
                elif isinstance(event, Usage):  # added up into `done`, never sent
                    event.add_to(run.usage)
                    continue
                elif not isinstance(event, ToolEnd | ReasoningChunk | Custom | Interrupt):
                    raise AgentProtocolError(
                        f"agent yielded {type(event).__name__}; expected an AgentEvent"
                        " (MessageChunk, ReasoningChunk, ToolStart, ToolEnd, Custom, Interrupt"
                        " or Usage)"
                    )
                if steps > limit:
                    raise RecursionLimitExceeded(f"the run took more than {limit} steps")
                run.emit(event)
                emitted += 1
                if emitted == 1:
                    run.first_event_at = run.last_event_at
                    # The first event goes to the writer (and the stream) at once, not after
                    # whatever the agent emits before it next awaits: time to first event.
                    await anyio.lowlevel.checkpoint()
                elif run.backlogged:  # the store is behind: the agent waits (backpressure)
                    await run.backlog_drained()
                elif emitted % _CHECKPOINT_EVERY == 0:
                    # An agent that never awaits (a burst, a cached answer) would otherwise hold
                    # the loop until it ends: the writer, subscribers and stops get a turn.
                    await anyio.lowlevel.checkpoint()
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        """Write the terminal events and the final row. Runs shielded, after the agent is gone."""
        status, reason, error = outcome
        store = self.store
        if status == run.stop_status and status != "failed":
            self._drop_unsent(run)
        try:
            await store.flush(run.run_id)  # every agent event committed: run.output complete
        except StreamctlError:
            logger.exception("run %s: events lost before the terminal event", run.run_id)
        if run.broken is not None and run.broken.final:
            raise run.broken  # taken over or lost: the run's end is not ours to write
        if run.broken is not None:
            # The store lost some of this run's events. No subscriber ever saw them (commit
            # before send), so the run numbers on from its last stored event: ids stay dense.
            status, reason = "failed", _STORE_LOST
            error = {"code": "store_error", "message": run.broken.message}
            run.last_seq, run.broken = run.output.last_seq, None
        await self._terminal(run, status, reason, error)

    def _drop_unsent(self, run: Run) -> None:
        """A stopped run ends at what is committed: the events it emitted that still wait for
        the writer are dropped (nobody has seen them: commit before send), so its ``done``
        follows its last committed event without waiting for a firehose's backlog, and a stop
        answers within a batch commit. The ids stay dense: the run numbers on after the last
        event kept."""
        dropped = self.store.drop_queued(run.run_id)
        if dropped:
            run.last_seq = dropped[0].seq - 1
            run.backlog_events -= len(dropped)
            run.backlog_bytes -= sum(len(frame.sse) for frame in dropped)

    async def _retry_finish(self, run: Run, lost: StreamctlError) -> None:
        """The store could not write the run's terminal events: retry them (with backoff) until
        it can, for at most ``store_retry_seconds``. Meanwhile the run stays live, and its
        snapshot, pages and streams show what is stored. Not shielded: a shutdown cancels the
        retry, and the next start finalises the run from its stored events."""
        delay, give_up = _RETRY_BACKOFF[0], time.monotonic() + self.settings.store_retry_seconds
        error = {"code": "store_error", "message": lost.message}
        while time.monotonic() + delay <= give_up:
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_BACKOFF[1])
            try:
                with anyio.CancelScope(shield=True):
                    await self._retry_end(run, error)
            except StreamctlError as exc:
                if exc.final:  # taken over or lost meanwhile: the end is not ours to write
                    return
                logger.info("run %s: the store still fails (%s); retrying", run.run_id, exc)
                continue
            run.log.failure = None
            logger.warning("run %s: its terminal events are stored at last", run.run_id)
            return
        why = "run %s: the store failed for %g s; it is left to be finalised as interrupted"
        logger.error(why, run.run_id, self.settings.store_retry_seconds)
        self.store.abandon(run.run_id)

    async def _retry_end(self, run: Run, error: dict[str, str]) -> None:
        """One more try at the run's end. When its ``done`` is stored and only its final row
        was lost (a batch cap put the row in a later batch, and that one failed), only the row
        is written again: a second ``done`` would follow the first in the run's log."""
        output = run.output
        if run.log.closed:
            self._final_row(run, output.status, output.reason, output.error)
            await self.store.flush(run.run_id)
            return
        # Whatever the last attempt queued is lost: number on from the last stored event.
        run.last_seq, run.broken = output.last_seq, None
        await self._terminal(run, "failed", _STORE_LOST, error)

    async def _terminal(
        self,
        run: Run,
        status: TerminalStatus,
        reason: str,
        error: dict[str, str] | None,
    ) -> None:
        """Emit the run's ``error`` (if any) and ``done``, queue its final row, flush."""
        store = self.store
        if error is not None:
            run.emit(ErrorEvent(code=error["code"], message=error["message"]))
        run.ended_at = time.time()
        done = Done(
            run_id=run.run_id,
            thread_id=run.thread_id,
            status=status,
            reason=reason,
            tokens=run.output.tokens,
            usage=run.usage or None,
        )
        run.emit(done)
        self._final_row(run, status, reason, error)
        await store.flush(run.run_id)
        logger.info(
            "run ended",
            extra={
                "run_id": run.run_id,
                "thread_id": run.thread_id,
                "owner": run.owner,
                "status": status,
                "duration": round(run.ended_at - run.created_at, 3),
                "events": run.last_seq,
            },
        )

    def _final_row(
        self,
        run: Run,
        status: str,
        reason: str | None,
        error: dict[str, Any] | None,
    ) -> None:
        """Queue the run's final row: its status and output as of its ``done``."""
        assert run.ended_at is not None
        self.store.finish_run(
            run.run_id,
            FinalState(
                status=status,
                reason=reason,
                error=error,
                tokens=run.output.tokens,
                last_seq=run.last_seq,
                output=run.output.as_json(),
                ended_at=run.ended_at,
                usage=run.usage,
            ),
        )

    async def _watch(self, run: Run) -> None:
        """End the run as ``timed_out`` when it runs too long or its agent goes quiet too long.

        Started when the agent starts; returns when the run finishes. A timer, not a poll: it
        sleeps until the earlier of the two deadlines and re-arms when events have come since.
        """
        settings = self.settings
        deadline = time.time() + settings.max_run_seconds
        while not run.finished.is_set():
            now = time.time()
            stall_at = run.last_event_at + settings.stall_seconds
            if now >= deadline:
                reason = f"the run exceeded its time limit of {settings.max_run_seconds:g} s"
                run.request_stop("timed_out", reason)
                return
            if now >= stall_at:
                reason = f"the agent stalled: no event for {settings.stall_seconds:g} s"
                run.request_stop("timed_out", reason)
                return
            with anyio.move_on_after(min(deadline, stall_at) - now):
                await run.finished.wait()
