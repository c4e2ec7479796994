-- Migration 1: Castor's first schema, exactly as castor 0.1 created it (`PRAGMA user_version = 1`).
-- Times are integer microseconds since the Unix epoch (UTC). Ids are 16-byte UUIDv7s:
-- time-ordered, so new rows land at the end of the id index instead of at random places.
-- Sets of states are spelled as OR chains, not IN lists: SQLite evaluates an IN list in a
-- CHECK or a partial index by building a temporary table on every write (a third of the
-- cost of a state change, measured), and an OR chain costs a few comparisons. Queries
-- repeat a partial index's condition word for word, or the planner cannot use it.

CREATE TABLE IF NOT EXISTS castor_tasks (
    seq                 INTEGER PRIMARY KEY,
    id                  BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    manager             TEXT    NOT NULL,
    task                TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state = 'scheduled' OR state = 'available'
                                    OR state = 'running' OR state = 'retryable'
                                    OR state = 'completed' OR state = 'discarded'
                                    OR state = 'cancelled'),
    priority            INTEGER NOT NULL DEFAULT 0,
    args                BLOB    NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts        INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    backoff_base_ms     INTEGER NOT NULL DEFAULT 1000,
    backoff_cap_ms      INTEGER NOT NULL DEFAULT 3600000,
    timeout_ms          INTEGER,                 -- NULL: no timeout
    unique_key          TEXT,
    schedule_id         INTEGER,                 -- the castor_schedules row that made it
    created_at          INTEGER NOT NULL,
    scheduled_at        INTEGER NOT NULL,        -- may run from then on
    attempted_at        INTEGER,                 -- start of the latest attempt
    attempted_by        TEXT,                    -- castor_workers.id of the latest attempt
    lease_expires_at    INTEGER,                 -- while running: rescue after this time
    finalized_at        INTEGER,                 -- set on entering a terminal state
    cancel_requested_at INTEGER,                 -- a running task asked to stop
    result              BLOB,                    -- encoded result, once completed
    errors              TEXT,                    -- JSON [{attempt, at, kind, error, worker}]
    progress_done       INTEGER,
    progress_total      INTEGER,
    progress_message    TEXT
);

-- One partial index per purpose keeps each small. The claim takes the best few of each
-- task name the worker knows (a seek per name) and merges them, so tasks no worker
-- knows never make a claim scan the backlog.
CREATE INDEX IF NOT EXISTS castor_tasks_available
    ON castor_tasks (manager, task, priority DESC, seq) WHERE state = 'available';
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
-- Uniqueness is the index's job, never a check-then-insert.
CREATE UNIQUE INDEX IF NOT EXISTS castor_tasks_unique
    ON castor_tasks (manager, task, unique_key)
    WHERE unique_key IS NOT NULL AND (state = 'scheduled' OR state = 'available'
        OR state = 'running' OR state = 'retryable');

-- Lines a task logged (its own log calls, and a process task's captured stdout/stderr).
CREATE TABLE IF NOT EXISTS castor_logs (
    rowid     INTEGER PRIMARY KEY,
    task_seq  INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    level     TEXT    NOT NULL CHECK (level = 'debug' OR level = 'info' OR level = 'warn'
                                      OR level = 'error'),
    line      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS castor_logs_task ON castor_logs (task_seq, rowid);

-- One row per worker run; its heartbeat is what keeps its tasks' leases alive.
CREATE TABLE IF NOT EXISTS castor_workers (
    id            TEXT    PRIMARY KEY,
    manager       TEXT    NOT NULL,
    library       TEXT    NOT NULL,
    hostname      TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    threads       INTEGER NOT NULL,
    processes     INTEGER NOT NULL,
    tasks         TEXT    NOT NULL,             -- JSON array of the task names it runs
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    stopped_at    INTEGER,
    completed     INTEGER NOT NULL DEFAULT 0,   -- attempts that succeeded
    failed        INTEGER NOT NULL DEFAULT 0    -- attempts that did not
);

-- Repeating and periodic tasks. Each run is its own castor_tasks row linked by schedule_id.
CREATE TABLE IF NOT EXISTS castor_schedules (
    id            INTEGER PRIMARY KEY,
    manager       TEXT    NOT NULL,
    task          TEXT    NOT NULL,
    name          TEXT,                         -- periodic tasks: the declared name
    args          BLOB    NOT NULL,
    every_ms      INTEGER,                      -- interval schedules
    cron          TEXT,                         -- cron schedules (UTC)
    times         INTEGER,                      -- total runs allowed; NULL: unlimited
    until_at      INTEGER,                      -- no run after this time; NULL: no end
    runs          INTEGER NOT NULL DEFAULT 0,
    next_run_at   INTEGER,                      -- NULL once finished
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    missed        TEXT    NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'run_once')),
    priority      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 1,
    backoff_base_ms INTEGER NOT NULL DEFAULT 1000,
    backoff_cap_ms  INTEGER NOT NULL DEFAULT 3600000,
    timeout_ms    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS castor_schedules_name
    ON castor_schedules (manager, name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS castor_schedules_due
    ON castor_schedules (manager, next_run_at) WHERE next_run_at IS NOT NULL AND paused = 0;
