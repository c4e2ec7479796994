//! Schedules: creating them, creating their runs when due (once per tick, whatever the
//! number of workers: the run and the schedule's advance are one transaction, guarded by
//! the tick), pausing, removing, listing.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{NewTask, Store, WriteTx, classify, duration_us};
use crate::error::StoreError;
use crate::schedule::{Cadence, MISSED_AFTER, Missed, ScheduleInfo};

/// A schedule to insert.
#[derive(Debug, Clone)]
pub struct NewSchedule<'a> {
    /// The manager whose workers run it.
    pub manager: &'a str,
    /// The task each run is.
    pub task: &'a str,
    /// A periodic task's name; `None` for a schedule an app created.
    pub name: Option<&'a str>,
    /// The encoded arguments of every run.
    pub args: &'a [u8],
    /// When it ticks.
    pub cadence: &'a Cadence,
    /// The run limit.
    pub times: Option<u32>,
    /// No run after this time (microseconds since the epoch).
    pub until: Option<i64>,
    /// The first tick.
    pub first_run_at: i64,
    /// What happens to missed ticks.
    pub missed: Missed,
    /// Each run's priority.
    pub priority: i32,
    /// Each run's attempt limit.
    pub max_attempts: u32,
    /// Each run's first backoff, in milliseconds.
    pub backoff_base_ms: i64,
    /// Each run's longest backoff, in milliseconds.
    pub backoff_cap_ms: i64,
    /// Each run's timeout, in milliseconds.
    pub timeout_ms: Option<i64>,
}

fn cadence_columns(cadence: &Cadence) -> (Option<i64>, Option<String>) {
    match cadence {
        Cadence::Every(d) => (Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)), None),
        Cadence::Cron(c) => (None, Some(c.to_string())),
    }
}

fn cadence_from(every_ms: Option<i64>, cron: Option<String>) -> Option<Cadence> {
    match (every_ms, cron) {
        (Some(ms), _) => Some(Cadence::Every(std::time::Duration::from_millis(
            u64::try_from(ms).unwrap_or(1),
        ))),
        (None, Some(expr)) => expr.parse().ok().map(Cadence::Cron),
        (None, None) => None,
    }
}

fn missed_from(text: &str) -> Missed {
    if text == "skip" {
        Missed::Skip
    } else {
        Missed::RunOnce
    }
}

/// The schedules a worker runs: its manager's app schedules of tasks it knows, and the
/// periodic schedules it declares. Names travel as JSON arrays (`json_each`), so one
/// statement serves any number of them.
const ELIGIBLE: &str = "manager = ?1 AND paused = 0 AND next_run_at IS NOT NULL AND \
     ((name IS NULL AND task IN (SELECT value FROM json_each(?2))) \
      OR name IN (SELECT value FROM json_each(?3)))";

const INFO_COLUMNS: &str = "id, manager, task, name, every_ms, cron, times, until_at, runs, \
     next_run_at, paused, missed";

fn info_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleInfo> {
    let every_ms: Option<i64> = row.get(4)?;
    let cron: Option<String> = row.get(5)?;
    let cadence = match cadence_from(every_ms, cron.clone()) {
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
        missed: missed_from(&missed),
    })
}

impl WriteTx<'_> {
    /// Inserts a schedule an app created; returns its id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn create_schedule(&self, s: &NewSchedule<'_>, now: i64) -> Result<i64, rusqlite::Error> {
        let (every_ms, cron) = cadence_columns(s.cadence);
        self.tx
            .prepare_cached(
                "INSERT INTO castor_schedules (manager, task, name, args, every_ms, cron, times, \
                 until_at, next_run_at, missed, priority, max_attempts, backoff_base_ms, \
                 backoff_cap_ms, timeout_ms, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
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
            ])
    }

    /// Makes a declared periodic task's schedule match its declaration: created if new,
    /// kept (with its next tick) if unchanged, restarted if its cadence, arguments or
    /// policy changed. Returns its id.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn upsert_periodic(&self, s: &NewSchedule<'_>, now: i64) -> Result<i64, rusqlite::Error> {
        let (every_ms, cron) = cadence_columns(s.cadence);
        let existing: Option<(i64, bool)> = self
            .tx
            .prepare_cached(
                "SELECT id, (task = ?3 AND args = ?4 AND every_ms IS ?5 AND cron IS ?6 \
                 AND missed = ?7 AND max_attempts = ?8 AND timeout_ms IS ?9) \
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
                    s.timeout_ms
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match existing {
            Some((id, true)) => Ok(id),
            Some((id, false)) => {
                self.tx
                    .prepare_cached(
                        "UPDATE castor_schedules SET task = ?2, args = ?3, every_ms = ?4, \
                         cron = ?5, missed = ?6, priority = ?7, max_attempts = ?8, \
                         backoff_base_ms = ?9, backoff_cap_ms = ?10, timeout_ms = ?11, \
                         next_run_at = ?12 WHERE id = ?1",
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
                    ])?;
                Ok(id)
            }
            None => self.create_schedule(s, now),
        }
    }

    /// Creates the runs of every due schedule this worker runs (at most `limit`) and moves
    /// each schedule to its next tick. Returns the new tasks' ids.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn run_due_schedules(
        &self,
        manager: &str,
        tasks_json: &str,
        periodic_json: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Uuid>, rusqlite::Error> {
        struct Due {
            id: i64,
            task: String,
            args: Vec<u8>,
            cadence: Option<Cadence>,
            times: Option<u32>,
            until: Option<i64>,
            runs: u32,
            tick: i64,
            missed: Missed,
            priority: i32,
            max_attempts: u32,
            backoff_base_ms: i64,
            backoff_cap_ms: i64,
            timeout_ms: Option<i64>,
        }
        let due: Vec<Due> = self
            .tx
            .prepare_cached(&format!(
                "SELECT id, task, args, every_ms, cron, times, until_at, runs, next_run_at, \
                 missed, priority, max_attempts, backoff_base_ms, backoff_cap_ms, timeout_ms \
                 FROM castor_schedules WHERE {ELIGIBLE} AND next_run_at <= ?4 \
                 ORDER BY next_run_at LIMIT ?5"
            ))?
            .query_map(
                params![manager, tasks_json, periodic_json, now, limit as i64],
                |row| {
                    let missed: String = row.get(9)?;
                    Ok(Due {
                        id: row.get(0)?,
                        task: row.get(1)?,
                        args: row.get(2)?,
                        cadence: cadence_from(row.get(3)?, row.get(4)?),
                        times: row.get(5)?,
                        until: row.get(6)?,
                        runs: row.get(7)?,
                        tick: row.get(8)?,
                        missed: missed_from(&missed),
                        priority: row.get(10)?,
                        max_attempts: row.get(11)?,
                        backoff_base_ms: row.get(12)?,
                        backoff_cap_ms: row.get(13)?,
                        timeout_ms: row.get(14)?,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        let mut created = Vec::new();
        for s in due {
            let Some(cadence) = s.cadence else {
                // Unreadable cadence (edited by hand): stop it rather than spin.
                self.tx
                    .prepare_cached("UPDATE castor_schedules SET next_run_at = NULL WHERE id = ?1")?
                    .execute([s.id])?;
                continue;
            };
            // The latest tick that is due, and the first one that is not.
            let (latest, mut next) = match &cadence {
                Cadence::Every(interval) => {
                    let step = duration_us(*interval).max(1);
                    let latest = s.tick + ((now - s.tick) / step) * step;
                    (latest, latest.checked_add(step))
                }
                Cadence::Cron(cron) => {
                    let mut latest = s.tick;
                    // Bounded: a minutely cron after a long downtime has many ticks.
                    for _ in 0..100_000 {
                        match cron.next_after(latest) {
                            Some(t) if t <= now => latest = t,
                            _ => break,
                        }
                    }
                    (latest, cron.next_after(now))
                }
            };
            let run = match s.missed {
                Missed::RunOnce => true,
                Missed::Skip => now - latest <= duration_us(MISSED_AFTER),
            };
            let runs = s.runs + u32::from(run);
            if s.times.is_some_and(|times| runs >= times) {
                next = None;
            }
            if let (Some(n), Some(until)) = (next, s.until)
                && n > until
            {
                next = None;
            }
            let moved = self
                .tx
                .prepare_cached(
                    "UPDATE castor_schedules SET runs = ?2, next_run_at = ?3 \
                     WHERE id = ?1 AND next_run_at = ?4",
                )?
                .execute(params![s.id, runs, next, s.tick])?;
            if moved == 1 && run {
                let task = NewTask {
                    manager,
                    task: &s.task,
                    args: &s.args,
                    run_at_us: None,
                    priority: s.priority,
                    unique_key: None,
                    max_attempts: s.max_attempts,
                    backoff_base_ms: s.backoff_base_ms,
                    backoff_cap_ms: s.backoff_cap_ms,
                    timeout_ms: s.timeout_ms,
                    schedule_id: Some(s.id),
                };
                created.push(self.enqueue(&task, now)?.0);
            }
        }
        Ok(created)
    }

    /// Pauses or resumes a schedule; `false` if there is none with this id.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<bool, rusqlite::Error> {
        let changed = self
            .tx
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
            .tx
            .prepare_cached("DELETE FROM castor_schedules WHERE id = ?1")?
            .execute([id])?;
        Ok(changed == 1)
    }
}

impl Store {
    /// The earliest tick among the schedules a worker runs (see [`WriteTx::run_due_schedules`]).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn next_schedule_due(
        &self,
        manager: &str,
        tasks_json: &str,
        periodic_json: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT min(next_run_at) FROM castor_schedules WHERE {ELIGIBLE}"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![manager, tasks_json, periodic_json], |row| {
                    row.get(0)
                })
            })
            .map_err(|e| classify(&self.path, "find the next schedule tick", e))
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
            .map_err(|e| classify(&self.path, "list schedules", e))
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
            .map_err(|e| classify(&self.path, "read a schedule", e))
    }

    /// The ids of a schedule's runs, oldest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError> {
        self.conn
            .prepare_cached("SELECT id FROM castor_tasks WHERE schedule_id = ?1 ORDER BY seq")
            .and_then(|mut stmt| {
                stmt.query_map([id], |row| {
                    let bytes: Vec<u8> = row.get(0)?;
                    Uuid::from_slice(&bytes).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Blob,
                            Box::new(e),
                        )
                    })
                })?
                .collect()
            })
            .map_err(|e| classify(&self.path, "list a schedule's runs", e))
    }
}
