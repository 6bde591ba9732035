"""Hear the server's SIGTERM from inside the application, without taking it from the server.

Plain ``uvicorn host:app``, on SIGTERM, stops listening and then waits for open connections to
close before it runs the application's lifespan shutdown. An SSE stream of an active run does not
close by itself, so the lifespan never hears of the shutdown in time: uvicorn waits out its
graceful timeout (by default for ever) and then cuts the streams without their ``done``.

So, while the lifespan runs, ``chained`` puts a handler in front of the one the server installed
(uvicorn installs its own with ``signal.signal`` before the lifespan starts): ours only schedules
the drain on the event loop, then calls the server's, which shuts down as it always does. The
drain ends every run, every stream receives its ``done`` and closes, and the server finds no
connection left to wait for. Nothing is installed where the handler is not a Python callable (the
default action, or a server that listens in another way): there the host keeps its own behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger("streamctl.server")

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def chained(on_exit: Callable[[], None]) -> Iterator[bool]:
    """While in the block, ``on_exit`` is called on the event loop when SIGINT or SIGTERM arrives,
    before the server's own handler runs. Yields whether anything was installed."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): the host drains in its own way
        yield False
        return
    active = True
    installed: dict[signal.Signals, tuple[Callable[..., Any], Any]] = {}
    """signal -> (our handler, the handler it passes the signal on to)"""

    def make(previous: Callable[[int, FrameType | None], Any]) -> Callable[..., Any]:
        def handler(sig: int, frame: FrameType | None) -> Any:
            if active:
                # A signal handler runs between two bytecodes of whatever the loop was doing:
                # schedule, never act here.
                loop.call_soon_threadsafe(on_exit)
            return previous(sig, frame)

        return handler

    for sig in EXIT_SIGNALS:
        previous = signal.getsignal(sig)
        if callable(previous):
            handler = make(previous)
            signal.signal(sig, handler)
            installed[sig] = (handler, previous)
    try:
        yield bool(installed)
    finally:
        active = False  # a handler restored later by someone else just passes the signal on
        for sig, (handler, previous) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)
