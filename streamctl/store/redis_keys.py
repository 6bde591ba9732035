"""The Redis store's key layout, how entries and records are encoded, and its Lua scripts.

Every script touches the keys of ONE hash slot, so the layout is Cluster-ready:

- per run, hash tag ``{run_id}``: ``sc:{run}:meta`` (a hash: the run's record, ``status``,
  ``last_seq``, the owning ``node``, the ``fence`` counter, ``stop_requested``), ``sc:{run}:ev``
  (the stream of its events, ids ``0-<seq>``, one field ``e`` holding ``type created_at json``)
  and ``sc:{run}:lease`` (``<node>:<fence>``, with a PX TTL, renewed by the owner's heartbeat);
- the indexes, hash tag ``{sc}``: the run order counter, the run lists (all, per owner, per
  thread), threads, the ZSET of active runs by lease deadline, the ZSET of ended runs by end time.

Fencing: the owner of a run writes with the fence it got when it created (1) or claimed (+1) the
run; every write checks it against ``meta.fence``, so a stale owner (a paused process that woke
up after another node took its run over) is refused.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..events import Frame
from .base import RunRecord

INDEX = "{sc}"
RUNS = f"{INDEX}:runs"
ORDER = f"{INDEX}:order"
ACTIVE = f"{INDEX}:active"
ENDED = f"{INDEX}:ended"
GENERATION = f"{INDEX}:gen"
"""A random id written by the first store to open the data: another one means it was lost."""
LOST = f"{INDEX}:lost"
"""Run ids of lost generations, as the stores that had seen them remember them."""


def meta(run_id: str) -> str:
    return f"sc:{{{run_id}}}:meta"


def events(run_id: str) -> str:
    return f"sc:{{{run_id}}}:ev"


def lease(run_id: str) -> str:
    return f"sc:{{{run_id}}}:lease"


def owner_runs(owner: str) -> str:
    return f"{INDEX}:owner:{owner}:runs"


def owner_live(owner: str) -> str:
    """The principal's active runs across every node (ZSET by claim time): its run cap."""
    return f"{INDEX}:owner:{owner}:live"


def thread(owner: str, thread_id: str) -> str:
    """A thread is ``(owner, thread_id)``: each principal has its own ids (the owner's length
    first, so that no owner and id pair can spell another's key)."""
    return f"{INDEX}:th:{len(owner)}:{owner}:{thread_id}"


def thread_runs(owner: str, thread_id: str) -> str:
    return thread(owner, thread_id) + ":runs"


def thread_id_runs(thread_id: str) -> str:
    """Runs on threads of this id, whoever owns them (an admin's list by thread)."""
    return f"{INDEX}:thid:{thread_id}:runs"


def control_channel(node: str) -> str:
    """The pub/sub channel on which a node hears stop requests for the runs it owns."""
    return f"sc:node:{node}:control"


# KEYS meta, ev; ARGV fence, first_seq, entries (joined by newlines: one argument for the chunk,
# cheaper to send and to parse than one per entry; an entry holds no newline, see ``entry``).
# Returns 1 (stored) or 0 (already stored under this fence: a retry whose reply was lost).
APPEND = """
local m = redis.call('HMGET', KEYS[1], 'status', 'fence', 'last_seq')
if not m[1] then return redis.error_reply('LOST the run is not in the store') end
if m[2] ~= ARGV[1] then return redis.error_reply('FENCED the run is owned elsewhere now') end
local entries, blob, pos = {}, ARGV[3], 1
while true do
  local nl = string.find(blob, '\\n', pos, true)
  if not nl then
    entries[#entries + 1] = string.sub(blob, pos)
    break
  end
  entries[#entries + 1] = string.sub(blob, pos, nl - 1)
  pos = nl + 1
end
local first = tonumber(ARGV[2])
local n = #entries
local last = tonumber(m[3])
if first + n - 1 <= last then
  -- Stored already? Only if by this very call (a retry): the same last entry.
  local id = '0-' .. (first + n - 1)
  local got = redis.call('XRANGE', KEYS[2], id, id)
  if got[1] and got[1][2][2] == entries[n] then return 0 end
  return redis.error_reply('CONFLICT seq ' .. first .. ' is stored with other content')
end
if m[1] ~= 'running' and m[1] ~= 'queued' then
  return redis.error_reply('ENDED the run has ended')
end
if first ~= last + 1 then
  return redis.error_reply('GAP first seq ' .. first .. ' after ' .. last)
end
for i = 1, n do
  redis.call('XADD', KEYS[2], '0-' .. (first + i - 1), 'e', entries[i])
end
redis.call('HSET', KEYS[1], 'last_seq', first + n - 1)
return 1
"""

# KEYS meta, lease; ARGV node, lease_ms, field, value, ... (fence is 1)
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then return 0 end
  return redis.error_reply('EXISTS the run exists')
end
redis.call('HSET', KEYS[1], 'fence', '1', 'node', ARGV[1], 'last_seq', '0',
  'stop_requested', '0', unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[1] .. ':1', 'PX', ARGV[2])
return 1
"""

# KEYS order, runs, owner_runs, thread, thread_runs, active, thread_id_runs; ARGV run_id, owner,
# created_at, deadline_ms
INDEX_RUN = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('HSET', KEYS[4], 'owner', ARGV[2], 'created_at', ARGV[3])
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local o = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], o, ARGV[1])
redis.call('ZADD', KEYS[3], o, ARGV[1])
redis.call('ZADD', KEYS[5], o, ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[7], o, ARGV[1])
return 1
"""

# KEYS meta; ARGV fence, field, value, ... (only for the current fence of an active run)
UPDATE = """
local m = redis.call('HMGET', KEYS[1], 'status', 'fence')
if not m[1] then return redis.error_reply('LOST the run is not in the store') end
if m[2] ~= ARGV[1] then return redis.error_reply('FENCED the run is owned elsewhere now') end
if m[1] ~= 'running' and m[1] ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS meta, lease; ARGV fence, last_seq, field, value, ... (the final record; idempotent).
# A final record must describe the stored events: if its last_seq is not the stored one (events
# were lost under the owner), the run is handed over (lease dropped) to be finalised from them.
FINISH = """
local m = redis.call('HMGET', KEYS[1], 'status', 'fence', 'last_seq')
if not m[1] then return redis.error_reply('LOST the run is not in the store') end
if m[2] ~= ARGV[1] then return redis.error_reply('FENCED the run is owned elsewhere now') end
if m[1] ~= 'running' and m[1] ~= 'queued' then return 0 end
if m[3] ~= ARGV[2] then
  redis.call('DEL', KEYS[2])
  return redis.error_reply('CONFLICT last_seq ' .. ARGV[2] .. ' is not the stored ' .. m[3])
end
redis.call('HSET', KEYS[1], 'last_seq', ARGV[2], unpack(ARGV, 3))
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS active, ended, owner_live; ARGV run_id, ended_at
INDEX_END = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS owner_live, active; ARGV run_id, cap, now_ms, grace_ms. Claims one of the principal's
# `cap` slots for a run about to start: 1, or 0 if they are all taken. A slot is given back when
# the run ends (INDEX_END); one whose run is not active (never created: its process died before)
# is dropped here once it is older than grace_ms.
CLAIM_SLOT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local slots = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local taken = 0
for i = 1, #slots, 2 do
  if redis.call('ZSCORE', KEYS[2], slots[i])
      or tonumber(slots[i + 1]) > tonumber(ARGV[3]) - tonumber(ARGV[4]) then
    taken = taken + 1
  else
    redis.call('ZREM', KEYS[1], slots[i])
  end
end
if taken >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS meta, lease; ARGV node, lease_ms. Claims a run whose lease has expired.
# Returns the new fence, 0 if the run's owner is alive, -1 if the run is not active (any more).
CLAIM = """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' and st ~= 'queued' then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local f = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. f, 'PX', ARGV[2])
return f
"""

# KEYS meta, lease; ARGV fence, node, lease_ms.
# Returns -1 if the run is no longer this owner's to run, -2 if it is not in the store (lost),
# -3 if this owner's final row is stored (finished), else its stop_requested flag (0/1).
RENEW = """
local m = redis.call('HMGET', KEYS[1], 'status', 'fence', 'stop_requested')
if not m[1] then return -2 end
if m[2] ~= ARGV[1] then return -1 end
if m[1] ~= 'running' and m[1] ~= 'queued' then return -3 end
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[1], 'PX', ARGV[3])
return tonumber(m[3]) or 0
"""

# KEYS lease; ARGV token. Gives a lease up (a store closing with runs it did not finish).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS meta, ev; ARGV now. Deletes a finished run's events, keeps its record (retention).
PURGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'purged_at', ARGV[1])
return 1
"""

# KEYS meta; ARGV (none). Marks a stop request; returns the owner node, or false if not active.
REQUEST_STOP = """
local m = redis.call('HMGET', KEYS[1], 'status', 'node')
if m[1] ~= 'running' and m[1] ~= 'queued' then return false end
redis.call('HSET', KEYS[1], 'stop_requested', '1')
return m[2]
"""


# -- encoding -----------------------------------------------------------------------------------


def flat(fields: dict[str, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


def num(value: float | None) -> str:
    return "" if value is None else repr(value)


def entry(frame: Frame) -> bytes:
    """A stream entry's one field: ``type created_at json`` (the JSON last: it may hold spaces;
    never a newline, which SSE's ``data:`` line could not carry either)."""
    return b"%s %r %s" % (frame.type.encode(), frame.created_at, frame.data)


def frame_of(entry_id: bytes, fields: dict[bytes, bytes]) -> Frame:
    type_, created_at, data = fields[b"e"].split(b" ", 2)
    seq = int(entry_id.split(b"-", 1)[1])
    return Frame.build(seq, type_.decode(), data, float(created_at))


def _opt_float(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def record_of(raw: dict[bytes, bytes]) -> RunRecord:
    def text(name: str) -> str:
        return raw.get(name.encode(), b"").decode()

    def json(name: str) -> Any:
        value = raw.get(name.encode())
        return orjson.loads(value) if value else None

    return RunRecord(
        run_id=text("run_id"),
        thread_id=text("thread_id"),
        owner=text("owner"),
        status=text("status"),
        input=json("input"),
        created_at=float(raw[b"created_at"]),
        started_at=_opt_float(raw.get(b"started_at")),
        ended_at=_opt_float(raw.get(b"ended_at")),
        last_seq=int(raw.get(b"last_seq", b"0")),
        reason=text("reason") or None,
        output=json("output"),
        error=json("error"),
        tokens=int(raw.get(b"tokens") or 0),
        purged_at=_opt_float(raw.get(b"purged_at")),
        usage=json("usage") or {},
    )
