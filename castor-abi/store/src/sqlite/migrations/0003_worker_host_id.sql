-- Migration 3: each worker run's host identity (its kernel boot and process-id namespace),
-- so the rescuer checks a pid only where it means something: two containers, or two
-- machines, may share a hostname but not a host identity. Rows written before stay NULL
-- (the rescuer then compares hostnames, as before).

ALTER TABLE castor_workers ADD COLUMN host_id TEXT;
