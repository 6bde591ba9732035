"""The cyclic collector's tuning (``streamctl.http.embedding.tuned_gc``) applies wherever the
lifespan runs, embedded in a host's application too, and is undone when it ends; a host that
tunes its own opts out with ``sc.tune_gc = False``."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from streamctl import ScriptedAgent, Settings, Streamctl
from streamctl.http.embedding import GC_THRESHOLDS, tuned_gc

from .support import chunks

pytestmark = pytest.mark.anyio


async def test_the_lifespan_tunes_the_collector_and_restores_it(db_path: Path) -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=Settings.from_env({}, db=db_path))
    async with sc.lifespan():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
        with tuned_gc():  # nested (a second instance in the same process): tuned once
            assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def test_a_host_may_keep_its_own_collector_settings(db_path: Path) -> None:
    before = gc.get_threshold()
    sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=Settings.from_env({}, db=db_path))
    sc.tune_gc = False
    async with sc.lifespan():
        assert gc.get_threshold() == before
