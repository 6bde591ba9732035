"""Errors raised by streamctl, named after the state of a run or thread.

    StreamctlError
    ├── RunNotFound            no such run (or it belongs to another principal)
    ├── ThreadNotFound         no such thread (or it belongs to another principal)
    ├── ThreadBusy             the thread has an active run and the request said multitask="reject"
    ├── InvalidCursor          a Last-Event-ID / ?after= value that is not a sequence number
    ├── CursorOutOfRange       a cursor beyond the run's committed log
    ├── RunPurged              the run's events were deleted by retention (its snapshot remains)
    ├── TooManyRuns            a cap on runs (at once, or started per minute) is reached
    │   └── TooManyStreams     a principal holds as many open streams as allowed
    ├── InvalidInput           the run's input breaks a limit (too many or too long messages)
    │   ├── InvalidIdempotencyKey  an ``Idempotency-Key`` that is empty, too long or not printable
    │   └── IdempotencyKeyReused   a key sent again with another request than its first
    ├── IdempotencyKeyInFlight the run a key names is still starting on another process
    ├── Unavailable            the supervisor is not accepting runs (starting up or draining)
    ├── InvalidAgentConfig     the agent refused the request's options (e.g. ``config.demo``)
    ├── AuthError              a missing, malformed, expired or forged credential
    ├── StoreError             the store failed (raised from the backend's error)
    │   ├── RunTakenOver       another process took the run over: this one may not write it
    │   └── RunLost            the store lost the run (Redis restarted without persistence)
    ├── AgentNotFound          --agent MODULE:ATTR does not name an agent (start-up)
    ├── SettingsError          the settings do not hold together (start-up)
    ├── ClientError            the Python client got an error answer from a server
    └── RunFailure             fails one run (its code is the run's `error` event); never an answer
        ├── ModelError         the model server failed the request (agents.openai)
        │   ├── ModelRateLimited   it answered 429
        │   └── ModelUnreachable   it could not be reached
        └── TooManyTurns       the agent took more turns or super-steps than its recursion limit
            └── GraphRecursionLimit  a LangGraph graph did (agents.langgraph)

    Exception (not a StreamctlError: they fail a run, and its `error` event says why)
    ├── RecursionLimitExceeded the agent took more steps than the run's recursion limit allows
    └── AgentProtocolError     the agent yielded something that is not an AgentEvent

Each class has a ``code``, the ``error.code`` of the JSON error body. HTTP status codes are chosen
by class in one place, ``http/errors.py``; the domain code never knows about HTTP.
"""

from __future__ import annotations


class StreamctlError(Exception):
    """Base class of every error streamctl raises on purpose."""

    code = "streamctl_error"
    final = False
    """For a store's error: True when it will never take this run's writes again (no retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(StreamctlError):
    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")
        self.run_id = run_id


class ThreadNotFound(StreamctlError):
    code = "thread_not_found"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"no thread {thread_id!r}")
        self.thread_id = thread_id


class ThreadBusy(StreamctlError):
    code = "thread_busy"

    def __init__(self, thread_id: str, active_run_id: str, why: str | None = None) -> None:
        super().__init__(
            f"thread {thread_id!r} has an active run {active_run_id!r}: {why}"
            if why
            else f"thread {thread_id!r} already has an active run {active_run_id!r}; stop it, or"
            ' start the run with "multitask": "interrupt" or "enqueue"'
        )
        self.thread_id = thread_id
        self.active_run_id = active_run_id


class RunIdTaken(StreamctlError):
    """A client-chosen run id (AG-UI's ``runId``) that names another principal's run, or a run of
    another thread (HTTP 409)."""

    code = "run_id_taken"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run id {run_id!r} is already in use; choose another")


class InvalidCursor(StreamctlError):
    code = "invalid_cursor"


class CursorOutOfRange(StreamctlError):
    code = "cursor_out_of_range"

    def __init__(self, run_id: str, cursor: int, last_seq: int) -> None:
        super().__init__(
            f"cursor {cursor} is beyond the log of run {run_id!r}, which ends at {last_seq}"
        )
        self.cursor = cursor
        self.last_seq = last_seq


class RunPurged(StreamctlError):
    code = "run_purged"

    def __init__(self, run_id: str, purged_at: str) -> None:
        super().__init__(
            f"the events of run {run_id!r} were deleted on {purged_at} (retention period);"
            f" its final state is still at GET /v1/runs/{run_id}"
        )
        self.run_id = run_id


class TooManyRuns(StreamctlError):
    code = "too_many_runs"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(TooManyRuns):
    code = "too_many_streams"


class InvalidInput(StreamctlError):
    code = "invalid_input"


class InvalidIdempotencyKey(InvalidInput):
    """HTTP 400: the header itself is malformed."""

    code = "invalid_idempotency_key"


class IdempotencyKeyReused(InvalidInput):
    """HTTP 422: the key names a run that a different request started."""

    code = "idempotency_key_reused"


class IdempotencyKeyInFlight(StreamctlError):
    """HTTP 409: the key names a run whose start has not finished (another process); retry."""

    code = "idempotency_key_in_flight"


class Unavailable(StreamctlError):
    code = "unavailable"


class AgentNotFound(StreamctlError):
    code = "agent_not_found"


class StoreError(StreamctlError):
    code = "store_error"


class RunTakenOver(StoreError):
    """Another process claimed the run (its lease expired here: a paused process, a partition).
    This one no longer owns it and must not write its end: the new owner does."""

    final = True


class RunLost(StoreError):
    """The store no longer holds the run: its data was lost (a Redis restarted without
    persistence). Its ids answer 410, and its live streams end with an ``error`` ``run_lost``."""

    code = "run_lost"
    final = True


class DatabaseInUse(StoreError):
    """Another process holds the database's lock (``store/lock.py``): one process owns it."""

    code = "database_in_use"


class InvalidAgentConfig(StreamctlError):
    """An agent's ``validate_config`` refused the request's options (a 422 for the request, not a
    failed run)."""

    code = "invalid_request"


class AuthError(StreamctlError):
    """A missing, malformed, expired or forged credential. ``code`` says which (see docs/api.md)."""

    code = "invalid_token"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SettingsError(StreamctlError):
    code = "invalid_settings"


class ClientError(StreamctlError):
    """The server answered a request with an error (``status`` and ``code`` from its body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


# -- errors of an agent, caught at the per-run boundary: they fail that run alone -----------------


class RecursionLimitExceeded(Exception):
    """The agent took more steps than the run's recursion limit allows."""


class AgentProtocolError(Exception):
    """The agent yielded something that is not an ``AgentEvent``."""


# -- errors that fail one run (raised inside an agent, caught at the per-run boundary) ----------


class RunFailure(StreamctlError):
    """Fails the run that raised it: its ``code`` becomes the code of the run's ``error`` event.
    Raised inside a run's task only, so it is never an HTTP answer."""

    code = "run_failed"


class ModelError(RunFailure):
    """The model server failed the request (an HTTP error, or an error in mid-stream)."""

    code = "model_error"


class ModelRateLimited(ModelError):
    code = "model_rate_limited"


class ModelUnreachable(ModelError):
    code = "model_unreachable"


class TooManyTurns(RunFailure):
    """The model kept calling tools for more turns than the run's recursion limit."""

    code = "recursion_limit"


class GraphRecursionLimit(TooManyTurns):
    """The graph took more super-steps than the run's recursion limit."""
