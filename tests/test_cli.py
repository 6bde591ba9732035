"""The command line and the README's promises, against real processes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from .support import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def streamctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_migrate_applies_once(db_path: Path) -> None:
    first = streamctl("migrate", "--db", str(db_path))
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial.sql, 0002_retention.sql" in first.stdout
    second = streamctl("migrate", "--db", str(db_path))
    assert second.returncode == 0, second.stderr
    assert "nothing (up to date)" in second.stdout
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [
            (1,),
            (2,),
            (3,),
            (4,),
            (5,),
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_settings_come_from_environment_and_flags_win(db_path: Path, tmp_path: Path) -> None:
    env_db = tmp_path / "from-env.db"
    result = streamctl("migrate", env={**os.environ, "STREAMCTL_DB": str(env_db)})
    assert result.returncode == 0, result.stderr
    assert env_db.exists()
    env_db.unlink()
    result = streamctl(
        "migrate", "--db", str(db_path), env={**os.environ, "STREAMCTL_DB": str(env_db)}
    )
    assert result.returncode == 0 and db_path.exists() and not env_db.exists()
    assert str(db_path) in result.stdout


def test_bad_setting_is_a_clear_error() -> None:
    result = streamctl("serve", env={**os.environ, "STREAMCTL_PORT": "eighty"})
    assert result.returncode == 2
    assert "STREAMCTL_PORT" in result.stderr and "integer" in result.stderr
    result = streamctl("serve", "--agent", "no_such_module:agent")
    assert result.returncode == 2
    assert "cannot import agent module 'no_such_module'" in result.stderr


def test_readme_curl_session_works_as_written(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- curl-session -->\n```sh\n(.*?)```\n<!-- /curl-session -->", readme, re.S
    )
    assert block is not None, "README lost its curl session block"
    server = spawn_server()
    result = subprocess.run(
        ["bash", "-c", block.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BASE": server.url},
    )
    out = result.stdout
    assert "event: run" in out and "event: message_chunk" in out
    assert '"status":"cancelled"' in out
    assert out.rstrip().endswith("resume at the end: HTTP 204")
    run_id = re.search(r'"run_id":"([0-9a-f]+)"', out)
    assert run_id is not None
    snapshot = httpx.get(f"{server.url}/v1/runs/{run_id.group(1)}").json()
    assert snapshot["status"] == "cancelled" and snapshot["output"]["text"]
    # A clean drain on SIGTERM exits 0 (uvicorn would re-raise the signal: 143).
    assert server.stop() == 0


MY_AGENTS = """
from streamctl.events import MessageChunk

async def agent(ctx):
    yield MessageChunk(content="hello from my_agents", message_id="m1")
"""


def test_serve_finds_an_agent_module_in_the_current_directory(tmp_path: Path) -> None:
    """`streamctl serve --agent my_agents:agent` from the module's directory, as `uvicorn
    main:app` would: through the installed `streamctl` script, whose sys.path has no cwd."""
    (tmp_path / "my_agents.py").write_text(MY_AGENTS)
    script = Path(sys.executable).parent / "streamctl"
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(script), "serve", "--agent", "my_agents:agent", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready()
        body = {"input": {"messages": [{"role": "user", "content": "hi"}]}}
        run = httpx.post(f"{server.url}/v1/runs/stream", json=body, timeout=10)
        assert run.status_code == 200, run.text
        assert "hello from my_agents" in run.text and '"status":"completed"' in run.text
    finally:
        server.stop()
    assert (tmp_path / "streamctl.db").exists()  # the default database, in the same directory
