"""The runs alive in this process: by id, by thread (the active run, then the queued ones; a
thread is ``(owner, thread_id)``) and per principal. Pure bookkeeping, no awaits: adding a run
is one synchronous step after the caps are checked, so concurrent starts cannot slip between a
check and its claim."""

from __future__ import annotations

from collections.abc import Iterator

from .runs import Run


class LiveRuns:
    """Every run from its start until its task has exited."""

    def __init__(self) -> None:
        self._by_id: dict[str, Run] = {}
        self._threads: dict[tuple[str, str], list[Run]] = {}
        """Each busy thread's live runs: the active one first, then the queued ones."""
        self._per_owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Run]:
        """The live runs (a copy: the registry may change while the caller awaits)."""
        return iter(list(self._by_id.values()))

    def get(self, run_id: str, owner: str | None = None) -> Run | None:
        """The live run, if ``owner`` may see it (``None``: an admin sees every run)."""
        run = self._by_id.get(run_id)
        return run if run is not None and owner in (None, run.owner) else None

    def on_thread(self, owner: str, thread_id: str) -> list[Run]:
        """The thread's live runs, oldest first (a copy)."""
        return list(self._threads.get((owner, thread_id), ()))

    def active(self, owner: str, thread_id: str) -> Run | None:
        """The thread's running run (or the first queued one)."""
        queue = self._threads.get((owner, thread_id))
        return queue[0] if queue else None

    def count(self, owner: str) -> int:
        """How many live runs ``owner`` has."""
        return self._per_owner.get(owner, 0)

    def add(self, run: Run) -> None:
        self._by_id[run.run_id] = run
        self._threads.setdefault((run.owner, run.thread_id), []).append(run)
        self._per_owner[run.owner] = self._per_owner.get(run.owner, 0) + 1

    def remove(self, run: Run) -> None:
        """Forget the run (idempotent)."""
        if self._by_id.pop(run.run_id, None) is None:
            return
        key = (run.owner, run.thread_id)
        queue = self._threads.get(key, [])
        if run in queue:
            queue.remove(run)
        if not queue:
            self._threads.pop(key, None)
        left = self._per_owner.get(run.owner, 1) - 1
        if left:
            self._per_owner[run.owner] = left
        else:
            self._per_owner.pop(run.owner, None)

    async def until_empty(self) -> None:
        """Return once no run is alive."""
        while self._by_id:
            await next(iter(self._by_id.values())).finished.wait()
