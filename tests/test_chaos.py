"""``scripts/chaos.py`` in the suite: a small run against a real server, and its checker shown to
catch what it claims to catch (a loss, a duplicate, a wrong merge, a wrong snapshot)."""

from __future__ import annotations

import importlib.util
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from httpx_sse import ServerSentEvent

ROOT = Path(__file__).parent.parent
SUMMARY = re.compile(
    r"clients=(\d+) stopped=(\d+) reconnects=(\d+) events_checked=(\d+) events_logged=(\d+)"
    r" lost=(\d+) duplicated=(\d+) mismatched=(\d+) elapsed=[\d.]+s"
)


def load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = load_chaos()


def test_twenty_chaotic_clients_lose_and_duplicate_nothing() -> None:
    seed = random.randrange(1_000_000)
    args = ["--clients", "20", "--seed", str(seed), "--deadline", "40"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/chaos.py"), *args],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=ROOT,
    )
    found = SUMMARY.search(result.stdout)
    assert found, (result.returncode, result.stdout, result.stderr[-3000:])
    clients, stopped, reconnects, checked, logged, lost, duplicated, mismatched = map(
        int, found.groups()
    )
    detail = f"seed={seed}: {found.group(0)}\n{result.stderr[-3000:]}"
    assert (lost, duplicated, mismatched) == (0, 0, 0), detail
    # Counts that do not depend on speed: every run the checker did not stop streamed at least its
    # 50 words (the seed decides which runs are stopped), and no event of any log went unchecked.
    assert clients == 20 and stopped < clients and logged >= 50 * (clients - stopped), detail
    assert checked > 0 and reconnects >= 20, detail
    assert result.returncode == 0, detail


def chunk(seq: int, content: str, message_id: str = "m1") -> Any:
    data = {"role": "assistant", "content": content, "message_id": message_id}
    return chaos.Ev(seq, "message_chunk", data)


def a_log() -> list[Any]:
    return [
        chaos.Ev(1, "run", {"run_id": "r", "thread_id": "t", "status": "running"}),
        chunk(2, "a "),
        chunk(3, "b "),
        chunk(4, "c "),
        chaos.Ev(5, "tool_start", {"name": "x", "args": {}, "call_id": "c"}),
        chunk(6, "d ", "m2"),
        chunk(7, "e ", "m2"),
        chaos.Ev(8, "done", {"run_id": "r", "thread_id": "t", "status": "completed"}),
    ]


def counts(events: list[Any], granularity: str = "low", **record: Any) -> tuple[int, int, int]:
    log = a_log()
    rec = chaos.Record(granularity=granularity, events=events, done=True, **record)
    found = chaos.verify(rec, log, "a b c d e ")
    return found.lost, found.duplicated, found.mismatched


def test_the_checker_accepts_exact_streams_and_catches_every_fault() -> None:
    log = a_log()
    merged = [log[0], chunk(3, "a b "), log[3], log[4], chunk(7, "d e ", "m2"), log[7]]
    assert counts(log) == (0, 0, 0)
    assert counts(merged, "batched") == (0, 0, 0)
    assert counts(log[4:], base_seq=4, base_text="a b c ") == (0, 0, 0)
    assert counts(merged, "low")[2] > 0  # low never merges
    assert counts([*log[:2], *log[3:]])[0] == 1  # a gap
    assert counts([log[0], chunk(3, "b "), *log[3:]], "batched")[0] == 1  # a merge too short
    assert counts([log[0], chunk(3, "a  b "), *log[3:]], "batched")[2] > 0  # wrong content
    assert counts([*log[:4], chunk(6, "c d "), *log[6:]], "batched")[2] > 0  # two messages
    assert counts(log[:-1])[0] == 1  # no terminal event: lost, and not done
    assert counts(log[4:], base_seq=4, base_text="a b ")[2] > 0  # a wrong snapshot
    assert counts(log[4:], base_seq=4, base_text="a b c ", snapshot_behind=1)[2] == 1
    assert counts(log, duplicated=2)[1] == 2


@pytest.mark.anyio
async def test_the_reader_counts_a_resent_event_as_duplicated() -> None:
    async def stream() -> AsyncIterator[ServerSentEvent]:
        for event in [*a_log()[:3], a_log()[2], *a_log()[3:]]:
            yield ServerSentEvent(event.type, orjson.dumps(event.data).decode(), str(event.seq))

    record = chaos.Record()
    runner = chaos.Chaos(client=None, seed=0, stop_fraction=0)
    await runner._events(stream(), record, None)
    assert record.duplicated == 1 and record.done
    assert chaos.verify(record, a_log(), "a b c d e ").mismatched == 0
