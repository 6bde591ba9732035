-- Idempotency keys: a principal's `Idempotency-Key` names the run its first request started, so a
-- retried POST answers (or streams) that run instead of starting another. Keys are per owner: one
-- principal's key never names another's run. Rows older than the window (`idempotency_ttl`) are
-- free to be claimed again, and the retention loop deletes them.

CREATE TABLE idempotency_keys (
    owner         TEXT NOT NULL,
    key           TEXT NOT NULL,          -- the header's value: printable ASCII, at most 255
    run_id        TEXT NOT NULL,
    request_hash  TEXT NOT NULL,          -- sha256 of the route and the canonical JSON body
    created_at    REAL NOT NULL,          -- unix seconds
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
