"""Fuzzing the HTTP API from its OpenAPI schema with schemathesis: zero server errors.

A real ``python -m streamctl serve`` (api-key auth, so the edge's token handling is fuzzed too)
runs ``tests.support.child_agents:Instant``, a scripted agent that answers at once, so every stream
ends. schemathesis makes one test per operation, with its examples, coverage and fuzzing phases,
valid and invalid requests; each response must not be a 5xx and, where the schema says anything,
must conform to it. Hypothesis is derandomized, so a failure reproduces; ``FUZZ_EXAMPLES=500``
fuzzes longer.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from streamctl import Settings, create_app

from .support import ServerProcess, start_process
from .support.child_agents import Instant

KEY = "fuzz-" + "k" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def app_schema() -> dict[str, Any]:
    """The OpenAPI schema of the app, built in this process."""
    return create_app(Settings.from_env({}), agent=Instant()).openapi()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for every operation (the runs the fuzzer starts pile up; that is fine)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "STREAMCTL_AUTH": "api-key",
        "STREAMCTL_API_KEYS": f"fuzzer:{KEY}",
        "STREAMCTL_RUNS_PER_MINUTE": "1000000",
        "STREAMCTL_LOG_LEVEL": "warning",
    }
    args = ["--db", str(tmp / "fuzz.db"), "--agent", "tests.support.child_agents:Instant"]
    running = start_process(args, tmp / "server.log", env, inherit=False)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop(signal.SIGTERM)


def test_the_openapi_schema_is_served(spawn_server: Callable[..., ServerProcess]) -> None:
    served = httpx.get(spawn_server().url + "/openapi.json")  # not `server`: keep its log clean
    assert served.status_code == 200, served.text
    assert served.json() == app_schema()


SCHEMA = schemathesis.openapi.from_dict(app_schema())


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case[Any], server: ServerProcess) -> None:
    checks = list(CHECKS)
    if "text/event-stream" in str(case.operation.definition.raw.get("responses", {})):
        # FastAPI declares an SSE body as `type: string`, which schemathesis applies to each
        # event (objects with id, event and data): that would fail on every valid stream.
        checks.remove(response_schema_conformance)
    case.call_and_validate(base_url=server.url, headers=AUTH, checks=checks, timeout=10)


def test_no_errors_were_logged(server: ServerProcess) -> None:
    """An error after a 200 (mid-stream) is no 5xx: only the log shows it. Runs last."""
    assert "Traceback" not in server.output(), server.output()
