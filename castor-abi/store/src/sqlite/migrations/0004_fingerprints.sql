-- Migration 4: type fingerprints. Each task row keeps the fingerprint of its argument
-- tuple's type as the dispatching app computed it, and of its result's type as the
-- worker's library computed it (16 hex digits each; the empty string, the default, means
-- unknown: rows written by an older castor, which any worker declaring the name claims,
-- as before). Not NULL but empty, so that the claim reads the index by equality for both
-- "this fingerprint" and "unknown". The claim index gains the argument fingerprint.

ALTER TABLE castor_tasks ADD COLUMN args_fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE castor_tasks ADD COLUMN result_fingerprint TEXT NOT NULL DEFAULT '';
DROP INDEX IF EXISTS castor_tasks_available;
CREATE INDEX castor_tasks_available
    ON castor_tasks (manager, task, args_fingerprint, priority DESC, seq) WHERE state = 'available';
