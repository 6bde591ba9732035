"""The supervisor: owns every run as a task in one long-lived task group.

A run is a resource, not a connection: it lives here, not in the request that started it, so a
client that disconnects never ends it (DESIGN.md invariant 1). Each run's task has its own cancel
scope; ``stop`` cancels that scope and returns only after the task has exited, by which time the
run's terminal ``done`` event is committed (invariants 6 and 7). An agent's exception is caught at
the per-run boundary and fails that run alone (invariant 9).

Enter it in the application's lifespan (``async with Supervisor(...)``), never in a request.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus

from .agents.base import Agent, AgentContext, Message
from .broadcast import follow
from .errors import (
    CursorOutOfRange,
    InvalidInput,
    RunNotFound,
    StreamctlError,
    ThreadBusy,
    ThreadNotFound,
    Unavailable,
)
from .events import (
    Done,
    ErrorEvent,
    Frame,
    MessageChunk,
    RunStarted,
    TerminalStatus,
    ToolEnd,
    ToolStart,
)
from .inputs import RunCreate
from .runs import Run, RunOutput, iso, row_json
from .settings import Settings
from .store import Store

logger = logging.getLogger("streamctl.supervisor")

_FINISH_TIMEOUT = 30.0
"""Upper bound on the shielded clean-up of one run (flush, terminal event, final row)."""

_FINAL_UPDATE = (
    "UPDATE runs SET status = ?, ended_at = ?, last_seq = ?, error = ?, usage = ?, snapshot = ?"
    " WHERE run_id = ?"
)

Outcome = tuple[TerminalStatus, str, dict[str, str] | None]


class RecursionLimitExceeded(Exception):
    """The agent took more steps than the run's recursion limit allows."""


class AgentProtocolError(Exception):
    """The agent yielded something that is not an ``AgentEvent``."""


def new_id() -> str:
    return uuid.uuid4().hex


class Supervisor:
    """Starts, tracks and stops runs; answers every question about them."""

    def __init__(self, store: Store, agent: Agent, settings: Settings) -> None:
        self.store = store
        self.agent = agent
        self.settings = settings
        self._runs: dict[str, Run] = {}
        self._active: dict[str, Run] = {}
        """The active run of each busy thread."""
        self._tg: TaskGroup | None = None
        self.accepting = False
        self.recovered_runs = 0

    @property
    def active_runs(self) -> int:
        return len(self._runs)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        self.recovered_runs = await self._recover()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self.accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.accepting = False
        for run in list(self._runs.values()):
            run.request_stop("interrupted", "the server is shutting down")
        assert self._tg is not None
        # The runs' tasks end with the stop requests above; an exception of the body propagates
        # as itself, not wrapped in the task group's ExceptionGroup.
        await self._tg.__aexit__(None, None, None)

    async def _recover(self) -> int:
        """Finalise runs the store still shows as active (the process died under them)."""
        rows = await self.store.fetch_all(
            "SELECT run_id, thread_id FROM runs WHERE status IN ('pending', 'running')"
        )
        now = time.time()
        for row in rows:
            frames = await self.store.read_frames(row["run_id"], 0)
            output = RunOutput.fold(frames)
            seq = output.last_seq + 1
            done = Done(
                run_id=row["run_id"],
                thread_id=row["thread_id"],
                status="interrupted",
                reason="the server stopped while the run was active",
                tokens=output.tokens,
            )
            frame = Frame.encode(seq, done, now)
            self.store.execute_later(
                "INSERT INTO events (run_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)",
                (row["run_id"], seq, frame.type, frame.data, now),
            )
            self._write_final_row(
                row["run_id"],
                status=done.status,
                reason=done.reason,
                error=output.error,
                tokens=output.tokens,
                last_seq=seq,
                output=output.as_json(),
                ended_at=now,
            )
            logger.warning("run %s was active at the last shutdown: interrupted", row["run_id"])
        await self.store.flush()
        return len(rows)

    # -- starting --------------------------------------------------------------------------------

    async def start(self, request: RunCreate, owner: str) -> Run:
        """Start a run; return once its row and its first event are committed."""
        if not self.accepting or self._tg is None:
            raise Unavailable("the server is not accepting new runs (starting up or shutting down)")
        self._check_input(request)
        thread_id = request.thread_id or new_id()
        if request.thread_id is not None:
            row = await self.store.fetch_one(
                "SELECT owner FROM threads WHERE thread_id = ?", (thread_id,)
            )
            if row is not None and row["owner"] != owner:
                raise ThreadNotFound(thread_id)
        while (active := self._active.get(thread_id)) is not None:
            if active.owner != owner:  # a thread another principal is creating right now
                raise ThreadNotFound(thread_id)
            if request.multitask == "reject":
                raise ThreadBusy(thread_id, active.run_id)
            await self._stop(active, "cancelled", "interrupted by a newer run on the thread")
        limit = min(self.settings.recursion_limit, request.config.recursion_limit or math.inf)
        run = Run(
            run_id=new_id(),
            thread_id=thread_id,
            owner=owner,
            input=request.input.model_dump(),
            config=request.config.model_dump(exclude_none=True)
            | {"multitask": request.multitask, "on_disconnect": request.on_disconnect},
            store=self.store,
            tail_events=self.settings.tail_events,
        )
        # Registered before the first await, so a concurrent start on this thread sees it.
        self._runs[run.run_id] = run
        self._active[thread_id] = run
        try:
            # Shielded: once the run's row may be committed, the run must reach its `done`,
            # even if the request that started it is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                await self._tg.start(self._run_task, run, request, int(limit))
        except BaseException:
            self._forget(run)
            raise
        return run

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

    async def _history(self, thread_id: str, run_id: str) -> list[Message]:
        rows = await self.store.fetch_all(
            "SELECT input, snapshot FROM runs WHERE thread_id = ? AND run_id != ?"
            " ORDER BY created_at, rowid",
            (thread_id, run_id),
        )
        history: list[Message] = []
        for row in rows:
            history += [Message(**m) for m in orjson.loads(row["input"])["messages"]]
            text = orjson.loads(row["snapshot"])["output"]["text"] if row["snapshot"] else ""
            history.append(Message(role="assistant", content=text))
        return history

    async def _run_task(
        self,
        run: Run,
        request: RunCreate,
        limit: int,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        store = self.store
        history = await self._history(run.thread_id, run.run_id)
        run.started_at = time.time()
        store.execute_later(
            "INSERT OR IGNORE INTO threads (thread_id, owner, created_at) VALUES (?, ?, ?)",
            (run.thread_id, run.owner, run.created_at),
        )
        store.execute_later(
            "INSERT INTO runs (run_id, thread_id, owner, status, input, config, created_at,"
            " started_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
            (
                run.run_id,
                run.thread_id,
                run.owner,
                orjson.dumps(run.input),
                orjson.dumps(run.config),
                run.created_at,
                run.started_at,
            ),
        )
        run.emit(RunStarted(run_id=run.run_id, thread_id=run.thread_id))
        await store.flush()
        task_status.started()

        ctx = AgentContext(
            run_id=run.run_id,
            thread_id=run.thread_id,
            messages=list(request.input.messages),
            history=history,
            recursion_limit=limit,
            config=request.agent_config(),
        )
        # If the supervisor itself is cancelled (it should not be: shutdown stops runs first),
        # the run still ends with a terminal event.
        outcome: Outcome = ("interrupted", "the server stopped the run", None)
        try:
            outcome = await self._drive(run, ctx)
        finally:
            with anyio.move_on_after(_FINISH_TIMEOUT, shield=True):
                await self._finish(run, outcome)
            self._forget(run)
            run.finished.set()

    async def _drive(self, run: Run, ctx: AgentContext) -> Outcome:
        """Iterate the agent inside the run's own cancel scope; say how the run ended."""
        try:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.stop_status is not None:
                    scope.cancel()
                await self._iterate(run, ctx)
        except RecursionLimitExceeded as exc:
            return "failed", str(exc), {"code": "recursion_limit", "message": str(exc)}
        except Exception as exc:  # the per-run boundary: one agent's failure is its run's alone
            logger.warning("run %s: agent failed", run.run_id, exc_info=True)
            message = f"{type(exc).__name__}: {exc}"
            return (
                "failed",
                "the agent raised an error",
                {"code": "agent_error", "message": message},
            )
        if scope.cancelled_caught and run.stop_status is not None:
            return run.stop_status, run.stop_reason, None
        return "completed", "the agent finished", None

    async def _iterate(self, run: Run, ctx: AgentContext) -> None:
        """Emit what the agent yields; count steps (new messages, tool calls) against the limit."""
        steps = 0
        message_id: str | None = None
        events = self.agent(ctx)
        try:
            async for event in events:
                if isinstance(event, MessageChunk):
                    if event.message_id != message_id:
                        message_id = event.message_id
                        steps += 1
                elif isinstance(event, ToolStart):
                    steps += 1
                elif not isinstance(event, ToolEnd):
                    raise AgentProtocolError(
                        f"agent yielded {type(event).__name__}; "
                        "expected MessageChunk, ToolStart or ToolEnd"
                    )
                if steps > ctx.recursion_limit:
                    raise RecursionLimitExceeded(
                        f"the run took more than {ctx.recursion_limit} steps"
                    )
                run.emit(event)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        """Write the terminal events and the final row. Runs shielded, after the agent is gone."""
        status, reason, error = outcome
        store = self.store
        try:
            await store.flush()  # every agent event committed, so run.output is complete
        except StreamctlError:
            logger.exception("run %s: events lost before the terminal event", run.run_id)
        if error is not None:
            run.emit(ErrorEvent(code=error["code"], message=error["message"]))
        run.ended_at = time.time()
        run.emit(
            Done(
                run_id=run.run_id,
                thread_id=run.thread_id,
                status=status,
                reason=reason,
                tokens=run.output.tokens,
            )
        )
        self._write_final_row(
            run.run_id,
            status=status,
            reason=reason,
            error=error,
            tokens=run.output.tokens,
            last_seq=run.last_seq,
            output=run.output.as_json(),
            ended_at=run.ended_at,
        )
        await store.flush()

    def _write_final_row(
        self,
        run_id: str,
        *,
        status: str,
        reason: str | None,
        error: dict[str, Any] | None,
        tokens: int,
        last_seq: int,
        output: dict[str, Any],
        ended_at: float,
    ) -> None:
        self.store.execute_later(
            _FINAL_UPDATE,
            (
                status,
                ended_at,
                last_seq,
                orjson.dumps(error) if error else None,
                orjson.dumps({"tokens": tokens}),
                orjson.dumps({"reason": reason, "output": output}),
                run_id,
            ),
        )

    def _forget(self, run: Run) -> None:
        self._runs.pop(run.run_id, None)
        if self._active.get(run.thread_id) is run:
            del self._active[run.thread_id]

    # -- stopping --------------------------------------------------------------------------------

    async def stop(
        self, run_id: str, owner: str, *, wait: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """Stop a run (idempotent). Returns its state and whether its task has exited."""
        run = self._live(run_id, owner)
        if run is None:
            return await self.get_run(run_id, owner), True
        if wait:
            await self._stop(run, "cancelled", "stopped by request")
        else:
            run.request_stop("cancelled", "stopped by request")
        return run.snapshot(), run.finished.is_set()

    async def _stop(self, run: Run, status: TerminalStatus, reason: str) -> None:
        run.request_stop(status, reason)
        with anyio.move_on_after(self.settings.stop_timeout):
            await run.finished.wait()

    async def stop_thread(self, thread_id: str, owner: str) -> tuple[dict[str, Any], bool]:
        """Stop the thread's active run; with none active, return its last run's final state."""
        active = self._active.get(thread_id)
        if active is not None and active.owner == owner:
            return await self.stop(active.run_id, owner)
        await self._thread_row(thread_id, owner)
        row = await self.store.fetch_one(
            "SELECT * FROM runs WHERE thread_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (thread_id,),
        )
        if row is None:
            raise ThreadNotFound(thread_id)
        return row_json(row), True

    def request_stop(self, run_id: str) -> None:
        """Ask a run to stop without waiting (a streaming client with on_disconnect=cancel left)."""
        run = self._runs.get(run_id)
        if run is not None:
            run.request_stop("cancelled", "the client disconnected")

    # -- reading ---------------------------------------------------------------------------------

    def _live(self, run_id: str, owner: str) -> Run | None:
        run = self._runs.get(run_id)
        return run if run is not None and run.owner == owner else None

    async def _run_row(self, run_id: str, owner: str) -> dict[str, Any]:
        row = await self.store.fetch_one(
            "SELECT * FROM runs WHERE run_id = ? AND owner = ?", (run_id, owner)
        )
        if row is None:
            raise RunNotFound(run_id)
        return row

    async def get_run(self, run_id: str, owner: str) -> dict[str, Any]:
        """The run as of its last committed event."""
        run = self._live(run_id, owner)
        if run is not None:
            return run.snapshot()
        return row_json(await self._run_row(run_id, owner))

    async def list_runs(
        self, owner: str, thread_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM runs WHERE owner = ?", [owner]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        rows = await self.store.fetch_all(
            sql + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)
        )
        return [
            run.snapshot() if (run := self._live(row["run_id"], owner)) else row_json(row)
            for row in rows
        ]

    async def events_page(self, run_id: str, owner: str, after: int, limit: int) -> dict[str, Any]:
        """Committed events with seq > after, at most ``limit``, as JSON."""
        run = self._live(run_id, owner)
        if run is not None:
            last_seq, status = run.output.last_seq, run.output.status
        else:
            row = await self._run_row(run_id, owner)
            last_seq, status = row["last_seq"], row["status"]
        if after > last_seq:
            raise CursorOutOfRange(run_id, after, last_seq)
        frames = await self.store.read_frames(run_id, after, min(after + limit, last_seq))
        return {
            "events": [f.as_json() for f in frames],
            "last_seq": last_seq,
            "status": status,
        }

    async def subscribe(
        self, run_id: str, owner: str, cursor: int, *, id_prefix: bytes = b""
    ) -> AsyncIterator[bytes] | None:
        """SSE bytes of the run after ``cursor``, then its live tail; None if nothing is left."""
        run = self._live(run_id, owner)
        ping = self.settings.ping_interval
        if run is not None:
            log = run.log
            if cursor > log.committed_seq:
                raise CursorOutOfRange(run_id, cursor, log.committed_seq)
            if log.closed and cursor == log.committed_seq:
                return None
            return follow(self.store, run_id, log, cursor, ping_interval=ping, id_prefix=id_prefix)
        row = await self._run_row(run_id, owner)
        if cursor > row["last_seq"]:
            raise CursorOutOfRange(run_id, cursor, row["last_seq"])
        if cursor == row["last_seq"]:
            return None
        return follow(self.store, run_id, None, cursor, ping_interval=ping, id_prefix=id_prefix)

    async def _thread_row(self, thread_id: str, owner: str) -> dict[str, Any]:
        row = await self.store.fetch_one(
            "SELECT * FROM threads WHERE thread_id = ? AND owner = ?", (thread_id, owner)
        )
        if row is None:
            raise ThreadNotFound(thread_id)
        return row

    async def get_thread(self, thread_id: str, owner: str) -> dict[str, Any]:
        """The thread's checkpoint: every run's input and assistant output, and its active run."""
        thread = await self._thread_row(thread_id, owner)
        rows = await self.store.fetch_all(
            "SELECT * FROM runs WHERE thread_id = ? ORDER BY created_at, rowid", (thread_id,)
        )
        messages: list[dict[str, Any]] = []
        runs = []
        for row in rows:
            live = self._live(row["run_id"], owner)
            run = live.snapshot() if live is not None else row_json(row)
            runs.append(run)
            for message in orjson.loads(row["input"])["messages"]:
                messages.append({**message, "run_id": run["run_id"]})
            messages.append(
                {
                    "role": "assistant",
                    "content": run["output"]["text"],
                    "run_id": run["run_id"],
                    "status": run["status"],
                }
            )
        active = self._active.get(thread_id)
        return {
            "thread_id": thread_id,
            "created_at": iso(thread["created_at"]),
            "messages": messages,
            "active_run": active.snapshot() if active is not None else None,
            "last_run": runs[-1] if runs else None,
        }

    async def subscribe_thread(
        self, thread_id: str, owner: str, cursor: tuple[str, int] | None
    ) -> AsyncIterator[bytes] | None:
        """Follow the thread: after ``cursor`` (``(run_id, seq)``) in its run, then the thread's
        next run; without a cursor, its active run. Ids are ``run_id:seq``. None: nothing left."""
        await self._thread_row(thread_id, owner)
        if cursor is None:
            active = self._active.get(thread_id)
            if active is None:
                return None
            return await self.subscribe(active.run_id, owner, 0, id_prefix=_prefix(active.run_id))
        run_id, seq = cursor
        row = await self._run_row(run_id, owner)
        if row["thread_id"] != thread_id:
            raise RunNotFound(run_id)
        stream = await self.subscribe(run_id, owner, seq, id_prefix=_prefix(run_id))
        if stream is not None:
            return stream
        # That run is over and fully read: go on with the thread's next run, if there is one.
        following = await self.store.fetch_one(
            "SELECT run_id FROM runs WHERE thread_id = ?"
            " AND rowid > (SELECT rowid FROM runs WHERE run_id = ?) ORDER BY rowid LIMIT 1",
            (thread_id, run_id),
        )
        if following is None:
            return None
        return await self.subscribe(
            following["run_id"], owner, 0, id_prefix=_prefix(following["run_id"])
        )


def _prefix(run_id: str) -> bytes:
    return f"{run_id}:".encode()
