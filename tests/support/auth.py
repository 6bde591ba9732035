"""Credentials for the authentication tests: two API-key principals and the 401 they expect."""

from __future__ import annotations

import base64

import httpx

ALICE, BOB = "a" * 20 + "-alice", "b" * 20 + "-bob"
API_KEYS = f"alice:{ALICE},bob:{BOB}"
SECRET = "s3cret-" * 6


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: httpx.Response, code: str, *secrets: str) -> None:
    """A 401 naming ``code``, with a Bearer challenge, echoing none of ``secrets``."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="streamctl"')
    for secret in secrets:
        assert secret not in response.text and secret not in challenge


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
