"""Who owns which run, for the Redis store (``redis.py``): leases, fences, stop requests.

A store owns the runs it created (fence 1) or claimed (fence + 1) until it finishes them. It
renews each run's lease (``<node>:<fence>``, PX TTL) every third of the lease, in one pipeline; a
run whose lease went to another node, or could not be renewed for a whole lease, is told it failed
(``sink.failed``): the owner stops its own run, and its writes would be refused anyway (fenced).
Stop requests from other nodes arrive on this node's pub/sub channel (fast, at most once) and as
a durable flag the renewal reads (so a lost message only makes that stop slower).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from redis.exceptions import RedisError

from ..errors import RunLost, RunTakenOver, StoreError
from . import redis_keys as k
from .base import CommitSink

logger = logging.getLogger("streamctl.store")


class Leases:
    """The runs one store owns, with their fences, and the tasks that keep them owned."""

    def __init__(
        self,
        node: str,
        lease_ms: int,
        client: Callable[[], Any],
        scripts: dict[str, Any],
        fail: Callable[[str, CommitSink, BaseException], None],
        check_generation: Callable[[], Awaitable[bool]],
    ) -> None:
        self.node = node
        self.lease_ms = lease_ms
        self._client = client
        self._scripts = scripts
        self._fail = fail
        self._check_generation = check_generation
        self.owned: dict[str, int] = {}
        """Runs owned (created or claimed, not finished), with their fence."""
        self.creating: set[str] = set()
        """Owned runs whose creation is still queued: not renewed until it is stored (Redis does
        not know them yet, and a renewal would take them for lost)."""
        self.sinks: dict[str, CommitSink] = {}
        """Each owned run's sink, once it has events: told when the run is lost."""
        self.on_stop_request: Callable[[str], None] | None = None

    def fence(self, run_id: str) -> int:
        """The fence this store writes the run with (0: not its run, every write is refused)."""
        return self.owned.get(run_id, 0)

    def stored(self, run_id: str, sink: CommitSink) -> None:
        if run_id in self.owned:
            self.sinks.setdefault(run_id, sink)

    def created(self, run_id: str) -> None:
        """The run's creation is stored (with a fresh lease): renew it from now on."""
        self.creating.discard(run_id)

    def give_back(self, run_id: str) -> int:
        """The run is finished (or handed over): stop renewing it. Returns its fence."""
        self.creating.discard(run_id)
        self.sinks.pop(run_id, None)
        return self.owned.pop(run_id, 0)

    async def renew_loop(self) -> None:
        """Renew the lease of every run this store owns, every third of the lease. A run whose
        lease cannot be renewed before it expires here is told it failed: another node may
        finalise it, and its writes would be refused (fenced) anyway."""
        interval = self.lease_ms / 3000
        renewed = time.monotonic()
        while True:
            await anyio.sleep(interval)
            owned = {r: fence for r, fence in self.owned.items() if r not in self.creating}
            try:
                # Each heartbeat also looks for a lost store, so that streams of runs owned
                # elsewhere hear of it too (docs/redis.md, "Lost store").
                await self._check_generation()
                if not owned:
                    renewed = time.monotonic()
                    continue
                replies = await self._renew(owned)
            except RedisError as exc:
                if time.monotonic() - renewed > self.lease_ms / 1000:
                    logger.error("leases could not be renewed for a whole lease: %s", exc)
                    for run_id in owned:
                        self._give_up(run_id, StoreError(f"lease lost: {exc}"))
                continue
            renewed = time.monotonic()
            for run_id, reply in zip(owned, replies, strict=True):
                if reply == -1:
                    self._give_up(run_id, RunTakenOver("the run's lease went to another node"))
                elif reply == -2:
                    self._give_up(run_id, RunLost(f"run {run_id!r} is no longer in the store"))
                elif reply == -3:  # its end is stored; the writer gives it back as well
                    self.give_back(run_id)
                elif reply == 1:
                    self._stop_asked(run_id)

    async def _renew(self, owned: dict[str, int]) -> list[int]:
        pipe = self._client().pipeline(transaction=False)
        deadline = int(time.time() * 1000) + self.lease_ms
        for run_id, fence in owned.items():
            keys = [k.meta(run_id), k.lease(run_id)]
            pipe.evalsha(self._scripts["RENEW"].sha, 2, *keys, fence, self.node, self.lease_ms)
        pipe.zadd(k.ACTIVE, {run_id: deadline for run_id in owned}, xx=True)
        replies = await pipe.execute()
        return [int(r) for r in replies[:-1]]

    def _give_up(self, run_id: str, exc: StoreError) -> None:
        self.creating.discard(run_id)
        if self.owned.pop(run_id, None) is None:
            return
        sink = self.sinks.pop(run_id, None)
        if sink is not None:
            self._fail(run_id, sink, exc)

    async def release_all(self) -> None:
        owned, self.owned = self.owned, {}
        self.creating.clear()
        if not owned:
            return
        pipe = self._client().pipeline(transaction=False)
        for run_id, fence in owned.items():
            pipe.evalsha(self._scripts["RELEASE"].sha, 1, k.lease(run_id), f"{self.node}:{fence}")
        pipe.zadd(k.ACTIVE, dict.fromkeys(owned, 0), xx=True)
        try:
            await pipe.execute()
        except RedisError:
            logger.exception("releasing the leases of %d unfinished runs failed", len(owned))

    def _stop_asked(self, run_id: str) -> None:
        if run_id in self.owned and self.on_stop_request is not None:
            try:
                self.on_stop_request(run_id)
            except Exception:
                logger.exception("run %s: forwarding a stop request failed", run_id)

    async def listen(self) -> None:
        """Hear stop requests for this store's runs on its channel. Pub/sub is at most once (a
        message sent while this connection is down is gone): the heartbeat also reads the
        durable flag, so a missed message only makes that stop slower."""
        delay = 0.1
        channel = k.control_channel(self.node)
        while True:
            pubsub = self._client().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._stop_asked(message["data"].decode())
            except RedisError as exc:
                logger.warning("control channel lost (%s); listening again in %g s", exc, delay)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await pubsub.aclose()
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
