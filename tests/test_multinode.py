"""Three ``streamctl serve --backend redis`` processes on one redis-server, as nodes behind a
round-robin balancer would be: start a run on one, stream it from another, stop it from the third,
resume on any; kill -9 the node that owns a run and another one finalises it.

Runs are paced by ``tests.support.gated_agent`` (token k+1 only once the test has created the file
``k``), so every step is synchronised on what the test received, not on time.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from .support import HANG, ServerProcess, wait_until
from .support.auth import ALICE, API_KEYS, BOB, bearer
from .support.redis_server import RedisServer, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]  # fixtures this module uses

GATED = "tests.support.gated_agent:gated"
Nodes = list[ServerProcess]


@pytest.fixture
def nodes(
    spawn_server: Callable[..., ServerProcess], redis_url: str, redis_server: RedisServer
) -> Nodes:
    # Refused terminal events are retried for long: a run that was fenced or lost must give up
    # at once all the same (its refusal is final), which the tests below look at.
    env = {"STREAMCTL_REDIS_LEASE_SECONDS": "1", "STREAMCTL_STORE_RETRY_SECONDS": "600"}
    args = ("--backend", "redis", "--redis-url", redis_url, "--agent", GATED)
    return [spawn_server(*args, env=env) for _ in range(3)]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as client:
        yield client


def start(
    client: httpx.Client,
    node: ServerProcess,
    gates: Path,
    tokens: int,
    headers: dict[str, str] | None = None,
) -> str:
    response = post_run(client, node, gates, tokens, headers)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def post_run(
    client: httpx.Client,
    node: ServerProcess,
    gates: Path,
    tokens: int,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    gates.mkdir(exist_ok=True)
    body = {
        "input": {"messages": [{"role": "user", "content": "go"}]},
        "config": {"gate": {"dir": str(gates), "tokens": tokens}},
    }
    return client.post(node.url + "/v1/runs", json=body, headers=headers)


def events_of(
    client: httpx.Client, node: ServerProcess, run_id: str, after: str | None = None
) -> Generator[ServerSentEvent, None, None]:
    headers = {"Last-Event-ID": after} if after is not None else {}
    url = f"{node.url}/v1/runs/{run_id}/stream"
    with connect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if event.data:
                yield event


def data(event: ServerSentEvent) -> Any:
    return orjson.loads(event.data)


def test_start_on_a_stream_from_b_stop_from_c_resume_on_any(
    nodes: Nodes, client: httpx.Client, tmp_path: Path
) -> None:
    a, b, c = nodes
    gates = tmp_path / "gates"
    run_id = start(client, a, gates, tokens=50)
    seen: list[ServerSentEvent] = []
    stream = events_of(client, b, run_id)
    for event in stream:  # B follows a run that lives on A
        seen.append(event)
        if event.event == "message_chunk":
            k = int(data(event)["content"].strip().removeprefix("token"))
            if k == 3:
                break
            (gates / str(k)).touch()  # token k reached B: A may emit the next one
    # A waits for gate 3: its stored events are exactly these, and every node shows them. (The
    # owner's own snapshot follows its writer's reply: B can read an event from Redis a moment
    # before A has processed that reply, so A may show it a moment later, never a different one.)
    for node in nodes:

        def shown(node: ServerProcess = node) -> bool:
            run = client.get(f"{node.url}/v1/runs/{run_id}").json()
            assert run["status"] == "running" and run["last_seq"] in (3, 4), run
            return bool(run["last_seq"] == 4 and run["output"]["text"] == "token1 token2 token3 ")

        wait_until(shown, HANG, f"{node.url} to show the run's stored events")
    stop = client.post(f"{c.url}/v1/runs/{run_id}/stop")  # C owns nothing
    assert stop.status_code == 200, stop.text
    assert stop.json()["stopping"] is False and stop.json()["status"] == "cancelled"
    seen += list(stream)  # the rest of B's stream: the terminal event, then it closes
    assert [e.event for e in seen] == ["run", *["message_chunk"] * 3, "done"]
    assert data(seen[-1])["status"] == "cancelled"
    assert [int(e.id) for e in seen] == list(range(1, len(seen) + 1))
    for node in nodes:  # resume exactly, wherever the balancer sends the client
        resumed = list(events_of(client, node, run_id, after="2"))
        assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in seen[2:]]
        run = client.get(f"{node.url}/v1/runs/{run_id}").json()
        assert (run["status"], run["last_seq"]) == ("cancelled", len(seen))
        assert run["output"]["text"] == "token1 token2 token3 "
    again = client.post(f"{b.url}/v1/runs/{run_id}/stop")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_clients_dropping_and_resuming_on_random_nodes_lose_and_repeat_nothing(
    nodes: Nodes, client: httpx.Client, tmp_path: Path
) -> None:
    rng = random.Random(7)
    gates = tmp_path / "gates"
    tokens = 40
    run_id = start(client, rng.choice(nodes), gates, tokens)
    received: list[ServerSentEvent] = []
    while not received or received[-1].event != "done":
        after = received[-1].id if received else None
        stream = events_of(client, rng.choice(nodes), run_id, after)
        for event in stream:
            received.append(event)
            if event.event == "message_chunk":
                k = int(data(event)["content"].strip().removeprefix("token"))
                if k < tokens:
                    (gates / str(k)).touch()
            if event.event == "done" or rng.random() < 0.3:
                break  # the client drops here
        stream.close()
    assert [int(e.id) for e in received] == list(range(1, tokens + 3))
    assert [e.event for e in received].count("done") == 1
    assert data(received[-1])["status"] == "completed"


def test_a_node_killed_mid_run_has_its_run_finalised_by_another(
    nodes: Nodes, client: httpx.Client, tmp_path: Path
) -> None:
    a, b, _ = nodes
    run_id = start(client, a, tmp_path / "gates", tokens=5)  # never let past token1
    stream = events_of(client, b, run_id)
    head = [next(stream), next(stream)]
    assert [e.event for e in head] == ["run", "message_chunk"]
    a.stop(signal.SIGKILL)
    rest = list(stream)  # B's stream goes on: another node finalises the run
    assert [(e.event, data(e)["status"]) for e in rest] == [("done", "interrupted")]
    assert [int(e.id) for e in head + rest] == [1, 2, 3]
    run = client.get(f"{b.url}/v1/runs/{run_id}").json()
    assert (run["status"], run["last_seq"], run["output"]["text"]) == ("interrupted", 3, "token1 ")


def test_an_owner_paused_past_its_lease_is_fenced_when_it_wakes_up(
    nodes: Nodes, client: httpx.Client, tmp_path: Path
) -> None:
    a, b, _ = nodes
    gates = tmp_path / "gates"
    run_id = start(client, a, gates, tokens=5)
    stream = events_of(client, b, run_id)
    head = [next(stream), next(stream)]
    owner_stream = events_of(client, a, run_id)
    assert [next(owner_stream).event, next(owner_stream).event] == ["run", "message_chunk"]
    a.process.send_signal(signal.SIGSTOP)  # a zombie: alive, but silent past its lease
    try:
        rest = list(stream)  # another node finalises the run meanwhile
    finally:
        a.process.send_signal(signal.SIGCONT)
    assert [(e.event, data(e)["status"]) for e in rest] == [("done", "interrupted")]
    (gates / "1").touch()  # the zombie's agent goes on: its next event must be refused
    # The zombie ends its own streams (an error without id: resume elsewhere) and no `done`
    # of its own; its run's task exits at once, without retrying (the retry lasts 600 s here).
    rest_of_owner = list(owner_stream)
    assert [(e.event, e.id, data(e)["code"]) for e in rest_of_owner] == [
        ("error", "2", "store_error")
    ]
    assert (
        "taken over" in data(rest_of_owner[0])["message"]
        or "another node" in data(rest_of_owner[0])["message"]
    )
    end = time.monotonic() + 15
    while client.get(f"{a.url}/v1/runs/{run_id}").json()["status"] == "running":
        assert time.monotonic() < end, "the woken owner never gave its run up"
        time.sleep(0.05)  # polling another process's state: nothing to wait on but time
    for node in nodes:
        run = client.get(f"{node.url}/v1/runs/{run_id}").json()
        assert (run["status"], run["last_seq"]) == ("interrupted", 3)
        replay = list(events_of(client, node, run_id))
        assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in head + rest]
    assert "FENCED" in a.output() or "another node" in a.output()


def test_connections_killed_by_redis_do_not_break_a_stream(
    nodes: Nodes, client: httpx.Client, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b, _ = nodes
    gates = tmp_path / "gates"
    tokens = 6
    run_id = start(client, a, gates, tokens)
    received: list[ServerSentEvent] = []
    with redis_server.client() as admin:
        for event in events_of(client, b, run_id):
            received.append(event)
            if event.event == "message_chunk":
                k = int(data(event)["content"].strip().removeprefix("token"))
                if k % 2 == 0:
                    # Every client's connection (the owner's writer, the follower's blocked
                    # XREAD): redis-py reconnects, and the scripts make a re-sent write harmless.
                    assert int(admin.client_kill_filter(_type="normal")) >= 2
                if k < tokens:
                    (gates / str(k)).touch()
    assert [int(e.id) for e in received] == list(range(1, tokens + 3))
    assert [e.event for e in received].count("done") == 1
    assert data(received[-1])["status"] == "completed"
    run = client.get(f"{a.url}/v1/runs/{run_id}").json()
    assert run["output"]["text"] == "".join(f"token{k} " for k in range(1, tokens + 1))


def test_a_redis_restarted_without_persistence_ends_streams_with_run_lost_and_answers_410(
    nodes: Nodes, client: httpx.Client, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b, c = nodes
    run_id = start(client, a, tmp_path / "gates", tokens=5)  # never let past token1
    owner_stream = events_of(client, a, run_id)
    follower_stream = events_of(client, b, run_id)
    for stream in (owner_stream, follower_stream):
        assert [next(stream).event, next(stream).event] == ["run", "message_chunk"]
    redis_server.restart()  # empty: every run, and the generation id, is gone
    for stream in (owner_stream, follower_stream):  # each ends, neither pings for ever
        rest = list(stream)  # the error has no id: the client's cursor stays at 2
        assert [(e.event, e.id, data(e)["code"]) for e in rest] == [("error", "2", "run_lost")]
    for node in (c, b, a):  # C never saw the run: the nodes that did told the others
        for method, path, headers in [
            ("GET", "", {}),
            ("GET", "/stream", {"Last-Event-ID": "2"}),
            ("POST", "/stop", {}),
        ]:
            answer = client.request(method, f"{node.url}/v1/runs/{run_id}{path}", headers=headers)
            assert answer.status_code == 410, answer.text
            assert answer.json()["error"]["code"] == "run_lost"
    assert client.get(f"{c.url}/v1/runs/never-was").status_code == 404
    assert "lost its data" in a.output()


def test_a_principals_cap_on_active_runs_holds_over_every_node(
    spawn_server: Callable[..., ServerProcess], redis_url: str, client: httpx.Client, tmp_path: Path
) -> None:
    env = {
        "STREAMCTL_AUTH": "api-key",
        "STREAMCTL_API_KEYS": API_KEYS,
        "STREAMCTL_MAX_RUNS_PER_OWNER": "2",
    }
    args = ("--backend", "redis", "--redis-url", redis_url, "--agent", GATED)
    a, b = (spawn_server(*args, env=env) for _ in range(2))
    alice, bob, gates = bearer(ALICE), bearer(BOB), tmp_path / "gates"
    first = start(client, a, gates, 5, alice)  # each run waits at its first gate
    start(client, b, gates, 5, alice)
    refused = post_run(client, a, gates, 5, alice)  # A holds only one of them
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_runs"
    start(client, a, gates, 5, bob)  # the cap is alice's, not the server's
    stop = client.post(f"{b.url}/v1/runs/{first}/stop", headers=alice)
    assert stop.status_code == 200 and stop.json()["status"] == "cancelled"
    start(client, b, gates, 5, alice)  # the ended run gave its slot back
