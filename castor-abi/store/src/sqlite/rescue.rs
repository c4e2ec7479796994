//! Finding attempts whose worker is gone, and running tasks someone asked to cancel.
//! The decisions (which worker is dead, what comes after an abandoned attempt) are the
//! worker's rescuer's; this module only reads and writes the rows.

use std::time::Duration;

use rusqlite::params;

use super::SqliteTx;
use super::rows::id_from;
use crate::model::Expired;
use crate::state::Backoff;

impl SqliteTx<'_> {
    /// Running attempts whose lease ran out before `now`, oldest lease first.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<Expired>, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "SELECT seq, id, task, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, \
                 attempted_by FROM castor_tasks \
                 WHERE state = 'running' AND lease_expires_at < ?1 \
                 ORDER BY lease_expires_at LIMIT ?2",
            )?
            .query_map(params![now, limit as i64], |row| {
                let id = id_from(row.get(1)?, 1)?;
                let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
                Ok(Expired {
                    seq: row.get(0)?,
                    id,
                    task: row.get(2)?,
                    attempt: row.get(3)?,
                    max_attempts: row.get(4)?,
                    backoff: Backoff {
                        base: ms(row.get(5)?),
                        cap: ms(row.get(6)?),
                    },
                    attempted_by: row.get(7)?,
                })
            })?
            .collect()
    }

    /// Declares a worker run dead: ends the leases of its running tasks now (so the next
    /// rescue takes them) and marks the run stopped. Returns how many tasks it held.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn bury_worker(&self, worker: &str, now: i64) -> Result<usize, rusqlite::Error> {
        let held = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET lease_expires_at = ?2 - 1 \
                 WHERE attempted_by = ?1 AND state = 'running'",
            )?
            .execute(params![worker, now])?;
        self.driver
            .conn
            .prepare_cached(
                "UPDATE castor_workers SET stopped_at = ?2 WHERE id = ?1 AND stopped_at IS NULL",
            )?
            .execute(params![worker, now])?;
        Ok(held)
    }

    /// The rows of `worker`'s running tasks that someone asked to cancel.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn cancel_requests(&self, worker: &str) -> Result<Vec<i64>, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "SELECT seq FROM castor_tasks WHERE attempted_by = ?1 AND state = 'running' \
                 AND cancel_requested_at IS NOT NULL",
            )?
            .query_map([worker], |row| row.get(0))?
            .collect()
    }
}
