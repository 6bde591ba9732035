-- Retention: the events of finished runs are purged after a while; the run row (status and output
-- snapshot) stays and records when its events went.
ALTER TABLE runs ADD COLUMN purged_at REAL;

CREATE INDEX runs_by_end ON runs (ended_at) WHERE purged_at IS NULL;
