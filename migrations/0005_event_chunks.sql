-- Events are stored in two steps (docs/architecture.md, "Storage"). Each group commit appends its
-- events to the journal in commit order, so a commit writes the journal's last pages whatever the
-- number of runs it serves (one row per event keyed by (run_id, seq) wrote one page per run per
-- commit: 33 us per event with 300 runs interleaved, against 5 us appended). A little later the
-- writer moves a run's journaled events into one chunk row (a seq range), and deletes the journal
-- rows no run still needs. The store reopens by chunking what the journal still holds.

CREATE TABLE event_journal (
    id          INTEGER PRIMARY KEY,    -- commit order, given by the writer
    run_id      TEXT NOT NULL,
    created_at  REAL NOT NULL,          -- unix seconds
    frame       BLOB NOT NULL           -- the event's SSE block: id (the seq), event (the type), data
);

CREATE TABLE event_chunks (
    run_id      TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,       -- the events first_seq..last_seq, all of them
    times       BLOB NOT NULL,          -- their created_at, float64 little-endian each
    frames      BLOB NOT NULL           -- their SSE blocks, one after the other
);

CREATE UNIQUE INDEX event_chunks_by_run ON event_chunks (run_id, last_seq);

-- The events stored so far go to the journal; the store chunks them when it opens.
INSERT INTO event_journal (run_id, created_at, frame)
    SELECT run_id, created_at, CAST('id: ' || seq || char(10) || 'event: ' || type || char(10)
        || 'data: ' || CAST(data AS TEXT) || char(10) || char(10) AS BLOB)
    FROM events ORDER BY run_id, seq;

DROP TABLE events;
