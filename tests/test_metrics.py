"""/metrics during and after a run, parsed by prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamctl.agents import ScriptedAgent, Wait

from .support import StartServer, chunks, run_body

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_follow_a_run(serve: StartServer) -> None:
    gate = anyio.Event()
    server = await serve(agent=ScriptedAgent([*chunks(3), Wait(gate), *chunks(2, "m2")]))
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body())).json()
        async with client.stream("GET", f"/v1/runs/{run['run_id']}/stream") as stream:
            lines = stream.aiter_lines()
            with anyio.fail_after(10):
                async for line in lines:
                    if line == "id: 4":  # the third chunk: the run is parked on the gate
                        break
            response = await client.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            during = samples(response.text)
            assert during[("streamctl_active_runs", ())] == 1
            assert during[("streamctl_subscribers", ())] == 1
            assert during[("streamctl_live_runs", (("status", "running"),))] == 1
            assert during[("streamctl_live_runs", (("status", "queued"),))] == 0
            assert during[("streamctl_run_seconds_count", ())] == 0
            assert during[("streamctl_runs_started_total", ())] == 1
            assert during[("streamctl_events_committed_total", ())] >= 4
            assert during[("streamctl_events_sent_total", ())] >= 4
            assert during[("streamctl_commit_batch_events_count", ())] >= 1
            gate.set()
            with anyio.fail_after(10):
                async for line in lines:
                    if line == "event: done":
                        break
        with anyio.fail_after(10):
            while samples((await client.get("/metrics")).text)[("streamctl_subscribers", ())]:
                await anyio.wait_all_tasks_blocked()  # the server notices the closed stream
        after = samples((await client.get("/metrics")).text)
    assert after[("streamctl_active_runs", ())] == 0
    assert after[("streamctl_runs_ended_total", (("status", "completed"),))] == 1
    assert after[("streamctl_live_runs", (("status", "running"),))] == 0
    assert after[("streamctl_run_seconds_count", ())] == 1
    assert after[("streamctl_run_seconds_sum", ())] > 0
    assert after[("streamctl_first_event_seconds_count", ())] == 1
    assert after[("streamctl_events_committed_total", ())] == 7  # run, 5 chunks, done
    assert after[("streamctl_commit_batch_events_sum", ())] == 7
    # The stream was caught up when the agent went on: its log wrote the rest to it directly.
    assert (
        1
        <= after[("streamctl_stream_writes_direct_total", ())]
        < after[("streamctl_stream_writes_total", ())]
    )
    # A lone run's commits are small: made on the event loop's thread (the start's at least).
    assert (
        1 <= after[("streamctl_commits_inline_total", ())] <= after[("streamctl_commits_total", ())]
    )


async def test_every_metric_is_documented(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent([]))
    async with server.client() as client:
        text = (await client.get("/metrics")).text
    documented = DOCS.read_text()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in documented, f"{name} is not in docs/metrics.md"
