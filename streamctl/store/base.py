"""The storage seam: what the rest of streamctl asks of a store, in domain operations.

Nothing outside ``streamctl/store/`` builds a query. A store keeps runs (one row each: who asked,
what, and how it ended), their numbered events, and threads. Writes are *queued* synchronously
and made durable by a group commit: ``append`` (an event) and ``create_run`` / ``mark_running`` /
``finish_run`` (a run's row) never await, and ``flush`` returns once everything queued so far is
committed. A committed event is handed to its ``CommitSink`` (the run's log) only after the commit:
commit before send (docs/architecture.md, invariant 3).

The protocol assumes neither one process nor a shared file, so that a networked store (Redis
Streams) fits it:

- a run is *owned* by the store instance that created it (``create_run``) until ``finish_run``;
- ``claim_orphans`` hands over the runs still active whose owner is gone (a process that died);
  the caller finalises them. Opening a store never does that by itself: the supervisor asks.

Errors of the backend surface as ``StoreError`` and nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ..events import Frame
from ..stats import StoreStats

ACTIVE_STATUSES = ("queued", "running")
"""A run's status while its owner still has to end it."""


class CommitSink(Protocol):
    """Receives a run's events once they are durable (the run's log)."""

    def committed(self, frame: Frame, event: object) -> None: ...

    def publish(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run's row as it is created (and its thread's, if the thread is new)."""

    run_id: str
    thread_id: str
    owner: str
    status: str
    """``queued`` or ``running``."""
    input: dict[str, Any]
    config: dict[str, Any]
    created_at: float
    started_at: float | None


@dataclass(frozen=True, slots=True)
class FinalState:
    """How a run ended: written once, with (or after) its terminal event."""

    status: str
    reason: str | None
    error: dict[str, Any] | None
    tokens: int
    last_seq: int
    output: dict[str, Any]
    ended_at: float
    usage: dict[str, int] | None = None
    """The model's token usage, when the agent reported it (``input_tokens``, ``output_tokens``)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as stored. For an active run, ``last_seq`` and the output are not kept up to date:
    the live run in memory answers for it."""

    run_id: str
    thread_id: str
    owner: str
    status: str
    input: dict[str, Any]
    created_at: float
    started_at: float | None
    ended_at: float | None
    last_seq: int
    reason: str | None
    output: dict[str, Any] | None
    """The output snapshot of a finished run (``None`` until it ends)."""
    error: dict[str, Any] | None
    tokens: int
    purged_at: float | None
    """When retention deleted the run's events (its row stays)."""
    usage: dict[str, int] | None = None
    """The stored usage: ``tokens`` (chunks) and, when reported, the model's token counts."""


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    thread_id: str
    owner: str
    created_at: float


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """What a principal's ``Idempotency-Key`` names: the run it started, and the hash of the
    request that started it (a retry must send the same request)."""

    run_id: str
    request_hash: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Orphan:
    """An active run whose owner is gone, now claimed by the caller to be finalised."""

    run_id: str
    thread_id: str


class RunStore(Protocol):
    """A run store. Use as ``async with store``; every method below needs it open."""

    stats: StoreStats

    async def __aenter__(self) -> RunStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # -- writing: queued synchronously, committed by the next group commit -----------------------

    def append(self, run_id: str, frame: Frame, event: object, sink: CommitSink) -> None:
        """Queue one event; once committed it goes to ``sink.committed`` (with ``event`` as given
        here: the store never reads it; a ``Run`` passes its event's fields), then ``sink.publish``
        (once per batch). If the batch is lost, a sink with ``failed`` is told, and that run's
        later events still queued are dropped (its ids must stay dense)."""
        ...

    def create_run(self, run: NewRun) -> None:
        """Queue the run's row (and its thread's, if new). The run is this store's until
        ``finish_run``."""
        ...

    def mark_running(self, run_id: str, started_at: float) -> None:
        """Queue the move of a queued run to ``running``."""
        ...

    def finish_run(self, run_id: str, final: FinalState) -> None:
        """Queue the run's final row. It is no longer this store's to end."""
        ...

    def abandon(self, run_id: str) -> None:
        """A run this store could not start or end (its writes failed and will not be retried):
        stop holding it, so that whoever finalises runs whose owner is gone (the next start,
        any node's sweeper) ends it ``interrupted`` from its stored events."""
        ...

    def drop_queued(self, run_id: str) -> list[Frame]:
        """A stopped run's events that are queued and not being committed yet: drop them and
        return them, oldest first (the run numbers on from the first one). Nobody has seen them
        (commit before send), so its ``done`` may follow its last committed event at once. A
        store may drop nothing (``[]``)."""
        ...

    async def flush(self, run_id: str | None = None) -> None:
        """Return once everything queued so far is committed; ``StoreError`` if it was lost.
        With ``run_id``, only that run's writes need be (a store may commit more first)."""
        ...

    # -- reading ---------------------------------------------------------------------------------

    async def read_frames(self, run_id: str, after: int, upto: int | None = None) -> list[Frame]:
        """Committed events of a run with ``after < seq <= upto``, in order."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self,
        owner: str | None,
        thread_id: str | None = None,
        limit: int = 50,
        status: str | None = None,
    ) -> list[RunRecord]:
        """Runs newest first, of ``owner`` (``None``: everyone's), optionally of one thread,
        optionally in one ``status``."""
        ...

    # A thread is keyed by (owner, thread_id): each principal has its own namespace of ids.

    async def get_thread(self, owner: str, thread_id: str) -> ThreadRecord | None: ...

    async def thread_runs(
        self, owner: str, thread_id: str, *, limit: int | None = None, before: str | None = None
    ) -> list[RunRecord]:
        """The thread's runs, oldest first (its history): with ``limit``, only the newest
        ``limit`` of them created before the run ``before`` (before the end, if ``None``)."""
        ...

    async def next_run_on_thread(self, owner: str, thread_id: str, run_id: str) -> str | None:
        """The id of the thread's run created right after ``run_id``, if any."""
        ...

    # -- maintenance -----------------------------------------------------------------------------

    async def claim_orphans(self) -> list[Orphan]:
        """Take over the active runs whose owner is gone; the caller must ``finish_run`` each."""
        ...

    async def purge(self, ended_before: float, now: float, limit: int = 500) -> int:
        """Delete the events of up to ``limit`` runs that ended before ``ended_before`` (oldest
        first), marking them purged at ``now``; their rows stay. Returns how many."""
        ...

    # -- idempotency keys: (owner, key) -> the run a request started -----------------------------

    async def claim_idempotency_key(
        self, owner: str, key: str, claim: IdempotencyKey, ttl: float
    ) -> IdempotencyKey:
        """Bind ``(owner, key)`` to ``claim`` unless a binding younger than ``ttl`` seconds (as
        of ``claim.created_at``) exists; return the binding in force, ``claim`` itself when it
        won. Atomic: of concurrent claims of one key (any process), exactly one wins and every
        other gets the winner's binding."""
        ...

    async def release_idempotency_key(self, owner: str, key: str, run_id: str) -> None:
        """Drop the binding of ``(owner, key)`` if it still names ``run_id`` (its start failed,
        so a retry may start the run again)."""
        ...

    async def purge_idempotency_keys(self, created_before: float) -> int:
        """Delete the bindings created before ``created_before``; returns how many (a store
        whose keys expire by themselves may answer 0)."""
        ...


# -- shared stores: several processes or nodes on one store (Redis; SQLite is not one) -----------


@runtime_checkable
class SharedStore(RunStore, Protocol):
    """A store several streamctl processes share. A run is live in one process (its owner) and
    may be read, followed and stopped from any other. The supervisor then also:

    - sweeps for orphans every ``sweep_interval`` seconds (an owner may die at any time, not
      only before this process started);
    - forwards a stop of a run owned elsewhere (``request_stop``, then ``wait_ended``); the
      owner's store calls its ``on_stop_request`` with the run's id;
    - follows a run owned elsewhere through ``tail`` (one reader per run per process, fanned out
      to that process's subscribers, as a live run's log is).
    """

    sweep_interval: float
    on_stop_request: Callable[[str], None] | None

    async def request_stop(self, run_id: str) -> bool:
        """Ask the run's owner to stop it; False if the run is not active."""
        ...

    async def wait_ended(self, run_id: str) -> RunRecord | None:
        """The run's record once it is no longer active (the caller bounds the wait)."""
        ...

    def tail(self, run_id: str, after: int) -> AsyncGenerator[list[Frame], None]:
        """The run's committed frames after ``after`` as they are stored, in batches; an empty
        batch every few seconds while nothing comes (so the caller may give up). Ends after the
        terminal event."""
        ...
