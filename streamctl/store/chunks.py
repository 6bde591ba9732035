"""How the SQLite store keeps a run's events: journaled at commit, then chunked.

A group commit appends its events to ``event_journal`` in commit order, one row each, so a commit
writes the journal's last pages however many runs it serves. Rows keyed by ``(run_id, seq)``
wrote one page per run per commit instead: 33 µs per event with 300 runs interleaved, against
5 µs appended (docs/benchmarks.md).

The events a run has in the journal are kept in memory too (``Unchunked``), as the frames the run's
log already holds. Once the oldest are ``CHUNK_AGE`` old, or a run has ``CHUNK_EVENTS`` or
``CHUNK_BYTES`` of them, a later commit writes each such run's frames as one ``event_chunks`` row
(a seq range) and deletes the journal rows older than any run still needs. Reads take a run's
chunks from the file and its newest frames from memory; a store that opens chunks whatever the
journal still holds (``recover``), before it reads or writes anything else.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import StoreError
from ..events import Frame
from . import statements as sql

CHUNK_AGE = 1.0
"""Seconds a run's committed events wait in the journal before a commit chunks them."""
CHUNK_EVENTS = 1024
"""A run with this many events in the journal is chunked at the next commit, whatever their age."""
CHUNK_BYTES = 256 * 1024
"""The same, for the bytes of their SSE blocks."""
CHUNK_WITH_EVENTS = 64
"""A batch of at least this many events also chunks the runs that are due (a busy store); a
smaller one only the full runs and those overdue (twice ``CHUNK_AGE``), and the idle writer
chunks the rest in groups: a run's first event is not committed behind chunking it does not need
(a light load's commits stay short)."""
CHUNK_COMMIT_EVENTS = 1024
"""A commit chunks runs until it holds this many of their events, or ``CHUNK_COMMIT_BYTES`` of
their SSE blocks: the runs due, oldest first, then the full ones (at least the oldest run due;
all when the store closes); the runs beyond it wait for the next commits. Runs started together
come due together: 500 runs' second of events (10,000) in one commit took 35-42 ms, and every
event queued meanwhile waited for it (the lag's p99 at 500 runs, docs/benchmarks.md)."""
CHUNK_COMMIT_BYTES = 1024 * 1024
"""See ``CHUNK_COMMIT_EVENTS``."""

_TYPES = {b"run": "run", b"message_chunk": "message_chunk", b"done": "done"}


def parse_frame(sse: bytes, created_at: float) -> Frame:
    """The frame of one SSE block as ``Frame.build`` wrote it (``id``, ``event``, ``data``)."""
    first = sse.index(b"\n")
    second = sse.index(b"\n", first + 1)
    name = sse[first + 8 : second]
    kind = _TYPES.get(name) or name.decode("ascii")
    return Frame(int(sse[4:first]), kind, created_at, sse)


def encode_chunk(run_id: str, frames: Sequence[Frame]) -> tuple[str, int, int, bytes, bytes]:
    """A run's consecutive frames as one ``event_chunks`` row."""
    times = array("d", [frame.created_at for frame in frames])
    if sys.byteorder == "big":
        times.byteswap()
    blob = b"".join([frame.sse for frame in frames])
    return run_id, frames[0].seq, frames[-1].seq, times.tobytes(), blob


def decode_chunk(
    first_seq: int,
    last_seq: int,
    times: bytes,
    blob: bytes,
    after: int = 0,
    upto: int | None = None,
) -> list[Frame]:
    """The frames of one ``event_chunks`` row with ``after < seq <= upto``, in order. The frames
    before ``after`` are skipped without being parsed (a resume wants the end of a chunk)."""
    stamps = array("d")
    stamps.frombytes(times)
    if sys.byteorder == "big":
        stamps.byteswap()
    stop = last_seq if upto is None else min(upto, last_seq)
    frames: list[Frame] = []
    start = 0
    seq = first_seq
    try:
        if len(stamps) != last_seq - first_seq + 1:
            raise ValueError("one time per event")
        while seq <= stop:
            end = blob.index(b"\n\n", start) + 2  # data is one line: JSON escapes its newlines
            if seq > after:
                frame = parse_frame(blob[start:end], stamps[seq - first_seq])
                if frame.seq != seq:
                    raise ValueError("not the seq expected")
                frames.append(frame)
            start = end
            seq += 1
        if stop == last_seq and start != len(blob):
            raise ValueError("more than its events")
    except ValueError as exc:
        raise StoreError(f"the stored chunk of events {first_seq}..{last_seq} is damaged") from exc
    return frames


def select(frames: Iterable[Frame], after: int, upto: int | None) -> list[Frame]:
    return [f for f in frames if f.seq > after and (upto is None or f.seq <= upto)]


@dataclass(slots=True)
class _Journaled:
    """One run's frames in the journal, not chunked yet."""

    first_id: int
    """The journal id of the first."""
    since: float
    """When the first was committed (monotonic seconds)."""
    frames: list[Frame] = field(default_factory=list)
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class Chunking:
    """What one commit chunks: runs' journaled frames, and the journal rows it deletes."""

    runs: list[tuple[str, list[Frame]]]
    delete_upto: int
    """Journal rows with ``id <=`` this are no run's unchunked frames once these are chunked."""

    def rows(self) -> list[tuple[str, int, int, bytes, bytes]]:
        return [encode_chunk(run_id, frames) for run_id, frames in self.runs]


class Unchunked:
    """The frames each run has in the journal, in memory, in the order of their journal ids.

    Only the event loop's thread touches it: the writer adds a batch's frames once committed, and
    takes a ``Chunking`` with the next batch, settled once that batch is committed."""

    def __init__(self) -> None:
        self._runs: dict[str, _Journaled] = {}
        """In the order of their first journal id: runs leave when chunked and come back last."""
        self._last: dict[str, int] = {}
        """Each run's last journaled seq, chunked or not, until its final row is committed (or
        it is purged): what its next event must follow, and its ``last_seq`` while active."""
        self._purging: set[str] = set()
        """Runs whose events are being deleted: never chunked, but their journal rows stay (they
        hold the watermark back) until the delete is committed, or failed."""
        self._full: dict[str, None] = {}
        """Runs with ``CHUNK_EVENTS`` or ``CHUNK_BYTES`` journaled, in the order they filled."""
        self.last_id = 0
        """The newest journal id of a committed frame."""

    def __bool__(self) -> bool:
        return bool(self._runs)

    def add(self, run_id: str, frame: Frame, journal_id: int, now: float) -> None:
        entry = self._runs.get(run_id)
        if entry is None:
            entry = self._runs[run_id] = _Journaled(journal_id, now)
        entry.frames.append(frame)
        entry.bytes += len(frame.sse)
        self._last[run_id] = frame.seq
        if len(entry.frames) >= CHUNK_EVENTS or entry.bytes >= CHUNK_BYTES:
            self._full[run_id] = None
        self.last_id = journal_id

    def frames(self, run_id: str) -> list[Frame]:
        """A copy of the run's journaled frames (the newest it has committed)."""
        entry = self._runs.get(run_id)
        return [] if entry is None else list(entry.frames)

    def last_seq(self, run_id: str) -> int | None:
        return self._last.get(run_id)

    def last_seqs(self) -> dict[str, int]:
        """A copy of every unfinished run's last journaled seq."""
        return dict(self._last)

    def out_of_order(self, events: Iterable[tuple[str, Frame, object, object]]) -> str | None:
        """Why a batch's events would not follow their runs' committed ones densely (a seq
        repeated or skipped), if they would not. The journal has no key on ``(run_id, seq)`` to
        refuse them; this checks each run this store journaled and has not finished (a run
        ended by an earlier process numbers on from what it finds stored)."""
        last: dict[str, int] = {}
        known = self._last
        for run_id, frame, _, _ in events:
            before = last.get(run_id)
            if before is None:
                before = known.get(run_id)
            if before is not None and frame.seq != before + 1:
                return f"run {run_id}: event {frame.seq} does not follow event {before}"
            last[run_id] = frame.seq
        return None

    def due(self) -> float | None:
        """When the oldest run's frames are due for chunking (monotonic), if any run has some.
        Runs being purged are never due: the idle writer must not wake for them (it would find
        nothing to take, again and again, until their delete is committed)."""
        for run_id, entry in self._runs.items():
            if run_id not in self._purging:
                return entry.since + CHUNK_AGE
        return None

    def take_with(self, events: int, now: float) -> Chunking | None:
        """What a commit of ``events`` events chunks besides them (see ``CHUNK_WITH_EVENTS``)."""
        due = self.due()
        busy = events >= CHUNK_WITH_EVENTS or (due is not None and due + CHUNK_AGE <= now)
        return self.take(now if busy else None)

    def take_idle(self, now: float) -> Chunking | None:
        """What the idle writer chunks: the runs due, and those due within half ``CHUNK_AGE``
        (so that it commits chunks for groups of runs, not for each run as it comes due)."""
        return self.take(now + CHUNK_AGE / 2)

    def take(self, due_by: float | None, everything: bool = False) -> Chunking | None:
        """The runs due by ``due_by`` (None: none; all, with ``everything``), oldest first, then
        the full runs in the order they filled, as one chunking, or None. Bounded (unless
        ``everything``): runs are added until it holds ``CHUNK_COMMIT_EVENTS`` events or
        ``CHUNK_COMMIT_BYTES``, and it holds at least the oldest run due, so a full run that
        alone passes the bound at every commit does not keep the others in the journal."""
        runs, purging = self._runs, self._purging
        chosen: dict[str, list[Frame]] = {}
        events = size = 0
        for run_id, entry in runs.items():  # in the order of their first frame: a prefix is due
            if not everything and (
                due_by is None
                or entry.since + CHUNK_AGE > due_by
                or events >= CHUNK_COMMIT_EVENTS
                or size >= CHUNK_COMMIT_BYTES
            ):
                break
            if run_id not in purging:
                chosen[run_id] = entry.frames
                events, size = events + len(entry.frames), size + entry.bytes
        for run_id in self._full:
            if events >= CHUNK_COMMIT_EVENTS or size >= CHUNK_COMMIT_BYTES:
                break
            if run_id not in purging and run_id not in chosen:
                entry = runs[run_id]
                chosen[run_id] = entry.frames
                events, size = events + len(entry.frames), size + entry.bytes
        if not chosen:
            return None
        kept = (entry.first_id for run_id, entry in runs.items() if run_id not in chosen)
        first_kept = next(kept, None)
        delete_upto = self.last_id if first_kept is None else first_kept - 1
        return Chunking([(run_id, list(frames)) for run_id, frames in chosen.items()], delete_upto)

    def settle(self, chunking: Chunking) -> None:
        """The chunking was committed: its runs' frames are in ``event_chunks`` now."""
        for run_id, _ in chunking.runs:
            self._runs.pop(run_id, None)
            self._full.pop(run_id, None)

    def ended(self, run_id: str) -> None:
        """The run's final row is committed: nothing follows its last event."""
        self._last.pop(run_id, None)

    def purging(self, run_ids: Iterable[str]) -> None:
        """These runs' events are being deleted: chunk none of them from now on (a chunk
        committed after the delete would bring them back), yet keep them until ``purged``."""
        self._purging.update(run_ids)

    def purged(self, run_ids: Iterable[str], deleted: bool) -> None:
        """The delete of their events was committed (or failed: they stay, to chunk later)."""
        for run_id in run_ids:
            self._purging.discard(run_id)
            if deleted:
                self._runs.pop(run_id, None)
                self._full.pop(run_id, None)
                self._last.pop(run_id, None)


def recover(db: sqlite3.Connection) -> int:
    """Chunk every event the journal holds (a store that stopped before chunking them), in one
    transaction; events already chunked are skipped. Returns the journal rows read.

    One pass over the journal in run order (SQLite sorts it once); the journal has no index on
    ``run_id``, so a query per run would read all of it per run."""
    rows = 0
    try:
        pending: list[Frame] = []
        current: str | None = None
        chunked = 0
        for run_id, created_at, sse in db.execute(sql.JOURNAL_BY_RUN):
            rows += 1
            if run_id != current:
                _insert_chunks(db, current, pending)
                pending = []
                current = run_id
                (chunked,) = db.execute(sql.LAST_CHUNKED, (run_id,)).fetchone()
            frame = parse_frame(sse, created_at)
            if frame.seq > chunked:
                pending.append(frame)
                if len(pending) == CHUNK_EVENTS:
                    _insert_chunks(db, current, pending)
                    pending = []
        _insert_chunks(db, current, pending)
        db.execute("DELETE FROM event_journal")
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return rows


def _insert_chunks(db: sqlite3.Connection, run_id: str | None, frames: list[Frame]) -> None:
    if run_id is not None and frames:
        db.execute(sql.INSERT_EVENT_CHUNK, encode_chunk(run_id, frames))


def stored_frames(db: sqlite3.Connection, run_id: str) -> list[Frame]:
    """A run's stored events read straight from the file (chunks, then the journal), for tools
    and tests that look at a database out of band, also while a store writes it: both are read
    in one transaction, one snapshot (else a chunking committed between the two reads would
    hide its events from both)."""
    began = not db.in_transaction
    if began:
        db.execute("BEGIN")
    try:
        frames: list[Frame] = []
        for row in db.execute(sql.CHUNKS_AFTER, (run_id, 0)):
            frames.extend(decode_chunk(*row))
        journaled = _journaled(db, run_id)
    finally:
        if began:
            db.execute("COMMIT")
    last = frames[-1].seq if frames else 0
    return frames + [frame for frame in journaled if frame.seq > last]


def _journaled(db: sqlite3.Connection, run_id: str) -> list[Frame]:
    rows = db.execute(sql.JOURNAL_OF_RUN, (run_id,))
    return [parse_frame(frame, created_at) for created_at, frame in rows]
