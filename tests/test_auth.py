"""Authentication over HTTP (docs/security.md): API keys, JWTs (HS256 and RS256), the 401 answers,
settings that cannot work, and the bind check of ``streamctl serve``.

Every test talks to a real server; tokens are made here with PyJWT and ``cryptography``. Stream
tokens are in ``test_stream_tokens.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from streamctl import Settings, create_app
from streamctl.agents import ScriptedAgent
from streamctl.errors import SettingsError

from .conftest import ServerProcess, StartServer, chunks, free_port, read_sse, run_body

pytestmark = pytest.mark.anyio

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


def hs256(secret: str = SECRET, **claims: Any) -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- API keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_token"),
        (f"Bearer {'x' * 20}-nobody", "invalid_token"),
        (f"Bearer {ALICE}x", "invalid_token"),
        (f"Basic {ALICE}", "malformed_token"),
        ("Bearer", "malformed_token"),
        (f"Token {ALICE}", "malformed_token"),
    ],
)
async def test_api_key_failures_are_401_and_say_which(
    serve: StartServer, authorization: str | None, code: str
) -> None:
    server = await serve(agent=ScriptedAgent(chunks(1)), auth="api-key", api_keys=API_KEYS)
    headers = {} if authorization is None else {"Authorization": authorization}
    sent = (authorization or "").partition(" ")[2]
    async with server.client() as client:
        for method, url in [("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/runs/x")]:
            body = run_body() if method == "POST" else None
            response = await client.request(method, url, headers=headers, json=body)
            assert_401(response, code, ALICE, *([sent] if sent else []))
            if code == "missing_token":
                assert response.headers["www-authenticate"] == 'Bearer realm="streamctl"'
            else:
                assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert (await client.get("/v1/runs", headers=bearer(ALICE))).json() == {"runs": []}


async def test_a_token_in_the_post_body_works_and_is_never_stored(serve: StartServer) -> None:
    server = await serve(agent=ScriptedAgent(chunks(2)), auth="api-key", api_keys=API_KEYS)
    async with server.client() as client:
        created = await client.post("/v1/runs", json=run_body(token=ALICE))
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]
        assert_401(await client.post("/v1/runs", json=run_body(token=BOB[:-1])), "invalid_token")
        _, events = await read_sse(
            client, "GET", f"/v1/runs/{run_id}/stream", headers=bearer(ALICE)
        )
        assert events[-1].event == "done"
        snapshot = await client.get(f"/v1/runs/{run_id}", headers=bearer(ALICE))
        assert snapshot.status_code == 200 and ALICE not in snapshot.text
        assert (await client.get(f"/v1/runs/{run_id}", headers=bearer(BOB))).status_code == 404
        stop = await client.post("/stop", json={"run_id": run_id, "token": ALICE})
        assert stop.status_code == 200 and stop.json()["status"] == "completed"
    await server.stop()  # every write is on disk (database and write-ahead log)
    stored = b"".join(p.read_bytes() for p in Path(server.settings.db).parent.glob("*.db*"))
    assert run_id.encode() in stored and ALICE.encode() not in stored


# -- JWT -------------------------------------------------------------------------------------------


async def jwt_server(serve: StartServer, **settings: Any) -> httpx.AsyncClient:
    server = await serve(agent=ScriptedAgent(chunks(1)), auth="jwt", **settings)
    return server.client()


async def test_hs256_jwt_principal_is_its_sub(serve: StartServer) -> None:
    async with await jwt_server(serve, jwt_secret=SECRET) as client:
        created = await client.post("/v1/runs", json=run_body(), headers=bearer(hs256()))
        assert created.status_code == 201, created.text
        url = f"/v1/runs/{created.json()['run_id']}"
        again = hs256(iat=int(time.time()) - 5)  # another token, the same sub: the same principal
        assert (await client.get(url, headers=bearer(again))).status_code == 200
        assert (await client.get(url, headers=bearer(hs256(sub="bob")))).status_code == 404
        listed = await client.get("/v1/runs", headers=bearer(hs256(sub="bob")))
        assert listed.json() == {"runs": []}


def none_alg_token() -> str:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    claims = b64(orjson.dumps({"sub": "alice", "exp": int(time.time()) + 300}))
    return f"{header}.{claims}."


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: hs256(exp=int(time.time()) - 120), "expired_token"),
        (lambda: hs256(secret="another secret entirely, 32 bytes"), "invalid_token"),
        (lambda: "garbage", "malformed_token"),
        (lambda: "a.b.c", "malformed_token"),
        (none_alg_token, "invalid_token"),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, "HS256"), "invalid_token"),  # no exp
        (lambda: hs256(sub=None), "invalid_token"),
        (lambda: hs256(sub=""), "invalid_token"),
        (lambda: hs256(nbf=int(time.time()) + 600), "invalid_token"),
    ],
    ids=[
        "expired",
        "signature",
        "garbage",
        "not-base64",
        "alg-none",
        "no-exp",
        "no-sub",
        "empty-sub",
        "not-yet",
    ],
)
async def test_bad_jwts_are_401(serve: StartServer, make: Callable[[], str], code: str) -> None:
    token = make()
    async with await jwt_server(serve, jwt_secret=SECRET, jwt_leeway=0) as client:
        assert_401(await client.get("/v1/runs", headers=bearer(token)), code, token, SECRET)
        assert (await client.get("/v1/runs", headers=bearer(hs256()))).status_code == 200


async def test_audience_and_issuer_are_enforced_when_set(serve: StartServer) -> None:
    settings = {"jwt_secret": SECRET, "jwt_audience": "streamctl", "jwt_issuer": "https://idp"}
    async with await jwt_server(serve, **settings) as client:
        good = {"aud": "streamctl", "iss": "https://idp"}
        assert (await client.get("/v1/runs", headers=bearer(hs256(**good)))).status_code == 200
        for claims in (
            {"iss": "https://idp"},
            {**good, "aud": "someone-else"},
            {"aud": "streamctl"},
            {**good, "iss": "https://evil"},
        ):
            token = hs256(**claims)
            assert_401(await client.get("/v1/runs", headers=bearer(token)), "invalid_token", token)


@pytest.mark.parametrize(("leeway", "status"), [(60.0, 200), (0.0, 401)])
async def test_leeway_is_honoured(serve: StartServer, leeway: float, status: int) -> None:
    token = hs256(exp=int(time.time()) - 10)
    async with await jwt_server(serve, jwt_secret=SECRET, jwt_leeway=leeway) as client:
        response = await client.get("/v1/runs", headers=bearer(token))
        assert response.status_code == status, response.text


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(("algorithm", "make_key"), [("RS256", rsa_key), ("ES256", ec_key)])
async def test_a_public_key_verifies(
    serve: StartServer, tmp_path: Path, algorithm: str, make_key: Callable[[], PrivateKey]
) -> None:
    key, stranger = make_key(), make_key()
    pem = public_pem(key)
    claims = {"sub": "carol", "exp": int(time.time()) + 300}
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(pem)
    for where in (pem, str(key_file)):  # PEM text, or a path to it
        settings = {"jwt_public_key": where, "jwt_algorithms": algorithm}
        async with await jwt_server(serve, **settings) as client:
            good = jwt.encode(claims, key, algorithm)
            assert (await client.get("/v1/runs", headers=bearer(good))).status_code == 200
            forged = jwt.encode(claims, stranger, algorithm)
            assert_401(await client.get("/v1/runs", headers=bearer(forged)), "invalid_token")
            # Algorithm confusion: HS256 "signed" with the public key as the HMAC secret.
            head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
            body = b64(orjson.dumps(claims))
            mac = hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
            confused = f"{head}.{body}.{b64(mac)}"
            assert_401(await client.get("/v1/runs", headers=bearer(confused)), "invalid_token")


# -- settings that cannot work ---------------------------------------------------------------------

GARBAGE_PEM = "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n"


def broken(settings: dict[str, Any], name: str) -> Any:
    """Settings that cannot work, found at start-up (they once failed per request: a 500)."""
    return pytest.param(settings, id=name)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"auth": "api-key"}, id="no-keys"),
        pytest.param({"auth": "api-key", "api_keys": "alice:short"}, id="short-key"),
        pytest.param({"auth": "api-key", "api_keys": "no-colon-at-all-x"}, id="no-principal"),
        pytest.param({"auth": "jwt"}, id="no-jwt-key"),
        pytest.param(
            {"auth": "jwt", "jwt_secret": SECRET, "jwt_algorithms": "HS256,none"}, id="none"
        ),
        pytest.param({"auth": "jwt", "jwt_secret": SECRET, "jwt_algorithms": "NONE"}, id="NONE"),
        pytest.param({"auth": "jwt", "jwt_secret": SECRET, "jwt_algorithms": " , "}, id="empty"),
        broken({"auth": "api-key", "api_keys_file": "/nonexistent/keys"}, "no-keys-file"),
        broken({"auth": "jwt", "jwt_public_key": "/nonexistent/k.pem"}, "no-key-file"),
        broken(
            {"auth": "jwt", "jwt_public_key": GARBAGE_PEM, "jwt_algorithms": "RS256"}, "bad-pem"
        ),
        broken({"auth": "jwt", "jwt_secret": SECRET, "jwt_algorithms": "RS256"}, "secret-for-rs"),
        broken(
            {"auth": "jwt", "jwt_public_key": "<pem>", "jwt_algorithms": "RS256,HS256"},
            "pem-for-hs",
        ),
    ],
)
def test_settings_that_cannot_work_are_settings_errors(settings: dict[str, Any]) -> None:
    if settings.get("jwt_public_key") == "<pem>":
        # Each HS256 token anyone sends would be a 500 (PyJWT's InvalidKeyError), not a 401.
        settings = {**settings, "jwt_public_key": public_pem(rsa_key())}
    with pytest.raises(SettingsError):
        create_app(Settings.from_env({}, **settings), agent=ScriptedAgent([]))


def streamctl_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCTL_")}
    command = [sys.executable, "-m", "streamctl", "serve", "--port", str(free_port()), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={**environ, **env}
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--auth", "api-key"], {}, "auth=api-key needs keys"),
        (["--auth", "jwt"], {}, "auth=jwt needs"),
        (
            ["--auth", "jwt"],
            {"STREAMCTL_JWT_SECRET": SECRET, "STREAMCTL_JWT_ALGORITHMS": "none"},
            "never 'none'",
        ),
        (["--host", "0.0.0.0"], {}, "refusing to serve 0.0.0.0 without authentication"),
        (["--host", "::"], {}, "--allow-no-auth"),
    ],
)
def test_serve_refuses_bad_auth_settings_with_status_2(
    db_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = streamctl_serve(*args, "--db", str(db_path), **env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not db_path.exists()  # refused before anything was opened


def test_allow_no_auth_serves_a_public_address(spawn_server: Callable[..., ServerProcess]) -> None:
    server = spawn_server("--host", "0.0.0.0", "--allow-no-auth")
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.output()


# -- what a credential may look like on the wire ---------------------------------------------------

DESCRIPTION = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # RFC 6750: no quote, no backslash
CHALLENGE = re.compile(
    rf'Bearer realm="streamctl"(, error="(invalid_token|insufficient_scope)",'
    rf" error_description={DESCRIPTION})?"
)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: "", id="missing"),
        pytest.param(lambda: "garbage", id="malformed"),
        pytest.param(lambda: hs256(exp=int(time.time()) - 120), id="expired"),
        pytest.param(lambda: hs256(secret="x" * 32), id="forged"),
        pytest.param(lambda: hs256(sub=None), id="no-sub"),
        pytest.param(lambda: hs256(exp=None), id="no-exp"),
    ],
)
async def test_the_challenge_is_a_well_formed_header(
    serve: StartServer, make: Callable[[], str]
) -> None:
    token = make()
    async with await jwt_server(serve, jwt_secret=SECRET, jwt_leeway=0) as client:
        response = await client.get("/v1/runs", headers=bearer(token) if token else {})
        assert response.status_code == 401
        assert CHALLENGE.fullmatch(response.headers["www-authenticate"])
