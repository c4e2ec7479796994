//! Worker runs: registration, heartbeats, and the record of who is alive.

use rusqlite::params;
use serde::Serialize;

use super::WriteTx;

/// A worker run as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    /// The run's unique id.
    pub id: String,
    /// The manager it serves.
    pub manager: String,
    /// The library it loaded.
    pub library: String,
    /// The machine it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// Thread-pool size.
    pub threads: u32,
    /// Process-pool size.
    pub processes: u32,
    /// The task names it runs.
    pub tasks: Vec<String>,
    /// When it started (microseconds since the epoch).
    pub started_at: i64,
    /// Its last heartbeat.
    pub heartbeat_at: i64,
    /// When it stopped cleanly, if it did.
    pub stopped_at: Option<i64>,
    /// Attempts it completed.
    pub completed: i64,
    /// Attempts it failed.
    pub failed: i64,
}

impl WriteTx<'_> {
    /// Records a new worker run.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn register_worker(&self, worker: &WorkerRow) -> Result<(), rusqlite::Error> {
        let tasks = serde_json::to_string(&worker.tasks)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.tx
            .prepare_cached(
                "INSERT INTO castor_workers (id, manager, library, hostname, pid, threads, \
                 processes, tasks, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                worker.id,
                worker.manager,
                worker.library,
                worker.hostname,
                worker.pid,
                worker.threads,
                worker.processes,
                tasks,
                worker.started_at,
                worker.heartbeat_at,
            ])?;
        Ok(())
    }

    /// Says the worker is alive, with its running totals.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn heartbeat(
        &self,
        worker: &str,
        now: i64,
        completed: u64,
        failed: u64,
    ) -> Result<(), rusqlite::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.tx
            .prepare_cached(
                "UPDATE castor_workers SET heartbeat_at = ?2, completed = ?3, failed = ?4 \
                 WHERE id = ?1",
            )?
            .execute(params![worker, now, clamp(completed), clamp(failed)])?;
        Ok(())
    }

    /// Records a clean stop.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn stop_worker(&self, worker: &str, now: i64) -> Result<(), rusqlite::Error> {
        self.tx
            .prepare_cached(
                "UPDATE castor_workers SET stopped_at = ?2, heartbeat_at = ?2 WHERE id = ?1",
            )?
            .execute(params![worker, now])?;
        Ok(())
    }
}

/// A worker run that has not recorded a stop, as the rescuer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    /// The run's id.
    pub id: String,
    /// Its machine.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// Its last heartbeat.
    pub heartbeat_at: i64,
}

impl WriteTx<'_> {
    /// Worker runs that have not recorded a stop.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn live_workers(&self) -> Result<Vec<LiveWorker>, rusqlite::Error> {
        self.tx
            .prepare_cached(
                "SELECT id, hostname, pid, heartbeat_at FROM castor_workers WHERE stopped_at IS NULL",
            )?
            .query_map([], |row| {
                Ok(LiveWorker {
                    id: row.get(0)?,
                    hostname: row.get(1)?,
                    pid: row.get(2)?,
                    heartbeat_at: row.get(3)?,
                })
            })?
            .collect()
    }
}
