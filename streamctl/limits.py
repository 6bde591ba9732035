"""Every cap streamctl puts on its callers, in one place (docs/architecture.md, invariant 10).

- ``check_input``: a run's input (number and length of messages; the agent's own options).
- ``RunCaps``: runs at once (server-wide and per principal) and runs started per minute.
- ``StreamCaps``: open streams per principal.
- ``history_window``: the part of a thread's history an agent receives.

Each check and its claim are one synchronous step, so a burst of parallel requests cannot slip
past a cap. The request body's size is capped at the HTTP edge (``BodyLimit``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from .agents.base import Agent, Message
from .errors import InvalidInput, TooManyRuns, TooManyStreams
from .inputs import RunCreate
from .registry import LiveRuns
from .settings import Settings

_PRUNE_AT = 10_000


class SlidingWindow:
    """A sliding-window rate limit per key (a principal), exact: the timestamps of the hits in
    the window are kept, at most ``limit`` per key."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Record a hit and return None, or return the seconds until one is allowed."""
        now = time.monotonic() if now is None else now
        horizon = now - self.window
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= _PRUNE_AT:
                self._prune(horizon)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] - horizon
        hits.append(now)
        return None

    def _prune(self, horizon: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]


def check_input(request: RunCreate, agent: Agent, settings: Settings) -> None:
    """``InvalidInput`` (or the agent's own error) for a run the server would refuse."""
    # An agent may check its own options up front (the demo agent does), so a bad option
    # is a 422 for the request, not a failed run.
    validate = getattr(agent, "validate_config", None)
    if validate is not None:
        validate(request.agent_config())
    messages = request.input.messages
    if len(messages) > settings.max_messages:
        raise InvalidInput(
            f"{len(messages)} input messages; at most {settings.max_messages} are accepted"
        )
    for i, message in enumerate(messages):
        if len(message.content) > settings.max_message_chars:
            raise InvalidInput(
                f"input message {i} has {len(message.content)} characters; "
                f"at most {settings.max_message_chars} are accepted"
            )


@runtime_checkable
class SharedRunSlots(Protocol):
    """A store shared by several processes that counts each principal's active runs over all of
    them (Redis), so that ``max_runs_per_owner`` holds across nodes and workers."""

    async def claim_run_slot(self, owner: str, run_id: str, cap: int) -> bool: ...


class RunCaps:
    """Runs at once (``max_runs``, ``max_runs_per_owner``) and per minute (``runs_per_minute``).

    Each process checks them for its own runs; with a shared store that counts runs
    (``SharedRunSlots``), ``max_runs_per_owner`` is also claimed there (``claim_shared``), over
    every process. ``max_runs`` and ``runs_per_minute`` stay per process (docs/redis.md)."""

    def __init__(self, settings: Settings, live: LiveRuns, store: object = None) -> None:
        self.settings = settings
        self._live = live
        self._slots = store if isinstance(store, SharedRunSlots) else None
        self._rate = SlidingWindow(settings.runs_per_minute, 60.0)
        self.per_principal = settings.auth != "none"
        """Whether the per-principal caps apply: with auth=none everyone is one principal
        (``anonymous``), and a per-principal cap would cap the whole server."""

    def check(self, owner: str) -> None:
        """``TooManyRuns`` past a cap; otherwise the start counts against the rate."""
        settings = self.settings
        if len(self._live) >= settings.max_runs:
            raise TooManyRuns(
                f"the server is running its maximum of {settings.max_runs} runs; retry shortly"
            )
        if not self.per_principal:
            return
        if self._live.count(owner) >= settings.max_runs_per_owner:
            raise _too_many_active(settings.max_runs_per_owner)
        wait = self._rate.hit(owner)
        if wait is not None:
            raise TooManyRuns(
                f"you started {settings.runs_per_minute} runs in the last minute, the most"
                " allowed; retry shortly",
                retry_after=max(1, math.ceil(wait)),
            )

    async def claim_shared(self, owner: str, run_id: str) -> None:
        """``TooManyRuns`` if ``owner`` has ``max_runs_per_owner`` active runs over every
        process of a shared store; otherwise the run holds one of them until it ends."""
        if self._slots is None or not self.per_principal:
            return
        cap = self.settings.max_runs_per_owner
        if not await self._slots.claim_run_slot(owner, run_id, cap):
            raise _too_many_active(cap)


def _too_many_active(cap: int) -> TooManyRuns:
    return TooManyRuns(
        f"you have {cap} active runs, the most allowed at once; stop one or wait for one to finish"
    )


class StreamCaps:
    """Open streams per principal (``max_streams_per_owner``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._held: dict[str, int] = {}
        self.per_principal = settings.auth != "none"
        """As ``RunCaps.per_principal``: streams are still counted, not capped, without it."""

    def open(self, owner: str) -> None:
        """Count a stream the principal opens; ``TooManyStreams`` past the cap."""
        held = self._held.get(owner, 0)
        if self.per_principal and held >= self.settings.max_streams_per_owner:
            raise TooManyStreams(
                f"you have {held} streams open, the most allowed at once; close one first"
            )
        self._held[owner] = held + 1

    @contextmanager
    def claim(self, owner: str) -> Iterator[None]:
        """Open a stream slot before starting what will stream (a stream refused with 429 must
        not leave a run going); give it back if the start fails. Once the stream's response
        exists, its end closes the slot."""
        self.open(owner)
        try:
            yield
        except BaseException:
            self.close(owner)
            raise

    def close(self, owner: str) -> None:
        left = self._held.get(owner, 1) - 1
        if left:
            self._held[owner] = left
        else:
            self._held.pop(owner, None)

    def held(self, owner: str) -> int:
        """Streams ``owner`` has open right now."""
        return self._held.get(owner, 0)

    @property
    def total(self) -> int:
        """Streams open right now, every principal's."""
        return sum(self._held.values())


def history_window(messages: list[Message], count: int, size: int) -> list[Message]:
    """The latest whole ``messages`` that fit in ``count`` messages and ``size`` bytes (UTF-8 of
    their content and tool calls, ``Message.size``), oldest first."""
    kept: list[Message] = []
    total = 0
    for message in reversed(messages):
        total += message.size
        if len(kept) == count or total > size:
            break
        kept.append(message)
    kept.reverse()
    return kept
