"""What only the Redis store has: fencing, idempotent retries, bounded script calls, leases and
their heartbeat, stop requests, and a server that goes away (the contract itself is in
``test_store_contract.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis

from streamctl.agents import ScriptedAgent
from streamctl.errors import RunLost, RunTakenOver, StoreError
from streamctl.events import Frame, MessageChunk
from streamctl.orphans import finalise_orphans
from streamctl.settings import Settings
from streamctl.store import FinalState, NewRun, redis_generation
from streamctl.store import redis_keys as keys
from streamctl.store.redis import RedisStore
from streamctl.store.redis_writer import CHUNK_EVENTS
from streamctl.supervisor import Supervisor

from .support import HANG, chunks
from .support.redis_server import RedisServer, redis_server, redis_url, start_redis
from .support.supervisors import request

pytestmark = pytest.mark.anyio
__all__ = ["redis_server", "redis_url"]  # fixtures this module uses


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.errors: list[Exception] = []
        self.failed_once = anyio.Event()

    def committed(self, frame: Frame, event: object) -> None:
        self.frames.append(frame)

    def publish(self) -> None:
        pass

    def failed(self, error: Exception) -> None:
        self.errors.append(error)
        self.failed_once.set()


def chunk_frame(seq: int, text: str = "") -> Frame:
    return Frame.encode(seq, MessageChunk(content=text or f"w{seq} ", message_id="m1"), 1.0)


def new_run(run_id: str = "r1") -> NewRun:
    return NewRun(run_id, "t-" + run_id, "alice", "running", {"messages": []}, {}, 1.0, 1.0)


@pytest.fixture
def client(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


def stored(client: redis.Redis, run_id: str = "r1") -> list[int]:
    entries: list[tuple[bytes, object]] = client.xrange(keys.events(run_id))  # type: ignore[assignment]
    return [int(entry_id.split(b"-")[1]) for entry_id, _ in entries]


async def test_a_stale_owner_is_fenced_and_the_new_owner_finalises(
    redis_url: str, client: redis.Redis
) -> None:
    sink = Sink()
    async with RedisStore(redis_url) as stale, RedisStore(redis_url) as taker:
        stale.create_run(new_run())
        stale.append("r1", chunk_frame(1), None, sink)
        await stale.flush()
        client.delete(keys.lease("r1"))  # its lease expired (the owner was paused)
        client.zadd(keys.ACTIVE, {"r1": 0})
        assert [o.run_id for o in await taker.claim_orphans()] == ["r1"]
        assert client.hget(keys.meta("r1"), "fence") == b"2"

        stale.append("r1", chunk_frame(2), None, sink)  # the zombie wakes up and writes
        with pytest.raises(RunTakenOver, match="FENCED"):  # final: the run is not its own
            await stale.flush()
        assert [f.seq for f in sink.frames] == [1] and len(sink.errors) == 1
        assert isinstance(sink.errors[0], RunTakenOver) and "r1" not in stale.leases.owned
        assert stored(client) == [1]

        taker.leases.give_back(
            "r1"
        )  # hand it back to the claim below, as a fresh taker would see it
        client.delete(keys.lease("r1"))
        assert await finalise_orphans(taker) == 1
        assert stored(client) == [1, 2]
        record = await taker.get_run("r1")
        assert record is not None and (record.status, record.last_seq) == ("interrupted", 2)


async def test_one_runs_refusal_fails_only_that_runs_flush(
    redis_url: str, client: redis.Redis
) -> None:
    # Found with 96 runs started at once on one loaded process: one run was fenced, and every
    # start whose writes shared its round raised that run's `RunTakenOver` (503 to the client,
    # and a run left `running` with nobody to end it).
    fenced, other = Sink(), Sink()
    async with RedisStore(redis_url) as store:
        store.create_run(new_run("r1"))
        store.append("r1", chunk_frame(1), None, fenced)
        await store.flush()
        client.hset(keys.meta("r1"), "fence", 5)  # another node claimed r1
        store.append("r1", chunk_frame(2), None, fenced)  # one round: r1's refused write ...
        store.create_run(new_run("r2"))  # ... and another run's start
        store.append("r2", chunk_frame(1), None, other)
        outcomes: dict[str, BaseException | None] = {}

        async def flush(run_id: str) -> None:  # both wait for the same round
            try:
                await store.flush(run_id)
                outcomes[run_id] = None
            except StoreError as exc:
                outcomes[run_id] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush, "r1")
            tg.start_soon(flush, "r2")
        assert isinstance(outcomes["r1"], RunTakenOver) and "'r1'" in str(outcomes["r1"])
        assert outcomes["r2"] is None  # r2's writes were stored: its start goes on
        assert stored(client, "r2") == [1] and [f.seq for f in other.frames] == [1]
        assert other.errors == [] and isinstance(fenced.errors[0], RunTakenOver)


async def test_a_run_whose_creation_waits_in_the_queue_is_not_taken_for_lost(
    redis_url: str, client: redis.Redis
) -> None:
    # Found with 96 runs started at once: a renewal ran while a new run's creation still waited
    # behind the others' events, Redis did not know the run yet ("lost"), its lease was dropped
    # in silence and every later write of the run was refused (FENCED).
    sink = Sink()
    async with RedisStore(redis_url, lease_seconds=0.3) as store:
        gate, heartbeats, beaten = anyio.Event(), 0, anyio.Event()
        send, check = store._writer._send, store.leases._check_generation

        async def held(ops: Any) -> Any:
            await gate.wait()  # the writer is busy elsewhere
            return await send(ops)

        async def counted() -> bool:
            nonlocal heartbeats
            heartbeats += 1
            if heartbeats >= 3:
                beaten.set()
            return await check()

        store._writer._send = held  # type: ignore[method-assign]
        store.leases._check_generation = counted
        store.create_run(new_run())
        with anyio.fail_after(10):
            await beaten.wait()  # renewals came while r1's creation waited
        store.append("r1", chunk_frame(1), None, sink)
        gate.set()
        await store.flush("r1")
        assert stored(client) == [1] and sink.errors == [] and store.leases.fence("r1") == 1


async def test_a_finishing_run_keeps_its_lease_until_its_end_is_stored(
    redis_url: str, client: redis.Redis
) -> None:
    # Its end queued behind other runs' events for longer than a lease: a sweeper must not
    # claim it meanwhile (that fenced its `done` and ended it `interrupted`).
    sink = Sink()
    async with RedisStore(redis_url, lease_seconds=0.3) as owner, RedisStore(redis_url) as taker:
        owner.create_run(new_run())
        owner.append("r1", chunk_frame(1), None, sink)
        await owner.flush()
        gate, heartbeats, beaten = anyio.Event(), 0, anyio.Event()
        send, check = owner._writer._send, owner.leases._check_generation

        async def held(ops: Any) -> Any:
            await gate.wait()
            return await send(ops)

        async def counted() -> bool:
            nonlocal heartbeats
            heartbeats += 1
            if heartbeats >= 6:  # two leases' time
                beaten.set()
            return await check()

        owner._writer._send = held  # type: ignore[method-assign]
        owner.leases._check_generation = counted
        owner.finish_run("r1", FinalState("completed", None, None, 1, 1, {}, 2.0))
        with anyio.fail_after(10):
            await beaten.wait()
        assert await taker.claim_orphans() == []  # its lease is alive: renewed until stored
        gate.set()
        await owner.flush("r1")
        record = await taker.get_run("r1")
        assert record is not None and record.status == "completed"
        assert "r1" not in owner.leases.owned  # given back once stored


async def test_a_run_whose_start_failed_is_abandoned_and_ended_by_a_sweep(
    redis_url: str, client: redis.Redis
) -> None:
    # The start's round reached Redis but its reply was lost: the run is stored as running,
    # its start answered 503, and its lease must lapse (not be renewed for ever) so that a
    # sweep ends it.
    settings = Settings.from_env({}, backend="redis", redis_url=redis_url)
    store = RedisStore(redis_url, lease_seconds=0.3)
    async with store, Supervisor(store, ScriptedAgent(chunks(1)), settings) as sup:
        pipeline = store._writer._pipeline

        async def reply_lost(calls: Any) -> Any:
            store._writer._pipeline = pipeline  # type: ignore[method-assign]
            await pipeline(calls)
            raise redis.ConnectionError("the reply was lost")

        store._writer._pipeline = reply_lost  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await sup.control.start(request("hi"), "alice")
        (run_id,) = [r.decode() for r in cast(list[bytes], client.zrange(keys.ACTIVE, 0, -1))]
        assert run_id not in store.leases.owned and not store.leases.creating
        with anyio.fail_after(HANG):
            while True:  # the lease lapses, then a sweep (once a second) ends the run
                record = await store.get_run(run_id)
                assert record is not None
                if record.status != "running":
                    break
                await anyio.sleep(0.05)
        assert record.status == "interrupted"


async def test_a_refused_end_leaves_the_run_to_the_sweepers(
    redis_url: str, client: redis.Redis
) -> None:
    # A stale owner's end (fenced) and an end that does not describe the stored events
    # (conflict) are refused; the run must stay in the index of active runs, where sweepers
    # look, or it stays "running" for ever (the index entry used to be removed regardless).
    async with RedisStore(redis_url, lease_seconds=0.3) as owner:
        owner.create_run(new_run())
        owner.append("r1", chunk_frame(1), None, Sink())
        await owner.flush()
        owner.finish_run("r1", FinalState("completed", None, None, 0, 3, {}, 2.0))
        with pytest.raises(StoreError, match="CONFLICT"):
            await owner.flush("r1")
        assert client.zscore(keys.ACTIVE, "r1") is not None
        assert client.zscore(keys.ENDED, "r1") is None
        owner.abandon("r1")
        async with RedisStore(redis_url, lease_seconds=0.3) as sweeper:
            with anyio.fail_after(HANG):  # once its lease has lapsed, a sweep finalises it
                while await finalise_orphans(sweeper) == 0:  # noqa: ASYNC110 (polls Redis)
                    await anyio.sleep(0.05)
            record = await sweeper.get_run("r1")
            assert record is not None and (record.status, record.last_seq) == ("interrupted", 2)
            assert client.zscore(keys.ACTIVE, "r1") is None
            assert client.zscore(keys.ENDED, "r1") is not None


async def test_an_ended_run_whose_end_was_not_indexed_is_indexed_by_a_sweep(
    redis_url: str, client: redis.Redis
) -> None:
    # The index update after a stored end failed (the connection dropped): the run is ended
    # but still listed as active. A sweep must list it as ended, or retention never purges it.
    async with RedisStore(redis_url) as store:
        store.create_run(new_run())
        store.append("r1", chunk_frame(1), None, Sink())
        store.finish_run("r1", FinalState("completed", None, None, 0, 1, {}, 2.0))
        await store.flush()
        client.zadd(keys.ACTIVE, {"r1": 0})
        client.zrem(keys.ENDED, "r1")
        assert await store.claim_orphans() == []
        assert client.zscore(keys.ACTIVE, "r1") is None
        assert client.zscore(keys.ENDED, "r1") == 2.0


async def test_a_retried_append_is_already_applied_and_a_different_one_conflicts(
    redis_url: str, client: redis.Redis
) -> None:
    async with RedisStore(redis_url) as store:
        store.create_run(new_run())
        await store.flush()
        append = client.register_script(keys.APPEND)
        args: list[int | bytes] = [1, 1, b"message_chunk 1.0 {}\nmessage_chunk 1.0 {}"]
        assert append([keys.meta("r1"), keys.events("r1")], args) == 1
        # redis-py re-sends a call whose reply was lost: the same batch answers "already".
        assert append([keys.meta("r1"), keys.events("r1")], args) == 0
        other: list[int | bytes] = [1, 1, b'message_chunk 1.0 {}\nmessage_chunk 1.0 {"x":1}']
        with pytest.raises(redis.ResponseError, match="CONFLICT"):
            append([keys.meta("r1"), keys.events("r1")], other)
        with pytest.raises(redis.ResponseError, match="GAP"):
            append([keys.meta("r1"), keys.events("r1")], [1, 4, b"message_chunk 1.0 {}"])
        with pytest.raises(redis.ResponseError, match="FENCED"):
            append([keys.meta("r1"), keys.events("r1")], [7, 3, b"message_chunk 1.0 {}"])
        assert stored(client) == [1, 2]
        store.append("r1", chunk_frame(3), None, Sink())  # the store numbers on after them
        await store.flush()
        assert stored(client) == [1, 2, 3]


async def test_one_script_call_holds_a_bounded_chunk(redis_url: str, client: redis.Redis) -> None:
    sink = Sink()
    async with RedisStore(redis_url) as store:
        store.create_run(new_run())
        for seq in range(1, 1001):
            store.append("r1", chunk_frame(seq), None, sink)
        big = "x" * 20_000
        for seq in range(1001, 1011):
            store.append("r1", chunk_frame(seq, big), None, sink)
        await store.flush()
        sizes = store.stats.batch_sizes
        assert store.stats.batches >= 1000 // CHUNK_EVENTS + 3  # 20 KB events: 4 per 64 KB
        assert sum(sizes.counts[sizes.bounds.index(500) + 1 :]) == 0  # none above 200
    assert stored(client) == list(range(1, 1011))
    assert [f.seq for f in sink.frames] == list(range(1, 1011))


async def test_scripts_lost_by_the_server_are_loaded_again(
    redis_url: str, client: redis.Redis
) -> None:
    async with RedisStore(redis_url) as store:
        store.create_run(new_run())
        await store.flush()
        client.script_flush()
        store.append("r1", chunk_frame(1), None, Sink())
        await store.flush()
    assert stored(client) == [1]


async def test_a_run_whose_lease_went_elsewhere_is_told_by_the_heartbeat(
    redis_url: str, client: redis.Redis
) -> None:
    sink = Sink()
    async with RedisStore(redis_url, lease_seconds=0.3) as owner:
        owner.create_run(new_run())
        owner.append("r1", chunk_frame(1), None, sink)
        await owner.flush()
        client.hset(keys.meta("r1"), "fence", 5)  # another node claimed it
        with anyio.fail_after(5):
            await sink.failed_once.wait()
        assert "another node" in str(sink.errors[0])
        assert "r1" not in owner.leases.owned


async def test_a_stop_requested_elsewhere_reaches_the_owner_by_its_channel(
    redis_url: str,
) -> None:
    asked = anyio.Event()
    seen: list[str] = []

    def stop_requested(run_id: str) -> None:
        seen.append(run_id)
        asked.set()

    # A lease of a minute: the heartbeat (every 20 s) cannot be what delivers it within the test.
    async with RedisStore(redis_url, lease_seconds=60) as owner, RedisStore(redis_url) as other:
        owner.on_stop_request = stop_requested
        owner.create_run(new_run())
        await owner.flush()
        assert await other.request_stop("r1") is True
        assert await other.request_stop("missing") is False
        with anyio.fail_after(10):
            await asked.wait()
    assert seen[0] == "r1"


async def test_a_stop_flag_whose_message_was_lost_is_seen_at_the_heartbeat(
    redis_url: str, client: redis.Redis
) -> None:
    asked = anyio.Event()
    async with RedisStore(redis_url, lease_seconds=0.3) as owner:
        owner.on_stop_request = lambda run_id: asked.set()
        owner.create_run(new_run())
        await owner.flush()
        client.hset(keys.meta("r1"), "stop_requested", 1)  # the flag, with no message
        with anyio.fail_after(5):
            await asked.wait()


async def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    url = server.url
    server.stop()
    with pytest.raises(StoreError, match="cannot open store"):
        async with RedisStore(url):
            pass


async def test_a_server_gone_mid_run_fails_the_run_and_the_flush(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    sink = Sink()
    try:
        async with RedisStore(server.url, close_timeout=2) as store:
            store.create_run(new_run())
            store.append("r1", chunk_frame(1), None, sink)
            await store.flush()
            server.stop()
            store.append("r1", chunk_frame(2), None, sink)
            store.append("r1", chunk_frame(3), None, sink)
            with pytest.raises(StoreError):
                await store.flush()
            with pytest.raises(StoreError):
                await store.get_run("r1")
    finally:
        server.stop()
    assert [f.seq for f in sink.frames] == [1] and len(sink.errors) == 1


async def test_a_restarted_server_that_lost_its_data_makes_its_runs_lost(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    idle, busy = Sink(), Sink()
    try:
        async with (
            RedisStore(server.url, lease_seconds=3, close_timeout=2) as owner,
            RedisStore(server.url) as reader,
        ):
            for run_id, sink in (("idle", idle), ("busy", busy)):
                owner.create_run(new_run(run_id))
                owner.append(run_id, chunk_frame(1), None, sink)
            await owner.flush()
            assert await reader.get_run("idle") is not None  # the reader has seen this one
            tail = reader.tail("idle", 1)
            server.restart()
            owner.append("busy", chunk_frame(2), None, busy)  # refused: the run is gone
            with pytest.raises(RunLost, match="lost"):
                await owner.flush()
            with anyio.fail_after(10):  # the idle one hears it at its heartbeat
                await idle.failed_once.wait()
            assert isinstance(idle.errors[0], RunLost) and isinstance(busy.errors[0], RunLost)
            assert owner.leases.owned == {}
            with pytest.raises(RunLost):
                async with aclosing(tail):
                    await anext(tail)  # a follower's XREAD ends, not blocks for ever
            async with RedisStore(server.url) as newcomer:  # it never saw either run
                for store in (owner, reader, newcomer):
                    for run_id in ("idle", "busy"):
                        with pytest.raises(RunLost, match="restarted without persistence"):
                            await store.get_run(run_id)
                    assert await store.get_run("never-was") is None
                assert newcomer.generations.current == owner.generations.current
    finally:
        server.stop()


async def test_a_principals_run_slots_are_counted_over_every_store_and_given_back(
    redis_url: str, client: redis.Redis
) -> None:
    async with RedisStore(redis_url) as a, RedisStore(redis_url) as b:
        assert await a.claim_run_slot("alice", "r1", 2) is True
        a.create_run(new_run("r1"))
        await a.flush()
        assert await b.claim_run_slot("alice", "r2", 2) is True
        b.create_run(new_run("r2"))
        await b.flush()
        assert await a.claim_run_slot("alice", "r1", 2) is True  # a retried claim: the same slot
        assert await a.claim_run_slot("alice", "r3", 2) is False  # 2 active, on two stores
        assert await a.claim_run_slot("bob", "r4", 2) is True  # each principal has its own
        b.finish_run("r2", final(0))
        await b.flush()
        assert await a.claim_run_slot("alice", "r3", 2) is True  # r2 ended: its slot is free
        # r3 never became active (its process died before creating it): dropped after a while.
        client.zadd(keys.owner_live("alice"), {"r3": 0})
        client.delete(keys.lease("r1"))  # r1's owner died: another store finalises it
        client.zadd(keys.ACTIVE, {"r1": 0})
        a.leases.give_back("r1")
        assert await finalise_orphans(b) == 1
        assert client.zrange(keys.owner_live("alice"), 0, -1) == [b"r3"]  # r1's slot is free
        assert await b.claim_run_slot("alice", "r5", 1) is True  # and r3's is dropped now
        assert client.zrange(keys.owner_live("alice"), 0, -1) == [b"r5"]


def final(last_seq: int) -> FinalState:
    return FinalState("completed", "done", None, 0, last_seq, {}, 2.0)


async def test_a_burst_of_reads_is_not_refused_for_want_of_connections(redis_url: str) -> None:
    async with RedisStore(redis_url) as store:
        store.create_run(new_run())
        await store.flush()
        found: list[object] = []

        async def read() -> None:
            found.append(await store.get_run("r1"))

        async with anyio.create_task_group() as tg:  # more at once than redis-py's default pool
            for _ in range(300):
                tg.start_soon(read)
        assert len(found) == 300 and None not in found


async def test_a_store_remembers_the_newest_run_ids_only(
    redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_generation, "KNOWN_RUNS", 2)
    async with RedisStore(redis_url) as store:
        generations = store.generations
        for run_id in ("a", "b", "c"):
            generations.remember(run_id)
        client.delete(keys.GENERATION)  # as a restart would: the data is another generation
        assert await generations.is_lost("c") and not await generations.is_lost("a")
        for run_id in ("d", "e", "f"):
            generations.remember(run_id)
        client.delete(keys.GENERATION, keys.LOST)
        assert await generations.check() is True
        assert await generations.is_lost("f") and not await generations.is_lost("c")
        assert await generations.check() is False  # one finding per loss
