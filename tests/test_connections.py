"""Slow and idle connections (docs/security.md, docs/deployment.md): a half-sent body is answered
``408`` after ``body_timeout``; ``streamctl serve`` caps connections (``max_connections``) and
raises its open files limit. Raw sockets against real servers.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from .conftest import ServerProcess, StartServer, free_port

pytestmark = pytest.mark.anyio


async def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def read_all(sock: socket.socket) -> bytes:
    loop, data = asyncio.get_running_loop(), bytearray()
    while chunk := await loop.sock_recv(sock, 65536):
        data += chunk
    return bytes(data)


async def test_a_half_sent_body_is_answered_408_and_closed(serve: StartServer) -> None:
    server = await serve(body_timeout=0.5)
    sock = await raw_connection(server.url)
    try:
        head = (
            "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        await asyncio.get_running_loop().sock_sendall(sock, head.encode() + b'{"input": ')
        with anyio.fail_after(20):
            answer = await read_all(sock)  # ends: the server closed the connection
    finally:
        sock.close()
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    assert b'"code":"body_timeout"' in rest and b"connection: close" in rest.lower()
    async with server.client() as client:  # the server is fine, and a whole body still works
        body = {"input": {"messages": [{"role": "user", "content": "hi"}]}}
        assert (await client.post("/v1/runs", json=body)).status_code == 201


async def test_a_slow_but_steady_body_is_not_cut(serve: StartServer) -> None:
    server = await serve(body_timeout=5)
    body = b'{"input": {"messages": [{"role": "user", "content": "hi"}]}}'
    sock = await raw_connection(server.url)
    loop = asyncio.get_running_loop()
    try:
        head = "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        await loop.sock_sendall(sock, head.encode())
        for i in range(0, len(body), 8):  # in parts, each well within the timeout
            await loop.sock_sendall(sock, body[i : i + 8])
            await anyio.sleep(0.01)
        with anyio.fail_after(20):
            answer = await read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer


# -- streamctl serve ---------------------------------------------------------------------------


@pytest.fixture
def low_limit_server(db_path: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``streamctl serve`` started with a soft open files limit of 256 (the hard one unchanged)."""
    started: list[ServerProcess] = []
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    def spawn(env: dict[str, str]) -> ServerProcess:
        port = free_port()
        cmd = [sys.executable, "-m", "streamctl", "serve", "--port", str(port)]
        log = tmp_path / f"server-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*cmd, "--db", str(db_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                preexec_fn=lower,
            )
        server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
        started.append(server)
        server.wait_ready()
        return server

    yield spawn
    for server in started:
        server.stop()


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_serve_raises_its_open_files_limit(
    low_limit_server: Callable[..., ServerProcess],
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip("the hard open files limit is too low to raise anything")
    server = low_limit_server({})
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft = row.split()[3]
    assert soft == str(hard), row


async def test_serve_caps_connections_and_answers_503_past_the_cap(
    low_limit_server: Callable[..., ServerProcess],
) -> None:
    server = low_limit_server({"STREAMCTL_MAX_CONNECTIONS": "20"})
    idle = [await raw_connection(server.url) for _ in range(20)]
    loop = asyncio.get_running_loop()
    try:
        for sock in idle:  # half-sent heads: only a proxy's header timeout would close them
            await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            refused = await client.get("/healthz")
            assert refused.status_code == 503  # answered, not left hanging
            for sock in idle:
                sock.close()
            for _ in range(200):  # another process noticing closed sockets: poll, bounded
                if (await client.get("/healthz")).status_code == 200:
                    break
                await anyio.sleep(0.05)
            else:
                raise AssertionError("the server never served again below the cap")
    finally:
        for sock in idle:
            sock.close()
