-- Threads are keyed by (owner, thread_id): each principal has its own namespace of thread ids, so
-- an id cannot be probed ("is `user-1` someone else's?") or squatted by another principal.
-- SQLite cannot change a primary key in place: both tables are rebuilt and their rows copied
-- (foreign keys are not enforced by streamctl's connections, so the order is free).

CREATE TABLE threads_v3 (
    thread_id   TEXT NOT NULL,
    owner       TEXT NOT NULL,          -- the principal; 'anonymous' while auth is off
    created_at  REAL NOT NULL,          -- unix seconds
    PRIMARY KEY (owner, thread_id)
) WITHOUT ROWID;

INSERT INTO threads_v3 (thread_id, owner, created_at)
    SELECT thread_id, owner, created_at FROM threads;

CREATE TABLE runs_v3 (
    run_id      TEXT PRIMARY KEY,
    thread_id   TEXT NOT NULL,
    owner       TEXT NOT NULL,          -- the thread's owner too: a thread holds one owner's runs
    status      TEXT NOT NULL,          -- queued, running, completed, cancelled, failed, timed_out, interrupted
    input       BLOB NOT NULL,          -- JSON: {"messages": [...]}
    config      BLOB NOT NULL,          -- JSON: the run's options (recursion_limit, multitask, demo knobs, ...)
    created_at  REAL NOT NULL,
    started_at  REAL,
    ended_at    REAL,
    last_seq    INTEGER NOT NULL DEFAULT 0,
    error       BLOB,                   -- JSON {"code", "message"} when failed
    usage       BLOB,                   -- JSON {"tokens": n}
    snapshot    BLOB,                   -- JSON output as of last_seq: {"text", "tool_calls"}; written at the end
    purged_at   REAL,                   -- when retention deleted the run's events
    FOREIGN KEY (owner, thread_id) REFERENCES threads (owner, thread_id)
);

-- rowid kept: the order of a thread's runs (created_at, then rowid) must survive the copy.
INSERT INTO runs_v3 (rowid, run_id, thread_id, owner, status, input, config, created_at,
                     started_at, ended_at, last_seq, error, usage, snapshot, purged_at)
    SELECT rowid, run_id, thread_id, owner, status, input, config, created_at,
           started_at, ended_at, last_seq, error, usage, snapshot, purged_at FROM runs;

DROP TABLE runs;
DROP TABLE threads;
ALTER TABLE threads_v3 RENAME TO threads;
ALTER TABLE runs_v3 RENAME TO runs;

CREATE INDEX runs_by_thread ON runs (owner, thread_id, created_at);
CREATE INDEX runs_by_owner ON runs (owner, created_at);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_end ON runs (ended_at) WHERE purged_at IS NULL;
