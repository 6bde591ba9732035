"""Where a streamctl server's time goes under one size of a growth sweep: py-spy, sampled.

    python -m benchmarks.spy runs 1000            # 1,000 runs x 20 tokens/s
    python -m benchmarks.spy fanout 1000 --seconds 10 --out fanout.txt
    python -m benchmarks.spy idle 10000

Starts a streamctl server (the paced agent, as ``growth.py``), puts the sweep's load on it from
this process, and while the load is steady records the server with ``py-spy record --format raw
--nonblocking`` (every thread, no pause of the server; the bench extra installs py-spy). Prints
the functions with the most samples on top of the stack (own time) and anywhere in it
(inclusive), as a share of the samples; the collapsed stacks stay in ``--out`` (flame graphs:
``inferno-flamegraph`` or speedscope read them).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks import growth
from benchmarks.servers import ROOT, raise_nofile, run_async, running


def summarize(raw: str, top: int = 20) -> str:
    """Own and inclusive shares of the frames of collapsed stacks (``a;b;c count`` lines)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    for title, counts in (("own time", own), ("inclusive", inclusive)):
        out.append(f"\n{title}:")
        for frame, n in counts.most_common(top):
            out.append(f"  {100 * n / total:5.1f} %  {frame}")
    return "\n".join(out)


async def record(scenario: str, n: int, seconds: float, out: Path, src: Path) -> dict[str, object]:
    """Run the load, sample the server; the load's figures."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    env = growth.PACED
    if scenario == "idle":
        env = {**env, "STREAMCTL_PING_INTERVAL": "5"}
    async with running("streamctl", src, env=env) as server:
        if scenario == "runs":
            load = growth._runs(server, n, seconds + 4)
            settle = max(2.0, n / 250) + 2
        elif scenario == "fanout":
            load = growth._fanout(server, n, seconds + 4, 1 if n <= 1000 else 2)
            settle = max(2.0, n / 300) + 2
        else:
            load = growth._idle(server, n, seconds + 4, 5.0)
            settle = n / 500 + 2
        task = asyncio.get_running_loop().create_task(load)
        await asyncio.sleep(settle)
        proc = await asyncio.create_subprocess_exec(
            spy,
            *("record", "--pid", str(server.pid), "--duration", str(int(seconds))),
            *("--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        result = await task
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    return {k: v for k, v in result.items() if k in ("lag_ms", "rate_pct_of_nominal")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spy", description=__doc__)
    parser.add_argument("scenario", choices=("runs", "fanout", "idle"))
    parser.add_argument("size", type=int)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long py-spy samples")
    parser.add_argument("--out", type=Path, default=Path("spy.txt"), help="collapsed stacks")
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose streamctl to run")
    args = parser.parse_args(argv)
    raise_nofile(2 * args.size + 1000)
    figures = run_async(
        record(args.scenario, args.size, args.seconds, args.out, args.src.resolve())
    )
    print(f"{args.scenario} {args.size}: {figures}")
    print(summarize(args.out.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
