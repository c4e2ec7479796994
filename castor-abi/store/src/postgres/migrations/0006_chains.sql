-- Migration 6: chains and fan-ins (SQLite's migration 8). A task can wait on parent tasks
-- (state `waiting`) and run once they have all completed, their results passed as its
-- first argument. `has_dependents` is set on a parent when a dependent is dispatched
-- after it: only then does the write that ends it look for dependents to settle, so a
-- task without any costs nothing more. `parents` counts the parents a task waits on (0
-- for a plain task). The unique index holds for waiting tasks too (they are unfinished).
-- `castor_dependencies` holds one row per (dependent, parent): the parent's position, its
-- id and name (kept when the parent is purged), the fingerprint of its result type the
-- dependent's app expected ('' unknown), and whether the dependent is a fan-in.

ALTER TABLE castor_tasks DROP CONSTRAINT castor_tasks_state_check;
ALTER TABLE castor_tasks ADD CONSTRAINT castor_tasks_state_check CHECK (state IN ('waiting',
    'scheduled', 'available', 'running', 'retryable', 'completed', 'discarded', 'cancelled'));
ALTER TABLE castor_tasks ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
ALTER TABLE castor_tasks ADD COLUMN parents bigint NOT NULL DEFAULT 0;

DROP INDEX castor_tasks_unique;
CREATE UNIQUE INDEX castor_tasks_unique
    ON castor_tasks (manager, task, unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('waiting', 'scheduled', 'available', 'running', 'retryable');
-- The waiting tasks (the dashboard's and `castor stats`' reads; small).
CREATE INDEX castor_tasks_waiting
    ON castor_tasks (manager, seq) WHERE state = 'waiting';

CREATE TABLE castor_dependencies (
    child_seq            bigint  NOT NULL,
    position             integer NOT NULL,
    parent_id            uuid    NOT NULL,
    parent_task          text    NOT NULL,
    expected_fingerprint text    NOT NULL DEFAULT '',
    fan_in               boolean NOT NULL DEFAULT false,
    PRIMARY KEY (child_seq, position)
);
CREATE INDEX castor_dependencies_parent ON castor_dependencies (parent_id);
