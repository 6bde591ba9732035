"""Idempotency keys in Redis: one string per ``(owner, key)`` that expires with its window.

``{sc}:idem:<len(owner)>:<owner>:<key>`` holds ``run_id``, ``request_hash`` and ``created_at``
(one per line), set with ``NX PXAT <created_at + window>``: Redis itself forgets a key when its
window ends, so purging has nothing to do. A claim is one script (set if absent, else read), so
of concurrent claims from any node exactly one wins; a retry of a claim whose reply was lost
finds its own value, and so still wins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .base import IdempotencyKey
from .redis_keys import INDEX

T = TypeVar("T")

# KEYS key; ARGV value, expiry (unix ms). Returns the value in force (ARGV[1] when this won).
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""

# KEYS key; ARGV run_id. Deletes the key only while it still names that run.
RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def idempotency_key(owner: str, key: str) -> str:
    """The owner's length first, so that no owner and key pair can spell another's."""
    return f"{INDEX}:idem:{len(owner)}:{owner}:{key}"


def _decode(raw: bytes) -> IdempotencyKey:
    run_id, request_hash, created_at = raw.decode().split("\n")
    return IdempotencyKey(run_id, request_hash, float(created_at))


class RedisIdempotency:
    """The ``RunStore`` operations on idempotency keys, mixed into ``RedisStore``."""

    if TYPE_CHECKING:  # what RedisStore provides

        @property
        def redis(self) -> Any: ...

        async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T: ...

    async def claim_idempotency_key(
        self, owner: str, key: str, claim: IdempotencyKey, ttl: float
    ) -> IdempotencyKey:
        value = f"{claim.run_id}\n{claim.request_hash}\n{claim.created_at!r}"
        expires_ms = max(1, int((claim.created_at + ttl) * 1000))
        script = self.redis.register_script(CLAIM)
        raw = await self._call(
            "claiming an idempotency key",
            lambda: script(keys=[idempotency_key(owner, key)], args=[value, expires_ms]),
        )
        return _decode(raw)

    async def release_idempotency_key(self, owner: str, key: str, run_id: str) -> None:
        script = self.redis.register_script(RELEASE)
        await self._call(
            "releasing an idempotency key",
            lambda: script(keys=[idempotency_key(owner, key)], args=[run_id]),
        )

    async def purge_idempotency_keys(self, created_before: float) -> int:
        return 0  # every key expires by itself at the end of its window (PX)
