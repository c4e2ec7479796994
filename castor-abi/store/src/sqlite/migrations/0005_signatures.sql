-- Migration 5: signatures of workers and schedules. A worker's registration records the
-- argument fingerprint of each task it runs, as a JSON object {"name": "fingerprint"}
-- beside its `tasks` array: written once per worker run and read whole (by `castor
-- list`/`show`/`stats` and the dashboard, to tell which available tasks wait for a worker
-- of their signature), never searched by name, so a column rather than a table of pairs
-- (which the pruner would also have to clean). '{}' (the default) is a row an older castor
-- wrote: its signatures are unknown. A schedule keeps the argument fingerprint of its
-- arguments (the creating app's, or for a periodic schedule the declaring worker's
-- library's), copied into each run's row; '' is unknown, as on castor_tasks.

ALTER TABLE castor_workers ADD COLUMN args_fingerprints TEXT NOT NULL DEFAULT '{}';
ALTER TABLE castor_schedules ADD COLUMN args_fingerprint TEXT NOT NULL DEFAULT '';
