"""A private ``redis-server`` for tests: one process per test module on a free port, without
persistence, stopped by its pid. Import the fixtures into a test module to use them.

Where the binary is missing the tests are skipped with a reason, except under ``CI=true``, where
they fail (``.ci/run`` installs it with apt)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop the server and start a new one on the same port, empty (no persistence): as a
        Redis restarted without persistence, which lost every key."""
        self.stop()
        fresh = _launch(self.log.parent, self.port)
        self.process, self.log = fresh.process, fresh.log


def redis_binary() -> str:
    """The path of ``redis-server``; skips (or fails under CI) when it is missing."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def start_redis(directory: Path) -> RedisServer:
    return _launch(directory, _free_port())


def _launch(directory: Path, port: int) -> RedisServer:
    binary = redis_binary()
    log = directory / f"redis-{port}-{time.monotonic_ns()}.log"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--dir", str(directory), "--logfile", str(log)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(process, port, log)
    client = server.client()
    end = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited: {log.read_text(errors='replace')}")
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > end:
                server.stop()
                raise AssertionError("redis-server did not start") from None
            time.sleep(0.02)  # the process is starting: nothing to wait on but time
    client.close()
    return server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's server, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url
