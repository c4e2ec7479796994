//! Finding attempts whose worker is gone, and running tasks someone asked to cancel.
//! The decisions (which worker is dead, what comes after an abandoned attempt) are the
//! worker's rescuer's; this module only reads and writes the rows.

use super::PostgresTx;
use super::rows::{ms, u32_from};
use crate::model::Expired;
use crate::state::Backoff;

impl PostgresTx<'_> {
    /// Running attempts whose lease ran out before `now`, oldest lease first.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn expired_leases(
        &mut self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Expired>, postgres::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()
            .query(
                "SELECT seq, id, task, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, \
                 attempted_by FROM castor_tasks \
                 WHERE state = 'running' AND lease_expires_at < $1 \
                 ORDER BY lease_expires_at LIMIT $2",
                &[&now, &limit],
            )?
            .iter()
            .map(|row| {
                Ok(Expired {
                    seq: row.try_get(0)?,
                    id: row.try_get(1)?,
                    task: row.try_get(2)?,
                    attempt: u32_from(row.try_get(3)?),
                    max_attempts: u32_from(row.try_get(4)?),
                    backoff: Backoff {
                        base: ms(row.try_get(5)?),
                        cap: ms(row.try_get(6)?),
                    },
                    attempted_by: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Declares a worker run dead: ends the leases of its running tasks now (so the next
    /// rescue takes them) and marks the run stopped. Returns how many tasks it held.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn bury_worker(&mut self, worker: &str, now: i64) -> Result<usize, postgres::Error> {
        let held = self.conn().execute(
            "UPDATE castor_tasks SET lease_expires_at = $2::bigint - 1 \
             WHERE attempted_by = $1 AND state = 'running'",
            &[&worker, &now],
        )?;
        self.conn().execute(
            "UPDATE castor_workers SET stopped_at = $2 WHERE id = $1 AND stopped_at IS NULL",
            &[&worker, &now],
        )?;
        Ok(usize::try_from(held).unwrap_or(usize::MAX))
    }

    /// The rows of `worker`'s running tasks that someone asked to cancel.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>, postgres::Error> {
        self.unflushed()
            .query(
                "SELECT seq FROM castor_tasks WHERE attempted_by = $1 AND state = 'running' \
                 AND cancel_requested_at IS NOT NULL",
                &[&worker],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
    }
}
