"""streamctl behind a real nginx, configured with the block of ``docs/deployment.md``.

nginx (Debian's package) runs as the test's own process: its own configuration in a temporary
directory, ``daemon off``, a free port, TLS with a self-signed certificate made by ``openssl``.
streamctl runs as a real ``streamctl serve`` process with ``tests.gated_agent``, which holds a
run after each token until the test has received it: a proxy that buffered would deadlock the
run, so "tokens arrive one by one" is checked by state, not by timing.

Like the browser tests: skipped with a reason where nginx or openssl is missing, failing under
``CI=true`` (``.ci/run`` installs nginx).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
GATED = "tests.gated_agent:gated"
PROXY_READ_TIMEOUT = 2  # seconds; the docs say 60 s, the test shortens it to see it act
Spawn = Callable[..., ServerProcess]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"nginx tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        _missing("nginx is not installed (apt-get install nginx)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the client trusts exactly this one)."""
    if shutil.which("openssl") is None:
        _missing("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "streamctl.crt", folder / "streamctl.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def documented_config() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"<!-- nginx-conf -->\n```nginx\n(.*?)```\n<!-- /nginx-conf -->", text, re.S)
    assert block is not None, "docs/deployment.md lost its nginx block"
    return block.group(1)


def substitute(config: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert config.count(old) == 1, f"the documented nginx config no longer has {old!r}"
        config = config.replace(old, new)
    return config


@dataclass
class Proxy:
    url: str
    cert: Path
    access_log: Path
    error_log: Path
    server: ServerProcess

    def client(self, http2: bool = False) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.cert))
        timeout = httpx.Timeout(10.0, read=15.0)
        return httpx.Client(base_url=self.url, verify=context, http2=http2, timeout=timeout)


@pytest.fixture
def proxied(
    nginx_binary: str, certificate: tuple[Path, Path], spawn_server: Spawn, tmp_path: Path
) -> Iterator[Callable[..., Proxy]]:
    """``proxied(env)``: a streamctl process (settings from ``env``) behind its own nginx."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proxy:
        server = spawn_server(*args, env=env)
        folder = tmp_path / f"nginx-{len(started)}"
        folder.mkdir()
        port = free_port()
        cert, key = certificate
        site = substitute(
            documented_config(),
            {
                "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
                "server 127.0.0.1:8000;": f"server {server.url.removeprefix('http://')};",
                "/etc/ssl/streamctl.crt": str(cert),
                "/etc/ssl/streamctl.key": str(key),
                "/var/log/nginx/streamctl.access.log": str(folder / "access.log"),
                "proxy_read_timeout 60s;": f"proxy_read_timeout {PROXY_READ_TIMEOUT}s;",
            },
        )
        temp = "\n".join(
            f"    {kind}_temp_path {folder / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # Workers run as root when the test does: they must reach the private tmp directory.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = folder / "nginx.conf"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n{temp}\n    access_log {folder / 'other.access.log'};\n{site}\n}}\n"
        )
        process = subprocess.Popen(
            [nginx_binary, "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        proxy = Proxy(
            f"https://127.0.0.1:{port}", cert, folder / "access.log", folder / "error.log", server
        )
        _wait_listening(process, port, proxy.error_log)
        return proxy

    yield start
    for process in started:
        process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(process: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if process.poll() is not None:
            log = error_log.read_text() if error_log.exists() else ""
            raise AssertionError(f"nginx exited with {process.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # nginx is still starting: nothing to wait on but time
    raise AssertionError("nginx did not start listening")


def gated_run(proxy: Proxy, client: httpx.Client, gates: Path, tokens: int) -> dict[str, Any]:
    gates.mkdir(exist_ok=True)
    body = {
        "input": {"messages": [{"role": "user", "content": "hi"}]},
        "config": {"gate": {"dir": str(gates), "tokens": tokens}},
    }
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def sse_items(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """``("comment", text)`` for each comment line and ``(event, data)`` for each event."""
    event, data = "message", ""
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif line == "" and data:
            yield event, data
            event, data = "message", ""


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_tokens_pass_through_nginx_one_by_one(
    proxied: Callable[..., Proxy], tmp_path: Path, http2: bool
) -> None:
    proxy = proxied("--agent", GATED)
    gates, tokens = tmp_path / "gates", 5
    arrivals: list[float] = []
    with proxy.client(http2=http2) as client:
        run = gated_run(proxy, client, gates, tokens)
        with client.stream("GET", f"/v1/runs/{run['run_id']}/stream") as response:
            assert response.status_code == 200
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert response.headers["content-type"].startswith("text/event-stream")
            received = []
            for event, data in sse_items(response):
                if event == "message_chunk":
                    arrivals.append(time.monotonic())
                    received.append(data)
                    k = len(received)
                    assert f'"token{k} "' in data
                    # The agent is held right after token k until this file exists: token k
                    # came through while nothing behind it had been produced.
                    (gates / str(k)).touch()
                elif event == "done":
                    assert '"status":"completed"' in data
                    break
    assert len(received) == tokens
    gaps = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(arrivals)]
    print(f"ms between tokens through nginx ({'h2' if http2 else 'h1'}): {gaps}")


def test_pings_keep_an_idle_run_open_through_nginx(
    proxied: Callable[..., Proxy], tmp_path: Path
) -> None:
    """Idle for longer than ``proxy_read_timeout``: pings keep the stream; without them, cut."""
    pinged = proxied("--agent", GATED, env={"STREAMCTL_PING_INTERVAL": "0.5"})
    gates = tmp_path / "gates"
    with pinged.client() as client:
        run = gated_run(pinged, client, gates, tokens=2)
        pings = 0
        events = []
        with client.stream("GET", f"/v1/runs/{run['run_id']}/stream") as response:
            for event, data in sse_items(response):
                if event == "comment" and data == "ping":
                    pings += 1
                    # 2 x proxy_read_timeout / ping_interval pings: the run has been idle for
                    # longer than nginx would wait without them. Then let the agent go on.
                    if pings == 2 * PROXY_READ_TIMEOUT / 0.5:
                        (gates / "1").touch()
                elif event != "comment":
                    events.append(event)
                    if event == "done":
                        assert '"status":"completed"' in data
                        break
    assert events == ["run", "message_chunk", "message_chunk", "done"]
    assert pings >= 2 * PROXY_READ_TIMEOUT / 0.5

    # The control: the same idle run without pings is cut by nginx at its read timeout.
    # Its own database: the first server still owns the fixture's (one process per database).
    silent = proxied(
        "--agent",
        GATED,
        "--db",
        str(tmp_path / "silent.db"),
        env={"STREAMCTL_PING_INTERVAL": "300"},
    )
    gates = tmp_path / "silent-gates"
    with silent.client() as client:
        run = gated_run(silent, client, gates, tokens=2)
        seen = []
        with pytest.raises(httpx.RemoteProtocolError):  # nginx closes mid-response
            with client.stream("GET", f"/v1/runs/{run['run_id']}/stream") as response:
                for event, _ in sse_items(response):
                    seen.append(event)
        assert seen == ["run", "message_chunk"]
        assert "upstream timed out" in silent.error_log.read_text()
        (gates / "1").touch()  # the run was never affected: it ends on its own
        with client.stream(
            "GET", f"/v1/runs/{run['run_id']}/stream", headers={"Last-Event-ID": "2"}
        ) as response:
            rest = [event for event, _ in sse_items(response) if event != "comment"]
        assert rest == ["message_chunk", "done"]


def test_stream_tokens_stay_out_of_the_access_log(
    proxied: Callable[..., Proxy], tmp_path: Path
) -> None:
    key = "k" * 24
    proxy = proxied(env={"STREAMCTL_AUTH": "api-key", "STREAMCTL_API_KEYS": f"alice:{key}"})
    with proxy.client(http2=True) as client:
        body = {
            "input": {"messages": [{"role": "user", "content": "hi"}]},
            "config": {"demo": {"tokens": 3, "delay_ms": 0, "tool_ms": 0}},
        }
        created = client.post("/v1/runs", json=body, headers={"Authorization": f"Bearer {key}"})
        assert created.status_code == 201, created.text
        run_id, token = created.json()["run_id"], created.json()["stream_token"]
        assert token
        path = f"/v1/runs/{run_id}/stream?after=0&token={token}"
        with client.stream("GET", path) as response:
            assert response.status_code == 200
            assert [e for e, _ in sse_items(response)][-1] == "done"
        refused = client.get(f"/v1/runs/{run_id}?token=not-{token}")
        assert refused.status_code == 401
    # nginx writes a request's line when the request ends: wait for both lines to be there.
    expected = [
        f"/v1/runs/{run_id}/stream?after=0&token=[redacted] HTTP/2.0",
        f"/v1/runs/{run_id}?token=[redacted] HTTP/2.0",
    ]
    end = time.monotonic() + 10
    while not all(e in _read(proxy.access_log) for e in expected) and time.monotonic() < end:
        time.sleep(0.05)  # nginx logs after the response: nothing to wait on but the file
    log = _read(proxy.access_log)
    assert all(e in log for e in expected), log
    assert token not in log
    assert token not in proxy.server.output()  # streamctl's own access log redacts it too


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
