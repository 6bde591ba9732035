"""A run: one agent invocation on a thread, its numbered events, and its output so far.

A ``Run`` is the single owner of its sequence numbers: ``emit`` numbers, encodes and queues an
event synchronously, so seqs are dense (1..N) whatever the agent does. The run's *output*
(``RunOutput``) is folded from events only as they are committed, so a snapshot always describes
exactly the events up to its ``last_seq``: render it, stream ``after=last_seq``, and you have what a
client that never disconnected saw.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import orjson

from .errors import StoreError, StreamctlError
from .events import ErrorEvent, Frame, RunStatus, TerminalStatus, _Event
from .run_log import RunLog
from .store.base import RunRecord, RunStore


def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO 8601 UTC string."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class TextParts(list[str]):
    """A message's text as parts, compacted as it grows: every ``_COMPACT`` parts become one
    string, so a run of a million chunks holds its text, not a million small objects."""

    __slots__ = ("_joined",)
    _COMPACT = 64

    def __init__(self) -> None:
        super().__init__()
        self._joined = 0
        """Parts before this index are already compacted blocks."""

    def append(self, part: str) -> None:
        list.append(self, part)  # not super(): this runs twice for every token
        if len(self) - self._joined >= self._COMPACT:
            self[self._joined :] = ["".join(self[self._joined :])]
            self._joined += 1


class RunOutput:
    """What a run has produced, folded from its events in seq order."""

    __slots__ = (
        "_message_seq",
        "_messages",
        "_parts",
        "_reasoning",
        "error",
        "interrupt",
        "last_seq",
        "reason",
        "status",
        "tokens",
        "tool_calls",
        "usage",
    )

    def __init__(self, status: RunStatus = "running") -> None:
        self._parts: list[str] = TextParts()
        self._messages: dict[str, list[str]] = {}
        self._message_seq: dict[str, int] = {}
        """Seq of each message's first chunk, so clients can order text and tool calls."""
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.status: RunStatus = status
        self.reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.tokens = 0
        self.last_seq = 0
        self._reasoning: dict[str, tuple[int, list[str]]] = {}
        """Each reasoning message's first seq and its parts (joined when shown, never re-joined
        per chunk: a long reasoning stream would be quadratic)."""
        self.interrupt: dict[str, Any] | None = None
        self.usage: dict[str, int] = {}
        """Model tokens (``input_tokens``, ``output_tokens``), known once ``done`` carries them."""

    def apply(self, seq: int, type: str, data: Mapping[str, Any]) -> None:
        self.last_seq = seq
        if type == "message_chunk":
            content = data["content"]
            self._parts.append(content)
            parts = self._messages.get(data["message_id"])
            if parts is None:
                parts = self._messages[data["message_id"]] = TextParts()
                self._message_seq[data["message_id"]] = seq
            parts.append(content)
            self.tokens += 1
        elif type == "tool_start":
            call_id = data["call_id"]
            self.tool_calls[call_id] = {
                "call_id": call_id,
                "name": data["name"],
                "args": data["args"],
                "output": None,
                "seq": seq,
                "end_seq": None,
            }
        elif type == "tool_end":
            call = self.tool_calls.setdefault(
                data["call_id"],
                {"call_id": data["call_id"], "name": data["name"], "args": {}, "seq": seq},
            )
            call["output"] = data["output"]
            call["end_seq"] = seq  # when the result came: the thread's history orders by it
        elif type == "reasoning_chunk":
            reasoning = self._reasoning.get(data["message_id"])
            if reasoning is None:
                reasoning = self._reasoning[data["message_id"]] = (seq, TextParts())
            reasoning[1].append(data["content"])
        elif type == "interrupt":
            self.interrupt = {"value": data["value"], "interrupt_id": data["interrupt_id"]}
        elif type == "error":
            self.error = {"code": data["code"], "message": data["message"]}
        elif type == "done":
            self.status = data["status"]
            self.reason = data["reason"]
            self.usage = dict(data.get("usage") or {})
        elif type == "run":
            self.status = data["status"]

    @classmethod
    def fold(cls, frames: list[Frame]) -> RunOutput:
        output = cls()
        for frame in frames:
            output.apply(frame.seq, frame.type, orjson.loads(frame.data))
        return output

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "messages": [
                {
                    "message_id": mid,
                    "role": "assistant",
                    "content": "".join(parts),
                    "seq": self._message_seq[mid],
                }
                for mid, parts in self._messages.items()
            ],
            "tool_calls": list(self.tool_calls.values()),
            "reasoning": [
                {"message_id": mid, "content": "".join(parts), "seq": seq}
                for mid, (seq, parts) in self._reasoning.items()
            ],
            "interrupt": self.interrupt,
        }


@dataclass(eq=False)
class Run:
    """A live run. Lives in the supervisor from its start until its task has exited."""

    run_id: str
    thread_id: str
    owner: str
    input: dict[str, Any]
    config: dict[str, Any]
    store: RunStore
    tail_events: int
    tail_bytes: int = 8 * 1024 * 1024
    recursion_limit: int = 25
    agent_config: dict[str, Any] = field(default_factory=dict)
    """The request's ``config`` keys meant for the agent (e.g. ``demo``)."""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    first_event_at: float | None = None
    """When the agent's first event was emitted (time to first event, for metrics)."""
    last_seq: int = 0
    """Last seq emitted (committed or not). ``output.last_seq`` is the last committed one."""
    last_event_at: float = 0.0
    """When the last event was emitted (the watchdog's stall clock)."""
    scope: anyio.CancelScope | None = None
    stop_status: TerminalStatus | None = None
    stop_reason: str = ""
    broken: StoreError | None = None
    """Set when the store lost some of this run's events (see ``failed``)."""
    ahead: list[Run] = field(default_factory=list)
    """For a queued run: the thread's runs ahead of it, which must end before it starts."""
    new_thread: bool = False
    """The request named no thread, so this run starts a new one: there is no history to read."""
    finished: anyio.Event = field(default_factory=anyio.Event)
    """Set when the run's task has exited: its terminal event is committed and its agent is gone."""
    usage: dict[str, int] = field(default_factory=dict)
    """Model tokens the agent reported so far (its ``Usage`` events added up), for ``done``."""
    max_backlog_events: int = 2000
    max_backlog_bytes: int = 4 * 1024 * 1024
    """Bounds on the run's uncommitted events: past either, its task waits at the next emit."""
    backlog_events: int = 0
    backlog_bytes: int = 0
    """Events emitted and not committed yet (nor lost), and their SSE bytes."""

    def __post_init__(self) -> None:
        self.log = RunLog(self.run_id, self.tail_events, tail_bytes=self.tail_bytes)
        self.output = RunOutput()
        self._drained: anyio.Event | None = None

    # -- writing (the run's task only) -----------------------------------------------------------

    def emit(self, event: _Event) -> int:
        """Number, encode and queue one event. Synchronous; returns its seq."""
        if self.broken is not None:
            raise self.broken
        seq = self.last_seq + 1
        now = time.time()
        frame = Frame.encode(seq, event, now)  # may raise: then no seq is used up
        self.last_seq = seq
        self.last_event_at = now
        # The store holds the event's fields, not the event, until the commit (``committed``
        # folds them into the output): two objects fewer per event for the cyclic collector
        # to walk while a batch waits (the model and its set of fields).
        self.store.append(self.run_id, frame, event.__dict__, self)
        self.backlog_events += 1
        self.backlog_bytes += len(frame.sse)
        return seq

    @property
    def backlogged(self) -> bool:
        """True once the uncommitted backlog is past a bound: the next emit must wait
        (``backlog_drained``). Two integer compares, so that an emit below it stays cheap."""
        return (
            self.backlog_events > self.max_backlog_events
            or self.backlog_bytes > self.max_backlog_bytes
        )

    async def backlog_drained(self) -> None:
        """Wait until the store has caught up with this run: its backlog is down to half of
        both bounds (hysteresis: one wait per half a bound, not one per event). Backpressure:
        the agent is not advanced meanwhile. Cancelled by ``stop`` like any await of the run."""
        self.store.stats.backpressure_waits += 1
        try:
            while not self._below_half():
                self._drained = anyio.Event()
                await self._drained.wait()
        finally:
            self._drained = None

    def _below_half(self) -> bool:
        return (
            self.backlog_events <= self.max_backlog_events // 2
            and self.backlog_bytes <= self.max_backlog_bytes // 2
        )

    # -- CommitSink: called by the store's writer after each commit ------------------------------

    def committed(self, frame: Frame, event: object) -> None:
        """``event``: the fields ``emit`` queued (the event's ``__dict__``)."""
        self.log.add(frame)
        self.output.apply(frame.seq, frame.type, cast("dict[str, Any]", event))
        self.backlog_events -= 1
        self.backlog_bytes -= len(frame.sse)

    def publish(self) -> None:
        self.log.publish()
        if self._drained is not None and self._below_half():
            self._drained.set()

    def failed(self, error: BaseException) -> None:
        """The store lost a batch holding this run's events (and dropped the rest it had queued):
        it must stop here. Nothing more is numbered past the hole; its terminal events number on
        from its last stored event (``RunTask``)."""
        if isinstance(error, StoreError) and error.final:
            self.broken = error  # taken over or lost: its end is not this process's to write
        else:
            self.broken = StoreError(f"the store lost events of run {self.run_id!r}: {error}")
        self.backlog_events = self.backlog_bytes = 0
        if self._drained is not None:
            self._drained.set()
        self.request_stop("failed", "the store failed")

    def streams_failed(self, error: StreamctlError) -> None:
        """The store cannot write the run's terminal events (yet): end its streams with an
        ``error`` event that has no ``id:`` (it is not in the log, so no cursor moves past what
        is stored); a later resume gets the stored terminal events."""
        self.log.fail(error_sse(error))

    # -- control ---------------------------------------------------------------------------------

    def request_stop(self, status: TerminalStatus, reason: str) -> None:
        """Ask the run to end with ``status``. The first request wins; later ones change nothing."""
        if self.stop_status is not None or self.finished.is_set():
            return
        self.stop_status = status
        self.stop_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def snapshot(self) -> dict[str, Any]:
        """The run as of its last committed event."""
        out = self.output
        return run_json(
            run_id=self.run_id,
            thread_id=self.thread_id,
            status=out.status,
            reason=out.reason,
            last_seq=out.last_seq,
            output=out.as_json(),
            error=out.error,
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at if out.status != "running" else None,
            tokens=out.tokens,
            usage=out.usage,
        )


def error_sse(error: StreamctlError) -> bytes:
    """An SSE ``error`` event for ``error`` without ``id:``: it is not part of the run's log, so
    no client's cursor moves past what is stored."""
    sse = Frame.encode(0, ErrorEvent(code=error.code, message=error.message), time.time()).sse
    return sse[sse.index(b"\n") + 1 :]


def run_json(
    *,
    run_id: str,
    thread_id: str,
    status: str,
    reason: str | None,
    last_seq: int,
    output: dict[str, Any],
    error: dict[str, Any] | None,
    created_at: float,
    started_at: float | None,
    ended_at: float | None,
    tokens: int,
    purged_at: float | None = None,
    usage: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The run resource as the HTTP API shows it (docs/api.md, "Run")."""
    return {
        "run_id": run_id,
        "thread_id": thread_id,
        "status": status,
        "reason": reason,
        "last_seq": last_seq,
        "output": output,
        "error": error,
        "created_at": iso(created_at),
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "usage": {**(usage or {}), "tokens": tokens},
        "events_purged_at": iso(purged_at),
    }


def record_json(record: RunRecord) -> dict[str, Any]:
    """A finished (or recovered) run from its stored record."""
    return run_json(
        run_id=record.run_id,
        thread_id=record.thread_id,
        status=record.status,
        reason=record.reason,
        last_seq=record.last_seq,
        output=record.output or {"text": "", "messages": [], "tool_calls": []},
        error=record.error,
        created_at=record.created_at,
        started_at=record.started_at,
        ended_at=record.ended_at,
        tokens=record.tokens,
        purged_at=record.purged_at,
        usage=record.usage,
    )
