"""The SQLite event layouts outside the server (a benchmark, not a test): run with
``.venv/bin/python scripts/bench_sqlite_layout.py [--runs 500,1000] [--events 200000]``.

Commits ``--events`` events of ``--runs`` interleaved runs in batches of 363 (the batch the server
committed at 500 runs), with ``sqlite3`` in WAL mode and ``synchronous=NORMAL`` as the store opens
it, in three layouts, and prints the wall time and CPU per event:

- ``row per event``: the table before migration 0005, keyed ``(run_id, seq)``, WITHOUT ROWID;
- ``journal``: the journal alone (rows appended in commit order);
- ``journal + chunks``: the journal, and once a simulated second (10,000 events/s) each run's
  journaled events moved into one chunk row and the journal emptied, as ``store/chunks.py`` does.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from array import array
from pathlib import Path

BATCH = 363
RATE = 10_000  # events per simulated second: 500 runs x 20 tokens/s
DATA = b'{"role":"assistant","content":" word","message_id":"m_0123456789abcdef"}'
SCHEMA = [
    "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,"
    " data BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID",
    "CREATE TABLE event_journal (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL,"
    " created_at REAL NOT NULL, frame BLOB NOT NULL)",
    "CREATE TABLE event_chunks (run_id TEXT NOT NULL, first_seq INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL, times BLOB NOT NULL, frames BLOB NOT NULL)",
    "CREATE UNIQUE INDEX event_chunks_by_run ON event_chunks (run_id, last_seq)",
]


def measure(path: Path, layout: str, runs: int, total: int) -> tuple[float, float]:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in SCHEMA:
        db.execute(statement)
    db.commit()
    run_ids = [f"run_{os.urandom(8).hex()}" for _ in range(runs)]
    seqs = dict.fromkeys(run_ids, 0)
    pending: dict[str, list[tuple[int, float, bytes]]] = {r: [] for r in run_ids}
    rng = random.Random(7)
    journal_id = 0
    simulated = last_chunking = 0.0
    wall, cpu, done = time.perf_counter(), time.process_time(), 0
    while done < total:
        batch = []
        for _ in range(BATCH):
            run_id = rng.choice(run_ids)
            seqs[run_id] += 1
            batch.append((run_id, seqs[run_id], time.time()))
        if layout == "row per event":
            rows = [(r, s, "message_chunk", DATA, at) for r, s, at in batch]
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
        else:
            journal = []
            for run_id, seq, at in batch:
                journal_id += 1
                sse = b"id: %d\nevent: message_chunk\ndata: %s\n\n" % (seq, DATA)
                journal.append((journal_id, run_id, at, sse))
                pending[run_id].append((seq, at, sse))
            db.executemany("INSERT INTO event_journal VALUES (?, ?, ?, ?)", journal)
        db.commit()
        done += len(batch)
        simulated += len(batch) / RATE
        if layout == "journal + chunks" and simulated - last_chunking >= 1.0:
            last_chunking = simulated
            chunks = []
            for run_id, events in pending.items():
                if events:
                    times = array("d", [at for _, at, _ in events]).tobytes()
                    sse = b"".join(frame for _, _, frame in events)
                    chunks.append((run_id, events[0][0], events[-1][0], times, sse))
                    pending[run_id] = []
            db.executemany("INSERT INTO event_chunks VALUES (?, ?, ?, ?, ?)", chunks)
            db.execute("DELETE FROM event_journal WHERE id <= ?", (journal_id,))
            db.commit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    db.close()
    return wall / done * 1e6, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="500,1000")
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    print("| runs | layout | wall µs per event | CPU µs per event |")
    print("|---|---|---|---|")
    for runs in [int(n) for n in args.runs.split(",")]:
        for layout in ("row per event", "journal", "journal + chunks"):
            with tempfile.TemporaryDirectory() as tmp:
                wall, cpu = measure(Path(tmp) / "layout.db", layout, runs, args.events)
            print(f"| {runs:,} | {layout} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
