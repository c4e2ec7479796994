-- Migration 8: chains and fan-ins. A task can wait on parent tasks (state `waiting`) and
-- run once they have all completed, their results passed as its first argument. The
-- state's CHECK is part of the table's definition, which SQLite cannot alter, so the
-- table is rebuilt (renamed, created anew, copied, the old one dropped with its indexes,
-- the indexes created again); every column keeps its values, `seq` included. Two columns
-- are new: `has_dependents` (1 once a task was dispatched after this one: only then does
-- the write that ends this task look for dependents to settle, so a task without any
-- costs nothing more) and `parents` (how many parents this task waits on; 0 for a plain
-- task). The unique index holds for waiting tasks too (they are unfinished).
-- `castor_dependencies` holds one row per (dependent, parent): the parent's position
-- among the dependent's parents, its id and name (kept when the parent is purged), the
-- fingerprint of its result type the dependent's app expected ('' unknown), and whether
-- the dependent is a fan-in (its first argument the sequence of the results).

ALTER TABLE castor_tasks RENAME TO castor_tasks_old;

CREATE TABLE IF NOT EXISTS castor_tasks (
    seq                 INTEGER PRIMARY KEY,
    id                  BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    manager             TEXT    NOT NULL,
    task                TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state = 'waiting' OR state = 'scheduled'
                                    OR state = 'available' OR state = 'running'
                                    OR state = 'retryable' OR state = 'completed'
                                    OR state = 'discarded' OR state = 'cancelled'),
    priority            INTEGER NOT NULL DEFAULT 0,
    args                BLOB    NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts        INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    backoff_base_ms     INTEGER NOT NULL DEFAULT 1000,
    backoff_cap_ms      INTEGER NOT NULL DEFAULT 3600000,
    timeout_ms          INTEGER,
    unique_key          TEXT,
    schedule_id         INTEGER,
    created_at          INTEGER NOT NULL,
    scheduled_at        INTEGER NOT NULL,
    attempted_at        INTEGER,
    attempted_by        TEXT,
    lease_expires_at    INTEGER,
    finalized_at        INTEGER,
    cancel_requested_at INTEGER,
    result              BLOB,
    errors              TEXT,
    progress_done       INTEGER,
    progress_total      INTEGER,
    progress_message    TEXT,
    args_fingerprint    TEXT    NOT NULL DEFAULT '',
    result_fingerprint  TEXT    NOT NULL DEFAULT '',
    concurrency_key     TEXT,
    has_dependents      INTEGER NOT NULL DEFAULT 0,
    parents             INTEGER NOT NULL DEFAULT 0
);

INSERT INTO castor_tasks (seq, id, manager, task, state, priority, args, attempt,
    max_attempts, backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id,
    created_at, scheduled_at, attempted_at, attempted_by, lease_expires_at, finalized_at,
    cancel_requested_at, result, errors, progress_done, progress_total, progress_message,
    args_fingerprint, result_fingerprint, concurrency_key)
SELECT seq, id, manager, task, state, priority, args, attempt,
    max_attempts, backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id,
    created_at, scheduled_at, attempted_at, attempted_by, lease_expires_at, finalized_at,
    cancel_requested_at, result, errors, progress_done, progress_total, progress_message,
    args_fingerprint, result_fingerprint, concurrency_key
FROM castor_tasks_old;

DROP TABLE castor_tasks_old;

CREATE INDEX IF NOT EXISTS castor_tasks_available
    ON castor_tasks (manager, task, args_fingerprint, priority DESC, seq) WHERE state = 'available';
CREATE INDEX IF NOT EXISTS castor_tasks_due
    ON castor_tasks (manager, scheduled_at) WHERE (state = 'scheduled' OR state = 'retryable');
CREATE INDEX IF NOT EXISTS castor_tasks_running
    ON castor_tasks (attempted_by) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS castor_tasks_lease
    ON castor_tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS castor_tasks_finalized
    ON castor_tasks (finalized_at) WHERE finalized_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS castor_tasks_schedule
    ON castor_tasks (schedule_id, seq) WHERE schedule_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS castor_tasks_unique
    ON castor_tasks (manager, task, unique_key)
    WHERE unique_key IS NOT NULL AND (state = 'waiting' OR state = 'scheduled'
        OR state = 'available' OR state = 'running' OR state = 'retryable');
CREATE INDEX IF NOT EXISTS castor_tasks_unsigned
    ON castor_tasks (manager) WHERE state = 'available' AND args_fingerprint = '';
CREATE INDEX IF NOT EXISTS castor_tasks_limited
    ON castor_tasks (manager, task, concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
-- The waiting tasks (the dashboard's and `castor stats`' reads; small).
CREATE INDEX IF NOT EXISTS castor_tasks_waiting
    ON castor_tasks (manager, seq) WHERE state = 'waiting';

CREATE TABLE IF NOT EXISTS castor_dependencies (
    child_seq            INTEGER NOT NULL,
    position             INTEGER NOT NULL,
    parent_id            BLOB    NOT NULL,
    parent_task          TEXT    NOT NULL,
    expected_fingerprint TEXT    NOT NULL DEFAULT '',
    fan_in               INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (child_seq, position)
);
CREATE INDEX IF NOT EXISTS castor_dependencies_parent
    ON castor_dependencies (parent_id);
