//! [`SqliteTx`]: the SQLite driver's write transaction. Its statements live beside the
//! reads they belong with (`admin.rs`, `rescue.rs`, `schedules.rs`, `workers.rs`, and
//! here the task's own life: insert, claim, finish); this file also maps each to the
//! driver-neutral [`Tx`] operation, naming what castor was doing in its errors.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::SqliteDriver;
use super::rows::{self, ClaimSql};
use crate::LOG_LINES_KEPT;
use crate::chain::{self, ChainStatements, Link, WaitingChild};
use crate::driver::Tx;
use crate::error::StoreError;
use crate::limits::{Candidate, DeclaredLimits, LimitRow, LimitedClaim, Limits};
use crate::model::{
    After, AttemptEnd, AttemptError, CancelOutcome, Claimed, DueSchedule, Enqueued, Expired,
    Finish, LiveWorker, LogLevel, NewLog, NewSchedule, NewTask, RetryOutcome, ScheduleFilter,
    TaskFilter, WorkerRow,
};
use crate::state::TaskState;

/// A write transaction on the SQLite driver's connection (`BEGIN IMMEDIATE`). Every
/// method is one guarded statement; dropped without a commit, it rolls back.
pub struct SqliteTx<'a> {
    pub(super) driver: &'a mut SqliteDriver,
    /// Committed (or rolled back by a failed commit): nothing for `drop` to undo.
    done: bool,
    /// Waiting dependents released so far ([`Tx::released`]).
    released: usize,
}

impl<'a> SqliteTx<'a> {
    pub(super) fn begin(driver: &'a mut SqliteDriver) -> Result<SqliteTx<'a>, StoreError> {
        driver
            .statement("BEGIN IMMEDIATE")
            .map_err(|e| driver.error("begin a write", e))?;
        Ok(SqliteTx {
            driver,
            done: false,
            released: 0,
        })
    }

    /// The claim statements for `names` task names, built once per count.
    fn claim_sql(&mut self, names: usize) -> ClaimSql {
        self.driver
            .claims
            .entry(names)
            .or_insert_with(|| ClaimSql::new(names))
            .clone()
    }

    fn fail(&self, operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |e| self.driver.error(operation, e)
    }
}

impl Tx for SqliteTx<'_> {
    fn enqueue(&mut self, task: &NewTask<'_>, now: i64) -> Result<Enqueued, StoreError> {
        SqliteTx::enqueue(self, task, now)
            .map(|(id, existing)| Enqueued { id, existing })
            .map_err(self.fail("enqueue a task"))
    }

    fn enqueue_after(
        &mut self,
        task: &NewTask<'_>,
        after: &After<'_>,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        for parent in after.parents {
            let found = SqliteTx::mark_parent(self, parent.id)
                .map_err(self.fail("mark a task's parent"))?;
            if !found {
                return Err(StoreError::UnknownParent {
                    database: self.driver.database.clone(),
                    task: task.task.to_owned(),
                    parent: parent.id,
                });
            }
        }
        let (id, existing, seq) = SqliteTx::insert(self, task, now, Some(after))
            .map_err(self.fail("enqueue a task after its parents"))?;
        if !existing {
            chain::settle_new(self, seq, now)?;
        }
        Ok(Enqueued { id, existing })
    }

    fn cancel(&mut self, id: Uuid, now: i64) -> Result<Option<CancelOutcome>, StoreError> {
        let (outcome, settle) =
            SqliteTx::cancel(self, id, now).map_err(self.fail("cancel a task"))?;
        if settle {
            chain::settle_parents(self, [id], now)?;
        }
        Ok(outcome)
    }

    fn retry(&mut self, id: Uuid, now: i64) -> Result<Option<RetryOutcome>, StoreError> {
        let rewaiting = SqliteTx::rewait(self, id).map_err(self.fail("retry a task"))?;
        if let Some(seq) = rewaiting {
            chain::settle_new(self, seq, now)?;
            let state = SqliteTx::state_of(self, id).map_err(self.fail("retry a task"))?;
            return Ok(state.map(RetryOutcome::Rewaited));
        }
        SqliteTx::retry(self, id, now).map_err(self.fail("retry a task"))
    }

    fn purge(&mut self, states: &[TaskState], before: i64) -> Result<usize, StoreError> {
        let (count, parents) =
            SqliteTx::purge(self, states, before).map_err(self.fail("purge tasks"))?;
        // The dependents end now (the caller's `before` is a cutoff, not the time).
        chain::settle_parents(self, parents, crate::now_us())?;
        Ok(count)
    }

    fn claim(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        SqliteTx::claim(self, filter, worker, limit, now, lease_until)
            .map_err(self.fail("claim tasks"))
    }

    fn declare_limits(
        &mut self,
        manager: &str,
        declared: &[DeclaredLimits<'_>],
        now: i64,
    ) -> Result<(), StoreError> {
        self.declare_limits_rows(manager, declared, now)
            .map_err(self.fail("declare tasks' limits"))
    }

    fn set_limit_override(
        &mut self,
        manager: &str,
        task: &str,
        overridden: &Limits,
        now: i64,
    ) -> Result<LimitRow, StoreError> {
        self.set_override(manager, task, overridden, now)
            .map_err(self.fail("set a task's limits"))
    }

    fn claim_limited(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<LimitedClaim, StoreError> {
        crate::limits::claim_limited(self, filter, worker, limit, now, lease_until)
    }

    fn lock_limits(
        &mut self,
        manager: &str,
        tasks: &[String],
    ) -> Result<Vec<LimitRow>, StoreError> {
        self.limit_rows(manager, tasks)
            .map_err(self.fail("read tasks' limits"))
    }

    fn limits_of(&mut self, manager: &str) -> Result<Vec<LimitRow>, StoreError> {
        self.driver
            .read_limits(Some(manager))
            .map_err(self.fail("read tasks' limits"))
    }

    fn running_limited(&mut self, manager: &str, task: &str) -> Result<u64, StoreError> {
        self.count_running_limited(manager, task)
            .map_err(self.fail("count a limited task's attempts"))
    }

    fn starts_in_window(
        &mut self,
        manager: &str,
        task: &str,
        since: i64,
    ) -> Result<u64, StoreError> {
        self.prune_starts(manager, task, since)
            .map_err(self.fail("count a task's recent starts"))
    }

    fn limited_candidates(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
        per_key: Option<u32>,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        self.candidates(manager, task, prints, per_key, limit)
            .map_err(self.fail("find tasks to claim"))
    }

    fn claim_candidates(
        &mut self,
        seqs: &[i64],
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_rows(seqs, worker, now, lease_until)
            .map_err(self.fail("claim tasks"))
    }

    fn record_starts(
        &mut self,
        manager: &str,
        task: &str,
        count: usize,
        now: i64,
    ) -> Result<(), StoreError> {
        self.insert_starts(manager, task, count, now)
            .map_err(self.fail("record a task's starts"))
    }

    fn start_at(
        &mut self,
        manager: &str,
        task: &str,
        offset: u64,
    ) -> Result<Option<i64>, StoreError> {
        self.nth_start(manager, task, offset)
            .map_err(self.fail("read a task's starts"))
    }

    fn has_available(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
    ) -> Result<bool, StoreError> {
        self.any_available(manager, task, prints)
            .map_err(self.fail("look for available tasks"))
    }

    fn finish_if_running(
        &mut self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (recorded, parent) = SqliteTx::finish_if_running(self, seq, attempt, finish, now)
            .map_err(self.fail("record an attempt's outcome"))?;
        if let Some(parent) = parent {
            chain::settle_parents(self, [parent], now)?;
        }
        Ok(recorded)
    }

    fn finish_many(
        &mut self,
        worker: &str,
        ends: &[AttemptEnd<'_>],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        // One statement each: on SQLite a statement is a function call, not a round trip.
        let mut parents = Vec::new();
        let recorded = ends
            .iter()
            .map(|end| {
                let (recorded, parent) =
                    SqliteTx::finish_if_running(self, end.seq, end.attempt, &end.finish, now)?;
                parents.extend(parent);
                if recorded {
                    return Ok(true);
                }
                SqliteTx::already_finished(self, worker, end)
            })
            .collect::<Result<_, _>>()
            .map_err(self.fail("record attempts' outcomes"))?;
        if !parents.is_empty() {
            chain::settle_parents(self, parents, now)?;
        }
        Ok(recorded)
    }

    fn release_if_running(&mut self, seq: i64, attempt: u32) -> Result<bool, StoreError> {
        SqliteTx::release_if_running(self, seq, attempt).map_err(self.fail("release a claim"))
    }

    fn append_log(&mut self, log: &NewLog<'_>) -> Result<(), StoreError> {
        SqliteTx::append_log(self, log.seq, log.attempt, log.at, log.level, log.line)
            .map_err(self.fail("append to a task's log"))
    }

    fn set_progress(
        &mut self,
        seq: i64,
        attempt: u32,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), StoreError> {
        SqliteTx::set_progress(self, seq, attempt, done, total, message)
            .map_err(self.fail("record a task's progress"))
    }

    fn stage_due(&mut self, manager: &str, now: i64) -> Result<usize, StoreError> {
        SqliteTx::stage_due(self, manager, now).map_err(self.fail("stage due tasks"))
    }

    fn due_schedules(
        &mut self,
        filter: &ScheduleFilter,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, StoreError> {
        SqliteTx::due_schedules(self, filter, now, limit).map_err(self.fail("read due schedules"))
    }

    fn advance_schedule(
        &mut self,
        id: i64,
        from_tick: i64,
        runs: u32,
        next: Option<i64>,
    ) -> Result<bool, StoreError> {
        SqliteTx::advance_schedule(self, id, from_tick, runs, next)
            .map_err(self.fail("move a schedule to its next tick"))
    }

    fn renew_leases(
        &mut self,
        worker: &str,
        held: &[(i64, u32)],
        until: i64,
    ) -> Result<usize, StoreError> {
        SqliteTx::renew_leases(self, worker, held, until).map_err(self.fail("renew leases"))
    }

    fn register_worker(&mut self, worker: &WorkerRow) -> Result<(), StoreError> {
        SqliteTx::register_worker(self, worker).map_err(self.fail("register the worker"))
    }

    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        completed: u64,
        failed: u64,
    ) -> Result<(), StoreError> {
        SqliteTx::heartbeat(self, worker, now, completed, failed)
            .map_err(self.fail("record a heartbeat"))
    }

    fn stop_worker(&mut self, worker: &str, now: i64) -> Result<(), StoreError> {
        SqliteTx::stop_worker(self, worker, now).map_err(self.fail("record the worker's stop"))
    }

    fn live_workers(&mut self) -> Result<Vec<LiveWorker>, StoreError> {
        SqliteTx::live_workers(self).map_err(self.fail("read live workers"))
    }

    fn expired_leases(&mut self, now: i64, limit: usize) -> Result<Vec<Expired>, StoreError> {
        SqliteTx::expired_leases(self, now, limit).map_err(self.fail("find expired leases"))
    }

    fn bury_worker(&mut self, worker: &str, now: i64) -> Result<usize, StoreError> {
        SqliteTx::bury_worker(self, worker, now).map_err(self.fail("record a dead worker"))
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>, StoreError> {
        SqliteTx::cancel_requests(self, worker).map_err(self.fail("read cancel requests"))
    }

    fn prune(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        SqliteTx::prune(self, before, limit).map_err(self.fail("prune finished tasks"))
    }

    fn create_schedule(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError> {
        SqliteTx::create_schedule(self, schedule, now).map_err(self.fail("create a schedule"))
    }

    fn upsert_periodic(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError> {
        SqliteTx::upsert_periodic(self, schedule, now).map_err(self.fail("declare a periodic task"))
    }

    fn set_schedule_paused(&mut self, id: i64, paused: bool) -> Result<bool, StoreError> {
        SqliteTx::set_schedule_paused(self, id, paused)
            .map_err(self.fail("pause or resume a schedule"))
    }

    fn remove_schedule(&mut self, id: i64) -> Result<bool, StoreError> {
        SqliteTx::remove_schedule(self, id).map_err(self.fail("remove a schedule"))
    }

    fn released(&self) -> usize {
        self.released
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.driver
            .statement("COMMIT")
            .map_err(|e| self.driver.error("commit", e))?;
        self.done = true;
        self.driver.restart_wal_if_asked();
        Ok(())
    }
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if !self.done && !self.driver.conn.is_autocommit() {
            // Nothing to report: the transaction is abandoned either way, and SQLite rolls
            // it back itself if this fails.
            let _ = self.driver.statement("ROLLBACK");
        }
    }
}

impl SqliteTx<'_> {
    /// Inserts one task. With a unique key held by an unfinished task of the same name,
    /// inserts nothing and returns that task's id and `true`.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn enqueue(&self, task: &NewTask<'_>, now: i64) -> Result<(Uuid, bool), rusqlite::Error> {
        self.insert(task, now, None)
            .map(|(id, existing, _)| (id, existing))
    }

    /// Inserts one task (`waiting` on `after`'s parents, with its links, if given); its
    /// id, whether the unique key's holder was returned instead, and the row.
    fn insert(
        &self,
        task: &NewTask<'_>,
        now: i64,
        after: Option<&After<'_>>,
    ) -> Result<(Uuid, bool, i64), rusqlite::Error> {
        let id = Uuid::now_v7();
        let scheduled_at = task.run_at_us.unwrap_or(now);
        let state = if after.is_some() {
            "waiting"
        } else if scheduled_at > now {
            "scheduled"
        } else {
            "available"
        };
        let parents = after.map_or(0, |a| a.parents.len() as i64);
        let mut stmt = self.driver.conn.prepare_cached(
            "INSERT INTO castor_tasks (id, manager, task, state, priority, args, max_attempts, \
             backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id, created_at, \
             scheduled_at, args_fingerprint, concurrency_key, parents) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
             ON CONFLICT DO NOTHING",
        )?;
        let inserted = stmt.execute(params![
            id.as_bytes().as_slice(),
            task.manager,
            task.task,
            state,
            task.priority,
            task.args,
            task.max_attempts,
            task.backoff_base_ms,
            task.backoff_cap_ms,
            task.timeout_ms,
            task.unique_key,
            task.schedule_id,
            now,
            scheduled_at,
            task.args_fingerprint.unwrap_or(""),
            task.concurrency_key,
            parents,
        ])?;
        if inserted == 1 {
            let seq = self.driver.conn.last_insert_rowid();
            if let Some(after) = after {
                self.link(seq, after)?;
            }
            return Ok((id, false, seq));
        }
        // Only the unique index can make the insert a no-op.
        let (seq, existing): (i64, Vec<u8>) = self
            .driver
            .conn
            .prepare_cached(
                "SELECT seq, id FROM castor_tasks WHERE manager = ?1 AND task = ?2 \
                 AND unique_key = ?3 AND (state = 'waiting' OR state = 'scheduled' \
                 OR state = 'available' OR state = 'running' OR state = 'retryable')",
            )?
            .query_row(params![task.manager, task.task, task.unique_key], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        let id = Uuid::from_slice(&existing).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        Ok((id, true, seq))
    }

    /// Records that a task waits on `after`'s parents.
    fn link(&self, seq: i64, after: &After<'_>) -> Result<(), rusqlite::Error> {
        let mut stmt = self.driver.conn.prepare_cached(
            "INSERT INTO castor_dependencies (child_seq, position, parent_id, parent_task, \
             expected_fingerprint, fan_in) \
             SELECT ?1, ?2, id, task, ?4, ?5 FROM castor_tasks WHERE id = ?3",
        )?;
        for (position, parent) in after.parents.iter().enumerate() {
            stmt.execute(params![
                seq,
                position as i64,
                parent.id.as_bytes().as_slice(),
                parent.result_fingerprint.unwrap_or(""),
                after.fan_in,
            ])?;
        }
        Ok(())
    }

    /// Marks the task `id` as having dependents; `false` if there is no such task.
    fn mark_parent(&self, id: Uuid) -> Result<bool, rusqlite::Error> {
        let changed = self
            .driver
            .conn
            .prepare_cached("UPDATE castor_tasks SET has_dependents = 1 WHERE id = ?1")?
            .execute([id.as_bytes().as_slice()])?;
        Ok(changed == 1)
    }

    /// Claims up to `limit` available tasks of the query's manager and task names, highest
    /// priority first, then oldest. Each claimed task is `running`, its attempt
    /// incremented, owned by `worker` until `lease_until`.
    ///
    /// The candidates are read first (an index seek per task name): no candidates, no
    /// write. A few are claimed row by row; a batch in one `UPDATE .. WHERE seq IN (..)
    /// RETURNING`, which costs more to start (about 50 us) and less per row.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn claim(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, rusqlite::Error> {
        /// Up to this many candidates are claimed row by row.
        const ROW_BY_ROW: usize = 32;
        let fixed: [&dyn rusqlite::ToSql; 5] = [
            &now,
            &worker,
            &lease_until,
            &filter.manager,
            &(limit as i64),
        ];
        // The unknown-fingerprint arms only while the manager has such a task available
        // (one seek into an index that is almost always empty; see migration 6).
        let unsigned: bool = self
            .driver
            .conn
            .prepare_cached(rows::UNSIGNED_SQL)?
            .query_row([&filter.manager], |row| row.get(0))?;
        let (names, prints) = filter.claim_keys(unsigned);
        let sql = self.claim_sql(names.len());
        let keys = names
            .iter()
            .zip(&prints)
            .flat_map(|(name, fp)| [name as &dyn rusqlite::ToSql, fp as &dyn rusqlite::ToSql]);
        let params: Vec<&dyn rusqlite::ToSql> = fixed.into_iter().chain(keys).collect();
        let candidates: Vec<i64> = {
            let mut select = self.driver.conn.prepare_cached(&sql.select)?;
            // The select uses ?4 onwards; bind the same list so the numbers line up.
            select
                .query_map(params.as_slice(), |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut claimed = if candidates.is_empty() {
            Vec::new()
        } else if candidates.len() <= ROW_BY_ROW {
            let mut one = self.driver.conn.prepare_cached(rows::CLAIM_ONE_SQL)?;
            let mut claimed = Vec::with_capacity(candidates.len());
            for seq in candidates {
                claimed.extend(
                    one.query_row(params![seq, now, worker, lease_until], rows::claimed_from)
                        .optional()?,
                );
            }
            claimed
        } else {
            self.driver
                .conn
                .prepare_cached(&sql.batch)?
                .query_map(params.as_slice(), rows::claimed_from)?
                .collect::<Result<Vec<_>, _>>()?
        };
        // RETURNING has no order; run in claim order.
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
        Ok(claimed)
    }

    /// Records how an attempt ended, if the task is still `running` that same attempt.
    /// Returns `false` when it is not: the attempt lost its lease and was rescued (or
    /// cancelled), and a newer attempt owns the row. With it, the task's id when it ended
    /// and has dependents to settle.
    ///
    /// A task whose cancellation was requested while it ran ends `cancelled` instead of
    /// being retried.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn finish_if_running(
        &mut self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        now: i64,
    ) -> Result<(bool, Option<Uuid>), rusqlite::Error> {
        // A task without dependents (`has_dependents` is 0 unless a dependent was
        // dispatched after it) completes by the one plain `UPDATE` it always did: a
        // `RETURNING` clause costs SQLite a temporary table per statement (measured: 15%
        // of a no-op drain). Only when that changes nothing (the task has dependents, or
        // its attempt lost its lease) does a second `UPDATE` return what the chain rules
        // need: the id of a task that ended and has dependents, else NULL.
        let ended: Option<Option<Vec<u8>>> = match finish {
            Finish::Completed {
                result,
                result_fingerprint,
            } => {
                let fingerprint = result_fingerprint.unwrap_or("");
                let plain = self
                    .driver
                    .conn
                    .prepare_cached(
                        "UPDATE castor_tasks SET state = 'completed', result = ?3, \
                         finalized_at = ?4, lease_expires_at = NULL, result_fingerprint = ?5 \
                         WHERE seq = ?1 AND attempt = ?2 AND state = 'running' \
                         AND has_dependents = 0",
                    )?
                    .execute(params![seq, attempt, result, now, fingerprint])?;
                if plain == 1 {
                    Some(None)
                } else {
                    self.driver
                        .conn
                        .prepare_cached(
                            "UPDATE castor_tasks SET state = 'completed', result = ?3, \
                             finalized_at = ?4, lease_expires_at = NULL, result_fingerprint = ?5 \
                             WHERE seq = ?1 AND attempt = ?2 AND state = 'running' \
                             RETURNING CASE WHEN has_dependents THEN id END",
                        )?
                        .query_row(params![seq, attempt, result, now, fingerprint], |row| {
                            row.get(0)
                        })
                        .optional()?
                }
            }
            Finish::Failed { transition, error } => {
                let error = serde_json::to_string(error)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                self.driver.conn
                    .prepare_cached(
                        "UPDATE castor_tasks SET \
                         state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE ?3 END, \
                         scheduled_at = CASE WHEN cancel_requested_at IS NOT NULL THEN scheduled_at \
                                        ELSE coalesce(?4, scheduled_at) END, \
                         finalized_at = CASE WHEN cancel_requested_at IS NOT NULL OR ?3 IN \
                                        ('completed', 'discarded', 'cancelled') THEN ?5 END, \
                         lease_expires_at = NULL, \
                         errors = json_insert(coalesce(errors, '[]'), '$[#]', json(?6)) \
                         WHERE seq = ?1 AND attempt = ?2 AND state = 'running' \
                         RETURNING CASE WHEN has_dependents \
                           AND (state = 'discarded' OR state = 'cancelled') THEN id END",
                    )?
                    .query_row(
                        params![
                            seq,
                            attempt,
                            transition.state.as_str(),
                            transition.scheduled_at,
                            now,
                            error
                        ],
                        |row| row.get(0),
                    )
                    .optional()?
            }
        };
        let Some(parent) = ended else {
            return Ok((false, None));
        };
        self.trim_finished_log(seq)?;
        Ok((true, parent.map(|id| rows::id_from(id, 0)).transpose()?))
    }

    /// Whether the row of `end` already holds that very outcome, written by `worker`:
    /// completed by that attempt, or ending with that attempt's error (whatever its
    /// time). The same answer as the PostgreSQL driver's, whose commit replies can be
    /// lost; here a commit that fails rolls back, so it is a formality.
    ///
    /// # Errors
    /// Fails if the statement fails.
    fn already_finished(
        &self,
        worker: &str,
        end: &AttemptEnd<'_>,
    ) -> Result<bool, rusqlite::Error> {
        match &end.finish {
            Finish::Completed { .. } => self
                .driver
                .conn
                .prepare_cached(
                    "SELECT 1 FROM castor_tasks WHERE seq = ?1 AND attempt = ?2 \
                     AND state = 'completed' AND attempted_by = ?3",
                )?
                .query_row(params![end.seq, end.attempt, worker], |_| Ok(()))
                .optional()
                .map(|found| found.is_some()),
            Finish::Failed { error, .. } => {
                let error = serde_json::to_string(error)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                self.driver
                    .conn
                    .prepare_cached(
                        "SELECT 1 FROM castor_tasks WHERE seq = ?1 AND attempt = ?2 \
                         AND state <> 'running' \
                         AND json_remove(errors -> '$[#-1]', '$.at') = json_remove(json(?3), '$.at')",
                    )?
                    .query_row(params![end.seq, end.attempt, error], |_| Ok(()))
                    .optional()
                    .map(|found| found.is_some())
            }
        }
    }

    /// Moves `scheduled` and `retryable` tasks of `manager` whose time has come to
    /// `available`; returns how many moved.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn stage_due(&self, manager: &str, now: i64) -> Result<usize, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'available' \
                 WHERE manager = ?1 AND (state = 'scheduled' OR state = 'retryable') \
                 AND scheduled_at <= ?2",
            )?
            .execute(params![manager, now])
    }

    /// Gives claimed tasks that never started back: `available` again, the claim's
    /// attempt undone. Guarded by attempt, like every state change of a running task.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn release_if_running(&self, seq: i64, attempt: u32) -> Result<bool, rusqlite::Error> {
        let changed = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'available', attempt = attempt - 1, \
                 attempted_at = NULL, attempted_by = NULL, lease_expires_at = NULL \
                 WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
            )?
            .execute(params![seq, attempt])?;
        Ok(changed == 1)
    }
}

impl SqliteTx<'_> {
    /// Extends the leases of the attempts `held` that `worker` runs.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn renew_leases(
        &self,
        worker: &str,
        held: &[(i64, u32)],
        until: i64,
    ) -> Result<usize, rusqlite::Error> {
        let mut statement = self.driver.conn.prepare_cached(
            "UPDATE castor_tasks SET lease_expires_at = ?4 \
             WHERE seq = ?1 AND attempt = ?2 AND attempted_by = ?3 AND state = 'running'",
        )?;
        let mut renewed = 0;
        for &(seq, attempt) in held {
            renewed += statement.execute(params![seq, attempt, worker, until])?;
        }
        Ok(renewed)
    }

    /// Appends a log line to a task's log, trimming logs when [`crate::log_trim`] says.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn append_log(
        &mut self,
        seq: i64,
        attempt: u32,
        at: i64,
        level: LogLevel,
        line: &str,
    ) -> Result<(), rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "INSERT INTO castor_logs (task_seq, attempt, at, level, line) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![seq, attempt, at, level.as_str(), line])?;
        for task in self.driver.log_trim.appended(seq, attempt) {
            self.trim_log(task)?;
        }
        Ok(())
    }

    /// Trims the log of a task whose attempt is over, if it may hold too many lines.
    fn trim_finished_log(&mut self, seq: i64) -> Result<(), rusqlite::Error> {
        if self.driver.log_trim.finished(seq) {
            self.trim_log(seq)?;
        }
        Ok(())
    }

    /// Drops a task's oldest log lines beyond [`LOG_LINES_KEPT`].
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn trim_log(&self, seq: i64) -> Result<usize, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "DELETE FROM castor_logs WHERE task_seq = ?1 AND rowid <= \
                 (SELECT rowid FROM castor_logs WHERE task_seq = ?1 \
                  ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![seq, LOG_LINES_KEPT])
    }

    /// Records a running task's progress.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_progress(
        &self,
        seq: i64,
        attempt: u32,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), rusqlite::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET progress_done = ?3, progress_total = ?4, \
                 progress_message = nullif(?5, '') \
                 WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
            )?
            .execute(params![seq, attempt, clamp(done), clamp(total), message])?;
        Ok(())
    }
}

impl SqliteTx<'_> {
    fn chain_error(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| {
            self.driver
                .error("settle the tasks waiting on their parents", e)
        }
    }
}

impl ChainStatements for SqliteTx<'_> {
    fn waiting_children(&mut self, parent: Uuid) -> Result<Vec<i64>, StoreError> {
        self.driver
            .conn
            .prepare_cached(
                "SELECT d.child_seq FROM castor_dependencies d \
                 JOIN castor_tasks c ON c.seq = d.child_seq \
                 WHERE d.parent_id = ?1 AND c.state = 'waiting'",
            )
            .and_then(|mut stmt| {
                stmt.query_map([parent.as_bytes().as_slice()], |row| row.get(0))?
                    .collect()
            })
            .map_err(self.chain_error())
    }

    fn lock_waiting(&mut self, seq: i64) -> Result<Option<WaitingChild>, StoreError> {
        // SQLite has one writer at a time: the transaction's lock is the lock.
        let read = || -> Result<Option<WaitingChild>, rusqlite::Error> {
            let args: Option<Vec<u8>> = self
                .driver
                .conn
                .prepare_cached(
                    "SELECT args FROM castor_tasks WHERE seq = ?1 AND state = 'waiting'",
                )?
                .query_row([seq], |row| row.get(0))
                .optional()?;
            let Some(extra_args) = args else {
                return Ok(None);
            };
            let mut fan_in = false;
            let links = self
                .driver
                .conn
                .prepare_cached(
                    "SELECT d.parent_id, d.parent_task, p.state, p.result, \
                     coalesce(p.result_fingerprint, ''), d.expected_fingerprint, d.fan_in \
                     FROM castor_dependencies d LEFT JOIN castor_tasks p ON p.id = d.parent_id \
                     WHERE d.child_seq = ?1 ORDER BY d.position",
                )?
                .query_map([seq], |row| {
                    let state: Option<String> = row.get(2)?;
                    Ok((
                        Link {
                            parent_id: rows::id_from(row.get(0)?, 0)?,
                            parent_task: row.get(1)?,
                            state: state.map(|s| rows::state_from(s, 2)).transpose()?,
                            result: row.get(3)?,
                            result_fingerprint: row.get(4)?,
                            expected_fingerprint: row.get(5)?,
                        },
                        row.get::<_, bool>(6)?,
                    ))
                })?
                .map(|row| {
                    row.map(|(link, fan)| {
                        fan_in |= fan;
                        link
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(WaitingChild {
                seq,
                extra_args,
                fan_in,
                links,
            }))
        };
        read().map_err(self.chain_error())
    }

    fn release(&mut self, seq: i64, args: &[u8], now: i64) -> Result<(), StoreError> {
        let released = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET \
                 state = CASE WHEN scheduled_at > ?3 THEN 'scheduled' ELSE 'available' END, \
                 scheduled_at = max(scheduled_at, ?3), args = ?2 \
                 WHERE seq = ?1 AND state = 'waiting'",
            )
            .and_then(|mut stmt| stmt.execute(params![seq, args, now]))
            .map_err(self.chain_error())?;
        self.released += released;
        Ok(())
    }

    fn end_waiting(
        &mut self,
        seq: i64,
        state: TaskState,
        error: &AttemptError,
        now: i64,
    ) -> Result<Option<Uuid>, StoreError> {
        let error = serde_json::to_string(error)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            .map_err(self.chain_error())?;
        let ended: Option<(Vec<u8>, bool)> = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = ?2, finalized_at = ?3, \
                 errors = json_insert(coalesce(errors, '[]'), '$[#]', json(?4)) \
                 WHERE seq = ?1 AND state = 'waiting' RETURNING id, has_dependents",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![seq, state.as_str(), now, error], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
            })
            .map_err(self.chain_error())?;
        match ended {
            Some((id, true)) => rows::id_from(id, 0).map(Some).map_err(self.chain_error()),
            _ => Ok(None),
        }
    }
}
