"""The benchmarks' own machinery (no timings here: the figures belong to ``scripts/bench``).

The median of repetitions, the table with its spreads and ratios, and the client's count mode
that the firehose reader relies on to find the ``done`` of a stream of millions of events.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import charts, cli, growth_rows, pipeline, procfs, spy
from benchmarks.growth import schedule_lags
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
    names = ("ttfe", "throughput", "fanout", "many", "idle", "stop", "resume", "growth", "firehose")
    for name in names:
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


def test_schedule_lag_is_measured_from_the_best_delivery() -> None:
    delay = 0.05
    on_time = [(k, 10.0 + k * delay) for k in range(5)]
    assert schedule_lags(on_time, delay) == pytest.approx([0.0] * 5)
    # Falling behind: each event 10 ms later than the last; one early burst sets nothing back.
    late = [(k, 10.0 + k * delay + 0.01 * k) for k in range(5)]
    assert schedule_lags(late, delay) == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    assert schedule_lags([], delay) == []


def _growth_point(lag_p99: float, rate: float, kib: float) -> dict[str, object]:
    return {
        "lag_ms": {"p50": 1.0, "p99": lag_p99},
        "rate_pct_of_nominal": rate,
        "rate_min_pct_of_nominal": rate,
        "cpu_us_per_event": 20.0,
        "rss_kib_per_unit": kib,
        "server_cpu_pct": 50.0,
        "ping_gap_ms": {"p99": 1500.0, "max": 1600.0},
        "streams_with_a_late_ping": 0,
    }


def _growth_result() -> dict[str, object]:
    ok = {"streamctl": _growth_point(40, 96, 90), "baseline": _growth_point(5, 100, 20)}
    slow = {"streamctl": _growth_point(400, 70, 150), "baseline": _growth_point(9, 99, 20)}
    failed = {"streamctl": {"error": "OSError: too many open files"}, "baseline": ok["baseline"]}
    exited = "RuntimeError: streamctl server exited:\nTraceback (most recent call last):\n"
    exited += '  File "x.py", line 1\n' * 40 + "ModuleNotFoundError: No module named 'redis'\n"
    crashed = {"streamctl": {"error": exited}, "baseline": ok["baseline"]}
    return {
        "runs": {"100": ok, "1000": slow, "2000": crashed},
        "fanout": {"100": ok},
        "idle": {"1000": ok, "10000": failed},
    }


def test_growth_rows_judge_each_size_and_report_failed_ones() -> None:
    table = {row.measurement: row for row in growth_rows.rows(_growth_result())}
    assert table["100 runs x 20 tok/s, rate (% of nominal, slowest run)"].met is True
    assert table["1,000 runs x 20 tok/s, rate (% of nominal, slowest run)"].met is False
    assert table["1,000 runs x 20 tok/s, memory per run (KiB)"].met is False
    assert table["1 run → 100 subs at 50 ev/s, lag p50 / p99 (ms)"].met is True
    assert table["1,000 idle streams, memory per stream (KiB)"].met is False  # 90 > 20
    assert "too many open files" in str(table["idle 10,000: failed"].streamctl)
    # A server that exited is reported by its traceback's last line: the cause, not the header.
    assert str(table["runs 2,000: failed"].streamctl) == (
        "streamctl: ModuleNotFoundError: No module named 'redis'"
    )
    assert not any(name.startswith("10,000 idle") for name in table)


def test_growth_charts_are_drawn_for_each_sweep(tmp_path: Path) -> None:
    result = _growth_result()
    written = charts.draw(result, [result, result], tmp_path)
    assert [p.name for p in written] == ["growth-runs.png", "growth-fanout.png", "growth-idle.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_py_spy_stacks_are_summed_by_own_and_inclusive_time() -> None:
    raw = "main;loop;send 30\nmain;loop;wait 60\nmain;commit 10\nnot a stack line\n"
    text = spy.summarize(raw)
    assert text.startswith("100 samples")
    own, inclusive = text.split("inclusive:")
    assert "60.0 %  wait" in own and "30.0 %  send" in own
    assert "100.0 %  main" in inclusive and "90.0 %  loop" in inclusive
    assert spy.summarize("") == "no samples"


def test_a_servers_cost_counts_its_workers() -> None:
    # `serve --workers N` is a parent and N children: CPU and memory are the tree's.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        assert child.pid in procfs.tree(me)
        assert procfs.tree_rss_kib(me) > procfs.proc_rss_kib(me)
    finally:
        child.kill()
        child.wait()


def test_a_size_stopped_at_the_time_cap_charts_only_its_rate() -> None:
    # Its window fell back to 1 s with one word per run: a lag of 0 there is no figure.
    capped = {"stopped_at_time_cap": True, "lag_ms": {"p99": -0.0}, "rate_min_pct_of_nominal": 0.0}
    assert math.isnan(charts.value(capped, "lag_ms.p99"))
    assert charts.value(capped, "rate_min_pct_of_nominal") == 0.0
    assert charts.value({**capped, "stopped_at_time_cap": False}, "lag_ms.p99") == 0.0


@pytest.mark.anyio
async def test_the_pipeline_measure_runs_the_demo_agent_through_a_real_store() -> None:
    results = await pipeline.measure(runs=2, tokens=300, follow=True)
    assert len(results) == 2
    for loop_us, process_us, rate in results:
        assert 0 < loop_us <= process_us  # the loop's thread is part of the process
        assert rate > 0
    line = pipeline.summary([(10.0, 16.0, 50_000.0), (12.0, 18.0, 40_000.0), (11.0, 17.0, 45_000)])
    assert line.startswith("event loop thread 11.00 (10.00..12.00) µs/event")
    assert "45,000 (40,000..50,000) events/s" in line and "of 3 runs" in line


def test_a_redis_sweep_without_redis_fails_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SystemExit) as exited:
        cli.parse(["--only", "growth", "--redis-workers", "2"])
    assert exited.value.code == 2
    assert "--redis-workers needs" in capsys.readouterr().err
    assert cli.parse(["--only", "growth"]).redis_workers == 0  # SQLite needs neither
