//! SQLite's own ceiling on this machine and file system: what plain rusqlite does with
//! the same pragmas and no queue logic at all. Every Castor figure is read against these.
//! (The one place outside castor-abi's store that writes SQL: it measures SQLite itself.)

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use crate::table::Report;
use crate::{Options, measure};

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
    /// The same with synchronous=FULL.
    pub cycle_durable: f64,
}

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

fn commits(path: &Path, n: usize) -> Result<(f64, f64), String> {
    let conn = open(path, false)?;
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
    let mut latency = Vec::new();
    measure(
        report,
        options,
        "raw SQLite: single-row commits",
        "/s",
        None,
        |_| {
            let (rate, ms) = commits(&path, options.size(20_000))?;
            latency.push(ms);
            Ok(rate)
        },
    )?;
    ceilings.commits = last_median(report);
    latency.sort_by(f64::total_cmp);
    ceilings.commit_ms = crate::table::median(&latency);
    measure(
        report,
        options,
        "raw SQLite: rows in 100-row batches",
        "/s",
        None,
        |_| batched(&path, options.size(500_000)),
    )?;
    ceilings.batched_rows = last_median(report);
    measure(
        report,
        options,
        "raw SQLite: enqueue+claim+complete, unbatched",
        "/s",
        None,
        |_| cycle(&path, options.size(10_000), false),
    )?;
    ceilings.cycle = last_median(report);
    measure(
        report,
        options,
        "raw SQLite: same cycle, synchronous=FULL",
        "/s",
        None,
        |_| cycle(&path, options.size(2_000), true),
    )?;
    ceilings.cycle_durable = last_median(report);
    Ok(ceilings)
}

fn last_median(report: &Report) -> f64 {
    report.results.last().map_or(f64::NAN, |m| m.median)
}
