"""A run's stored event log, read over HTTP, and checks on it."""

from __future__ import annotations

from typing import Any

import httpx


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
