"""What the protocol routers need from the supervisor, by name, and a temporary adapter.

The routers call the supervisor only through ``control``, ``reads`` and ``streams`` (the names of
the supervisor in parts, issue 10), plus ``frames``: a frame-level follow of a run's committed log,
which the translators need (they cannot work on our SSE bytes). ``adapt`` gives today's monolithic
``Supervisor`` those names. TEMP(merge): once the supervisor is composed of those parts, ``adapt``
returns it as it is and ``_Facade`` goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request

from ..broadcast import RunLog
from ..events import Frame
from ..inputs import RunCreate
from ..runs import Run
from ..shaping import Granularity


class Control(Protocol):
    async def start(self, request: RunCreate, owner: str) -> Run: ...

    async def stop(
        self, run_id: str, owner: str | None, *, wait: bool = True
    ) -> tuple[dict[str, Any], bool]: ...

    async def stop_thread(
        self, thread_id: str, owner: str | None
    ) -> tuple[dict[str, Any], bool]: ...


class Reads(Protocol):
    async def get_run(self, run_id: str, owner: str | None) -> dict[str, Any]: ...

    async def get_thread(self, thread_id: str, owner: str | None) -> dict[str, Any]: ...

    async def subscribe(
        self,
        run_id: str,
        owner: str | None,
        cursor: int,
        *,
        id_prefix: bytes = b"",
        granularity: Granularity = "low",
    ) -> AsyncIterator[bytes] | None: ...


class Streams(Protocol):
    def open(self, owner: str) -> None: ...

    def close(self, owner: str) -> None: ...


class FrameSource(Protocol):
    """The committed log of a run, frame by frame (see ``frames.py``)."""

    ping_interval: float

    def live_log(self, run_id: str, owner: str | None) -> RunLog | None:
        """The in-memory log of a live run of ``owner`` (any owner for None), else None."""
        ...

    async def read_frames(self, run_id: str, after: int, upto: int) -> list[Frame]: ...

    def count_subscriber(self, delta: int) -> None: ...


class Supervisor(Protocol):
    @property
    def control(self) -> Control: ...

    @property
    def reads(self) -> Reads: ...

    @property
    def streams(self) -> Streams: ...

    @property
    def frames(self) -> FrameSource: ...


def supervisor(request: Request) -> Supervisor:
    """FastAPI dependency: the application's supervisor, under the names above."""
    return adapt(request.app.state.supervisor)


def adapt(sup: Any) -> Supervisor:
    if hasattr(sup, "control"):
        return sup  # type: ignore[no-any-return]
    return _Facade(sup)  # TEMP(merge)


class _Facade:  # TEMP(merge): today's Supervisor under the names of the supervisor in parts
    def __init__(self, sup: Any) -> None:
        self.control: Control = sup
        self.reads: Reads = sup
        self.streams: Streams = _Streams(sup)
        self.frames: FrameSource = _Frames(sup)


class _Streams:  # TEMP(merge)
    def __init__(self, sup: Any) -> None:
        self._sup = sup

    def open(self, owner: str) -> None:
        self._sup.open_stream(owner)

    def close(self, owner: str) -> None:
        self._sup.close_stream(owner)


class _Frames:  # TEMP(merge): reaches into the supervisor's registry, store and counters
    def __init__(self, sup: Any) -> None:
        self._sup = sup
        self.ping_interval: float = sup.settings.ping_interval

    def live_log(self, run_id: str, owner: str | None) -> RunLog | None:
        run: Run | None = self._sup._live(run_id, owner)
        return None if run is None else run.log

    async def read_frames(self, run_id: str, after: int, upto: int) -> list[Frame]:
        frames: list[Frame] = await self._sup.store.read_frames(run_id, after, upto)
        return frames

    def count_subscriber(self, delta: int) -> None:
        self._sup.counters.subscribers += delta
