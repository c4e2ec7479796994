//! Worker runs: registration, heartbeats, and the record of who is alive. A worker's
//! registration and heartbeat also read the server's clock as they write (`RETURNING`),
//! kept for [`crate::Driver::clock_offset`]: a worker compares its clock with the
//! server's at no cost of a statement of its own.

use super::PostgresTx;
use super::rows::u32_from;
use crate::model::{LiveWorker, WorkerRow};

impl PostgresTx<'_> {
    /// Records a new worker run (`tasks`: its task names as a JSON array; `prints`: their
    /// argument fingerprints as a JSON object).
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn register_worker(
        &mut self,
        worker: &WorkerRow,
        tasks: &str,
        prints: &str,
    ) -> Result<(), postgres::Error> {
        let clock = self.conn().query_clock(
            concat!(
                "INSERT INTO castor_workers (id, manager, library, hostname, pid, threads, \
                 processes, tasks, started_at, heartbeat_at, host_id, args_fingerprints) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
                server_clock_us!()
            ),
            &[
                &worker.id,
                &worker.manager,
                &worker.library,
                &worker.hostname,
                &i64::from(worker.pid),
                &i64::from(worker.threads),
                &i64::from(worker.processes),
                &tasks,
                &worker.started_at,
                &worker.heartbeat_at,
                &worker.host_id,
                &prints,
            ],
        )?;
        self.driver.clock.set(clock);
        Ok(())
    }

    /// Says the worker is alive, with its running totals.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        completed: u64,
        failed: u64,
    ) -> Result<(), postgres::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let clock = self.unflushed().query_clock(
            concat!(
                "UPDATE castor_workers SET heartbeat_at = $2, completed = $3, failed = $4 \
                 WHERE id = $1 RETURNING ",
                server_clock_us!()
            ),
            &[&worker, &now, &clamp(completed), &clamp(failed)],
        )?;
        if clock.is_some() {
            self.driver.clock.set(clock);
        }
        Ok(())
    }

    /// Records a clean stop.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn stop_worker(&mut self, worker: &str, now: i64) -> Result<(), postgres::Error> {
        self.conn().execute(
            "UPDATE castor_workers SET stopped_at = $2, heartbeat_at = $2 WHERE id = $1",
            &[&worker, &now],
        )?;
        Ok(())
    }

    /// Worker runs that have not recorded a stop.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn live_workers(&mut self) -> Result<Vec<LiveWorker>, postgres::Error> {
        self.conn()
            .query(
                "SELECT id, hostname, pid, heartbeat_at, host_id FROM castor_workers \
                 WHERE stopped_at IS NULL",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(LiveWorker {
                    id: row.try_get(0)?,
                    hostname: row.try_get(1)?,
                    pid: u32_from(row.try_get(2)?),
                    heartbeat_at: row.try_get(3)?,
                    host_id: row.try_get(4)?,
                })
            })
            .collect()
    }
}
