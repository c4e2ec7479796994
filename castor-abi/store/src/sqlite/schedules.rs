//! Schedules: creating them, creating their runs when due (once per tick, whatever the
//! number of workers: the run and the schedule's advance are one transaction, guarded by
//! the tick), pausing, removing, listing.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::rows::id_from;
use super::{SqliteDriver, SqliteTx};
use crate::error::StoreError;
use crate::model::{DueSchedule, NewSchedule, ScheduleFilter};
use crate::schedule::{Cadence, Missed, ScheduleInfo};

/// The filter's names as the JSON arrays [`ELIGIBLE`] reads with `json_each`.
fn names_json(filter: &ScheduleFilter) -> (String, String) {
    let json = |names: &[String]| serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
    (json(&filter.tasks), json(&filter.periodic))
}

/// The schedules a worker runs: its manager's app schedules of tasks it knows, and the
/// periodic schedules it declares. Names travel as JSON arrays (`json_each`), so one
/// statement serves any number of them.
const ELIGIBLE: &str = "manager = ?1 AND paused = 0 AND next_run_at IS NOT NULL AND \
     ((name IS NULL AND task IN (SELECT value FROM json_each(?2))) \
      OR name IN (SELECT value FROM json_each(?3)))";

const INFO_COLUMNS: &str = "id, manager, task, name, every_ms, cron, times, until_at, runs, \
     next_run_at, paused, missed, args_fingerprint";

fn info_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleInfo> {
    let every_ms: Option<i64> = row.get(4)?;
    let cron: Option<String> = row.get(5)?;
    let cadence = match Cadence::from_stored(every_ms, cron.as_deref()) {
        Some(cadence) => cadence.to_string(),
        None => format!("invalid ({every_ms:?}, {cron:?})"),
    };
    let missed: String = row.get(11)?;
    Ok(ScheduleInfo {
        id: row.get(0)?,
        manager: row.get(1)?,
        task: row.get(2)?,
        name: row.get(3)?,
        cadence,
        times: row.get(6)?,
        until: row.get(7)?,
        runs: row.get(8)?,
        next_run_at: row.get(9)?,
        paused: row.get::<_, i64>(10)? != 0,
        missed: Missed::from_stored(&missed),
        args_fingerprint: Some(row.get::<_, String>(12)?).filter(|fp| !fp.is_empty()),
    })
}

impl SqliteTx<'_> {
    /// Inserts a schedule an app created; returns its id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn create_schedule(&self, s: &NewSchedule<'_>, now: i64) -> Result<i64, rusqlite::Error> {
        let (every_ms, cron) = s.cadence.to_stored();
        self.driver
            .conn
            .prepare_cached(
                "INSERT INTO castor_schedules (manager, task, name, args, every_ms, cron, times, \
                 until_at, next_run_at, missed, priority, max_attempts, backoff_base_ms, \
                 backoff_cap_ms, timeout_ms, created_at, args_fingerprint) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17)",
            )?
            .insert(params![
                s.manager,
                s.task,
                s.name,
                s.args,
                every_ms,
                cron,
                s.times,
                s.until,
                s.first_run_at,
                s.missed.as_str(),
                s.priority,
                s.max_attempts,
                s.backoff_base_ms,
                s.backoff_cap_ms,
                s.timeout_ms,
                now,
                s.args_fingerprint.unwrap_or(""),
            ])
    }

    /// Makes a declared periodic task's schedule match its declaration: created if new,
    /// kept (with its next tick) if unchanged, restarted if its cadence, arguments (or
    /// their fingerprint) or policy (missed ticks, priority, attempts, backoff, timeout)
    /// changed. Returns its id.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn upsert_periodic(&self, s: &NewSchedule<'_>, now: i64) -> Result<i64, rusqlite::Error> {
        let (every_ms, cron) = s.cadence.to_stored();
        let existing: Option<(i64, bool)> = self
            .driver
            .conn
            .prepare_cached(
                "SELECT id, (task = ?3 AND args = ?4 AND every_ms IS ?5 AND cron IS ?6 \
                 AND missed = ?7 AND max_attempts = ?8 AND timeout_ms IS ?9 \
                 AND priority = ?10 AND backoff_base_ms = ?11 AND backoff_cap_ms = ?12 \
                 AND args_fingerprint = ?13) \
                 FROM castor_schedules WHERE manager = ?1 AND name = ?2",
            )?
            .query_row(
                params![
                    s.manager,
                    s.name,
                    s.task,
                    s.args,
                    every_ms,
                    cron,
                    s.missed.as_str(),
                    s.max_attempts,
                    s.timeout_ms,
                    s.priority,
                    s.backoff_base_ms,
                    s.backoff_cap_ms,
                    s.args_fingerprint.unwrap_or(""),
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match existing {
            Some((id, true)) => Ok(id),
            Some((id, false)) => {
                self.driver
                    .conn
                    .prepare_cached(
                        "UPDATE castor_schedules SET task = ?2, args = ?3, every_ms = ?4, \
                         cron = ?5, missed = ?6, priority = ?7, max_attempts = ?8, \
                         backoff_base_ms = ?9, backoff_cap_ms = ?10, timeout_ms = ?11, \
                         next_run_at = ?12, args_fingerprint = ?13 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        s.task,
                        s.args,
                        every_ms,
                        cron,
                        s.missed.as_str(),
                        s.priority,
                        s.max_attempts,
                        s.backoff_base_ms,
                        s.backoff_cap_ms,
                        s.timeout_ms,
                        s.first_run_at,
                        s.args_fingerprint.unwrap_or(""),
                    ])?;
                Ok(id)
            }
            None => self.create_schedule(s, now),
        }
    }

    /// Schedules `filter` selects whose tick is due at `now`, oldest tick first.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn due_schedules(
        &self,
        filter: &ScheduleFilter,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, rusqlite::Error> {
        let (tasks_json, periodic_json) = names_json(filter);
        self.driver
            .conn
            .prepare_cached(&format!(
                "SELECT id, task, args, every_ms, cron, times, until_at, runs, next_run_at, \
                 missed, priority, max_attempts, backoff_base_ms, backoff_cap_ms, timeout_ms, \
                 args_fingerprint FROM castor_schedules WHERE {ELIGIBLE} AND next_run_at <= ?4 \
                 ORDER BY next_run_at LIMIT ?5"
            ))?
            .query_map(
                params![filter.manager, tasks_json, periodic_json, now, limit as i64],
                |row| {
                    let cron: Option<String> = row.get(4)?;
                    let missed: String = row.get(9)?;
                    Ok(DueSchedule {
                        id: row.get(0)?,
                        task: row.get(1)?,
                        args: row.get(2)?,
                        cadence: Cadence::from_stored(row.get(3)?, cron.as_deref()),
                        times: row.get(5)?,
                        until: row.get(6)?,
                        runs: row.get(7)?,
                        tick: row.get(8)?,
                        missed: Missed::from_stored(&missed),
                        priority: row.get(10)?,
                        max_attempts: row.get(11)?,
                        backoff_base_ms: row.get(12)?,
                        backoff_cap_ms: row.get(13)?,
                        timeout_ms: row.get(14)?,
                        args_fingerprint: Some(row.get::<_, String>(15)?)
                            .filter(|fp| !fp.is_empty()),
                    })
                },
            )?
            .collect()
    }

    /// Moves a schedule from `from_tick` to `next`, if it is still at `from_tick`.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn advance_schedule(
        &self,
        id: i64,
        from_tick: i64,
        runs: u32,
        next: Option<i64>,
    ) -> Result<bool, rusqlite::Error> {
        let moved = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_schedules SET runs = ?2, next_run_at = ?3 \
                 WHERE id = ?1 AND next_run_at = ?4",
            )?
            .execute(params![id, runs, next, from_tick])?;
        Ok(moved == 1)
    }

    /// Pauses or resumes a schedule; `false` if there is none with this id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<bool, rusqlite::Error> {
        let changed = self
            .driver
            .conn
            .prepare_cached("UPDATE castor_schedules SET paused = ?2 WHERE id = ?1")?
            .execute(params![id, i64::from(paused)])?;
        Ok(changed == 1)
    }

    /// Deletes a schedule (its runs stay); `false` if there is none with this id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn remove_schedule(&self, id: i64) -> Result<bool, rusqlite::Error> {
        let changed = self
            .driver
            .conn
            .prepare_cached("DELETE FROM castor_schedules WHERE id = ?1")?
            .execute([id])?;
        Ok(changed == 1)
    }
}

impl SqliteDriver {
    /// The earliest tick among the schedules `filter` selects.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn next_schedule_due(&self, filter: &ScheduleFilter) -> Result<Option<i64>, StoreError> {
        let (tasks_json, periodic_json) = names_json(filter);
        self.conn
            .prepare_cached(&format!(
                "SELECT min(next_run_at) FROM castor_schedules WHERE {ELIGIBLE}"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![filter.manager, tasks_json, periodic_json], |row| {
                    row.get(0)
                })
            })
            .map_err(|e| self.error("find the next schedule tick", e))
    }

    /// Every schedule (of `manager`, if given), by id.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedules(&self, manager: Option<&str>) -> Result<Vec<ScheduleInfo>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {INFO_COLUMNS} FROM castor_schedules \
                 WHERE ?1 IS NULL OR manager = ?1 ORDER BY id"
            ))
            .and_then(|mut stmt| stmt.query_map([manager], info_from)?.collect())
            .map_err(|e| self.error("list schedules", e))
    }

    /// One schedule, if it exists.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedule(&self, id: i64) -> Result<Option<ScheduleInfo>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {INFO_COLUMNS} FROM castor_schedules WHERE id = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([id], info_from).optional())
            .map_err(|e| self.error("read a schedule", e))
    }

    /// The ids of a schedule's runs, oldest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError> {
        self.conn
            .prepare_cached("SELECT id FROM castor_tasks WHERE schedule_id = ?1 ORDER BY seq")
            .and_then(|mut stmt| {
                stmt.query_map([id], |row| id_from(row.get(0)?, 0))?
                    .collect()
            })
            .map_err(|e| self.error("list a schedule's runs", e))
    }
}
