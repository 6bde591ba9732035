"""A run's stored event log, read over HTTP, and checks on it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from streamctl.events import Frame
from streamctl.store.chunks import stored_frames


async def stored_events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    page = await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
    assert page.status_code == 200, page.text
    events: list[dict[str, Any]] = page.json()["events"]
    return events


def assert_one_done(events: list[dict[str, Any]]) -> str:
    """Dense seqs, exactly one ``done`` and it is last; returns its status."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events].count("done") == 1 and events[-1]["type"] == "done"
    status: str = events[-1]["data"]["status"]
    return status


def frames_in_file(db_path: str | Path, run_id: str | None = None) -> dict[str, list[Frame]]:
    """The stored events of each run (or of one) read from a SQLite file out of band: its chunks
    and its journal, as committed, whether or not the store chunked them yet."""
    with closing(sqlite3.connect(db_path)) as conn:
        if run_id is None:
            union = "SELECT run_id FROM event_chunks UNION SELECT run_id FROM event_journal"
            run_ids = [run for (run,) in conn.execute(union)]
        else:
            run_ids = [run_id]
        found = {run: stored_frames(conn, run) for run in run_ids}
    return {run: frames for run, frames in found.items() if frames}
