//! Castor's integration tests: the real `castor` binary, real fixture libraries (crates
//! under `tests/fixtures/`) and a real SQLite file in a temporary directory per test.

// Loading a library: bad paths, non-plugins, incompatible ABIs, an older release's library
// with the same plugin ABI, unknown managers, bad targets and databases.
mod loading;
// A task's life: dispatch, run, join and resolve; subtasks; graceful shutdown.
mod lifecycle;
// Chains and fan-ins: results passed in order across three workers, failed or
// cancelled parents, parents finished before, results of another type (and PostgreSQL).
mod chains;
// Type fingerprints: two versions of a library, tasks left for the matching worker,
// results of another type refused.
mod fingerprints;
// Tasks that fail: errors, panics, undecodable arguments, retries, timeouts.
mod failures;
// Process tasks in warm children: crashes, timeouts, output capture, no orphans.
mod process;
// Workers dying, many workers and apps, cancellation, retention, a database gone bad.
mod reliability;
// The inspection subcommands: list, show, retry, cancel, purge, stats.
mod cli;
// Schema migrations: a database castor 0.1 made, `castor migrate`, --no-migrate, a
// database newer than castor.
mod migrations;
// A damaged database: refused at open and at start, met mid-run, `castor check`.
mod damage;
// Arguments and results past the 64 MiB limit: refused, never stored.
mod limits;
// Flow control: concurrency and rate limits across real workers (killed and restarted),
// per-key limits, `castor limits` overrides and held tasks, on SQLite and PostgreSQL.
mod flow_limits;
// Delayed, repeating and periodic tasks; priorities; unique keys.
mod scheduling;
// Task logs from `tracing` and `log`; the worker's own log lines (text, JSON, RUST_LOG).
mod logging;
// Prometheus metrics: the real endpoint scraped after known work (SQLite, PostgreSQL).
mod metrics;
// Idle workers sleep: CPU per library shape, after a burst, with tasks far ahead.
mod idle;
// A real full disk (a tmpfs the test mounts): the worker sleeps, then recovers alone.
mod full_disk;
// `castor -i` under tmux, on SQLite and PostgreSQL: the screen, the keys, a clean exit.
mod dashboard;
// plugin-template through the real cargo-generate, built and run by the real worker.
mod template;
// Workers, apps and the CLI on PostgreSQL (the server CASTOR_TEST_POSTGRES names); a
// worker whose clock is off (libfaketime).
mod postgres;
// PostgreSQL on a cluster of the test's own: an idle worker's queries, server restarts.
mod postgres_ops;
// TLS to PostgreSQL (sslmode, sslrootcert) on clusters of the tests' own, with a test CA.
mod postgres_tls;
// A PostgreSQL cluster of a test's own (socket, TCP, TLS) and a test CA.
mod pg_cluster;
// `castor --reload`: new builds swapped in while tasks flow; broken builds refused.
mod reload;
// Temp dirs, the worker guard, fixture paths, waiting with deadlines.
mod support;
