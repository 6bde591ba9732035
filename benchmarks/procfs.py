"""What a process costs, read from /proc: CPU seconds (all threads) and resident memory.

Server CPU is utime + stime from /proc/<pid>/stat (all threads, so SQLite's writer thread counts);
server memory is VmRSS from /proc/<pid>/status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed ``name/tid``."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tree(pid: int) -> list[int]:
    """A process and its children (``serve --workers N``: the parent and its N workers)."""
    pids = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [int(child) for child in children.read_text().split()]
        except OSError:
            continue
    return pids


def connections(pid: int, port: int) -> list[int]:
    """The established connections to ``port`` that each child of ``pid`` holds (``serve
    --workers N``: how the workers split the streams), from /proc/net/tcp and their fds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(f"socket:[{fields[9]}]")
    held = []
    for child in tree(pid)[1:]:
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{child}/fd").iterdir():
                with contextlib.suppress(OSError):
                    count += os.readlink(fd) in inodes
        held.append(count)
    return held


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children."""
    return sum(proc_cpu(p) for p in tree(pid) if _alive(p))


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and its children (a child that has exited counts nothing)."""
    return sum(proc_rss_kib(p) for p in tree(pid) if _alive(p))


def _alive(pid: int) -> bool:
    """Not exited: a zombie has no VmRSS."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the servers, the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class CpuSampler:
    """Samples (time, server CPU, client CPU) in the background, to read a window afterwards."""

    pid: int
    every: float = 0.2
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    read: Callable[[], float] | None = None
    """The server's CPU seconds (default: ``proc_cpu(pid)``; ``Server.cpu`` counts its workers
    and its Redis too)."""

    def sample(self) -> None:
        cpu = self.read() if self.read is not None else proc_cpu(self.pid)
        self.samples.append((time.perf_counter(), cpu, time.process_time()))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()

    def server_at(self, t: float) -> float:
        """Server CPU seconds at ``t``, interpolated between samples."""
        for a, b in pairwise(self.samples):
            if a[0] <= t <= b[0]:
                return a[1] + (b[1] - a[1]) * (t - a[0]) / max(b[0] - a[0], 1e-9)
        return self.samples[0][1] if t < self.samples[0][0] else self.samples[-1][1]

    def window(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(seconds, server CPU %, client CPU %) over the samples inside [t0, t1]."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, float("nan"), float("nan")
        a, b = inside[0], inside[-1]
        wall = b[0] - a[0]
        return wall, 100 * (b[1] - a[1]) / wall, 100 * (b[2] - a[2]) / wall


class RssSampler:
    """A process's VmRSS every ``every`` seconds in the background; its peak in a window."""

    def __init__(
        self, pid: int, every: float = 0.25, read: Callable[[], int] | None = None
    ) -> None:
        self.pid = pid
        self.every = every
        self.read = read or (lambda: proc_rss_kib(pid))
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), self.read()))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def peak(self, t0: float, t1: float) -> int:
        inside = [rss for t, rss in self.samples if t0 <= t <= t1]
        return max(inside) if inside else self.read()
