"""One owner per database (store/lock.py): a second ``streamctl serve`` or ``streamctl migrate``
on a database a live server holds refuses, naming the holder, and touches nothing; the live
server's runs go on. Real processes; in-process, the lock is shared and released on close."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from streamctl.errors import DatabaseInUse
from streamctl.store import Store
from streamctl.store.lock import DatabaseLock, lock_path

from .conftest import ServerProcess, free_port, run_body

Spawn = Callable[..., ServerProcess]
# Long enough to be running while the second process tries, short enough to finish after.
HELD: dict[str, Any] = {"tokens": 40, "delay_ms": 50, "tool": False}


def streamctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREAMCTL_LOG_LEVEL": "warning"},
    )


def test_a_second_server_and_migrate_refuse_a_database_in_use(
    spawn_server: Spawn, db_path: Path
) -> None:
    first = spawn_server("--db", str(db_path))
    with httpx.Client(base_url=first.url, timeout=10.0) as client:
        run = client.post("/v1/runs", json=run_body(config={"demo": HELD})).json()
        events: list[tuple[int, str, dict[str, Any]]] = []
        first_event = threading.Event()

        def read() -> None:
            with (
                httpx.Client(base_url=first.url, timeout=30.0) as reader,
                connect_sse(reader, "GET", f"/v1/runs/{run['run_id']}/stream") as source,
            ):
                for event in source.iter_sse():
                    if event.data:
                        events.append((int(event.id), event.event, orjson.loads(event.data)))
                        first_event.set()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        assert first_event.wait(10)
        assert client.get(f"/v1/runs/{run['run_id']}").json()["status"] == "running"

        second = streamctl("serve", "--db", str(db_path), "--port", str(free_port()))
        assert second.returncode != 0
        message = second.stderr.strip().splitlines()[-1]
        assert f"the database {str(db_path)!r} is in use by another process" in message
        assert f"pid {first.process.pid} on {socket.gethostname()} since 20" in message
        migrate = streamctl("migrate", "--db", str(db_path))
        assert migrate.returncode != 0
        assert f"pid {first.process.pid}" in migrate.stderr

        # The live server's run was not touched: it streams on and completes.
        thread.join(30)
        assert not thread.is_alive()
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        assert events[-1][1] == "done" and events[-1][2]["status"] == "completed"
    first.stop()
    assert "UNIQUE" not in first.output() and "interrupted" not in first.output()
    # Once the owner is gone, the database is free again.
    assert streamctl("migrate", "--db", str(db_path)).returncode == 0


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from streamctl.store.lock import DatabaseLock;"
            f" DatabaseLock({str(db)!r}).acquire(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            with pytest.raises(DatabaseInUse, match=f"pid {holder.pid} on "), DatabaseLock(db):
                pass
            assert not db.exists()  # refused before anything touched the database
        finally:
            holder.kill()  # no release: the kernel drops the lock with the process
            holder.wait()
    with DatabaseLock(db):
        assert orjson.loads(lock_path(db).read_bytes())["pid"] == os.getpid()


@pytest.mark.anyio
async def test_in_one_process_the_lock_is_shared_and_released_on_close(db_path: Path) -> None:
    with DatabaseLock(db_path):  # as `streamctl serve` takes it before its store does
        async with Store(db_path):
            pass
    async with Store(db_path):
        pass
    assert lock_path(db_path).read_bytes() == b""  # released: no holder named
