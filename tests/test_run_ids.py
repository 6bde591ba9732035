"""A run id the client chose (AG-UI's ``runId``): ``RunControl.start(..., run_id=...)`` refuses
an id that a live or stored run has, whoever's it is (the protocol router decides whether to join
that run), checks it before it could interrupt anything, and lets only one of two concurrent
starts of one id through."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from streamctl.agents import ScriptedAgent, Wait
from streamctl.errors import RunIdTaken
from streamctl.runs import Run

from .conftest import chunks
from .test_supervisor import USER, finish, request, supervisor

pytestmark = pytest.mark.anyio


async def test_a_chosen_id_is_taken_while_live_and_once_stored(db_path: Path) -> None:
    gate = anyio.Event()
    async with supervisor(db_path, ScriptedAgent([Wait(gate), *chunks(1)])) as sup:
        run = await sup.control.start(request(thread_id="t1"), USER, run_id="chosen")
        assert run.run_id == "chosen" and run.thread_id == "t1"
        with pytest.raises(RunIdTaken):  # live: another thread
            await sup.control.start(request(thread_id="t2"), USER, run_id="chosen")
        with pytest.raises(RunIdTaken):  # live: the same thread, told to interrupt its run
            await sup.control.start(
                request(thread_id="t1", multitask="interrupt"), USER, run_id="chosen"
            )
        assert sup.live.get("chosen") is run and run.stop_status is None
        gate.set()
        await finish(run)
        assert (await sup.reads.get_run("chosen", USER))["status"] == "completed"
        with pytest.raises(RunIdTaken):  # stored: the owner's, on its own thread
            await sup.control.start(request(thread_id="t1"), USER, run_id="chosen")
        with pytest.raises(RunIdTaken):  # stored: another principal's, on a new thread
            await sup.control.start(request(), "user-2", run_id="chosen")
        other = await sup.control.start(request(thread_id="t1"), USER, run_id="another")
        await finish(other)
        assert other.run_id == "another"


async def test_two_starts_of_one_id_at_once_start_one_run(db_path: Path) -> None:
    gate = anyio.Event()
    async with supervisor(db_path, ScriptedAgent([Wait(gate), *chunks(1)])) as sup:
        started: list[Run] = []
        taken: list[RunIdTaken] = []

        async def start(thread_id: str) -> None:
            try:
                started.append(
                    await sup.control.start(request(thread_id=thread_id), USER, run_id="same")
                )
            except RunIdTaken as exc:
                taken.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start, "t1")
            tg.start_soon(start, "t2")
        assert len(started) == 1 and len(taken) == 1
        gate.set()
        await finish(started[0])
