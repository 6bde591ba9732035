"""Running the frontends' real client packages under Node (``tests/node``) from tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest
from fastapi import FastAPI

from .servers import Server

NODE_DIR = Path(__file__).parent.parent / "node"


def require_node(*packages: str) -> None:
    """Skip (fail under CI=true) unless Node and these packages of ``tests/node`` are installed."""
    missing = [p for p in packages if not (NODE_DIR / "node_modules" / p).is_dir()]
    if shutil.which("node") is None or missing:
        why = f"node or tests/node packages {missing} missing (npm ci --prefix tests/node)"
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but " + why)
        pytest.skip(why)


async def node_json(script: str, *args: str) -> dict[str, Any]:
    """Run ``tests/node/<script>``; the JSON object it prints last."""
    result = await anyio.run_process(["node", str(NODE_DIR / script), *args], check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines, (result.returncode, result.stderr[-3000:])
    return cast(dict[str, Any], orjson.loads(lines[-1]))


def live_runs(server: Server) -> dict[str, Any]:
    """The supervisor's live runs by id (to hold a test until a client has reconnected)."""
    sup = cast(FastAPI, server.uvicorn.config.app).state.supervisor
    return {run.run_id: run for run in sup.live}


async def until_resumed(server: Server, run_id: str) -> None:
    """Until a client of the live run ``run_id`` has read it, dropped, and resumed: a second
    subscription is open. (Waiting for the reader count to go 1, 0, 1 can miss the 0: a fast
    resume reconnects between two looks.)"""
    while True:
        run = live_runs(server).get(run_id)
        if run is not None and run.log.follows >= 2 and run.log.subscribers >= 1:
            return
        await anyio.sleep(0.01)  # another process reads it: nothing here can tell us, so poll
