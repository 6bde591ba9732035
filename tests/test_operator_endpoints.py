"""The operator's endpoints when auth is on (docs/security.md): ``/healthz`` stays public,
``/metrics`` needs the ``metrics_token`` or an admin, and ``/readyz`` answers its status code to
anyone but its detail (how many runs are active) only to them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamctl.agents import ScriptedAgent

from .conftest import StartServer, chunks, run_body

pytestmark = pytest.mark.anyio

ALICE, ROOT, METRICS = "a" * 20, "r" * 20, "m" * 24


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("metrics_token", [METRICS, ""], ids=["token", "admins-only"])
async def test_metrics_and_readiness_detail_need_an_operator(
    serve: StartServer, metrics_token: str
) -> None:
    server = await serve(
        agent=ScriptedAgent(chunks(1)),
        auth="api-key",
        api_keys=f"alice:{ALICE},root:{ROOT}",
        admins="root",
        metrics_token=metrics_token,
    )
    async with server.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        created = await client.post("/v1/runs", json=run_body(), headers=bearer(ALICE))
        stream_token = created.json()["stream_token"]
        refused: list[dict[str, str]] = [
            {},
            bearer(ALICE),
            bearer(stream_token),
            bearer("x" * 24),
            {"Authorization": f"Basic {METRICS}"},
        ]
        if not metrics_token:
            refused.append(bearer(METRICS))
        for headers in refused:
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert "streamctl_" not in response.text
            ready = await client.get("/readyz", headers=headers)
            assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        allowed = [bearer(ROOT), *([bearer(METRICS)] if metrics_token else [])]
        for headers in allowed:
            response = await client.get("/metrics", headers=headers)
            assert response.status_code == 200 and "streamctl_runs" in response.text
            ready = (await client.get("/readyz", headers=headers)).json()
            assert ready["status"] == "ready" and isinstance(ready["active_runs"], int)


async def test_without_auth_they_stay_open_unless_a_metrics_token_is_set(
    serve: StartServer, tmp_path: Path
) -> None:
    open_server = await serve(agent=ScriptedAgent(chunks(1)))
    async with open_server.client() as client:
        assert (await client.get("/metrics")).status_code == 200
        assert "active_runs" in (await client.get("/readyz")).json()
    closed = await serve(metrics_token=METRICS, db=tmp_path / "b.db")
    async with closed.client() as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer(METRICS))).status_code == 200
        assert (await client.get("/readyz")).json() == {"status": "ready"}
