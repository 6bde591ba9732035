-- streamctl schema, version 1.
-- A thread is a conversation; a run is one agent invocation on a thread; events are a run's log.

CREATE TABLE threads (
    thread_id   TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,          -- the principal; 'anonymous' while auth is off
    created_at  REAL NOT NULL           -- unix seconds
);

CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    thread_id   TEXT NOT NULL REFERENCES threads (thread_id),
    owner       TEXT NOT NULL,
    status      TEXT NOT NULL,          -- queued, running, completed, cancelled, failed, timed_out, interrupted
    input       BLOB NOT NULL,          -- JSON: {"messages": [...]}
    config      BLOB NOT NULL,          -- JSON: the run's options (recursion_limit, multitask, demo knobs, ...)
    created_at  REAL NOT NULL,
    started_at  REAL,
    ended_at    REAL,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    error       BLOB,                   -- JSON {"code", "message"} when failed
    usage       BLOB,                   -- JSON {"tokens": n}
    snapshot    BLOB                    -- JSON output as of last_seq: {"text", "tool_calls"}; written at the end
);

CREATE INDEX runs_by_thread ON runs (thread_id, created_at);
CREATE INDEX runs_by_owner ON runs (owner, created_at);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');

CREATE TABLE events (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,       -- dense per run: 1..N
    type        TEXT NOT NULL,
    data        BLOB NOT NULL,          -- JSON payload, exactly the SSE `data:` line
    created_at  REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
