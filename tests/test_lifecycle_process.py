"""Shutdown and crash recovery of ``python -m streamctl serve`` as a real process (DESIGN.md
invariants 6-8; docs/operations.md).

A SIGTERM drains: readiness fails, new runs get 503, active runs get ``drain_grace``, the rest end
``interrupted``, every open stream receives its ``done`` and closes cleanly, and the process exits
within the grace plus a few seconds. A SIGKILL loses nothing that was committed: the next start
finalises the runs left active, and a client resumes with the last id it saw.

Streams are read in threads with their own clients, so they stay open while the test signals the
server. Waits are bounded: on a thread's event, on a process exiting, or a short poll of an
external state (``/readyz``, ``/proc``) with a deadline.
"""

from __future__ import annotations

import http.client
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from .support import ServerProcess, run_body, wait_until
from .support.stored import frames_in_file

Spawn = Callable[..., ServerProcess]

GRACE = 3.0
"""Long enough for the test's few requests during the drain, on a loaded machine too."""
EXIT_SLACK = 5.0
"""The process must exit within ``drain_grace`` + this (DESIGN.md invariant 8)."""
# 2000 words at 50 ms is 100 s of tokens: far beyond the grace. (Not 100_000: the demo agent builds
# its whole plan up front, which blocks the server's event loop ~0.4 s per 100k words; see
# test_a_huge_demo_run_neither_stalls_the_server_nor_holds_its_whole_plan.)
SLOW: dict[str, Any] = {"tokens": 2000, "delay_ms": 50, "tool": False}
SHORT: dict[str, Any] = {"tokens": 5, "delay_ms": 60, "tool": False}
GATED = "tests.support.child_agents:Gated"
"""The demo agent, plus runs that wait for a file the test creates (``config: {"gate": PATH}``)."""
TERMINAL = {"completed", "cancelled", "failed", "timed_out", "interrupted"}


# -- helpers ---------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One event as a client read it off a stream."""

    id: int
    type: str
    data: dict[str, Any]
    at: float
    """``time.monotonic()`` when it was read."""


class StreamReader(threading.Thread):
    """Reads one run stream to its end in a thread of its own (own client, own connection)."""

    def __init__(self, url: str, run_id: str, after: int | None = None) -> None:
        super().__init__(daemon=True, name=f"stream {run_id}")
        self.url = url
        self.run_id = run_id
        self.after = after
        self.events: list[Seen] = []
        self.opened = threading.Event()
        """Set at the first event (or when the stream failed before one)."""
        self.status_code: int | None = None
        self.error: BaseException | None = None
        """None once joined means the body ended cleanly (no reset, no truncated chunk)."""

    def run(self) -> None:
        headers = {} if self.after is None else {"Last-Event-ID": str(self.after)}
        url = f"{self.url}/v1/runs/{self.run_id}/stream"
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client,
                connect_sse(client, "GET", url, headers=headers) as source,
            ):
                self.status_code = source.response.status_code
                for sse in source.iter_sse():
                    if sse.data == "" and sse.retry is not None:  # the retry-only block
                        continue
                    self.events.append(
                        Seen(int(sse.id), sse.event, orjson.loads(sse.data), time.monotonic())
                    )
                    self.opened.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.opened.set()

    def finish(self, deadline: float) -> None:
        self.join(max(0.0, deadline - time.monotonic()))
        assert not self.is_alive(), f"stream of {self.run_id} still open"


def start_run(
    client: httpx.Client, demo: dict[str, Any], config: dict[str, Any] | None = None, **extra: Any
) -> str:
    """Start a demo run (or, with ``config``, a run with that config instead)."""
    body = run_body(config=config if config is not None else {"demo": demo}, **extra)
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def stored_events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every committed event of the run, through the JSON paging endpoint."""
    events: list[dict[str, Any]] = []
    while True:
        response = client.get(
            f"/v1/runs/{run_id}/events",
            params={"after": events[-1]["seq"] if events else 0, "limit": 1000},
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        if not page["events"] or events[-1]["seq"] >= page["last_seq"]:
            return events


def assert_one_final_done(events: list[dict[str, Any]], status: str, reason: str) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seqs are not dense"
    dones = [e for e in events if e["type"] == "done"]
    assert len(dones) == 1, f"{len(dones)} done events"
    assert events[-1]["type"] == "done", "done is not the last event"
    assert (dones[0]["data"]["status"], dones[0]["data"]["reason"]) == (status, reason)


def integrity_check(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


def done_rows(db: Path) -> dict[str, int]:
    """Number of stored ``done`` events of every run (chunked or still in the journal)."""
    with sqlite3.connect(db) as conn:
        run_ids = [run_id for (run_id,) in conn.execute("SELECT run_id FROM runs")]
    stored = frames_in_file(db)
    return {run: sum(f.type == "done" for f in stored.get(run, [])) for run in run_ids}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


# -- SIGTERM: drain --------------------------------------------------------------------------------


def test_sigterm_drains_every_run_and_stream_then_exits_promptly(
    spawn_server: Spawn, db_path: Path, tmp_path: Path
) -> None:
    grace_env = {"STREAMCTL_DRAIN_GRACE": str(GRACE)}
    server = spawn_server(
        "--db", str(db_path), "--log-level", "warning", "--agent", GATED, env=grace_env
    )
    gate = tmp_path / "gate"
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        slow_ids = [start_run(client, SLOW) for _ in range(30)]
        readers = [StreamReader(server.url, run_id) for run_id in slow_ids]
        for reader in readers:
            reader.start()
        # A run that ends within the grace: it waits for the gate, which opens after SIGTERM.
        short_id = start_run(client, SHORT, config={"gate": str(gate)})
        short = StreamReader(server.url, short_id)
        short.start()
        deadline = time.monotonic() + 30.0
        for reader in [*readers, short]:
            assert reader.opened.wait(max(0.0, deadline - time.monotonic()))
            assert reader.status_code == 200 and reader.error is None, reader.error
        assert client.get(f"/v1/runs/{short_id}").json()["status"] == "running"

        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        wait_until(lambda: client.get("/readyz").status_code == 503, GRACE, "/readyz to fail")
        assert server.process.poll() is None, "exited before the grace was over"
        refused = client.post("/v1/runs", json=run_body(config={"demo": SHORT}))
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"].isdigit()
        assert refused.json()["error"]["code"] == "unavailable"
        # Snapshots keep working while draining, and the grace has not run out yet.
        snapshot = client.get(f"/v1/runs/{slow_ids[0]}")
        assert snapshot.status_code == 200 and snapshot.json()["status"] == "running"
        assert client.get(f"/v1/runs/{short_id}").json()["status"] == "running"
        gate.touch()  # the short run may end now, within the grace

    returncode = server.process.wait(GRACE + EXIT_SLACK + 10.0)
    exited_after = time.monotonic() - sigterm_at
    # A clean drain on SIGTERM exits 0 (uvicorn would re-raise the signal: 143).
    assert returncode == 0, server.output()
    assert exited_after <= GRACE + EXIT_SLACK, f"exit took {exited_after:.2f} s"

    deadline = time.monotonic() + 5.0
    for reader in [*readers, short]:
        reader.finish(deadline)
        assert reader.error is None, (
            f"stream of {reader.run_id} did not end cleanly: {reader.error!r}"
        )
        dones = [e for e in reader.events if e.type == "done"]
        assert len(dones) == 1 and reader.events[-1] is dones[0], [e.type for e in reader.events]
    for reader in readers:
        done = reader.events[-1]
        assert (done.data["status"], done.data["reason"]) == (
            "interrupted",
            "the server is shutting down",
        )
        # The runs had their grace: none was interrupted as soon as the signal came.
        assert done.at - sigterm_at >= GRACE - 0.05, f"interrupted {done.at - sigterm_at:.2f} s in"
    assert short.events[-1].data["status"] == "completed"

    restarted = spawn_server("--db", str(db_path), "--log-level", "warning")
    with httpx.Client(base_url=restarted.url, timeout=10.0) as client:
        runs = client.get("/v1/runs", params={"limit": 500}).json()["runs"]
        assert {r["run_id"] for r in runs} == {*slow_ids, short_id}
        assert all(r["status"] in TERMINAL for r in runs), [r["status"] for r in runs]
        for reader in [*readers, short]:
            stored = stored_events(client, reader.run_id)
            if reader is short:
                assert_one_final_done(stored, "completed", "the agent finished")
            else:
                # The drain's reason, not recovery's: the drain finalised the run itself.
                assert_one_final_done(stored, "interrupted", "the server is shutting down")
            # What the stream delivered live is exactly the stored log, in order.
            assert [(e.id, e.type, e.data) for e in reader.events] == [
                (e["seq"], e["type"], e["data"]) for e in stored
            ]
    assert restarted.stop() == 0
    assert integrity_check(db_path) == [("ok",)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_readiness_fails_at_once_on_sigterm(spawn_server: Spawn, db_path: Path) -> None:
    server = spawn_server("--db", str(db_path), env={"STREAMCTL_DRAIN_GRACE": str(GRACE)})
    host, port = server.url.removeprefix("http://").split(":")
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        start_run(client, SLOW)  # keeps the drain (and so the connections) open for the grace
    ready = http.client.HTTPConnection(host, int(port), timeout=10.0)
    create = http.client.HTTPConnection(host, int(port), timeout=10.0)
    try:
        for conn in (ready, create):  # connections accepted and idle before the signal
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()
        # Freeze the server, so the SIGTERM is certainly pending when the requests arrive:
        # they come strictly after the signal, whatever the scheduler does.
        pid = server.process.pid
        server.process.send_signal(signal.SIGSTOP)
        wait_until(lambda: process_state(pid) == "T", 5.0, "the server to stop")
        server.process.send_signal(signal.SIGTERM)
        ready.request("GET", "/readyz")
        body = orjson.dumps(run_body(config={"demo": SHORT}))
        create.request("POST", "/v1/runs", body, {"Content-Type": "application/json"})
        server.process.send_signal(signal.SIGCONT)
        readyz, created = ready.getresponse(), create.getresponse()
        readyz_status, created_status = readyz.status, created.status
        readyz.read(), created.read()
    finally:
        ready.close()
        create.close()
    assert server.process.wait(GRACE + EXIT_SLACK + 10.0) in (0, -signal.SIGTERM)
    assert (readyz_status, created_status) == (503, 503)


# -- SIGKILL: crash recovery -----------------------------------------------------------------------


def test_sigkill_mid_run_loses_nothing_and_resume_is_exact(
    spawn_server: Spawn, db_path: Path
) -> None:
    server = spawn_server("--db", str(db_path), "--log-level", "warning")
    seen: list[Seen] = []
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        run_id = start_run(client, {"tokens": 2000, "delay_ms": 20, "tool": True, "tool_ms": 100})
        # Two more runs the crash leaves active: one inside its tool call, one queued behind it.
        in_tool = start_run(
            client, {"tokens": 5, "delay_ms": 1, "tool": True, "tool_ms": 60_000}, thread_id="t1"
        )
        queued = client.post(
            "/v1/runs", json=run_body(thread_id="t1", multitask="enqueue", config={"demo": SHORT})
        )
        assert queued.status_code == 201 and queued.json()["status"] == "queued", queued.text
        queued_id: str = queued.json()["run_id"]
        with connect_sse(client, "GET", f"/v1/runs/{in_tool}/stream") as source:
            assert any(e.event == "tool_start" for e in source.iter_sse())

        with connect_sse(client, "GET", f"/v1/runs/{run_id}/stream") as source:
            for sse in source.iter_sse():
                if sse.data == "" and sse.retry is not None:
                    continue
                seen.append(Seen(int(sse.id), sse.event, orjson.loads(sse.data), time.monotonic()))
                if len(seen) == 20:
                    break
            server.process.send_signal(signal.SIGKILL)
            assert server.process.wait(5.0) == -signal.SIGKILL
    last_id = seen[-1].id
    assert [e.id for e in seen] == list(range(1, 21))
    assert {"tool_start", "tool_end", "message_chunk"} <= {e.type for e in seen}

    crashed_reason = "the server stopped while the run was active"
    restarted = spawn_server("--db", str(db_path), "--log-level", "warning")
    with httpx.Client(base_url=restarted.url, timeout=10.0) as client:
        snapshot = client.get(f"/v1/runs/{run_id}").json()
        assert (snapshot["status"], snapshot["reason"]) == ("interrupted", crashed_reason)

        resumed = StreamReader(restarted.url, run_id, after=last_id)
        resumed.start()
        resumed.finish(time.monotonic() + 10.0)
        assert resumed.status_code == 200 and resumed.error is None, resumed.error
        ids = [e.id for e in resumed.events]
        assert ids == list(range(last_id + 1, last_id + 1 + len(ids))), "gap or duplicate"
        assert [e.type for e in resumed.events].count("done") == 1
        assert resumed.events[-1].type == "done"
        assert resumed.events[-1].data["status"] == "interrupted"

        stored = stored_events(client, run_id)
        assert_one_final_done(stored, "interrupted", crashed_reason)
        # Commit before send: every event the client saw is stored, byte for byte the same data.
        by_seq = {e["seq"]: e for e in stored}
        for event in [*seen, *resumed.events]:
            assert (by_seq[event.id]["type"], by_seq[event.id]["data"]) == (event.type, event.data)
        assert len(seen) + len(resumed.events) == len(stored)
        # The partial output is kept, folded from exactly the stored events.
        text = "".join(e["data"]["content"] for e in stored if e["type"] == "message_chunk")
        assert snapshot["output"]["text"] == text and text
        assert snapshot["last_seq"] == stored[-1]["seq"]

        tool_snapshot = client.get(f"/v1/runs/{in_tool}").json()
        assert tool_snapshot["status"] == "interrupted"
        assert [c["output"] for c in tool_snapshot["output"]["tool_calls"]] == [None]
        assert_one_final_done(stored_events(client, in_tool), "interrupted", crashed_reason)
        assert_one_final_done(stored_events(client, queued_id), "interrupted", crashed_reason)
        last_seqs = {r: len(stored_events(client, r)) for r in (run_id, in_tool, queued_id)}
    assert restarted.stop() == 0
    assert integrity_check(db_path) == [("ok",)]
    assert done_rows(db_path) == {run_id: 1, in_tool: 1, queued_id: 1}

    # A second start finds nothing to recover: no second `done`, nothing renumbered.
    again = spawn_server("--db", str(db_path), "--log-level", "warning")
    with httpx.Client(base_url=again.url, timeout=10.0) as client:
        for rid, last_seq in last_seqs.items():
            events = stored_events(client, rid)
            assert len(events) == last_seq
            assert_one_final_done(events, "interrupted", crashed_reason)
        assert (
            client.get(
                f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": str(last_seqs[run_id])}
            ).status_code
            == 204
        )
    assert again.stop() == 0
    assert done_rows(db_path) == {run_id: 1, in_tool: 1, queued_id: 1}
    assert integrity_check(db_path) == [("ok",)]


# -- pressure from one request ---------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_huge_demo_run_neither_stalls_the_server_nor_holds_its_whole_plan(
    spawn_server: Spawn, db_path: Path
) -> None:
    server = spawn_server("--db", str(db_path), "--log-level", "warning")
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        start_run(client, SHORT)  # whatever the first run allocates once, before measuring
        before = rss_kib(server.process.pid)
        run_id = start_run(client, {"tokens": 300_000, "delay_ms": 50, "tool": False})
        # Its first words are out: a plan built up front would be built (and held) by now.
        with connect_sse(client, "GET", f"/v1/runs/{run_id}/stream") as source:
            types = (sse.event for sse in source.iter_sse() if sse.data)
            assert [next(types) for _ in range(3)] == ["run", "message_chunk", "message_chunk"]
        assert client.get("/healthz").status_code == 200
        grown_mib = (rss_kib(server.process.pid) - before) / 1024
        assert client.post(f"/v1/runs/{run_id}/stop").json()["status"] == "cancelled"
    # Memory, not time: how long the loop would stall depends on the machine's load.
    assert grown_mib < 50, f"+{grown_mib:.0f} MiB"
