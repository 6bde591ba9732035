"""``Idempotency-Key``: a retried POST gets the run its first request started, never a second one.

Every run-creating POST takes the header. The first request with a key binds it, for the
principal that sent it, to the run it starts, with a hash of the request (its route and its JSON
body in canonical form); for ``idempotency_ttl`` seconds a request with the same key from the same
principal then answers that run: the JSON routes with its state, the streaming ones with its
stream (after the retry's ``Last-Event-ID``, if it carries one). The same key with another request
is ``422 idempotency_key_reused``; another principal's key of the same spelling is another key.

Concurrent requests with one key still start one run. The store's claim is atomic (of any number
of processes one wins, the others read the winner's binding); within a process the claims of a key
also take turns on a lock, so a loser finds the winner's run already started. A loser on another
process may find a binding whose run is not stored yet: it waits for it (bounded), and takes over a
binding whose run never appeared (its process died between the claim and the start).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
import orjson
from fastapi import Header, Request

from ..auth import Principal
from ..control import new_id
from ..errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    RunNotFound,
)
from ..inputs import RunCreate
from ..runs import Run
from ..store.base import IdempotencyKey
from ..supervisor import Supervisor

MAX_KEY_LENGTH = 255
REPLAYED = "Idempotent-Replayed"
"""Response header set to ``true`` when the answer is the run an earlier request started."""
IN_FLIGHT_GRACE = 2.0
"""Seconds (beyond ``stop_timeout``, what a start may wait for a thread) a retry waits for the
run another process is starting before it answers 409."""
STALE_AFTER = 30.0
"""Seconds (beyond ``stop_timeout``) after which a binding whose run never appeared is dead."""
POLL = 0.05
"""Seconds between two looks for a run another process is starting (nothing can wake us)."""

KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with this key (printable ASCII, at most 255 characters) get the run"
        " the first request started instead of starting another.",
    ),
]


@dataclass(frozen=True, slots=True)
class Started:
    run_id: str
    thread_id: str
    run: Run | None
    """The run this request started; None: the key named a run an earlier request started."""

    @property
    def created(self) -> bool:
        return self.run is not None


def check_key(raw: str | None) -> str | None:
    """The header's key, or ``InvalidIdempotencyKey`` (400) if it is not a usable one."""
    if raw is None:
        return None
    if not raw or len(raw) > MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in raw):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        )
    return raw


def request_digest(method: str, path: str, body: bytes) -> str:
    """A request as a retry must repeat it: its route and its body, as canonical JSON (key order
    and spacing do not count)."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


class KeyLocks:
    """A lock per ``(owner, key)`` being claimed in this process, dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[anyio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, owner: str, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault((owner, key), (anyio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[(owner, key)]


async def start_once(
    request: Request,
    sup: Supervisor,
    locks: KeyLocks,
    me: Principal,
    raw_key: str | None,
    create: RunCreate,
    *,
    run_id: str | None = None,
) -> Started:
    """Start the run ``create`` asks for, or, when ``raw_key`` names a run already, find it.

    ``run_id``: the id the client chose (AG-UI's ``runId``); else a new one. A start that fails
    releases the key, so that a retry may try again."""
    key = check_key(raw_key)

    async def start(chosen: str | None) -> Run:
        return await sup.control.start(create, me.name, run_id=chosen)

    if key is None:
        run = await start(run_id)
        return Started(run.run_id, run.thread_id, run)
    # The body was read (and cached) by the route's body parameter already.
    digest = request_digest(request.method, request.url.path, await request.body())
    store, settings = sup.store, sup.settings
    deadline = anyio.current_time() + settings.stop_timeout + IN_FLIGHT_GRACE
    async with locks.hold(me.name, key):
        while True:
            mine = IdempotencyKey(run_id or new_id(), digest, time.time())
            bound = await store.claim_idempotency_key(me.name, key, mine, settings.idempotency_ttl)
            if bound.request_hash != digest:
                raise IdempotencyKeyReused(
                    f"Idempotency-Key {key!r} was used with a different request (another route"
                    " or body); send a new key for a new request"
                )
            if bound == mine:
                try:
                    run = await start(mine.run_id)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await store.release_idempotency_key(me.name, key, mine.run_id)
                    raise
                return Started(run.run_id, run.thread_id, run)
            try:
                snapshot = await sup.reads.get_run(bound.run_id, me.name)
                return Started(bound.run_id, snapshot["thread_id"], None)
            except RunNotFound:
                pass  # being started on another process, or its start died with it
            if time.time() - bound.created_at > settings.stop_timeout + STALE_AFTER:
                await store.release_idempotency_key(me.name, key, bound.run_id)
            elif anyio.current_time() > deadline:
                raise IdempotencyKeyInFlight(
                    f"the run of Idempotency-Key {key!r} is still starting; retry shortly"
                )
            else:
                await anyio.sleep(POLL)
