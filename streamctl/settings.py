"""Settings: defaults, overridden by ``STREAMCTL_*`` environment variables, overridden by CLI flags.

Every field here is documented in ``docs/settings.md``; a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import SettingsError

ENV_PREFIX = "STREAMCTL_"


class Settings(BaseModel):
    """How one streamctl server behaves. Immutable once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Interface the server listens on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    db: Path = Field(Path("streamctl.db"), description="SQLite file holding threads, runs, events.")
    agent: str = Field(
        "demo",
        description="The agent: `demo`, `openai`, or `MODULE:ATTR` naming an agent callable.",
    )
    model: str = Field("", description="The chat model's name, for `--agent openai`.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="Log level of the server and of streamctl's own loggers."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as one JSON object per line."
    )
    auth: Literal["none", "api-key", "jwt"] = Field(
        "none", description="How requests authenticate: none (development), api-key or jwt."
    )
    allow_no_auth: bool = Field(
        False, description="Serve a non-loopback address with auth=none anyway (dangerous)."
    )
    api_keys: str = Field("", description="API keys as comma-separated principal:key pairs.")
    api_keys_file: Path | None = Field(None, description="File of principal:key lines.")
    admins: str = Field("", description="Comma-separated principals that may see and stop all.")
    jwt_secret: str = Field("", description="HS256 secret for auth=jwt.")
    jwt_public_key: str = Field(
        "", description="RS256/ES256 public key for auth=jwt: PEM text or a file path."
    )
    jwt_algorithms: str = Field("HS256", description="Accepted JWT algorithms (comma list).")
    jwt_audience: str = Field("", description="Required JWT `aud`, if set.")
    jwt_issuer: str = Field("", description="Required JWT `iss`, if set.")
    jwt_leeway: float = Field(30.0, ge=0, description="Clock skew allowed for `exp`/`nbf` (s).")
    stream_token_ttl: float = Field(
        900.0, gt=0, description="Lifetime of a run's read-only stream token (s)."
    )
    stream_token_secret: str = Field(
        "", description="Key signing stream tokens; random per process when empty."
    )
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS.")
    runs_per_minute: int = Field(
        120, ge=1, description="Runs one principal may start in any 60 s (sliding window)."
    )
    max_streams_per_owner: int = Field(
        100, ge=1, description="SSE streams one principal may hold open at once."
    )
    recursion_limit: int = Field(
        25, ge=1, le=10_000, description="Server cap on agent steps; a client may only lower it."
    )
    ping_interval: float = Field(
        15.0, gt=0, description="Seconds of silence on a stream before a `: ping` comment."
    )
    retry_ms: int = Field(
        2000, ge=0, description="Reconnection delay sent to clients as `retry:` (milliseconds)."
    )
    tail_events: int = Field(
        64,
        ge=16,
        description="Events of a live run kept in memory; older ones come from SQLite.",
    )
    tail_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Bytes of a live run's events kept in memory; older ones come from SQLite.",
    )
    batch_ms: float = Field(
        50.0, ge=0, description="Window in which `batched` streams merge a message's chunks (ms)."
    )
    send_timeout: float = Field(
        30.0, gt=0, description="Seconds a stream may wait for its client to accept a write."
    )
    max_message_chars: int = Field(
        100_000, ge=1, description="Longest accepted input message (characters)."
    )
    max_messages: int = Field(100, ge=1, description="Most input messages accepted in one run.")
    max_run_seconds: float = Field(
        180.0, gt=0, description="Longest a run may take once its agent starts (then `timed_out`)."
    )
    stall_seconds: float = Field(
        60.0, gt=0, description="Longest an agent may go without an event (then `timed_out`)."
    )
    max_runs: int = Field(1000, ge=1, description="Runs running or queued at once, in all.")
    max_runs_per_owner: int = Field(
        100, ge=1, description="Runs running or queued at once for one principal."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body (bytes); larger is 413."
    )
    retention_days: float = Field(
        7.0, ge=0, description="Days the events of a finished run are kept; 0 keeps them forever."
    )
    purge_interval: float = Field(
        3600.0, gt=0, description="Seconds between two purges of events past the retention."
    )
    idempotency_ttl: float = Field(
        86400.0,
        gt=0,
        description="Seconds an `Idempotency-Key` names the run it started; a retry within them"
        " gets that run, later the key is free again.",
    )
    drain_grace: float = Field(
        10.0,
        ge=0,
        description="Seconds open connections get at shutdown before they are closed; runs still"
        " active then end as `interrupted`.",
    )
    stop_timeout: float = Field(
        10.0, gt=0, description="Seconds `stop` waits for a run's task to exit before answering."
    )
    # -- bounds under pressure (issue 11): backpressure and a failing store -----------------------
    max_backlog_events: int = Field(
        2000,
        ge=2,
        description="Uncommitted events one run may have; past it the agent waits at its next"
        " event until the store is down to half (backpressure).",
    )
    max_backlog_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Uncommitted SSE bytes one run may have; past it the agent waits likewise.",
    )
    store_retry_seconds: float = Field(
        120.0,
        ge=0,
        description="How long a run whose events the store could not write retries writing its"
        " terminal events (with backoff); then the next start finalises it.",
    )
    # -- bounds per stream, thread and connection; operator endpoints (issue 11, sections 3-4) --
    metrics_token: str = Field(
        "",
        description="Bearer token for `/metrics` and the detail of `/readyz` (admins may use"
        " theirs); when auth is on and this is empty, only admins see them.",
    )
    max_message_buffer: int = Field(
        65_536,
        ge=1,
        description="Characters a `message`-granularity stream holds for one message before it"
        " sends them as a part.",
    )
    history_messages: int = Field(
        100, ge=0, description="Most earlier thread messages handed to an agent (the latest)."
    )
    history_bytes: int = Field(
        1_048_576,
        ge=0,
        description="Most bytes of earlier thread messages handed to an agent (the latest).",
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take between two parts of a request body."
    )
    max_connections: int = Field(
        2000,
        ge=1,
        description="Connections and requests served at once; beyond, new requests answer 503.",
    )
    # -- the Redis backend (docs/redis.md) --------------------------------------------------------
    backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="Where runs and events are stored: one SQLite file, or Redis."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="The Redis server of backend=redis."
    )
    workers: int = Field(
        1, ge=1, le=64, description="Server processes on one port (needs backend=redis)."
    )
    redis_lease_seconds: float = Field(
        10.0,
        ge=0.3,
        description="With backend=redis: how long a run outlives its node's last heartbeat.",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``STREAMCTL_*`` variables, then ``overrides`` (None values skipped)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{err['loc'][0]}".upper() + f": {err['msg']}" for err in exc.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from exc
