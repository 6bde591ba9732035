"""The benchmarks' own machinery (no timings here: the figures belong to ``scripts/bench``).

The median of repetitions, the table with its spreads and ratios, and the client's count mode
that the firehose reader relies on to find the ``done`` of a stream of millions of events.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import Row, combine, render
from benchmarks.response import HEAD_BYTES, Response
from benchmarks.stats import median_of

ROOT = Path(__file__).resolve().parent.parent


def test_median_of_repetitions_is_element_wise() -> None:
    reps = [
        {"p50": 1.0, "n": 10, "capped": False, "name": "a", "inner": {"x": 5}},
        {"p50": 3.0, "n": 10, "capped": True, "name": "b", "inner": {"x": 1}},
        {"p50": 2.0, "n": 12, "capped": False, "name": "c", "inner": {"x": float("nan")}},
    ]
    assert median_of(reps) == {
        "p50": 2.0,
        "n": 10,
        "capped": True,  # a flag seen in any repetition stays
        "name": "a",
        "inner": {"x": 3},  # NaN ignored: the median of 5 and 1
    }


def test_table_shows_spreads_and_the_median_of_per_repetition_ratios() -> None:
    reps = [[Row("lag (ms)", 2.0, 1.0), Row("p50 / p99", (1.0, 9.0))], [Row("lag (ms)", 6.0, 1.5)]]
    reps[1].append(Row("p50 / p99", (3.0, 7.0)))
    median = [Row("lag (ms)", 4.0, 1.25, "≤ 5", True), Row("p50 / p99", (2.0, 8.0))]
    table = combine(median, reps)
    assert table[0]["ratio"] == 3.0  # median of 2/1 and 6/1.5, not 4/1.25
    assert table[0]["streamctl_spread"] == (2.0, 6.0)
    assert table[1]["streamctl_spread"] == (1.0, 7.0, 3.0, 9.0)
    text = render(table)
    assert "2.00..6.00" in text
    assert "1.00..3.00 / 7.00..9.00" in text


def test_a_column_empty_in_every_row_is_left_out() -> None:
    text = render(combine([Row("stop (ms)", 3.0)], [[Row("stop (ms)", 3.0)]]))
    assert text.splitlines()[0].split("|")[1:-1] == [" measurement ", " streamctl "]


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.anyio
async def test_count_mode_keeps_the_head_and_finds_the_done_in_the_tail() -> None:
    resp = Response("count")
    filler = b"id: 2\nevent: message_chunk\ndata: {}\n\n" * (HEAD_BYTES // 20)
    done = b'id: 9\nevent: done\ndata: {"status":"completed"}\n\n'
    body = _chunked(b"retry: 2000\n\n", filler, filler, done)
    reads = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    ended = [resp.add_raw(data, float(t)) for t, data in enumerate(reads)]
    assert ended == [False] * (len(reads) - 1) + [True]
    assert resp.raw_bytes == len(body)
    assert sum(map(len, resp.raw)) < len(body)  # only the head is kept
    assert resp.first_raw(b"event: message_chunk\n") == 0.0
    assert resp.tail_done() == (9, {"status": "completed"})
    assert resp.done_seen_at is not None


def test_scripts_bench_lists_every_measurement() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("ttfe", "throughput", "fanout", "many", "idle", "stop", "resume", "firehose"):
        assert name in out


@pytest.mark.anyio
async def test_count_mode_sees_a_done_split_over_two_reads() -> None:
    resp = Response("count")
    body = _chunked(b'id: 3\nevent: done\ndata: {"status":"cancelled"}\n\n')
    cut = body.index(b"done") + 2
    assert not resp.add_raw(body[:cut], 1.0)
    assert resp.done_seen_at is None
    assert resp.add_raw(body[cut:], 2.0)
    assert resp.done_seen_at == 2.0
    assert resp.tail_done() == (3, {"status": "cancelled"})
