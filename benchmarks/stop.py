"""Stop, in the suite: a run streaming at ``delay_ms=5``; once 5 events have arrived,
``POST .../stop`` on a second keep-alive connection; the time until the ``done`` event is read on
the stream (and until the stop's answer). Sequential. (``benchmarks.stop_latency`` is the longer
program: mid-token and mid-tool, with other runs streaming meanwhile.)
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.client import Conn
from benchmarks.options import Options
from benchmarks.report import Row
from benchmarks.servers import demo_body, running
from benchmarks.stats import dist_ms
from benchmarks.ttfe import ttfe_pass


async def measure(opts: Options) -> dict[str, Any]:
    src, sizes = opts.src, opts.sizes
    to_done: list[float] = []
    to_answer: list[float] = []
    statuses: dict[str, int] = {}
    async with running("streamctl", src) as sc:
        await ttfe_pass(sc.port, 0, 3)
        sub = await Conn.open(sc.port)
        ctl = await Conn.open(sc.port)
        # Not more tokens than needed: the demo agent builds its whole plan before the first one.
        body = demo_body(2_000, delay_ms=5)
        for _ in range(sizes.stops):
            stream = sub.send("POST", "/v1/runs/stream", body)
            await stream.wait_count(5)
            run_id = stream.headers["x-run-id"]
            answer = ctl.send("POST", f"/v1/runs/{run_id}/stop")
            await stream.done
            await answer.done
            if answer.status != 200 or stream.types[-1] != b"done":
                raise RuntimeError(f"stop: answered {answer.status}, last {stream.types[-1]!r}")
            status = json.loads(stream.done_data or b"{}").get("status", "?")
            statuses[status] = statuses.get(status, 0) + 1
            to_done.append(stream.first(b"done") - answer.sent_at)
            to_answer.append(answer.end_at - answer.sent_at)
        sub.close()
        ctl.close()
    return {
        "stop_to_done_ms": dist_ms(to_done),
        "stop_answer_ms": dist_ms(to_answer),
        "done_statuses": statuses,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    done, answer = result["stop_to_done_ms"], result["stop_answer_ms"]
    return [
        Row("stop → done at subscriber p50 (ms)", done["p50"]),
        Row("stop → done at subscriber p99 (ms)", done["p99"], None, "≤ 20", done["p99"] <= 20),
        Row("stop → stop answer p50 / p99 (ms)", (answer["p50"], answer["p99"])),
    ]
