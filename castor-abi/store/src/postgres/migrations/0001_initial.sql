-- Migration 1: Castor's schema on PostgreSQL, the same tables as SQLite's (its migrations
-- are numbered on their own). Times are microseconds since the Unix epoch (UTC) as
-- bigint, taken from the caller's clock like SQLite's; ids are UUIDv7s. Whole numbers
-- the engine keeps as u32 (attempts, runs, pids) are bigint, so every value fits.
-- Queries repeat a partial index's condition word for word, or the planner cannot use it.

CREATE TABLE castor_migrations (
    version    integer PRIMARY KEY,
    name       text    NOT NULL,
    applied_at bigint
);

CREATE TABLE castor_tasks (
    seq                 bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  uuid    NOT NULL UNIQUE,
    manager             text    NOT NULL,
    task                text    NOT NULL,
    state               text    NOT NULL CHECK (state IN ('scheduled', 'available', 'running',
                                    'retryable', 'completed', 'discarded', 'cancelled')),
    priority            integer NOT NULL DEFAULT 0,
    args                bytea   NOT NULL,
    attempt             bigint  NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts        bigint  NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    backoff_base_ms     bigint  NOT NULL DEFAULT 1000,
    backoff_cap_ms      bigint  NOT NULL DEFAULT 3600000,
    timeout_ms          bigint,                  -- NULL: no timeout
    unique_key          text,
    schedule_id         bigint,                  -- the castor_schedules row that made it
    created_at          bigint  NOT NULL,
    scheduled_at        bigint  NOT NULL,        -- may run from then on
    attempted_at        bigint,                  -- start of the latest attempt
    attempted_by        text,                    -- castor_workers.id of the latest attempt
    lease_expires_at    bigint,                  -- while running: rescue after this time
    finalized_at        bigint,                  -- set on entering a terminal state
    cancel_requested_at bigint,                  -- a running task asked to stop
    result              bytea,                   -- encoded result, once completed
    errors              jsonb,                   -- [{attempt, at, kind, error, worker}]
    progress_done       bigint,
    progress_total      bigint,
    progress_message    text
);

-- The claim takes the best few of each task name the worker knows (an index scan per
-- name, `FOR UPDATE SKIP LOCKED`), so tasks no worker knows never make a claim scan.
CREATE INDEX castor_tasks_available
    ON castor_tasks (manager, task, priority DESC, seq) WHERE state = 'available';
CREATE INDEX castor_tasks_due
    ON castor_tasks (manager, scheduled_at) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX castor_tasks_running
    ON castor_tasks (attempted_by) WHERE state = 'running';
CREATE INDEX castor_tasks_lease
    ON castor_tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX castor_tasks_finalized
    ON castor_tasks (finalized_at) WHERE finalized_at IS NOT NULL;
CREATE INDEX castor_tasks_schedule
    ON castor_tasks (schedule_id, seq) WHERE schedule_id IS NOT NULL;
-- Uniqueness is the index's job, never a check-then-insert.
CREATE UNIQUE INDEX castor_tasks_unique
    ON castor_tasks (manager, task, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');

-- Lines a task logged (its own log calls, and a process task's captured stdout/stderr).
CREATE TABLE castor_logs (
    id        bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_seq  bigint  NOT NULL,
    attempt   bigint  NOT NULL,
    at        bigint  NOT NULL,
    level     text    NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
    line      text    NOT NULL
);
CREATE INDEX castor_logs_task ON castor_logs (task_seq, id);

-- One row per worker run; its heartbeat is what keeps its tasks' leases alive.
CREATE TABLE castor_workers (
    id            text    PRIMARY KEY,
    manager       text    NOT NULL,
    library       text    NOT NULL,
    hostname      text    NOT NULL,
    pid           bigint  NOT NULL,
    threads       bigint  NOT NULL,
    processes     bigint  NOT NULL,
    tasks         text    NOT NULL,             -- JSON array of the task names it runs
    started_at    bigint  NOT NULL,
    heartbeat_at  bigint  NOT NULL,
    stopped_at    bigint,
    completed     bigint  NOT NULL DEFAULT 0,   -- attempts that succeeded
    failed        bigint  NOT NULL DEFAULT 0    -- attempts that did not
);

-- Repeating and periodic tasks. Each run is its own castor_tasks row linked by schedule_id.
CREATE TABLE castor_schedules (
    id            bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    manager       text    NOT NULL,
    task          text    NOT NULL,
    name          text,                         -- periodic tasks: the declared name
    args          bytea   NOT NULL,
    every_ms      bigint,                       -- interval schedules
    cron          text,                         -- cron schedules (UTC)
    times         bigint,                       -- total runs allowed; NULL: unlimited
    until_at      bigint,                       -- no run after this time; NULL: no end
    runs          bigint  NOT NULL DEFAULT 0,
    next_run_at   bigint,                       -- NULL once finished
    paused        boolean NOT NULL DEFAULT false,
    missed        text    NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'run_once')),
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  bigint  NOT NULL DEFAULT 1,
    backoff_base_ms bigint NOT NULL DEFAULT 1000,
    backoff_cap_ms  bigint NOT NULL DEFAULT 3600000,
    timeout_ms    bigint,
    created_at    bigint  NOT NULL
);
CREATE UNIQUE INDEX castor_schedules_name
    ON castor_schedules (manager, name) WHERE name IS NOT NULL;
CREATE INDEX castor_schedules_due
    ON castor_schedules (manager, next_run_at) WHERE next_run_at IS NOT NULL AND NOT paused;

-- Wake-ups: a NOTIFY on channel castor_changes, sent when the transaction commits (and
-- once per transaction however many rows it changed), for every change someone may be
-- waiting for: work that became available or due, a task that finished, a cancel asked
-- for, a schedule made, moved or removed. Claims, lease renewals and progress reports
-- notify nobody (the WHEN clause and the column list leave them out), so busy workers do
-- not wake idle ones for nothing. Being triggers, they also catch rows written by hand.
CREATE FUNCTION castor_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('castor_changes', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER castor_tasks_changed
    AFTER INSERT OR UPDATE OF state, scheduled_at, cancel_requested_at ON castor_tasks
    FOR EACH ROW WHEN (NEW.state <> 'running' OR NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION castor_notify();
CREATE TRIGGER castor_tasks_deleted
    AFTER DELETE ON castor_tasks FOR EACH ROW EXECUTE FUNCTION castor_notify();
CREATE TRIGGER castor_schedules_changed
    AFTER INSERT OR UPDATE OR DELETE ON castor_schedules
    FOR EACH ROW EXECUTE FUNCTION castor_notify();
