-- Migration 7: global concurrency and rate limits (flow control).
--
-- castor_limits: one row per (manager, task) with a limit: what the newest worker to start
-- declared (declared_*, key_arg) and what `castor limit` set (override_*, each field set
-- winning over the declaration's). A rate is a count per window (milliseconds).
--
-- castor_tasks.concurrency_key: the partition of a keyed concurrency limit, computed by
-- the dispatching app from the declared argument. A claim under a concurrency limit sets
-- it to '' when NULL, so the running attempts that count against a limit, and only they,
-- are in the partial index below: a claim of an unlimited task (key NULL) never touches it.
--
-- castor_starts: the ledger of starts of rate-limited tasks (one row per claimed attempt,
-- at the claim's time), pruned past the window by the claim itself. Not attempted_at,
-- which the next attempt overwrites.

CREATE TABLE IF NOT EXISTS castor_limits (
    manager TEXT NOT NULL,
    task TEXT NOT NULL,
    declared_concurrency INTEGER CHECK (declared_concurrency > 0),
    declared_rate_count INTEGER CHECK (declared_rate_count > 0),
    declared_rate_per_ms INTEGER CHECK (declared_rate_per_ms > 0),
    key_arg TEXT,
    override_concurrency INTEGER CHECK (override_concurrency > 0),
    override_rate_count INTEGER CHECK (override_rate_count > 0),
    override_rate_per_ms INTEGER CHECK (override_rate_per_ms > 0),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (manager, task)
) WITHOUT ROWID;

ALTER TABLE castor_tasks ADD COLUMN concurrency_key TEXT;
CREATE INDEX IF NOT EXISTS castor_tasks_limited
    ON castor_tasks (manager, task, concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS castor_starts (
    manager TEXT NOT NULL,
    task TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS castor_starts_task ON castor_starts (manager, task, at);
