//! SQLite's own ceiling on this machine and file system: what plain rusqlite does with
//! the same pragmas and no queue logic at all. Every Castor figure is read against these.
//! (The one place outside castor-abi's store that writes SQL: it measures SQLite itself.)

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use crate::table::Report;
use crate::{Options, Row, measure, measure_group};

/// The ceilings measured in this run (medians).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceilings {
    /// Single-row INSERT transactions per second.
    pub commits: f64,
    /// Rows per second inserted 100 to a transaction.
    pub batched_rows: f64,
    /// Tasks per second through an unbatched enqueue, claim and complete (three
    /// transactions per task).
    pub cycle: f64,
    /// Median latency of one single-row commit, in milliseconds.
    pub commit_ms: f64,
    /// The same cycle with synchronous=FULL.
    pub cycle_durable: f64,
    /// Median latency of one single-row commit with synchronous=FULL, in milliseconds.
    pub commit_ms_durable: f64,
}

/// A fresh database (old files removed) in WAL mode with Castor's `synchronous` setting,
/// holding a minimal queue table with a partial index on ready rows.
fn open(path: &Path, durable: bool) -> Result<Connection, String> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    let sync = if durable { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
         CREATE TABLE jobs (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, payload BLOB, result BLOB);
         CREATE INDEX jobs_ready ON jobs (id) WHERE state = 0;"
    ))
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Single-row INSERT transactions: the rate, and the median latency in milliseconds.
fn commits(path: &Path, n: usize, durable: bool) -> Result<(f64, f64), String> {
    let conn = open(path, durable)?;
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        conn.execute("INSERT INTO jobs (state, payload) VALUES (0, x'00')", [])
            .map_err(|e| e.to_string())?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((rate, crate::table::median(&latencies)))
}

/// Rows per second, inserted 100 to a transaction with a cached statement.
fn batched(path: &Path, n: usize) -> Result<f64, String> {
    let mut conn = open(path, false)?;
    let start = Instant::now();
    for _ in 0..n / 100 {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO jobs (state, payload) VALUES (0, x'00')")
                .map_err(|e| e.to_string())?;
            for _ in 0..100 {
                stmt.execute([]).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok((n / 100 * 100) as f64 / start.elapsed().as_secs_f64())
}

/// Tasks per second through the simplest queue: insert a row, claim the oldest ready
/// one, complete it; each step its own transaction.
fn cycle(path: &Path, n: usize, durable: bool) -> Result<f64, String> {
    let conn = open(path, durable)?;
    let start = Instant::now();
    for _ in 0..n {
        conn.execute("INSERT INTO jobs (state, payload) VALUES (0, x'00')", [])
            .map_err(|e| e.to_string())?;
        let id: i64 = conn
            .query_row(
                "UPDATE jobs SET state = 1 WHERE id = (SELECT id FROM jobs WHERE state = 0 \
                 ORDER BY id LIMIT 1) RETURNING id",
                [],
                |row| row.get(0),
            )
            .map_err(|e| e.to_string())?;
        conn.execute(
            "UPDATE jobs SET state = 2, result = x'00' WHERE id = ?1 AND state = 1",
            params![id],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Measures and records the ceilings.
pub fn measure_all(options: &Options, report: &mut Report) -> Result<Ceilings, String> {
    let path = options.scratch.join("raw.db");
    let mut ceilings = Ceilings::default();
    let n = options.size(20_000);
    measure_group(
        report,
        options,
        &[
            Row::new("raw_commits", "raw SQLite: single-row commits", "/s"),
            Row::new(
                "raw_commit_latency",
                "raw SQLite: single-row commit latency",
                "ms",
            ),
        ],
        |_| {
            let (rate, ms) = commits(&path, n, false)?;
            Ok(vec![rate, ms])
        },
    )?;
    ceilings.commits = median_of(report, "raw_commits");
    ceilings.commit_ms = median_of(report, "raw_commit_latency");
    measure(
        report,
        options,
        Row::new("raw_batched", "raw SQLite: rows in 100-row batches", "/s"),
        |_| batched(&path, options.size(500_000)),
    )?;
    ceilings.batched_rows = median_of(report, "raw_batched");
    measure(
        report,
        options,
        Row::new(
            "raw_cycle",
            "raw SQLite: enqueue+claim+complete, unbatched",
            "/s",
        ),
        |_| cycle(&path, options.size(10_000), false),
    )?;
    ceilings.cycle = median_of(report, "raw_cycle");
    measure(
        report,
        options,
        Row::new(
            "raw_cycle_durable",
            "raw SQLite: the same cycle, synchronous=FULL",
            "/s",
        ),
        |_| cycle(&path, options.size(2_000), true),
    )?;
    ceilings.cycle_durable = median_of(report, "raw_cycle_durable");
    measure(
        report,
        options,
        Row::new(
            "raw_commit_latency_durable",
            "raw SQLite: commit latency, synchronous=FULL",
            "ms",
        ),
        |_| commits(&path, options.size(2_000), true).map(|(_, ms)| ms),
    )?;
    ceilings.commit_ms_durable = median_of(report, "raw_commit_latency_durable");
    Ok(ceilings)
}

/// The median of the measurement `id` (NaN if it did not run).
fn median_of(report: &Report, id: &str) -> f64 {
    report.get(id).map_or(f64::NAN, |m| m.median)
}
