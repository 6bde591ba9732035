"""Stream tokens over HTTP (docs/security.md, "Stream tokens"): the short-lived, read-only token
issued with each run so that a plain ``EventSource`` (which cannot send headers) can follow it with
``?token=``; what it opens and what it never opens; forged, expired and tampered tokens (forged
with the server's ``stream_token_secret``); and where tokens may travel and be logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import orjson
import pytest

from streamctl.agents import ScriptedAgent, Wait

from .conftest import ServerProcess, StartServer, chunks, read_sse, run_body
from .test_auth import ALICE, API_KEYS, BOB, assert_401, b64, bearer

pytestmark = pytest.mark.anyio

STREAM_SECRET = "k" * 32


def forge_stream_token(payload: bytes, secret: str = STREAM_SECRET) -> str:
    """A stream token as the server signs them (``st.`` + payload + HMAC-SHA256)."""
    encoded = b64(payload)
    signature = hmac.new(secret.encode(), encoded.encode(), hashlib.sha256).digest()
    return f"st.{encoded}.{b64(signature)}"


async def test_stream_token_opens_its_runs_stream_and_snapshot_only(serve: StartServer) -> None:
    gate = anyio.Event()
    agent = ScriptedAgent([*chunks(2), Wait(gate), *chunks(1, "m2")])
    server = await serve(agent=agent, auth="api-key", api_keys=API_KEYS)
    async with server.client() as client:
        with anyio.fail_after(10):
            created = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
            other = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
            token, run_id, thread = created["stream_token"], created["run_id"], created["thread_id"]
            assert token.startswith("st.") and token != other["stream_token"]
            snapshot = await client.get(f"/v1/runs/{run_id}", params={"token": token})
            assert snapshot.status_code == 200 and snapshot.json()["run_id"] == run_id
            assert "stream_token" not in snapshot.json()  # a stream token mints no fresh ones
            refused: list[tuple[str, str, dict[str, Any]]] = [
                ("POST", f"/v1/runs/{run_id}/stop", {"headers": bearer(token)}),
                ("POST", f"/v1/runs/{run_id}/stop?token={token}", {"json": {"token": token}}),
                ("POST", "/stop", {"json": {"run_id": run_id, "token": token}}),
                ("POST", "/v1/runs", {"json": run_body(token=token)}),
                ("POST", "/v1/runs/stream", {"json": run_body(), "headers": bearer(token)}),
                ("GET", f"/v1/runs/{run_id}/events", {"params": {"token": token}}),
                ("GET", "/v1/runs", {"params": {"token": token}}),
                ("GET", f"/v1/threads/{thread}", {"params": {"token": token}}),
                ("GET", f"/v1/threads/{thread}/stream", {"headers": bearer(token)}),
                ("POST", f"/v1/threads/{thread}/stop", {"headers": bearer(token)}),
            ]
            for method, url, how in refused:
                response = await client.request(method, url, **how)
                assert_401(response, "insufficient_scope")
                assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
            for url in (f"/v1/runs/{other['run_id']}", f"/v1/runs/{other['run_id']}/stream"):
                response = await client.get(url, params={"token": token})
                assert response.status_code == 404 and response.json()["error"]["code"] == (
                    "run_not_found"
                )
            snapshot = await client.get(f"/v1/runs/{run_id}", headers=bearer(ALICE))
            assert snapshot.json()["status"] == "running"  # the refused stops did nothing
            assert snapshot.json()["stream_token"].startswith("st.")  # active: one more issued
            gate.set()
            url = f"/v1/runs/{run_id}/stream"
            _, events = await read_sse(client, "GET", url, params={"token": token})
    assert [e.event for e in events][-1] == "done" and events[0].id == "1"


async def test_forged_expired_and_tampered_stream_tokens(serve: StartServer) -> None:
    server = await serve(
        agent=ScriptedAgent(chunks(1)),
        auth="api-key",
        api_keys=API_KEYS,
        stream_token_secret=STREAM_SECRET,
        stream_token_ttl=60,
    )
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        run_id, issued = run["run_id"], run["stream_token"]
        payload = base64.urlsafe_b64decode(issued.split(".")[1] + "==")
        claims = orjson.loads(payload)
        assert claims["run"] == run_id and claims["sub"] == "alice"
        assert abs(claims["exp"] - (time.time() + 60)) < 5
        assert forge_stream_token(payload) == issued  # the format we forge is the server's own

        async def snapshot(token: str) -> httpx.Response:
            return await client.get(f"/v1/runs/{run_id}", params={"token": token})

        fresh = forge_stream_token(orjson.dumps({**claims, "exp": int(time.time()) + 30}))
        assert (await snapshot(fresh)).status_code == 200
        expired = forge_stream_token(orjson.dumps({**claims, "exp": int(time.time()) - 1}))
        assert_401(await snapshot(expired), "expired_token", expired)
        other_run = {**claims, "run": "0" * 32}
        swapped = f"st.{b64(orjson.dumps(other_run))}.{issued.rsplit('.', 1)[1]}"
        assert_401(await snapshot(swapped), "invalid_token", swapped)
        flipped = issued[:-2] + ("AA" if issued[-2:] != "AA" else "BB")
        assert_401(await snapshot(flipped), "invalid_token", flipped)
        wrong_key = forge_stream_token(payload, secret="another key, also 32 bytes long")
        assert_401(await snapshot(wrong_key), "invalid_token", wrong_key)
        bad_claims = forge_stream_token(b'{"run": "x"}')
        for malformed in ("st.", "st.abc", forge_stream_token(b"not json"), bad_claims):
            assert_401(await snapshot(malformed), "malformed_token", malformed)


async def test_streaming_post_sends_x_stream_token(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(2)), auth="api-key", api_keys=API_KEYS)
    async with server.client() as client:
        response, events = await read_sse(
            client, "POST", "/v1/runs/stream", json=run_body(), headers=bearer(BOB)
        )
        token, run_id = response.headers["x-stream-token"], response.headers["x-run-id"]
        assert events[-1].event == "done"
        snapshot = await client.get(f"/v1/runs/{run_id}", params={"token": token})
        assert snapshot.status_code == 200 and snapshot.json()["status"] == "completed"
        _, replayed = await read_sse(
            client, "GET", f"/v1/runs/{run_id}/stream", params={"token": token}
        )
        assert [e.id for e in replayed] == [e.id for e in events]


async def test_no_stream_tokens_without_auth(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)))
    async with server.client() as client:
        created = await client.post("/v1/runs", json=run_body())
        assert created.status_code == 201 and created.json()["stream_token"] is None
        response, _ = await read_sse(client, "POST", "/v1/runs/stream", json=run_body())
        assert "x-stream-token" not in response.headers


# -- where tokens travel ---------------------------------------------------------------------------


def test_tokens_never_reach_the_access_log(spawn_server: Callable[..., ServerProcess]) -> None:
    env = {"STREAMCTL_API_KEYS": API_KEYS, "STREAMCTL_LOG_LEVEL": "info"}
    server = spawn_server("--auth", "api-key", "--agent", "tests.instant_agent:Instant", env=env)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        run = client.post("/v1/runs", json=run_body(token=ALICE)).json()
        token = run["stream_token"]
        assert client.get(f"/v1/runs/{run['run_id']}", params={"token": token}).status_code == 200
        stream = client.get(f"/v1/runs/{run['run_id']}/stream", params={"token": token})
        assert stream.status_code == 200 and "event: done" in stream.text
        # The server decodes the name (`%74` is `t`): accepted, so it must be redacted as well.
        encoded = client.get(f"/v1/runs/{run['run_id']}/stream?after=0&%74oken={token}")
        assert encoded.status_code == 200 and "event: done" in encoded.text
    server.stop(signal.SIGTERM)
    log = server.output()
    assert f"/v1/runs/{run['run_id']}?token=[redacted]" in log
    assert f"/v1/runs/{run['run_id']}/stream?after=0&%74oken=[redacted]" in log
    assert token not in log and ALICE not in log


async def test_only_stream_tokens_may_travel_in_the_url(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), auth="api-key", api_keys=API_KEYS)
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        for url in ("/v1/runs", f"/v1/runs/{run['run_id']}", f"/v1/runs/{run['run_id']}/events"):
            assert_401(await client.get(url, params={"token": ALICE}), "malformed_token", ALICE)


async def test_an_expired_stream_token_lives_as_long_as_its_run(serve: StartServer) -> None:
    # A native EventSource reconnects with the URL it was given: its token may have expired
    # meanwhile. While the run goes on, the stream reopens; the snapshot does not; once the run
    # has ended, the expired token is refused like any other.
    gate = anyio.Event()
    server = await serve(
        agent=ScriptedAgent([*chunks(2), Wait(gate), *chunks(1, word="v")]),
        auth="api-key",
        api_keys=API_KEYS,
        stream_token_secret=STREAM_SECRET,
    )
    async with server.client() as client:
        run = (await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))).json()
        run_id = run["run_id"]
        claims = {"run": run_id, "sub": "alice", "exp": int(time.time()) - 1}
        expired = forge_stream_token(orjson.dumps(claims))
        url = f"/v1/runs/{run_id}/stream"
        with anyio.fail_after(20):
            response, events = await read_sse(
                client,
                "GET",
                url,
                params={"token": expired},
                headers={"Last-Event-ID": "1"},
                limit=1,
            )
        assert response.status_code == 200 and events[0].id == "2"  # reopened after event 1
        assert_401(
            await client.get(f"/v1/runs/{run_id}", params={"token": expired}), "expired_token"
        )
        stranger = forge_stream_token(orjson.dumps({**claims, "sub": "bob"}))
        assert (await client.get(url, params={"token": stranger})).status_code == 401
        gate.set()
        with anyio.fail_after(20):
            _, events = await read_sse(client, "GET", url, headers=bearer(ALICE))
        assert events[-1].event == "done"
        assert_401(await client.get(url, params={"token": expired}), "expired_token")
