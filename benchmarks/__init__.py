"""Benchmarks of streamctl: each against a baseline measured in the same run, side by side.

Run them with ``scripts/bench`` (``python -m benchmarks``; options: ``benchmarks/cli.py``), the
stop-latency program with ``scripts/bench-stop`` (``python -m benchmarks.stop_latency``).

What runs where. Every server is a subprocess on a free port with its own temporary SQLite file
(``servers.py``): streamctl as ``python -m streamctl serve`` with its limits raised so that the
benchmark, not a cap, is what is measured, and the baseline (``baseline.py``): a bare Starlette
``StreamingResponse`` yielding the same SSE frames with no persistence, the ceiling of the stack.
The client is this process (``client.py``, ``response.py``): a small raw HTTP/1.1 client on
asyncio streams (uvloop), keep-alive, chunked decoding and SSE parsing done by hand so that it
costs as little CPU as possible. Times are ``time.perf_counter`` (CLOCK_MONOTONIC, the same clock
in every process) taken when the bytes are read from the socket. Server CPU and memory come from
/proc (``procfs.py``).

One module per measurement, its method in its docstring: ``ttfe``, ``throughput``, ``fanout``,
``many``, ``idle``, ``stop``, ``resume``, ``firehose``; ``stop_latency`` is its own program.
Every measurement can run N times (``--repeat N``): the table then shows the median of each
figure with its min..max (``stats.py``, ``report.py``), and ``--json PATH`` keeps everything.

The noise note gives the load average at start and end and how much CPU other processes used
during the run (machine busy time from /proc/stat minus this process and its children): this
machine has 2 cores, and other processes may be using them.
"""
