"""The cyclic collector's tuning (``streamctl.http.embedding.tuned_gc``) applies wherever the
lifespan runs, embedded in a host's application too, and is undone when it ends; a host that
tunes its own opts out with ``sc.tune_gc = False``."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from streamctl import ScriptedAgent, Settings, Streamctl
from streamctl.http import embedding
from streamctl.http.embedding import GC_THRESHOLDS, tuned_gc

from .support import chunks

pytestmark = pytest.mark.anyio


async def test_the_lifespan_tunes_the_collector_and_restores_it(db_path: Path) -> None:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    outermost = embedding._gc_tuned == 0  # no lifespan of this process is running already
    try:
        sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=Settings.from_env({}, db=db_path))
        async with sc.lifespan():
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
            with tuned_gc():  # nested (a second instance in the same process): still tuned
                assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_threshold() == GC_THRESHOLDS
        if outermost:
            assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*saved)


async def test_a_host_may_keep_its_own_collector_settings(db_path: Path) -> None:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        sc = Streamctl(agent=ScriptedAgent(chunks(1)), settings=Settings.from_env({}, db=db_path))
        sc.tune_gc = False
        async with sc.lifespan():
            assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)
