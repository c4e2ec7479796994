//! The seam between Castor and a database engine, modelled on River's `riverdriver`
//! (`Executor`, `ExecutorTx`, `Listener`) and Oban's `Engine`: one named operation per
//! statement the engine needs, typed parameters and results ([`crate::model`]), and
//! [`StoreError`] as the only error. A driver is a module that implements [`Driver`] (a
//! connection: reads, health, space, migrations) and [`Tx`] (a write transaction: every
//! guarded write), plus a [`ChangeSource`](crate::notify::ChangeSource) for wake-ups,
//! and is registered once in [`crate::open`] and [`crate::notifier`].
//!
//! Every operation takes the time as a parameter (`now`, microseconds since the Unix
//! epoch) instead of reading a clock, so the rules (leases, due times, retention) are the
//! caller's and the conformance suite can drive them.

use std::time::Duration;

use uuid::Uuid;

use crate::error::StoreError;
use crate::limits::{Candidate, DeclaredLimits, LimitRow, LimitStatus, LimitedClaim, Limits, Rate};
use crate::migrate::{AppliedMigration, Migration};
use crate::model::{
    After, AfterParents, AttemptEnd, CancelOutcome, Claimed, ClockOffset, DueSchedule, Enqueued,
    Expired, Finish, ListFilter, LiveWorker, Mismatched, NewLog, NewSchedule, NewTask, ParentInfo,
    RetryOutcome, ScheduleFilter, SignatureCount, Signatures, StateCount, TaskFilter, TaskLog,
    TaskSnapshot, TaskSummary, Waiting, WorkerRow,
};
use crate::schedule::ScheduleInfo;
use crate::state::TaskState;
use crate::target::Database;

/// How far a bounded check of the database got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckReach {
    /// Everything was checked; nothing is damaged.
    Whole,
    /// The time ran out first; what was checked by then was sound (damage elsewhere shows
    /// when a statement reads it).
    OutOfTime,
}

/// What counts against a task's limits at one time ([`Driver::limit_usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitUsage {
    /// Running attempts counting against a limit, by partition key (`''`: none).
    pub running_by_key: std::collections::BTreeMap<String, u64>,
    /// Starts within the rate's window.
    pub started: u64,
    /// When the rate allows the next start, if it allows none now.
    pub next_slot_at: Option<i64>,
    /// Available tasks.
    pub available: u64,
}

/// A connection to a Castor database (River's `Executor`): reads outside a transaction,
/// the start of a write transaction, health, space and migrations.
pub trait Driver: Send {
    /// The database this connection is to.
    fn database(&self) -> &Database;

    /// Starts a write transaction that takes the database's write lock at once (SQLite
    /// `BEGIN IMMEDIATE`), so two writers never deadlock upgrading a read lock. Dropping
    /// the transaction without [`Tx::commit`] rolls it back.
    ///
    /// # Errors
    /// The lock could not be taken (busy past the engine's timeout), or the database failed.
    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;

    /// A value that changes when another connection commits; `None` if the engine cannot
    /// tell, and every wake-up must be treated as a change. (A worker uses it to ignore
    /// wake-ups caused by its own commits.)
    ///
    /// # Errors
    /// The database cannot be read.
    fn change_counter(&self) -> Result<Option<i64>, StoreError>;

    /// The server's id of this connection's session (PostgreSQL's backend pid), for a
    /// worker's notifier to skip the notifications of its own commits
    /// ([`crate::Notifier::ignore_session`]); `None` where the engine has none.
    fn session(&self) -> Option<i64> {
        None
    }

    /// How this host's clock stands against the database server's, where the database
    /// has a clock of its own (a server other hosts' workers share); `None` where it has
    /// none (SQLite: everyone on the file shares this host's clock). Leases, due times and
    /// heartbeats are written with each host's clock, so a host whose clock is off
    /// shortens or stretches them for everyone; a worker uses this to say so.
    ///
    /// A driver may answer with the reading it took along with a statement it sent
    /// anyway (PostgreSQL: a worker's registration and heartbeat read the server's clock
    /// as they write), each such reading at most once; otherwise it reads the server's
    /// clock now, with one statement.
    ///
    /// # Errors
    /// The server's clock cannot be read.
    fn clock_offset(&self) -> Result<Option<ClockOffset>, StoreError> {
        Ok(None)
    }

    // Reads.

    /// Everything about one task; `None` if no task has this id.
    ///
    /// # Errors
    /// The database cannot be read, or the row is invalid.
    fn snapshot(&self, id: Uuid) -> Result<Option<TaskSnapshot>, StoreError>;

    /// One task's state.
    ///
    /// # Errors
    /// The database cannot be read.
    fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, StoreError>;

    /// One task's stored (encoded) arguments.
    ///
    /// # Errors
    /// The database cannot be read.
    fn args_of(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError>;

    /// A task's log lines, oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    fn logs(&self, id: Uuid) -> Result<Vec<TaskLog>, StoreError>;

    /// The earliest time a `scheduled` or `retryable` task of `manager` becomes due.
    ///
    /// # Errors
    /// The database cannot be read.
    fn next_due(&self, manager: &str) -> Result<Option<i64>, StoreError>;

    /// How many tasks of `manager` are not finished (waiting, scheduled, available,
    /// running, retryable); cheap on a big table.
    ///
    /// # Errors
    /// The database cannot be read.
    fn unfinished(&self, manager: &str) -> Result<u64, StoreError>;

    /// When the longest-waiting `available` task of `manager` became available (its due
    /// time, microseconds since the epoch); `None` when none is available. Reads the
    /// available rows only (the claim index): a metric's backlog age.
    ///
    /// # Errors
    /// The database cannot be read.
    fn oldest_available(&self, manager: &str) -> Result<Option<i64>, StoreError>;

    /// Tasks matching `filter`, newest first.
    ///
    /// # Errors
    /// The database cannot be read.
    fn list(&self, filter: &ListFilter) -> Result<Vec<TaskSummary>, StoreError>;

    /// Task counts by manager, name and state (a full scan: for people, not hot paths).
    ///
    /// # Errors
    /// The database cannot be read.
    fn counts(&self) -> Result<Vec<StateCount>, StoreError>;

    /// How many tasks completed at or after `since`.
    ///
    /// # Errors
    /// The database cannot be read.
    fn completed_since(&self, since: i64) -> Result<u64, StoreError>;

    /// Every worker run recorded, newest first; with `live_only`, those not stopped.
    ///
    /// # Errors
    /// The database cannot be read.
    fn workers(&self, live_only: bool) -> Result<Vec<WorkerRow>, StoreError>;

    /// The next `limit` tasks of `manager` waiting for their start time, soonest first.
    ///
    /// # Errors
    /// The database cannot be read.
    fn waiting(&self, manager: &str, limit: usize) -> Result<Vec<Waiting>, StoreError>;

    /// The parents of the task `id` (none for a task dispatched with `delay`), in the
    /// order their results are passed, each with its state now.
    ///
    /// # Errors
    /// The database cannot be read.
    fn parents(&self, id: Uuid) -> Result<Vec<ParentInfo>, StoreError>;

    /// The first `limit` `waiting` tasks of `manager` (oldest first), each with its
    /// parents.
    ///
    /// # Errors
    /// The database cannot be read.
    fn waiting_on_parents(
        &self,
        manager: &str,
        limit: usize,
    ) -> Result<Vec<AfterParents>, StoreError>;

    /// The available tasks of `filter`'s names dispatched with another argument
    /// fingerprint than the filter's (and not with none), counted by name and
    /// fingerprint: the tasks its worker leaves for a worker of the matching version.
    ///
    /// # Errors
    /// The database cannot be read.
    fn mismatched(&self, filter: &TaskFilter) -> Result<Vec<Mismatched>, StoreError>;

    /// The available tasks dispatched with a known argument fingerprint, counted by
    /// manager, name and fingerprint (the claim index's prefix: cheap), ordered so.
    ///
    /// # Errors
    /// The database cannot be read.
    fn available_signatures(&self) -> Result<Vec<SignatureCount>, StoreError>;

    /// The signatures the workers not stopped whose heartbeat is at or after
    /// `alive_since` declare: one read of the workers table, for telling which available
    /// tasks wait for a worker of their signature ([`Signatures::waits`]).
    ///
    /// # Errors
    /// The database cannot be read.
    fn signatures(&self, alive_since: i64) -> Result<Signatures, StoreError> {
        let live: Vec<WorkerRow> = self
            .workers(true)?
            .into_iter()
            .filter(|w| w.heartbeat_at >= alive_since)
            .collect();
        Ok(Signatures::of_workers(&live))
    }

    /// The available tasks that wait for a worker of their signature
    /// ([`Driver::available_signatures`] whose [`Signatures::waits`] holds against
    /// `signatures`), counted by manager, name and fingerprint.
    ///
    /// # Errors
    /// The database cannot be read.
    fn waiting_for_signature(
        &self,
        signatures: &Signatures,
    ) -> Result<Vec<SignatureCount>, StoreError> {
        Ok(self
            .available_signatures()?
            .into_iter()
            .filter(|c| {
                signatures.waits(
                    &c.manager,
                    &c.task,
                    TaskState::Available,
                    Some(&c.args_fingerprint),
                )
            })
            .collect())
    }

    /// The earliest tick among the schedules `filter` selects.
    ///
    /// # Errors
    /// The database cannot be read.
    fn next_schedule_due(&self, filter: &ScheduleFilter) -> Result<Option<i64>, StoreError>;

    /// Every schedule (of `manager`, if given), by id.
    ///
    /// # Errors
    /// The database cannot be read.
    fn schedules(&self, manager: Option<&str>) -> Result<Vec<ScheduleInfo>, StoreError>;

    /// One schedule.
    ///
    /// # Errors
    /// The database cannot be read.
    fn schedule(&self, id: i64) -> Result<Option<ScheduleInfo>, StoreError>;

    /// The ids of a schedule's runs, oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError>;

    /// The limit rows (of `manager`, if given), by manager and task: declarations and
    /// overrides, with or without a limit in force.
    ///
    /// # Errors
    /// The database cannot be read.
    fn limits(&self, manager: Option<&str>) -> Result<Vec<LimitRow>, StoreError>;

    /// What counts against the limits of `manager`'s task `task` at `now`: its running
    /// attempts that count against a limit, by partition key (`''` for none); with
    /// `rate`, its starts in the window before `now` and when the next start is allowed
    /// if none is; and its available tasks.
    ///
    /// # Errors
    /// The database cannot be read.
    fn limit_usage(
        &self,
        manager: &str,
        task: &str,
        rate: Option<Rate>,
        now: i64,
    ) -> Result<LimitUsage, StoreError>;

    /// Every task with a limit in force (of `manager`, if given), with what counts
    /// against it at `now`: what `castor limit`, `list`, `show`, `stats` and the
    /// dashboard show, and what tells why an available task is held back
    /// ([`LimitStatus::held`]). Nothing when no limit is set (one read of a small table).
    ///
    /// # Errors
    /// The database cannot be read.
    fn limit_status(
        &self,
        manager: Option<&str>,
        now: i64,
    ) -> Result<Vec<LimitStatus>, StoreError> {
        let mut out = Vec::new();
        for row in self.limits(manager)? {
            let limits = row.effective();
            if limits.is_none() {
                continue;
            }
            let usage = self.limit_usage(&row.manager, &row.task, limits.rate, now)?;
            out.push(LimitStatus {
                running: usage.running_by_key.values().sum(),
                running_by_key: usage.running_by_key,
                started: usage.started,
                next_slot_at: usage.next_slot_at,
                available: usage.available,
                read_at: now,
                row,
            });
        }
        Ok(out)
    }

    // Health and space.

    /// The database's size in bytes.
    ///
    /// # Errors
    /// The database cannot be read.
    fn size(&self) -> Result<u64, StoreError>;

    /// Checks the database's structure (SQLite: `PRAGMA quick_check`), stopping after
    /// `budget` if given.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first problem, or the failure to read.
    fn quick_check(&self, budget: Option<Duration>) -> Result<CheckReach, StoreError>;

    /// A full check (SQLite: `PRAGMA integrity_check`); the problems found, none if sound.
    ///
    /// # Errors
    /// The check cannot run at all.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError>;

    /// What [`Driver::integrity_check`] runs, as `castor check` names it to a user
    /// (SQLite: `PRAGMA integrity_check`).
    fn integrity_check_name(&self) -> &'static str;

    /// The tables and indexes of the current schema that the database lacks.
    ///
    /// # Errors
    /// The schema cannot be read.
    fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError>;

    /// Bytes this user may still write where the database lives, if the engine can tell
    /// (a file system's free space); `None` otherwise.
    fn free_bytes(&self) -> Option<u64>;

    /// Bytes [`Driver::reclaim_space`] could give back now (SQLite: the WAL file's size).
    fn reclaimable_bytes(&self) -> u64;

    /// Gives space the engine holds but does not need back to the system (SQLite:
    /// `wal_checkpoint(TRUNCATE)`), waiting only briefly for other connections. `false`
    /// if they kept it from completing; nothing is lost then.
    ///
    /// # Errors
    /// The engine failed (a full disk, an I/O error).
    fn reclaim_space(&mut self) -> Result<bool, StoreError>;

    // Migrations.

    /// This driver's migrations, oldest first, numbered from 1 without gaps.
    fn migrations(&self) -> &'static [Migration];

    /// The database's schema version: the newest migration applied (0 for a new database).
    ///
    /// # Errors
    /// The database cannot be read.
    fn schema_version(&self) -> Result<u32, StoreError>;

    /// The migrations recorded as applied, oldest first.
    ///
    /// # Errors
    /// The database cannot be read.
    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError>;

    /// Applies `migration` in one transaction and records it, unless another process
    /// applied it first (checked under the write lock). Returns whether it applied it.
    ///
    /// # Errors
    /// The migration failed; nothing of it remains.
    fn apply_migration(&mut self, migration: &Migration, now: i64) -> Result<bool, StoreError>;
}

/// A write transaction (River's `ExecutorTx`): every statement that changes the database,
/// each guarded as its name says (`finish_if_running` changes nothing unless the task is
/// still running that attempt). Dropped without [`Tx::commit`], it rolls back.
pub trait Tx {
    // The app's side.

    /// Inserts one task (`available`, or `scheduled` if it starts later). With a unique
    /// key held by an unfinished task of the same manager and name, inserts nothing and
    /// returns that task's id.
    ///
    /// # Errors
    /// The statement failed.
    fn enqueue(&mut self, task: &NewTask<'_>, now: i64) -> Result<Enqueued, StoreError>;

    /// Inserts one task that waits on `after`'s parents (`waiting`), or, when they have
    /// all completed already, is `available` (or `scheduled`) at once with its first
    /// argument composed from their results (`task.args` holds its other arguments); when
    /// one was discarded or cancelled already, it is `cancelled` at once (see
    /// [`crate::chain`]). A unique key is held as by [`Tx::enqueue`].
    ///
    /// # Errors
    /// [`StoreError::UnknownParent`] for a parent not in the database (nothing is
    /// written); a statement failed.
    fn enqueue_after(
        &mut self,
        task: &NewTask<'_>,
        after: &After<'_>,
        now: i64,
    ) -> Result<Enqueued, StoreError>;

    /// Cancels a task: one not started never runs; a running one is flagged for its worker.
    /// `None` if no task has this id.
    ///
    /// # Errors
    /// The statement failed.
    fn cancel(&mut self, id: Uuid, now: i64) -> Result<Option<CancelOutcome>, StoreError>;

    /// Puts a discarded or cancelled task back to `available` with one more attempt
    /// allowed (its errors are kept). `None` if no task has this id.
    ///
    /// # Errors
    /// The statement failed, e.g. its unique key is held by another task now.
    fn retry(&mut self, id: Uuid, now: i64) -> Result<Option<RetryOutcome>, StoreError>;

    /// Deletes tasks in `states` that finished (or, unfinished, were dispatched) before
    /// `before`, with their logs; never running ones. Returns how many.
    ///
    /// # Errors
    /// The statement failed.
    fn purge(&mut self, states: &[TaskState], before: i64) -> Result<usize, StoreError>;

    // The producer.

    /// Claims up to `limit` available tasks `filter` selects, highest priority first,
    /// then oldest: each becomes `running`, its attempt incremented, owned by `worker`
    /// until `lease_until`. Concurrent claimers never claim the same task.
    ///
    /// # Errors
    /// The statement failed.
    fn claim(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError>;

    // Flow control (see [`crate::limits`]).

    /// Writes the limits `manager`'s library declares for each of `declared` (a task
    /// declared without limits has its declared limits cleared; its override stays).
    /// Each worker calls it at start: the newest declaration wins.
    ///
    /// # Errors
    /// The statement failed.
    fn declare_limits(
        &mut self,
        manager: &str,
        declared: &[DeclaredLimits<'_>],
        now: i64,
    ) -> Result<(), StoreError>;

    /// Sets (or, with no field set, clears) the run-time override of a task's limits;
    /// returns the row as it now is.
    ///
    /// # Errors
    /// The statement failed.
    fn set_limit_override(
        &mut self,
        manager: &str,
        task: &str,
        overridden: &Limits,
        now: i64,
    ) -> Result<LimitRow, StoreError>;

    /// As [`Tx::claim`], within the limits in force of the filter's tasks (every
    /// driver's is [`crate::limits::claim_limited`] over the primitives below); also says
    /// whether a limit held tasks back and when a rate allows the next start.
    ///
    /// # Errors
    /// A statement failed.
    fn claim_limited(
        &mut self,
        filter: &TaskFilter,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<LimitedClaim, StoreError>;

    /// The limit rows of `manager`, read in this transaction without a lock: a worker
    /// reads them with its registration and its heartbeats, so that knowing whether
    /// its tasks have limits costs an idle worker no statement of its own.
    ///
    /// # Errors
    /// The statement failed.
    fn limits_of(&mut self, manager: &str) -> Result<Vec<LimitRow>, StoreError>;

    /// The limit rows of `manager`'s `tasks`, locked against other claimers until the
    /// transaction ends where the engine locks rows (PostgreSQL: `FOR UPDATE`, in task
    /// order).
    ///
    /// # Errors
    /// The statement failed.
    fn lock_limits(&mut self, manager: &str, tasks: &[String])
    -> Result<Vec<LimitRow>, StoreError>;

    /// How many attempts of the task run under a limit (claimed by
    /// [`Tx::claim_candidates`]), all keys together.
    ///
    /// # Errors
    /// The statement failed.
    fn running_limited(&mut self, manager: &str, task: &str) -> Result<u64, StoreError>;

    /// Deletes the task's recorded starts at or before `since`; returns how many remain.
    ///
    /// # Errors
    /// The statement failed.
    fn starts_in_window(
        &mut self,
        manager: &str,
        task: &str,
        since: i64,
    ) -> Result<u64, StoreError>;

    /// Up to `limit` available tasks of the task dispatched with one of `prints`, in
    /// claim order; with `per_key`, only those whose key runs fewer attempts than it,
    /// each with its key's running count.
    ///
    /// # Errors
    /// The statement failed.
    fn limited_candidates(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
        per_key: Option<u32>,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError>;

    /// Claims these rows, if still available, as [`Tx::claim`] does, and marks them as
    /// counting against their task's concurrency limit (key `''` when none).
    ///
    /// # Errors
    /// The statement failed.
    fn claim_candidates(
        &mut self,
        seqs: &[i64],
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records `count` starts of the task at `now` in the rate ledger.
    ///
    /// # Errors
    /// The statement failed.
    fn record_starts(
        &mut self,
        manager: &str,
        task: &str,
        count: usize,
        now: i64,
    ) -> Result<(), StoreError>;

    /// The time of the task's recorded start at `offset`, oldest first.
    ///
    /// # Errors
    /// The statement failed.
    fn start_at(
        &mut self,
        manager: &str,
        task: &str,
        offset: u64,
    ) -> Result<Option<i64>, StoreError>;

    /// True if the task has an available task dispatched with one of `prints`.
    ///
    /// # Errors
    /// The statement failed.
    fn has_available(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
    ) -> Result<bool, StoreError>;

    // The completer.

    /// Records how an attempt ended, if the task is still `running` that attempt; `false`
    /// when it is not (the attempt lost its lease and a newer one owns the row). A task
    /// whose cancellation was asked for while it ran ends `cancelled` instead of retrying.
    ///
    /// # Errors
    /// The statement failed.
    fn finish_if_running(
        &mut self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Records how each attempt of `ends` ended, as [`Tx::finish_if_running`] does, in
    /// as few statements as the engine makes cheap; returns, per end, whether it was recorded.
    /// An end whose row already holds this very outcome (written by `worker` in a
    /// transaction whose commit went through although its reply was lost) counts as
    /// recorded. The worker writes a turn's outcomes through this.
    ///
    /// # Errors
    /// A statement failed.
    fn finish_many(
        &mut self,
        worker: &str,
        ends: &[AttemptEnd<'_>],
        now: i64,
    ) -> Result<Vec<bool>, StoreError>;

    /// Gives a claimed task that never started back: `available` again, the claim's
    /// attempt undone, if it is still running that attempt.
    ///
    /// # Errors
    /// The statement failed.
    fn release_if_running(&mut self, seq: i64, attempt: u32) -> Result<bool, StoreError>;

    /// Appends a line to a task's log, keeping only its newest lines.
    ///
    /// # Errors
    /// The statement failed.
    fn append_log(&mut self, log: &NewLog<'_>) -> Result<(), StoreError>;

    /// Appends lines to tasks' logs, as [`Tx::append_log`] does for each, in as few
    /// statements as the driver can.
    ///
    /// # Errors
    /// A statement failed.
    fn append_logs(&mut self, logs: &[NewLog<'_>]) -> Result<(), StoreError> {
        logs.iter().try_for_each(|log| self.append_log(log))
    }

    /// Records a running attempt's progress (ignored once the attempt is over).
    ///
    /// # Errors
    /// The statement failed.
    fn set_progress(
        &mut self,
        seq: i64,
        attempt: u32,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), StoreError>;

    // The stager.

    /// Moves `scheduled` and `retryable` tasks of `manager` due at `now` to `available`;
    /// returns how many moved.
    ///
    /// # Errors
    /// The statement failed.
    fn stage_due(&mut self, manager: &str, now: i64) -> Result<usize, StoreError>;

    /// Schedules `filter` selects whose tick is due at `now`, oldest tick first.
    ///
    /// # Errors
    /// The statement failed.
    fn due_schedules(
        &mut self,
        filter: &ScheduleFilter,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueSchedule>, StoreError>;

    /// Moves a schedule from tick `from_tick` to `next` (`None`: finished) with `runs`
    /// runs so far, if it is still at `from_tick`; `false` if another worker moved it.
    ///
    /// # Errors
    /// The statement failed.
    fn advance_schedule(
        &mut self,
        id: i64,
        from_tick: i64,
        runs: u32,
        next: Option<i64>,
    ) -> Result<bool, StoreError>;

    // Leases, heartbeats and the rescuer.

    /// Extends the leases of the attempts `held`, (row, attempt), that `worker` runs;
    /// returns how many moved. Only those: a row still naming `worker` that it does not
    /// hold (a claim committed while the worker saw an error) must expire and be rescued.
    ///
    /// # Errors
    /// The statement failed.
    fn renew_leases(
        &mut self,
        worker: &str,
        held: &[(i64, u32)],
        until: i64,
    ) -> Result<usize, StoreError>;

    /// Records a new worker run.
    ///
    /// # Errors
    /// The statement failed.
    fn register_worker(&mut self, worker: &WorkerRow) -> Result<(), StoreError>;

    /// Says the worker is alive, with its running totals.
    ///
    /// # Errors
    /// The statement failed.
    fn heartbeat(
        &mut self,
        worker: &str,
        now: i64,
        completed: u64,
        failed: u64,
    ) -> Result<(), StoreError>;

    /// Records a worker's clean stop.
    ///
    /// # Errors
    /// The statement failed.
    fn stop_worker(&mut self, worker: &str, now: i64) -> Result<(), StoreError>;

    /// Worker runs that have not recorded a stop.
    ///
    /// # Errors
    /// The statement failed.
    fn live_workers(&mut self) -> Result<Vec<LiveWorker>, StoreError>;

    /// Running attempts whose lease ran out before `now`, oldest lease first.
    ///
    /// # Errors
    /// The statement failed.
    fn expired_leases(&mut self, now: i64, limit: usize) -> Result<Vec<Expired>, StoreError>;

    /// Declares a worker run dead: ends the leases of its running tasks now (so the next
    /// rescue takes them) and marks it stopped. Returns how many tasks it held.
    ///
    /// # Errors
    /// The statement failed.
    fn bury_worker(&mut self, worker: &str, now: i64) -> Result<usize, StoreError>;

    /// The rows of `worker`'s running tasks that someone asked to cancel.
    ///
    /// # Errors
    /// The statement failed.
    fn cancel_requests(&mut self, worker: &str) -> Result<Vec<i64>, StoreError>;

    // The pruner.

    /// The retention sweep: deletes up to `limit` tasks that finished before `before`,
    /// with their logs, and worker runs that stopped before it. Returns how many tasks.
    ///
    /// # Errors
    /// The statement failed.
    fn prune(&mut self, before: i64, limit: usize) -> Result<usize, StoreError>;

    // Schedules.

    /// Inserts a schedule an app created; returns its id.
    ///
    /// # Errors
    /// The statement failed.
    fn create_schedule(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError>;

    /// Makes a declared periodic task's schedule match its declaration: created if new,
    /// kept (with its next tick) if unchanged, restarted if changed. Returns its id.
    ///
    /// # Errors
    /// The statement failed.
    fn upsert_periodic(&mut self, schedule: &NewSchedule<'_>, now: i64) -> Result<i64, StoreError>;

    /// Pauses or resumes a schedule; `false` if there is none with this id.
    ///
    /// # Errors
    /// The statement failed.
    fn set_schedule_paused(&mut self, id: i64, paused: bool) -> Result<bool, StoreError>;

    /// Deletes a schedule (its runs stay); `false` if there is none with this id.
    ///
    /// # Errors
    /// The statement failed.
    fn remove_schedule(&mut self, id: i64) -> Result<bool, StoreError>;

    /// How many waiting dependents this transaction made `available` (or `scheduled`),
    /// their parents having all completed (see [`crate::chain`]): a worker that wrote the
    /// completions claims again, rather than waiting for a wake-up its own commit does not
    /// give it.
    fn released(&self) -> usize {
        0
    }

    /// Commits the transaction.
    ///
    /// # Errors
    /// The commit failed; nothing of the transaction remains.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
