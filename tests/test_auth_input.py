"""Credentials that are not text (docs/security.md, "Hostile input"): a token holding a lone
surrogate, which only a JSON body can carry, is a 401 on every path that reads a token (API key,
JWT, stream token), never a 500.
"""

from __future__ import annotations

import json

import pytest

from streamctl.agents import ScriptedAgent

from .conftest import StartServer, chunks, run_body

pytestmark = pytest.mark.anyio

KEY = "k" * 24
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("mode", "token"),
    [
        ("api-key", "\ud800"),
        ("api-key", KEY + "\udcff"),
        ("jwt", "\ud800"),
        ("jwt", "a.\ud800.c"),
        ("api-key", "st.\ud800.x"),
        ("jwt", "st.eyJ9.\ud800"),
    ],
    ids=["key", "key-escaped", "jwt", "jwt-parts", "stream-payload", "stream-signature"],
)
async def test_a_lone_surrogate_token_is_401(serve: StartServer, mode: str, token: str) -> None:
    settings = {"api_keys": f"alice:{KEY}"} if mode == "api-key" else {"jwt_secret": "s" * 32}
    server = await serve(agent=ScriptedAgent(chunks(1)), auth=mode, **settings)
    body = json.dumps(run_body(token=token)).encode()  # ASCII JSON: "\ud800" escaped as is
    async with server.client() as client:
        for path in ("/v1/runs", "/v1/runs/stream", "/stop"):
            response = await client.post(path, content=body, headers=JSON)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "malformed_token"
        # The surrogate's UTF-8 bytes on the URL are decoded with replacement: a 401 as well.
        listed = await client.get("/v1/runs/x?token=st.%ED%A0%80.x")
        assert listed.status_code == 401
