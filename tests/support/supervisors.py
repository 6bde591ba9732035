"""A supervisor below HTTP, in the test's own loop, and what its tests start runs with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from streamctl.agents import Agent
from streamctl.inputs import RunCreate
from streamctl.runs import Run
from streamctl.settings import Settings
from streamctl.store import Store
from streamctl.supervisor import Supervisor

USER = "user-1"


def request(content: str = "hi", **fields: Any) -> RunCreate:
    body = {"input": {"messages": [{"role": "user", "content": content}]}, **fields}
    return RunCreate.model_validate(body)


@asynccontextmanager
async def supervisor(db_path: Path, agent: Agent, **settings: Any) -> AsyncIterator[Supervisor]:
    async with (
        Store(db_path) as store,
        Supervisor(store, agent, Settings.from_env({}, db=db_path, **settings)) as sup,
    ):
        yield sup


async def finish(run: Run) -> None:
    with anyio.fail_after(5):
        await run.finished.wait()
