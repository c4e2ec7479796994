-- Migration 2: a record of the migrations applied. A database migration 1 created before
-- this record existed (castor 0.1, which only set `PRAGMA user_version = 1`) gets migration
-- 1 recorded with no time; every later migration records itself when it is applied.

CREATE TABLE IF NOT EXISTS castor_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER
);

INSERT OR IGNORE INTO castor_migrations (version, name, applied_at) VALUES (1, 'initial', NULL);
