//! Schedules: creating them, creating their runs when due (once per tick, whatever the
//! number of workers: the run and the schedule's advance are one transaction, guarded by
//! the tick), pausing, removing, listing.

use postgres::Row;
use uuid::Uuid;

use super::rows::u32_from;
use super::{PostgresDriver, PostgresTx};
use crate::error::StoreError;
use crate::model::{DueSchedule, NewSchedule, ScheduleFilter};
use crate::schedule::{Cadence, Missed, ScheduleInfo};

fn info_from(row: &Row) -> Result<ScheduleInfo, postgres::Error> {
    let every_ms: Option<i64> = row.try_get(4)?;
    let cron: Option<String> = row.try_get(5)?;
    let cadence = match Cadence::from_stored(every_ms, cron.as_deref()) {
        Some(cadence) => cadence.to_string(),
        None => format!("invalid ({every_ms:?}, {cron:?})"),
    };
    let missed: String = row.try_get(11)?;
    Ok(ScheduleInfo {
        id: row.try_get(0)?,
        manager: row.try_get(1)?,
        task: row.try_get(2)?,
        name: row.try_get(3)?,
        cadence,
        times: row.try_get::<_, Option<i64>>(6)?.map(u32_from),
        until: row.try_get(7)?,
        runs: u32_from(row.try_get(8)?),
        next_run_at: row.try_get(9)?,
        paused: row.try_get(10)?,
        missed: Missed::from_stored(&missed),
        args_fingerprint: Some(row.try_get::<_, String>(12)?).filter(|fp| !fp.is_empty()),
    })
}

impl PostgresTx<'_> {
    /// Inserts a schedule an app created; returns its id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn create_schedule(
        &mut self,
        s: &NewSchedule<'_>,
        now: i64,
    ) -> Result<i64, postgres::Error> {
        let (every_ms, cron) = s.cadence.to_stored();
        self.conn()
            .query_one(
                "INSERT INTO castor_schedules (manager, task, name, args, every_ms, cron, times, \
                 until_at, next_run_at, missed, priority, max_attempts, backoff_base_ms, \
                 backoff_cap_ms, timeout_ms, created_at, args_fingerprint) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17) RETURNING id",
                &[
                    &s.manager,
                    &s.task,
                    &s.name,
                    &s.args,
                    &every_ms,
                    &cron,
                    &s.times.map(i64::from),
                    &s.until,
                    &s.first_run_at,
                    &s.missed.as_str(),
                    &s.priority,
                    &i64::from(s.max_attempts),
                    &s.backoff_base_ms,
                    &s.backoff_cap_ms,
                    &s.timeout_ms,
                    &now,
                    &s.args_fingerprint.unwrap_or(""),
                ],
            )?
            .try_get(0)
    }

    /// Makes a declared periodic task's schedule match its declaration: created if new,
    /// kept (with its next tick) if unchanged, restarted if its cadence, arguments (or
    /// their fingerprint) or policy (missed ticks, priority, attempts, backoff, timeout)
    /// changed. Returns its id.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn upsert_periodic(
        &mut self,
        s: &NewSchedule<'_>,
        now: i64,
    ) -> Result<i64, postgres::Error> {
        let (every_ms, cron) = s.cadence.to_stored();
        let existing = self.conn().query_opt(
            "SELECT id, (task = $3 AND args = $4 AND every_ms IS NOT DISTINCT FROM $5 \
             AND cron IS NOT DISTINCT FROM $6 AND missed = $7 AND max_attempts = $8 \
             AND timeout_ms IS NOT DISTINCT FROM $9 AND priority = $10 \
             AND backoff_base_ms = $11 AND backoff_cap_ms = $12 AND args_fingerprint = $13) \
             FROM castor_schedules WHERE manager = $1 AND name = $2 FOR UPDATE",
            &[
                &s.manager,
                &s.name,
                &s.task,
                &s.args,
                &every_ms,
                &cron,
                &s.missed.as_str(),
                &i64::from(s.max_attempts),
                &s.timeout_ms,
                &s.priority,
                &s.backoff_base_ms,
                &s.backoff_cap_ms,
                &s.args_fingerprint.unwrap_or(""),
            ],
        )?;
        let existing: Option<(i64, bool)> = existing
            .map(|row| Ok::<_, postgres::Error>((row.try_get(0)?, row.try_get(1)?)))
            .transpose()?;
        match existing {
            Some((id, true)) => Ok(id),
            Some((id, false)) => {
                self.conn().execute(
                    "UPDATE castor_schedules SET task = $2, args = $3, every_ms = $4, \
                     cron = $5, missed = $6, priority = $7, max_attempts = $8, \
                     backoff_base_ms = $9, backoff_cap_ms = $10, timeout_ms = $11, \
                     next_run_at = $12, args_fingerprint = $13 WHERE id = $1",
                    &[
                        &id,
                        &s.task,
                        &s.args,
                        &every_ms,
                        &cron,
                        &s.missed.as_str(),
                        &s.priority,
                        &i64::from(s.max_attempts),
                        &s.backoff_base_ms,
                        &s.backoff_cap_ms,
                        &s.timeout_ms,
                        &s.first_run_at,
                        &s.args_fingerprint.unwrap_or(""),
                    ],
                )?;
                Ok(id)
            }
            None => self.create_schedule(s, now),
        }
    }

    /// Schedules `filter` selects whose tick is due at `now`, oldest tick first. They are
    /// locked (`SKIP LOCKED`): a worker that is creating a tick's run keeps the others off
    /// that schedule until it commits, so they neither wait nor run the tick again.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn due_schedules(
        &mut self,
        filter: &ScheduleFilter,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, postgres::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn()
            .query(
                "SELECT id, task, args, every_ms, cron, times, until_at, runs, next_run_at, \
                 missed, priority, max_attempts, backoff_base_ms, backoff_cap_ms, timeout_ms, \
                 args_fingerprint FROM castor_schedules WHERE manager = $1 AND NOT paused \
                 AND next_run_at IS NOT NULL \
                 AND ((name IS NULL AND task = ANY($2)) OR name = ANY($3)) \
                 AND next_run_at <= $4 \
                 ORDER BY next_run_at LIMIT $5 FOR UPDATE SKIP LOCKED",
                &[
                    &filter.manager,
                    &filter.tasks,
                    &filter.periodic,
                    &now,
                    &limit,
                ],
            )?
            .iter()
            .map(|row| {
                let cron: Option<String> = row.try_get(4)?;
                let missed: String = row.try_get(9)?;
                Ok(DueSchedule {
                    id: row.try_get(0)?,
                    task: row.try_get(1)?,
                    args: row.try_get(2)?,
                    cadence: Cadence::from_stored(row.try_get(3)?, cron.as_deref()),
                    times: row.try_get::<_, Option<i64>>(5)?.map(u32_from),
                    until: row.try_get(6)?,
                    runs: u32_from(row.try_get(7)?),
                    tick: row.try_get(8)?,
                    missed: Missed::from_stored(&missed),
                    priority: row.try_get(10)?,
                    max_attempts: u32_from(row.try_get(11)?),
                    backoff_base_ms: row.try_get(12)?,
                    backoff_cap_ms: row.try_get(13)?,
                    timeout_ms: row.try_get(14)?,
                    args_fingerprint: Some(row.try_get::<_, String>(15)?)
                        .filter(|fp| !fp.is_empty()),
                })
            })
            .collect()
    }

    /// Moves a schedule from `from_tick` to `next`, if it is still at `from_tick`.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn advance_schedule(
        &mut self,
        id: i64,
        from_tick: i64,
        runs: u32,
        next: Option<i64>,
    ) -> Result<bool, postgres::Error> {
        let moved = self.conn().execute(
            "UPDATE castor_schedules SET runs = $2, next_run_at = $3 \
             WHERE id = $1 AND next_run_at = $4",
            &[&id, &i64::from(runs), &next, &from_tick],
        )?;
        Ok(moved == 1)
    }

    /// Pauses or resumes a schedule; `false` if there is none with this id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_schedule_paused(&mut self, id: i64, paused: bool) -> Result<bool, postgres::Error> {
        let changed = self.conn().execute(
            "UPDATE castor_schedules SET paused = $2 WHERE id = $1",
            &[&id, &paused],
        )?;
        Ok(changed == 1)
    }

    /// Deletes a schedule (its runs stay); `false` if there is none with this id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn remove_schedule(&mut self, id: i64) -> Result<bool, postgres::Error> {
        let changed = self
            .conn()
            .execute("DELETE FROM castor_schedules WHERE id = $1", &[&id])?;
        Ok(changed == 1)
    }
}

impl PostgresDriver {
    /// The earliest tick among the schedules `filter` selects.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn next_schedule_due(&self, filter: &ScheduleFilter) -> Result<Option<i64>, StoreError> {
        self.read("find the next schedule tick", |conn| {
            conn.query_one(
                "SELECT min(next_run_at) FROM castor_schedules WHERE manager = $1 \
                 AND NOT paused AND next_run_at IS NOT NULL \
                 AND ((name IS NULL AND task = ANY($2)) OR name = ANY($3))",
                &[&filter.manager, &filter.tasks, &filter.periodic],
            )?
            .try_get(0)
        })
    }

    /// Every schedule (of `manager`, if given), by id.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedules(&self, manager: Option<&str>) -> Result<Vec<ScheduleInfo>, StoreError> {
        self.read("list schedules", |conn| {
            conn.query(
                "SELECT id, manager, task, name, every_ms, cron, times, until_at, runs, \
                 next_run_at, paused, missed, args_fingerprint FROM castor_schedules \
                 WHERE $1::text IS NULL OR manager = $1 ORDER BY id",
                &[&manager],
            )?
            .iter()
            .map(info_from)
            .collect()
        })
    }

    /// One schedule, if it exists.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedule(&self, id: i64) -> Result<Option<ScheduleInfo>, StoreError> {
        self.read("read a schedule", |conn| {
            conn.query_opt(
                "SELECT id, manager, task, name, every_ms, cron, times, until_at, runs, \
                 next_run_at, paused, missed, args_fingerprint FROM castor_schedules WHERE id = $1",
                &[&id],
            )?
            .map(|row| info_from(&row))
            .transpose()
        })
    }

    /// The ids of a schedule's runs, oldest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError> {
        self.read("list a schedule's runs", |conn| {
            conn.query(
                "SELECT id FROM castor_tasks WHERE schedule_id = $1 ORDER BY seq",
                &[&id],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
        })
    }
}
