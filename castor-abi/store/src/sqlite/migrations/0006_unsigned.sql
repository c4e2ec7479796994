-- Migration 6: an index of the available tasks dispatched without an argument
-- fingerprint (rows written before migration 4, and runs of schedules created before
-- migration 5). A claim looks here first, one seek into an index that is empty once those
-- rows have run, and reads the "unknown fingerprint" arm of each task name only when the
-- manager has such a row: a claim then costs one seek per name, as before fingerprints,
-- instead of two. Rows with a fingerprint never enter the index.

CREATE INDEX castor_tasks_unsigned
    ON castor_tasks (manager) WHERE state = 'available' AND args_fingerprint = '';
