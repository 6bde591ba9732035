"""Runs whose owner is gone: the store hands them over, and they end ``interrupted``.

A run's own task writes its end (``run_task.py``). When the process that owned a run died under
it (kill -9, a crash, a lost lease on Redis), nobody will: ``finalise_orphans`` gives each such
run a ``done`` at its next seq and its final row, with the output folded from its stored events.
The supervisor calls it at start and from its sweeper.
"""

from __future__ import annotations

import logging
import time

from .errors import StreamctlError
from .events import Done, Frame
from .runs import RunOutput
from .store.base import FinalState, RunStore

logger = logging.getLogger("streamctl.run_task")


class _Discard:
    """The sink of an orphan's `done`: no log in memory follows an orphan."""

    def committed(self, frame: Frame, event: object) -> None:
        pass

    def publish(self) -> None:
        pass


async def finalise_orphans(store: RunStore) -> int:
    """Finalise the runs the store hands over because their owner is gone (the process died
    under them): each gets a ``done`` with status ``interrupted`` at its next seq, and its final
    row, with the output folded from its stored events."""
    orphans = await store.claim_orphans()
    now = time.time()
    for orphan in orphans:
        output = RunOutput.fold(await store.read_frames(orphan.run_id, 0))
        seq = output.last_seq + 1
        done = Done(
            run_id=orphan.run_id,
            thread_id=orphan.thread_id,
            status="interrupted",
            reason="the server stopped while the run was active",
            tokens=output.tokens,
        )
        store.append(orphan.run_id, Frame.encode(seq, done, now), done, _Discard())
        store.finish_run(
            orphan.run_id,
            FinalState(
                status=done.status,
                reason=done.reason,
                error=output.error,
                tokens=output.tokens,
                last_seq=seq,
                output=output.as_json(),
                ended_at=now,
            ),
        )
        logger.warning("run %s was active when its owner stopped: interrupted", orphan.run_id)
    try:
        await store.flush()
    except StreamctlError:
        for orphan in orphans:  # not ended after all: let the next sweep claim them again
            store.abandon(orphan.run_id)
        raise
    return len(orphans)
