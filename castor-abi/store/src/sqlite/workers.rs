//! Worker runs: registration, heartbeats, and the record of who is alive.

use rusqlite::params;

use super::SqliteTx;
use crate::model::{LiveWorker, WorkerRow};

impl SqliteTx<'_> {
    /// Records a new worker run.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn register_worker(&self, worker: &WorkerRow) -> Result<(), rusqlite::Error> {
        let tasks = serde_json::to_string(&worker.tasks)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let prints = serde_json::to_string(&worker.args_fingerprints)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.driver
            .conn
            .prepare_cached(
                "INSERT INTO castor_workers (id, manager, library, hostname, pid, threads, \
                 processes, tasks, started_at, heartbeat_at, host_id, args_fingerprints) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
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
                worker.host_id,
                prints,
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
        self.driver
            .conn
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
        self.driver
            .conn
            .prepare_cached(
                "UPDATE castor_workers SET stopped_at = ?2, heartbeat_at = ?2 WHERE id = ?1",
            )?
            .execute(params![worker, now])?;
        Ok(())
    }
}

impl SqliteTx<'_> {
    /// Worker runs that have not recorded a stop.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn live_workers(&self) -> Result<Vec<LiveWorker>, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "SELECT id, hostname, pid, heartbeat_at, host_id FROM castor_workers \
                 WHERE stopped_at IS NULL",
            )?
            .query_map([], |row| {
                Ok(LiveWorker {
                    id: row.get(0)?,
                    hostname: row.get(1)?,
                    pid: row.get(2)?,
                    heartbeat_at: row.get(3)?,
                    host_id: row.get(4)?,
                })
            })?
            .collect()
    }
}
