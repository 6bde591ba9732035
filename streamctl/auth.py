"""Who is asking: API keys, JWTs, and short-lived stream tokens, turned into a ``Principal``.

A run and a thread belong to the principal that created them; every lookup is scoped by it, and
another principal's run answers exactly like a missing one (404). Modes (setting ``auth``):

- ``none``: everyone is ``anonymous`` (development, loopback only unless told otherwise);
- ``api-key``: keys mapped to principals, compared in constant time;
- ``jwt``: PyJWT with pinned algorithms; ``exp`` and ``sub`` required (``sub`` is the principal).

A **stream token** (``st.`` + payload + HMAC) is issued with each run when auth is on: it opens
that run's stream and snapshot only, read-only, for ``stream_token_ttl`` seconds, so a plain
``EventSource`` (which cannot send headers) can follow a run with ``?token=``.

Nothing here knows HTTP; ``http/auth.py`` reads the token from the request and ``http/errors.py``
maps ``AuthError`` to 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import orjson

from .errors import AuthError, SettingsError
from .settings import Settings

ANONYMOUS = "anonymous"
STREAM_TOKEN_PREFIX = "st."


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    admin: bool = False
    stream_run: str | None = None
    """Set for a stream token: the one run it may read."""

    @property
    def scope(self) -> str | None:
        """The owner lookups are limited to; ``None`` (admins) means every owner."""
        return None if self.admin else self.name


class Authenticator:
    """Checks credentials according to the settings; issues and checks stream tokens."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth
        self.admins = {name.strip() for name in settings.admins.split(",") if name.strip()}
        self.stream_token_ttl = settings.stream_token_ttl
        secret = settings.stream_token_secret
        self._stream_key = secret.encode() if secret else secrets.token_bytes(32)
        self._keys: list[tuple[bytes, str]] = []
        self._jwt_key: str | bytes = b""
        self._settings = settings
        if self.mode == "api-key":
            self._keys = _load_keys(settings)
            if not self._keys:
                raise SettingsError("auth=api-key needs keys: STREAMCTL_API_KEYS or api_keys_file")
        elif self.mode == "jwt":
            self._algorithms = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
            if not self._algorithms or any(a.lower() == "none" for a in self._algorithms):
                raise SettingsError("jwt_algorithms must name real algorithms (never 'none')")
            if settings.jwt_public_key:
                key = settings.jwt_public_key
                self._jwt_key = key if key.lstrip().startswith("-----") else _read(Path(key))
            elif settings.jwt_secret:
                self._jwt_key = settings.jwt_secret
            else:
                raise SettingsError(
                    "auth=jwt needs STREAMCTL_JWT_SECRET or STREAMCTL_JWT_PUBLIC_KEY"
                )
            for name in self._algorithms:  # an unusable key fails the start, not a request
                try:
                    jwt.get_algorithm_by_name(name).prepare_key(self._jwt_key)
                except (NotImplementedError, ValueError, TypeError, jwt.PyJWTError) as exc:
                    raise SettingsError(
                        f"jwt_algorithms: {name} cannot use the configured key ({exc})"
                    ) from exc

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def authenticate(self, token: str | None) -> Principal:
        if token is not None and self.enabled and not _encodable(token):
            # A JSON body may carry a lone surrogate ("\ud800"): no credential is one, and every
            # check below encodes the token (hmac, PyJWT), which would raise, not answer 401.
            raise AuthError("malformed_token", "the token is not valid UTF-8 text")
        if token is not None and token.startswith(STREAM_TOKEN_PREFIX) and self.enabled:
            return self._stream_principal(token)
        if not self.enabled:
            return Principal(ANONYMOUS)
        if not token:
            raise AuthError("missing_token", "this server needs a bearer token")
        if self.mode == "api-key":
            return self._key_principal(token)
        return self._jwt_principal(token)

    def _named(self, name: str) -> Principal:
        return Principal(name, admin=name in self.admins)

    def _key_principal(self, token: str) -> Principal:
        given = token.encode()
        found: str | None = None
        for key, name in self._keys:  # every key compared, in constant time each
            if hmac.compare_digest(key, given):
                found = name
        if found is None:
            raise AuthError("invalid_token", "unknown API key")
        return self._named(found)

    def _jwt_principal(self, token: str) -> Principal:
        options = self._settings
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=self._algorithms,
                audience=options.jwt_audience or None,
                issuer=options.jwt_issuer or None,
                leeway=options.jwt_leeway,
                options={"require": ["exp", "sub"], "verify_aud": bool(options.jwt_audience)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("expired_token", "the token has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("invalid_token", "the token's signature does not verify") from exc
        except jwt.DecodeError as exc:
            raise AuthError("malformed_token", "the token is not a well-formed JWT") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"the token is not valid here: {exc}") from exc
        except jwt.PyJWTError as exc:  # e.g. a token whose algorithm does not fit the key
            raise AuthError("invalid_token", "the token cannot be checked with this key") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid_token", "the token's sub claim must be a non-empty string")
        return self._named(subject)

    # -- stream tokens ---------------------------------------------------------------------------

    def issue_stream_token(self, run_id: str, principal: Principal) -> str | None:
        """A read-only token for one run's stream and snapshot (None while auth is off)."""
        if not self.enabled:
            return None
        payload = _b64(orjson.dumps({"run": run_id, "sub": principal.name,
                                     "exp": int(time.time() + self.stream_token_ttl)}))  # fmt: skip
        return f"{STREAM_TOKEN_PREFIX}{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._stream_key, payload.encode(), hashlib.sha256).digest())

    def expired_stream_principal(self, token: str) -> Principal:
        """The principal of a stream token whose signature verifies, even past its ``exp``
        (the caller decides whether the token's run still vouches for it)."""
        return self._stream_principal(token, check_expiry=False)

    def _stream_principal(self, token: str, *, check_expiry: bool = True) -> Principal:
        payload, _, signature = token[len(STREAM_TOKEN_PREFIX) :].partition(".")
        if not payload or not signature:
            raise AuthError("malformed_token", "the stream token is not well formed")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise AuthError("invalid_token", "the stream token's signature does not verify")
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            run_id, subject, expires = claims["run"], claims["sub"], claims["exp"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError("malformed_token", "the stream token is not well formed") from exc
        if check_expiry and expires < time.time():
            raise AuthError("expired_token", "the stream token has expired")
        return Principal(subject, admin=subject in self.admins, stream_run=run_id)


def _encodable(token: str) -> bool:
    try:
        token.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read {str(path)!r}: {exc.strerror}") from exc


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _load_keys(settings: Settings) -> list[tuple[bytes, str]]:
    """``principal:key`` pairs, comma-separated in ``api_keys``, or one per line in the file."""
    entries = [e for e in settings.api_keys.split(",") if e.strip()]
    if settings.api_keys_file is not None:
        for line in _read(settings.api_keys_file).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append(line)
    keys = []
    for entry in entries:
        name, sep, key = entry.strip().partition(":")
        if not sep or not name or len(key) < 16:
            raise SettingsError("API keys are 'principal:key' with a key of at least 16 characters")
        keys.append((key.encode(), name))
    return keys
