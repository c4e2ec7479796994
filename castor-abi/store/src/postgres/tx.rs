//! [`PostgresTx`]: the PostgreSQL driver's write transaction. Its statements live beside
//! the reads they belong with (`admin.rs`, `rescue.rs`, `schedules.rs`, `workers.rs`, and
//! here the task's own life: insert, claim, finish); this file also maps each to the
//! driver-neutral [`Tx`] operation, naming what castor was doing in its errors. The insert
//! is shared with [`enqueue_in`], which runs it in an app's own transaction.

use std::collections::HashSet;

use postgres::{GenericClient, Row};
use uuid::Uuid;

use super::rows::{self, CLAIM_SQL};
use super::{Conn, Params, PostgresDriver, classify};
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
use crate::target::Database;

/// How many times an insert whose unique key was taken looks for the holder, which can
/// finish (and free the key) between the insert and the look.
const UNIQUE_TRIES: u32 = 3;

/// A write transaction on the PostgreSQL driver's connection. Every method is one
/// guarded statement (or a few); dropped without a commit, it rolls back.
pub struct PostgresTx<'a> {
    pub(super) driver: &'a mut PostgresDriver,
    /// Committed (or failed to): nothing for `drop` to undo.
    done: bool,
    /// Waiting dependents released so far ([`Tx::released`]).
    released: usize,
    /// The connection's statement count once `BEGIN` ran.
    begun_at: u64,
    /// How many statements ran through [`PostgresTx::unflushed`]: if every statement
    /// since `BEGIN` did, the commit does not wait for the flush.
    unflushed: u64,
}

impl<'a> PostgresTx<'a> {
    /// Begins a transaction; on a connection the server dropped since the last statement
    /// (a restart), once more on a new one.
    pub(super) fn begin(driver: &'a mut PostgresDriver) -> Result<PostgresTx<'a>, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let begun = driver.conn().and_then(|mut conn| {
                let begun = conn.batch("BEGIN");
                if let Err(e) = &begun {
                    conn.lost = super::lost(e);
                }
                begun
            });
            match begun {
                Ok(()) => break,
                Err(e) if tries < 2 && super::lost(&e) => {}
                Err(e) => return Err(driver.error("begin a write", e)),
            }
        }
        let begun_at = driver.conn.get_mut().ran;
        Ok(PostgresTx {
            driver,
            done: false,
            released: 0,
            begun_at,
            unflushed: 0,
        })
    }

    /// The connection: a statement run on it makes the commit wait for the flush, as the
    /// server's setting (or the `durable` option) says.
    pub(super) fn conn(&mut self) -> &mut Conn {
        self.driver.conn.get_mut()
    }

    /// The connection, for a statement worth no wait for the disk at commit: claims,
    /// lease renewals, heartbeats and reads. A server crash can lose such a commit only
    /// within the WAL writer's delay, and losing it loses nothing: a claim undone makes
    /// its task available again (run once more, as a lease expiry would), a renewal or a
    /// heartbeat is written again at the next. A transaction of these alone commits
    /// without waiting (the claim is on every task's critical path); any other statement
    /// in it, or a later commit, flushes them with it. Each call is for one statement.
    pub(super) fn unflushed(&mut self) -> &mut Conn {
        self.unflushed += 1;
        self.driver.conn.get_mut()
    }

    /// True if a statement ran since `BEGIN` that was not [`PostgresTx::unflushed`].
    pub(super) fn must_flush(&mut self) -> bool {
        let ran = self.conn().ran - self.begun_at;
        ran != self.unflushed
    }

    /// An attempt's error as the JSON its row's `errors` holds.
    fn error_json(&self, error: &AttemptError) -> Result<String, StoreError> {
        serde_json::to_string(error).map_err(|e| StoreError::Query {
            database: self.driver.database.clone(),
            operation: "record an attempt's outcome",
            detail: format!("the attempt's error cannot be encoded: {e}"),
        })
    }

    fn fail(&self, operation: &'static str) -> impl FnOnce(postgres::Error) -> StoreError + '_ {
        move |e| self.driver.error(operation, e)
    }
}

/// Inserts one task through an app's own client or transaction: the same statements as
/// the driver's [`Tx::enqueue`], so a task written in the app's `postgres::Transaction`
/// exists if and only if that transaction commits (and the workers' wake-up, a trigger's
/// `NOTIFY`, is sent at that commit). `database` names the database in errors; `now` is
/// the caller's clock, as everywhere in castor. With a unique key held by an unfinished
/// task of the same name, inserts nothing and returns that task's id, `existing` set.
///
/// The client must be connected to a database castor has migrated (an app's
/// `Manager::open` does it).
///
/// # Errors
/// A statement failed ([`StoreError::Query`], [`StoreError::Busy`], ...): then the
/// server has aborted the app's transaction, which can only be rolled back.
pub fn enqueue_in<C: GenericClient>(
    client: &mut C,
    database: &Database,
    task: &NewTask<'_>,
    now: i64,
) -> Result<Enqueued, StoreError> {
    enqueue_on(&mut AppClient(client), database, task, now)
}

/// Where an insert's statements run: the driver's connection (each statement prepared
/// once per connection) or an app's client or transaction ([`AppClient`]).
trait Statements {
    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, postgres::Error>;

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error>;
}

impl Statements for Conn {
    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, postgres::Error> {
        Conn::execute(self, sql, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        Conn::query_opt(self, sql, params)
    }
}

/// An app's `postgres` client or transaction.
struct AppClient<'c, C>(&'c mut C);

impl<C: GenericClient> Statements for AppClient<'_, C> {
    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, postgres::Error> {
        self.0.execute(sql, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        self.0.query_opt(sql, params)
    }
}

/// [`insert`], tried again while the unique key's holder finishes in between.
fn enqueue_on(
    statements: &mut impl Statements,
    database: &Database,
    task: &NewTask<'_>,
    now: i64,
) -> Result<Enqueued, StoreError> {
    for _ in 0..UNIQUE_TRIES {
        let found =
            insert(statements, task, now).map_err(|e| classify(database, "enqueue a task", &e))?;
        if let Some((id, existing)) = found {
            return Ok(Enqueued { id, existing });
        }
    }
    Err(StoreError::Query {
        database: database.clone(),
        operation: "enqueue a task",
        detail: format!(
            "its unique key was taken, and the task holding it finished before castor could \
             read it, {UNIQUE_TRIES} times in a row; try again"
        ),
    })
}

/// Inserts one task: the one insert every enqueue runs. With a unique key held by an
/// unfinished task of the same name, inserts nothing and returns that task's id and
/// `true`; `None` if that task finished between the insert and the look (try again).
fn insert(
    statements: &mut impl Statements,
    task: &NewTask<'_>,
    now: i64,
) -> Result<Option<(Uuid, bool)>, postgres::Error> {
    let id = Uuid::now_v7();
    let scheduled_at = task.run_at_us.unwrap_or(now);
    let state = if scheduled_at > now {
        "scheduled"
    } else {
        "available"
    };
    let inserted = statements.execute(
        "INSERT INTO castor_tasks (id, manager, task, state, priority, args, max_attempts, \
         backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id, created_at, \
         scheduled_at, args_fingerprint, concurrency_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT DO NOTHING",
        &[
            &id,
            &task.manager,
            &task.task,
            &state,
            &task.priority,
            &task.args,
            &i64::from(task.max_attempts),
            &task.backoff_base_ms,
            &task.backoff_cap_ms,
            &task.timeout_ms,
            &task.unique_key,
            &task.schedule_id,
            &now,
            &scheduled_at,
            &task.args_fingerprint.unwrap_or(""),
            &task.concurrency_key,
        ],
    )?;
    if inserted == 1 {
        return Ok(Some((id, false)));
    }
    // Only the unique index can make the insert a no-op (a fresh UUIDv7 is unique).
    let holder = statements.query_opt(
        "SELECT id FROM castor_tasks WHERE manager = $1 AND task = $2 AND unique_key = $3 \
         AND state IN ('waiting', 'scheduled', 'available', 'running', 'retryable')",
        &[&task.manager, &task.task, &task.unique_key],
    )?;
    holder
        .map(|row| row.try_get(0).map(|id| (id, true)))
        .transpose()
}

impl Tx for PostgresTx<'_> {
    fn enqueue(&mut self, task: &NewTask<'_>, now: i64) -> Result<Enqueued, StoreError> {
        let driver = &mut *self.driver;
        enqueue_on(driver.conn.get_mut(), &driver.database, task, now)
    }

    fn enqueue_after(
        &mut self,
        task: &NewTask<'_>,
        after: &After<'_>,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        for parent in after.parents {
            let found = PostgresTx::mark_parent(self, parent.id)
                .map_err(self.fail("mark a task's parent"))?;
            if !found {
                return Err(StoreError::UnknownParent {
                    database: self.driver.database.clone(),
                    task: task.task.to_owned(),
                    parent: parent.id,
                });
            }
        }
        let (id, existing, seq) = PostgresTx::insert_waiting(self, task, after, now)
            .map_err(self.fail("enqueue a task after its parents"))?;
        if !existing {
            chain::settle_new(self, seq, now)?;
        }
        Ok(Enqueued { id, existing })
    }

    fn cancel(&mut self, id: Uuid, now: i64) -> Result<Option<CancelOutcome>, StoreError> {
        let waited = self.error_json(&AttemptError {
            attempt: 0,
            at: now,
            kind: crate::ErrorKind::Chain,
            error: "cancelled while it waited on its parents".into(),
            worker: None,
        })?;
        let (outcome, settle) =
            PostgresTx::cancel(self, id, now, &waited).map_err(self.fail("cancel a task"))?;
        if settle {
            chain::settle_parents(self, [id], now)?;
        }
        Ok(outcome)
    }

    fn retry(&mut self, id: Uuid, now: i64) -> Result<Option<RetryOutcome>, StoreError> {
        let rewaiting = PostgresTx::rewait(self, id).map_err(self.fail("retry a task"))?;
        if let Some(seq) = rewaiting {
            chain::settle_new(self, seq, now)?;
            let state = PostgresTx::state_of(self, id).map_err(self.fail("retry a task"))?;
            return Ok(state.map(RetryOutcome::Rewaited));
        }
        PostgresTx::retry(self, id, now).map_err(self.fail("retry a task"))
    }

    fn purge(&mut self, states: &[TaskState], before: i64) -> Result<usize, StoreError> {
        let (count, parents) =
            PostgresTx::purge(self, states, before).map_err(self.fail("purge tasks"))?;
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
        PostgresTx::claim(self, filter, worker, limit, now, lease_until)
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
        self.lock_limit_rows(manager, tasks)
            .map_err(self.fail("read tasks' limits"))
    }

    fn limits_of(&mut self, manager: &str) -> Result<Vec<LimitRow>, StoreError> {
        self.read_limit_rows(manager)
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
        let error = match finish {
            Finish::Completed { .. } => None,
            Finish::Failed { error, .. } => Some(self.error_json(error)?),
        };
        let (recorded, parent) =
            PostgresTx::finish_if_running(self, seq, attempt, finish, error.as_deref(), now)
                .map_err(self.fail("record an attempt's outcome"))?;
        if let Some(parent) = parent {
            chain::settle_parents(self, [parent], now)?;
        }
        Ok(recorded)
    }

    fn append_logs(&mut self, logs: &[NewLog<'_>]) -> Result<(), StoreError> {
        PostgresTx::append_logs(self, logs).map_err(self.fail("append to tasks' logs"))
    }

    fn finish_many(
        &mut self,
        worker: &str,
        ends: &[AttemptEnd<'_>],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut recorded = vec![false; ends.len()];
        let mut parents = Vec::new();
        // Completions in one statement (a drain's every outcome); failures, rare, one by one.
        let completed: Vec<(usize, &AttemptEnd<'_>)> = ends
            .iter()
            .enumerate()
            .filter(|(_, end)| matches!(end.finish, Finish::Completed { .. }))
            .collect();
        if !completed.is_empty() {
            let ends: Vec<&AttemptEnd<'_>> = completed.iter().map(|&(_, end)| end).collect();
            let (flags, ended) = PostgresTx::complete_many(self, worker, &ends, now)
                .map_err(self.fail("record attempts' outcomes"))?;
            parents.extend(ended);
            for ((i, _), flag) in completed.iter().zip(flags) {
                recorded[*i] = flag;
            }
        }
        for (i, end) in ends.iter().enumerate() {
            let Finish::Failed { error, .. } = &end.finish else {
                continue;
            };
            let error = self.error_json(error)?;
            let (written, parent) = PostgresTx::fail_attempt(
                self,
                end.seq,
                end.attempt,
                &end.finish,
                Some(&error),
                now,
                true,
            )
            .map_err(self.fail("record an attempt's outcome"))?;
            recorded[i] = written;
            parents.extend(parent);
        }
        if !parents.is_empty() {
            chain::settle_parents(self, parents, now)?;
        }
        Ok(recorded)
    }

    fn release_if_running(&mut self, seq: i64, attempt: u32) -> Result<bool, StoreError> {
        PostgresTx::release_if_running(self, seq, attempt).map_err(self.fail("release a claim"))
    }

    fn append_log(&mut self, log: &NewLog<'_>) -> Result<(), StoreError> {
        PostgresTx::append_log(self, log.seq, log.attempt, log.at, log.level, log.line)
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
        PostgresTx::set_progress(self, seq, attempt, done, total, message)
            .map_err(self.fail("record a task's progress"))
    }

    fn stage_due(&mut self, manager: &str, now: i64) -> Result<usize, StoreError> {
        PostgresTx::stage_due(self, manager, now).map_err(self.fail("stage due tasks"))
    }

    fn due_schedules(
        &mut self,
        filter: &ScheduleFilter,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, StoreError> {
        PostgresTx::due_schedules(self, filter, now, limit).map_err(self.fail("read due schedules"))
    }

    fn advance_schedule(
        &mut self,
        id: i64,
        from_tick: i64,
        runs: u32,
        next: Option<i64>,
    ) -> Result<bool, StoreError> {
        PostgresTx::advance_schedule(self, id, from_tick, runs, next)
            .map_err(self.fail("move a schedule to its next tick"))
    }

    fn renew_leases(
        &mut self,
        worker: &str,
        held: &[(i64, u32)],
        until: i64,
    ) -> Result<usize, StoreError> {
        PostgresTx::renew_leases(self, worker, held, until).map_err(self.fail("renew leases"))
    }

    fn register_worker(&mut self, worker: &WorkerRow) -> Result<(), StoreError> {
        let tasks = serde_json::to_string(&worker.tasks).map_err(|e| StoreError::Query {
            database: self.driver.database.clone(),
            operation: "register the worker",
            detail: format!("its task names cannot be encoded: {e}"),
        })?;
        let prints =
            serde_json::to_string(&worker.args_fingerprints).map_err(|e| StoreError::Query {
                database: self.driver.database.clone(),
                operation: "register the worker",
                detail: format!("its tasks' fingerprints cannot be encoded: {e}"),
            })?;
        PostgresTx::register_worker(self, worker, &tasks, &prints)
            .map_err(self.fail("register the worker"))
    }

    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        completed: u64,
        failed: u64,
    ) -> Result<(), StoreError> {
        PostgresTx::heartbeat(self, worker, now, completed, failed)
            .map_err(self.fail("record a heartbeat"))
    }

    fn stop_worker(&mut self, worker: &str, now: i64) -> Result<(), StoreError> {
        PostgresTx::stop_worker(self, worker, now).map_err(self.fail("record the worker's stop"))
    }

    fn live_workers(&mut self) -> Result<Vec<LiveWorker>, StoreError> {
        PostgresTx::live_workers(self).map_err(self.fail("read live workers"))
    }

    fn expired_leases(&mut self, now: i64, limit: usize) -> Result<Vec<Expired>, StoreError> {
        PostgresTx::expired_leases(self, now, limit).map_err(self.fail("find expired leases"))
    }

    fn bury_worker(&mut self, worker: &str, now: i64) -> Result<usize, StoreError> {
        PostgresTx::bury_worker(self, worker, now).map_err(self.fail("record a dead worker"))
    }

    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>, StoreError> {
        PostgresTx::cancel_requests(self, worker).map_err(self.fail("read cancel requests"))
    }

    fn prune(&mut self, before: i64, limit: usize) -> Result<usize, StoreError> {
        PostgresTx::prune(self, before, limit).map_err(self.fail("prune finished tasks"))
    }

    fn create_schedule(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError> {
        PostgresTx::create_schedule(self, schedule, now).map_err(self.fail("create a schedule"))
    }

    fn upsert_periodic(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError> {
        PostgresTx::upsert_periodic(self, schedule, now)
            .map_err(self.fail("declare a periodic task"))
    }

    fn set_schedule_paused(&mut self, id: i64, paused: bool) -> Result<bool, StoreError> {
        PostgresTx::set_schedule_paused(self, id, paused)
            .map_err(self.fail("pause or resume a schedule"))
    }

    fn remove_schedule(&mut self, id: i64) -> Result<bool, StoreError> {
        PostgresTx::remove_schedule(self, id).map_err(self.fail("remove a schedule"))
    }

    fn released(&self) -> usize {
        self.released
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.done = true;
        let commit = if self.must_flush() {
            "COMMIT"
        } else {
            "SET LOCAL synchronous_commit = off; COMMIT"
        };
        let committed = self.conn().batch(commit);
        committed.map_err(|e| {
            // Whether the server committed is unknown; the guarded writes make a second
            // try harmless either way.
            self.conn().lost = super::lost(&e);
            self.driver.error("commit", e)
        })
    }
}

impl Drop for PostgresTx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Nothing to report: the transaction is abandoned either way, and the server
            // rolls it back itself if the connection is gone. A connection that cannot
            // even roll back is connected again before the next statement.
            if self.conn().batch("ROLLBACK").is_err() {
                self.conn().lost = true;
            }
        }
    }
}

impl PostgresTx<'_> {
    /// Claims up to `limit` available tasks of the filter's manager and task names,
    /// highest priority first, then oldest, in one statement (see [`CLAIM_SQL`]).
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn claim(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, postgres::Error> {
        if filter.tasks.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Always with the unknown-fingerprint arms: here they cost a seek each inside the
        // one statement, where knowing whether they can match would cost a round trip.
        let (names, prints) = filter.claim_keys(true);
        let mut claimed = self
            .unflushed()
            .query(
                CLAIM_SQL,
                &[
                    &now,
                    &worker,
                    &lease_until,
                    &filter.manager,
                    &names,
                    &limit,
                    &prints,
                ],
            )?
            .iter()
            .map(rows::claimed_from)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING has no order; run in claim order.
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
        Ok(claimed)
    }

    /// Records how an attempt ended, if the task is still `running` that same attempt
    /// (`error` is a failure's [`crate::AttemptError`] as JSON). A task whose
    /// cancellation was requested while it ran ends `cancelled` instead of being retried.
    /// With whether it was recorded, the task's id when it ended and has dependents.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn finish_if_running(
        &mut self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        error: Option<&str>,
        now: i64,
    ) -> Result<(bool, Option<Uuid>), postgres::Error> {
        match finish {
            Finish::Completed {
                result,
                result_fingerprint,
            } => {
                // `RETURNING` what the chain rules need: no statement more for a task
                // without dependents.
                let ended = self.conn().query_opt(
                    "UPDATE castor_tasks SET state = 'completed', result = $3, finalized_at = $4, \
                     lease_expires_at = NULL, result_fingerprint = $5 \
                     WHERE seq = $1 AND attempt = $2 AND state = 'running' \
                     RETURNING CASE WHEN has_dependents THEN id END",
                    &[
                        &seq,
                        &i64::from(attempt),
                        result,
                        &now,
                        &result_fingerprint.unwrap_or(""),
                    ],
                )?;
                let Some(row) = ended else {
                    return Ok((false, None));
                };
                self.trim_finished_log(seq)?;
                Ok((true, row.try_get(0)?))
            }
            Finish::Failed { .. } => self.fail_attempt(seq, attempt, finish, error, now, false),
        }
    }

    /// Records the completions `ended` (every one [`Finish::Completed`]) in one
    /// statement; returns, per end, whether it is recorded:
    /// written now, or found already written by `worker` for that attempt (a retried
    /// commit whose reply was lost; only the worker holding an attempt completes it).
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn complete_many(
        &mut self,
        worker: &str,
        ended: &[&AttemptEnd<'_>],
        now: i64,
    ) -> Result<(Vec<bool>, Vec<Uuid>), postgres::Error> {
        let seqs: Vec<i64> = ended.iter().map(|end| end.seq).collect();
        let attempts: Vec<i64> = ended.iter().map(|end| i64::from(end.attempt)).collect();
        let results: Vec<&[u8]> = ended
            .iter()
            .map(|end| match &end.finish {
                Finish::Completed { result, .. } => *result,
                Finish::Failed { .. } => &[],
            })
            .collect();
        let prints: Vec<&str> = ended
            .iter()
            .map(|end| match &end.finish {
                Finish::Completed {
                    result_fingerprint, ..
                } => result_fingerprint.unwrap_or(""),
                Finish::Failed { .. } => "",
            })
            .collect();
        let rows = self.conn().query(
            "UPDATE castor_tasks t SET state = 'completed', result = d.result, \
             finalized_at = $4, lease_expires_at = NULL, result_fingerprint = d.fp \
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $5::text[]) \
               AS d(seq, attempt, result, fp) \
             WHERE t.seq = d.seq AND t.attempt = d.attempt AND t.state = 'running' \
             RETURNING t.seq, CASE WHEN t.has_dependents THEN t.id END",
            &[&seqs, &attempts, &results, &now, &prints],
        )?;
        let mut written: HashSet<i64> = HashSet::with_capacity(rows.len());
        let mut parents = Vec::new();
        for row in &rows {
            written.insert(row.try_get(0)?);
            if let Some(parent) = row.try_get::<_, Option<Uuid>>(1)? {
                parents.push(parent);
            }
        }
        for &seq in &written {
            self.trim_finished_log(seq)?;
        }
        let mut recorded: Vec<bool> = seqs.iter().map(|seq| written.contains(seq)).collect();
        if recorded.iter().all(|&r| r) {
            return Ok((recorded, parents));
        }
        // Not running that attempt any more: lost to the rescuer, or written already.
        let (missing, missing_attempts): (Vec<i64>, Vec<i64>) = seqs
            .iter()
            .zip(&attempts)
            .zip(&recorded)
            .filter(|(_, recorded)| !**recorded)
            .map(|((seq, attempt), _)| (*seq, *attempt))
            .unzip();
        let already: HashSet<i64> = self
            .conn()
            .query(
                "SELECT t.seq FROM castor_tasks t \
                 JOIN unnest($1::bigint[], $2::bigint[]) AS d(seq, attempt) \
                 ON t.seq = d.seq AND t.attempt = d.attempt \
                 WHERE t.state = 'completed' AND t.attempted_by = $3",
                &[&missing, &missing_attempts, &worker],
            )?
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<_, _>>()?;
        for (seq, recorded) in seqs.iter().zip(&mut recorded) {
            *recorded |= already.contains(seq);
        }
        Ok((recorded, parents))
    }

    /// Records a failed attempt (`finish` is [`Finish::Failed`], `error` its JSON) if the
    /// task still runs it: retryable, discarded, or cancelled if a cancel was asked for.
    /// With `seen_as_written`, an attempt whose row already ends with this very error
    /// (a retried commit whose reply was lost) counts as recorded.
    fn fail_attempt(
        &mut self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        error: Option<&str>,
        now: i64,
        seen_as_written: bool,
    ) -> Result<(bool, Option<Uuid>), postgres::Error> {
        let Finish::Failed { transition, .. } = finish else {
            return Ok((false, None));
        };
        let attempt = i64::from(attempt);
        let error = error.unwrap_or("null");
        let ended = self.conn().query_opt(
            "UPDATE castor_tasks SET \
             state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                     ELSE $3::text END, \
             scheduled_at = CASE WHEN cancel_requested_at IS NOT NULL THEN scheduled_at \
                            ELSE coalesce($4, scheduled_at) END, \
             finalized_at = CASE WHEN cancel_requested_at IS NOT NULL OR $3::text IN \
                            ('completed', 'discarded', 'cancelled') THEN $5::bigint END, \
             lease_expires_at = NULL, \
             errors = coalesce(errors, '[]'::jsonb) || jsonb_build_array($6::text::jsonb) \
             WHERE seq = $1 AND attempt = $2 AND state = 'running' \
             RETURNING CASE WHEN has_dependents AND state IN ('discarded', 'cancelled') \
               THEN id END",
            &[
                &seq,
                &attempt,
                &transition.state.as_str(),
                &transition.scheduled_at,
                &now,
                &error,
            ],
        )?;
        if let Some(row) = ended {
            self.trim_finished_log(seq)?;
            return Ok((true, row.try_get(0)?));
        }
        if !seen_as_written {
            return Ok((false, None));
        }
        // The error names the attempt and its worker; its time is the first try's.
        let written = self.conn().query_opt(
            "SELECT 1 FROM castor_tasks WHERE seq = $1 AND attempt = $2 \
             AND state <> 'running' AND (errors -> -1) - 'at' = $3::text::jsonb - 'at'",
            &[&seq, &attempt, &error],
        )?;
        Ok((written.is_some(), None))
    }

    /// Moves `scheduled` and `retryable` tasks of `manager` whose time has come to
    /// `available`; returns how many moved.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn stage_due(&mut self, manager: &str, now: i64) -> Result<usize, postgres::Error> {
        let moved = self.conn().execute(
            "UPDATE castor_tasks SET state = 'available' \
             WHERE manager = $1 AND state IN ('scheduled', 'retryable') AND scheduled_at <= $2",
            &[&manager, &now],
        )?;
        Ok(usize::try_from(moved).unwrap_or(usize::MAX))
    }

    /// Gives a claimed task that never started back: `available` again, the claim's
    /// attempt undone, if it is still running that attempt.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn release_if_running(&mut self, seq: i64, attempt: u32) -> Result<bool, postgres::Error> {
        let changed = self.conn().execute(
            "UPDATE castor_tasks SET state = 'available', attempt = attempt - 1, \
             attempted_at = NULL, attempted_by = NULL, lease_expires_at = NULL \
             WHERE seq = $1 AND attempt = $2 AND state = 'running'",
            &[&seq, &i64::from(attempt)],
        )?;
        Ok(changed == 1)
    }

    /// Extends the leases of the attempts `held` that `worker` runs, in one statement.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn renew_leases(
        &mut self,
        worker: &str,
        held: &[(i64, u32)],
        until: i64,
    ) -> Result<usize, postgres::Error> {
        if held.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = held.iter().map(|&(seq, _)| seq).collect();
        let attempts: Vec<i64> = held
            .iter()
            .map(|&(_, attempt)| i64::from(attempt))
            .collect();
        let renewed = self.unflushed().execute(
            "UPDATE castor_tasks t SET lease_expires_at = $3 \
             FROM unnest($1::bigint[], $2::bigint[]) AS h(seq, attempt) \
             WHERE t.seq = h.seq AND t.attempt = h.attempt \
             AND t.attempted_by = $4 AND t.state = 'running'",
            &[&seqs, &attempts, &until, &worker],
        )?;
        Ok(usize::try_from(renewed).unwrap_or(usize::MAX))
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
    ) -> Result<(), postgres::Error> {
        self.conn().execute(
            "INSERT INTO castor_logs (task_seq, attempt, at, level, line) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&seq, &i64::from(attempt), &at, &level.as_str(), &line],
        )?;
        for task in self.driver.log_trim.appended(seq, attempt) {
            self.trim_log(task)?;
        }
        Ok(())
    }

    /// Trims the log of a task whose attempt is over, if it may hold too many lines.
    fn trim_finished_log(&mut self, seq: i64) -> Result<(), postgres::Error> {
        if self.driver.log_trim.finished(seq) {
            self.trim_log(seq)?;
        }
        Ok(())
    }

    /// Appends log lines to tasks' logs in one statement, trimming logs when
    /// [`crate::log_trim`] says.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn append_logs(&mut self, logs: &[NewLog<'_>]) -> Result<(), postgres::Error> {
        if logs.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = logs.iter().map(|log| log.seq).collect();
        let attempts: Vec<i64> = logs.iter().map(|log| i64::from(log.attempt)).collect();
        let ats: Vec<i64> = logs.iter().map(|log| log.at).collect();
        let levels: Vec<&str> = logs.iter().map(|log| log.level.as_str()).collect();
        let lines: Vec<&str> = logs.iter().map(|log| log.line).collect();
        // WITH ORDINALITY: the lines keep their order (their ids follow it).
        self.conn().execute(
            "INSERT INTO castor_logs (task_seq, attempt, at, level, line) \
             SELECT seq, attempt, at, level, line \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) \
             WITH ORDINALITY AS l(seq, attempt, at, level, line, n) ORDER BY n",
            &[&seqs, &attempts, &ats, &levels, &lines],
        )?;
        let mut trim: Vec<i64> = Vec::new();
        for log in logs {
            trim.extend(self.driver.log_trim.appended(log.seq, log.attempt));
        }
        trim.sort_unstable();
        trim.dedup();
        for task in trim {
            self.trim_log(task)?;
        }
        Ok(())
    }

    /// Drops a task's oldest log lines beyond [`LOG_LINES_KEPT`].
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn trim_log(&mut self, seq: i64) -> Result<(), postgres::Error> {
        self.conn().execute(
            "DELETE FROM castor_logs WHERE task_seq = $1 AND id <= \
             (SELECT id FROM castor_logs WHERE task_seq = $1 \
              ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&seq, &LOG_LINES_KEPT],
        )?;
        Ok(())
    }

    /// Records a running attempt's progress (ignored once the attempt is over).
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_progress(
        &mut self,
        seq: i64,
        attempt: u32,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), postgres::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.conn().execute(
            "UPDATE castor_tasks SET progress_done = $3, progress_total = $4, \
             progress_message = nullif($5, '') \
             WHERE seq = $1 AND attempt = $2 AND state = 'running'",
            &[
                &seq,
                &i64::from(attempt),
                &clamp(done),
                &clamp(total),
                &message,
            ],
        )?;
        Ok(())
    }
}

impl PostgresTx<'_> {
    /// Marks the task `id` as having dependents (locking its row until the transaction
    /// ends, so its state cannot change under the dispatch); `false` if there is none.
    fn mark_parent(&mut self, id: Uuid) -> Result<bool, postgres::Error> {
        let changed = self.conn().execute(
            "UPDATE castor_tasks SET has_dependents = true WHERE id = $1",
            &[&id],
        )?;
        Ok(changed == 1)
    }

    /// Inserts a task `waiting` on `after`'s parents, with its links; its id, whether the
    /// unique key's holder was returned instead, and its row.
    fn insert_waiting(
        &mut self,
        task: &NewTask<'_>,
        after: &After<'_>,
        now: i64,
    ) -> Result<(Uuid, bool, i64), postgres::Error> {
        let id = Uuid::now_v7();
        let scheduled_at = task.run_at_us.unwrap_or(now);
        let parents = after.parents.len() as i64;
        let inserted = self.conn().query_opt(
            "INSERT INTO castor_tasks (id, manager, task, state, priority, args, max_attempts, \
             backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id, created_at, \
             scheduled_at, args_fingerprint, parents, concurrency_key) \
             VALUES ($1, $2, $3, 'waiting', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             $16) ON CONFLICT DO NOTHING RETURNING seq",
            &[
                &id,
                &task.manager,
                &task.task,
                &task.priority,
                &task.args,
                &i64::from(task.max_attempts),
                &task.backoff_base_ms,
                &task.backoff_cap_ms,
                &task.timeout_ms,
                &task.unique_key,
                &task.schedule_id,
                &now,
                &scheduled_at,
                &task.args_fingerprint.unwrap_or(""),
                &parents,
                &task.concurrency_key,
            ],
        )?;
        if let Some(row) = inserted {
            let seq: i64 = row.try_get(0)?;
            let ids: Vec<Uuid> = after.parents.iter().map(|p| p.id).collect();
            let prints: Vec<&str> = after
                .parents
                .iter()
                .map(|p| p.result_fingerprint.unwrap_or(""))
                .collect();
            self.conn().execute(
                "INSERT INTO castor_dependencies (child_seq, position, parent_id, parent_task, \
                 expected_fingerprint, fan_in) \
                 SELECT $1, (l.n - 1)::integer, l.id, t.task, l.fp, $4 \
                 FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS l(id, fp, n) \
                 JOIN castor_tasks t ON t.id = l.id",
                &[&seq, &ids, &prints, &after.fan_in],
            )?;
            return Ok((id, false, seq));
        }
        let holder = self.conn().query_one(
            "SELECT id, seq FROM castor_tasks WHERE manager = $1 AND task = $2 \
             AND unique_key = $3 \
             AND state IN ('waiting', 'scheduled', 'available', 'running', 'retryable')",
            &[&task.manager, &task.task, &task.unique_key],
        )?;
        Ok((holder.try_get(0)?, true, holder.try_get(1)?))
    }

    fn chain_error(&self) -> impl Fn(postgres::Error) -> StoreError + '_ {
        move |e| {
            self.driver
                .error("settle the tasks waiting on their parents", e)
        }
    }
}

impl ChainStatements for PostgresTx<'_> {
    fn waiting_children(&mut self, parent: Uuid) -> Result<Vec<i64>, StoreError> {
        let found = self.conn().query(
            "SELECT d.child_seq FROM castor_dependencies d \
             JOIN castor_tasks c ON c.seq = d.child_seq \
             WHERE d.parent_id = $1 AND c.state = 'waiting'",
            &[&parent],
        );
        found
            .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect())
            .map_err(self.chain_error())
    }

    fn lock_waiting(&mut self, seq: i64) -> Result<Option<WaitingChild>, StoreError> {
        // The lock orders the writers settling one dependent (two parents completing in
        // two workers at once): the second waits for the first's commit, and its next
        // statement, reading the links, sees that commit's parent completed.
        let locked = self.conn().query_opt(
            "SELECT args FROM castor_tasks WHERE seq = $1 AND state = 'waiting' FOR UPDATE",
            &[&seq],
        );
        let Some(row) = locked.map_err(self.chain_error())? else {
            return Ok(None);
        };
        let extra_args: Vec<u8> = row.try_get(0).map_err(self.chain_error())?;
        let links = self.conn().query(
            "SELECT d.parent_id, d.parent_task, p.state, p.result, \
             coalesce(p.result_fingerprint, ''), d.expected_fingerprint, d.fan_in \
             FROM castor_dependencies d LEFT JOIN castor_tasks p ON p.id = d.parent_id \
             WHERE d.child_seq = $1 ORDER BY d.position",
            &[&seq],
        );
        let rows = links.map_err(self.chain_error())?;
        let mut fan_in = false;
        let links = rows
            .iter()
            .map(|row| {
                fan_in |= row.try_get::<_, bool>(6)?;
                Ok(Link {
                    parent_id: row.try_get(0)?,
                    parent_task: row.try_get(1)?,
                    state: row.try_get::<_, Option<rows::StateColumn>>(2)?.map(|s| s.0),
                    result: row.try_get(3)?,
                    result_fingerprint: row.try_get(4)?,
                    expected_fingerprint: row.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(self.chain_error())?;
        Ok(Some(WaitingChild {
            seq,
            extra_args,
            fan_in,
            links,
        }))
    }

    fn release(&mut self, seq: i64, args: &[u8], now: i64) -> Result<(), StoreError> {
        let released = self.conn().execute(
            "UPDATE castor_tasks SET \
             state = CASE WHEN scheduled_at > $3 THEN 'scheduled' ELSE 'available' END, \
             scheduled_at = greatest(scheduled_at, $3), args = $2 \
             WHERE seq = $1 AND state = 'waiting'",
            &[&seq, &args, &now],
        );
        let released = released.map_err(self.chain_error())?;
        self.released += usize::try_from(released).unwrap_or(0);
        Ok(())
    }

    fn end_waiting(
        &mut self,
        seq: i64,
        state: TaskState,
        error: &AttemptError,
        now: i64,
    ) -> Result<Option<Uuid>, StoreError> {
        let error = self.error_json(error)?;
        let ended = self.conn().query_opt(
            "UPDATE castor_tasks SET state = $2, finalized_at = $3, \
             errors = coalesce(errors, '[]'::jsonb) || jsonb_build_array($4::text::jsonb) \
             WHERE seq = $1 AND state = 'waiting' RETURNING id, has_dependents",
            &[&seq, &state.as_str(), &now, &error],
        );
        let Some(row) = ended.map_err(self.chain_error())? else {
            return Ok(None);
        };
        let read = || -> Result<Option<Uuid>, postgres::Error> {
            Ok(if row.try_get::<_, bool>(1)? {
                Some(row.try_get(0)?)
            } else {
                None
            })
        };
        read().map_err(self.chain_error())
    }
}
