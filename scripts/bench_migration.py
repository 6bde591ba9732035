"""The first start after migration 0005 (a benchmark, not a test): run with
``.venv/bin/python scripts/bench_migration.py [--runs N] [--events N] [--repeat N]``.

Builds a database at schema 4 (one ``events`` row per event) holding ``--runs`` runs of
``--events`` events each, then times opening it with the current store: the migration moves the
rows into the journal and the store chunks them, before it serves anything. Prints each try's
seconds and peak RSS, then the median and spread.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamctl.store.migrate as migrate
from streamctl.events import Frame, MessageChunk
from streamctl.store import Store, migrate_file, migrations_dir


def old_database(path: Path, runs: int, events: int) -> None:
    """A database at schema 4, with ``runs`` x ``events`` stored events."""
    old = path.parent / "migrations-before-5"
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for sql in migrations_dir().glob("*.sql"):
        if int(sql.name[:4]) < 5:
            (old / sql.name).write_text(sql.read_text(encoding="utf-8"), encoding="utf-8")
    real = migrate.migrations_dir
    migrate.migrations_dir = lambda: old
    try:
        asyncio.run(migrate_file(path))
    finally:
        migrate.migrations_dir = real

    def rows() -> object:
        for run in range(runs):
            for seq in range(1, events + 1):
                chunk = MessageChunk(content=f" word{seq}", message_id="m_0123456789abcdef")
                frame = Frame.encode(seq, chunk, 1.7e9 + seq / 10)
                yield f"run_{run:06d}", seq, frame.type, frame.data, frame.created_at

    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows())  # type: ignore[arg-type]


async def first_open(path: Path, events: int) -> float:
    began = time.perf_counter()
    async with Store(path) as store:
        opened = time.perf_counter() - began
        frames = await store.read_frames("run_000000", 0)
        assert [f.seq for f in frames] == list(range(1, events + 1))
    return opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "old.db"
            old_database(path, args.runs, args.events)
            size = path.stat().st_size / 2**20
            seconds = asyncio.run(first_open(path, args.events))
            after = path.stat().st_size / 2**20
        times.append(seconds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"try {attempt + 1}: {seconds:.2f} s (file {size:.0f} MiB before, {after:.0f} MiB"
            f" after; peak RSS {peak:.0f} MiB)"
        )
    print(
        f"{args.runs * args.events:,} events: first open {statistics.median(times):.2f} s"
        f" median ({min(times):.2f}..{max(times):.2f})"
    )


if __name__ == "__main__":
    main()
