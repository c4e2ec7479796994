//! The values that go into and come out of the driver's operations: one typed struct per
//! row shape, the same for every engine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schedule::{Cadence, Missed};
use crate::state::{Backoff, TaskState, Transition};

/// A task to insert.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    /// The manager (namespace) the task belongs to.
    pub manager: &'a str,
    /// The task's name.
    pub task: &'a str,
    /// The encoded arguments.
    pub args: &'a [u8],
    /// Run no earlier than this (microseconds since the epoch); `None`: now.
    pub run_at_us: Option<i64>,
    /// Higher runs first.
    pub priority: i32,
    /// At most one unfinished task per (manager, task, key).
    pub unique_key: Option<&'a str>,
    /// Attempts before the task is discarded.
    pub max_attempts: u32,
    /// First backoff, in milliseconds.
    pub backoff_base_ms: i64,
    /// Longest backoff, in milliseconds.
    pub backoff_cap_ms: i64,
    /// Timeout per attempt, in milliseconds.
    pub timeout_ms: Option<i64>,
    /// The schedule that produced this run.
    pub schedule_id: Option<i64>,
    /// The dispatching side's fingerprint of the argument tuple's type; `None`: unknown
    /// (any worker that declares the name may claim it).
    pub args_fingerprint: Option<&'a str>,
    /// The partition of the task's keyed concurrency limit (the declared argument's
    /// value, computed by the dispatching side); `None`: no partition.
    pub concurrency_key: Option<&'a str>,
}

/// A task's parents, for [`crate::Tx::enqueue_after`]: it waits until every one has
/// completed, then runs with their results as its first argument.
#[derive(Debug, Clone, Copy)]
pub struct After<'a> {
    /// The parents, in the order their results are passed.
    pub parents: &'a [ParentRef<'a>],
    /// True for a fan-in: the first argument is the sequence of the parents' results
    /// (encoded with its length), even for one parent; false for a chain: the one
    /// parent's result itself.
    pub fan_in: bool,
}

/// One parent of a dependent task, as dispatched.
#[derive(Debug, Clone, Copy)]
pub struct ParentRef<'a> {
    /// The parent's id.
    pub id: Uuid,
    /// The fingerprint of the parent's result type as the dispatching app knows it: a
    /// result recorded with another one is never passed on. `None`: not checked.
    pub result_fingerprint: Option<&'a str>,
}

/// A parent of a task, as `castor show` and the dashboard read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentInfo {
    /// Where its result goes among the dependent's parents (0-based).
    pub position: u32,
    /// The parent's id.
    pub id: Uuid,
    /// Its name.
    pub task: String,
    /// Its state; `None` once it is purged or pruned.
    pub state: Option<TaskState>,
}

/// A `waiting` task and its parents (the dashboard's read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterParents {
    /// The task's id.
    pub id: Uuid,
    /// Its name.
    pub task: String,
    /// Its parents, in order.
    pub parents: Vec<ParentInfo>,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The task's id: the new one, or the unfinished task that holds the unique key.
    pub id: Uuid,
    /// True when the unique key was taken and nothing was inserted.
    pub existing: bool,
}

/// Which tasks a worker may claim: its manager, and the task names its library declares,
/// each with its argument fingerprint. A task whose name is not listed stays for a worker
/// that knows it; one dispatched with another fingerprint stays for a worker built from
/// the matching version of the library.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskFilter {
    /// The manager's name.
    pub manager: String,
    /// The task names the worker can run.
    pub tasks: Vec<String>,
    /// The argument fingerprint of each of `tasks`, by position: a task is claimed if it
    /// was dispatched with none (unknown) or with this one. Missing or `None`: only tasks
    /// dispatched with none.
    pub args_fingerprints: Vec<Option<String>>,
}

impl TaskFilter {
    /// The (name, fingerprint) pairs the claim takes: each name with its own fingerprint
    /// when it has one, and with none (stored as the empty string) when it has none or
    /// when `unsigned`: the caller knows that the manager may have available tasks
    /// dispatched without one (rows written before fingerprints existed).
    pub fn claim_keys(&self, unsigned: bool) -> (Vec<&str>, Vec<&str>) {
        let mut names = Vec::with_capacity(self.tasks.len() * 2);
        let mut prints = Vec::with_capacity(self.tasks.len() * 2);
        for (i, name) in self.tasks.iter().enumerate() {
            let own = self
                .args_fingerprints
                .get(i)
                .and_then(Option::as_deref)
                .filter(|fp| !fp.is_empty());
            if unsigned || own.is_none() {
                names.push(name.as_str());
                prints.push("");
            }
            if let Some(fp) = own {
                names.push(name.as_str());
                prints.push(fp);
            }
        }
        (names, prints)
    }
}

/// Available tasks of a name a worker declares, dispatched with another argument
/// fingerprint than its library's: left for a worker of the matching version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatched {
    /// The task's name.
    pub task: String,
    /// The fingerprint they were dispatched with.
    pub args_fingerprint: String,
    /// How many.
    pub count: u64,
}

/// The argument fingerprints live workers declare, per (manager, task name): what tells
/// an available task that no running worker will claim, because every worker declaring
/// its name runs another signature of it ([`crate::Driver::signatures`]). Read once from
/// the workers table, then asked per task row in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signatures {
    /// (manager, task) -> the fingerprints declared for it; `None` when a worker
    /// declaring the name recorded none (an older castor's row): unknown, so no task of
    /// that name is said to wait.
    declared: HashMap<(String, String), Option<HashSet<String>>>,
}

impl Signatures {
    /// The signatures `workers` (the live ones) declare.
    pub fn of_workers(workers: &[WorkerRow]) -> Signatures {
        let mut declared: HashMap<(String, String), Option<HashSet<String>>> = HashMap::new();
        for w in workers {
            for task in &w.tasks {
                let entry = declared
                    .entry((w.manager.clone(), task.clone()))
                    .or_insert_with(|| Some(HashSet::new()));
                match w.args_fingerprints.get(task).filter(|fp| !fp.is_empty()) {
                    Some(fp) => {
                        if let Some(set) = entry {
                            set.insert(fp.clone());
                        }
                    }
                    None => *entry = None,
                }
            }
        }
        Signatures { declared }
    }

    /// The argument fingerprints live workers declare for `manager`'s `task`, sorted
    /// (empty if none declares it, or only with an unknown one).
    pub fn declared(&self, manager: &str, task: &str) -> Vec<&str> {
        let mut fps: Vec<&str> = match self.declared.get(&(manager.to_owned(), task.to_owned())) {
            Some(Some(fps)) => fps.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        fps.sort_unstable();
        fps
    }

    /// Whether a task of `manager`'s `task` in `state`, dispatched with `args_fingerprint`,
    /// waits for a worker of its signature: it is `available` with a known fingerprint,
    /// and live workers declare its name, every one with another fingerprint. (With no
    /// live worker of its name it waits for any worker, which `castor stats` says apart.)
    pub fn waits(
        &self,
        manager: &str,
        task: &str,
        state: crate::TaskState,
        args_fingerprint: Option<&str>,
    ) -> bool {
        let Some(fp) = args_fingerprint.filter(|fp| !fp.is_empty()) else {
            return false;
        };
        if state != crate::TaskState::Available {
            return false;
        }
        match self.declared.get(&(manager.to_owned(), task.to_owned())) {
            Some(Some(fps)) => !fps.contains(fp),
            Some(None) | None => false,
        }
    }
}

/// Available tasks of one name and argument fingerprint (a known one), counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureCount {
    /// The manager.
    pub manager: String,
    /// The task's name.
    pub task: String,
    /// The fingerprint they were dispatched with.
    pub args_fingerprint: String,
    /// How many.
    pub count: u64,
}

/// The schedules a worker runs: its manager's app schedules of tasks it knows, and the
/// periodic schedules (by name) it declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleFilter {
    /// The manager's name.
    pub manager: String,
    /// The task names the worker can run.
    pub tasks: Vec<String>,
    /// The periodic schedules its library declares.
    pub periodic: Vec<String>,
}

/// A task a worker claimed: everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The row's sequence number (the worker's handle on the row).
    pub seq: i64,
    /// The task's id.
    pub id: Uuid,
    /// The task's name.
    pub task: String,
    /// The encoded arguments.
    pub args: Vec<u8>,
    /// This attempt's number (1-based).
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The backoff between attempts.
    pub backoff: Backoff,
    /// The attempt's timeout.
    pub timeout: Option<Duration>,
    /// The task's priority.
    pub priority: i32,
}

/// How an attempt ended, as written to its row.
#[derive(Debug, Clone)]
pub enum Finish<'a> {
    /// The task returned this encoded result.
    Completed {
        /// The encoded result.
        result: &'a [u8],
        /// The fingerprint of the result's type in the library that produced it; `None`:
        /// unknown.
        result_fingerprint: Option<&'a str>,
    },
    /// The attempt failed; `transition` says what comes next.
    Failed {
        /// The next state and, for `retryable`, when.
        transition: Transition,
        /// The attempt's error, appended to the row's `errors`.
        error: AttemptError,
    },
}

/// One attempt's end, as [`crate::Tx::finish_many`] records it.
#[derive(Debug, Clone)]
pub struct AttemptEnd<'a> {
    /// The task's row.
    pub seq: i64,
    /// The attempt that ended.
    pub attempt: u32,
    /// How it ended.
    pub finish: Finish<'a>,
}

/// What kind of failure ended an attempt, as recorded with its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The task returned an error (or its arguments did not decode).
    Error,
    /// The task panicked.
    Panic,
    /// The process running it died.
    Crash,
    /// It ran past its timeout.
    Timeout,
    /// Its worker went away before it finished.
    Abandoned,
    /// It was cancelled while it ran.
    Cancelled,
    /// It never ran: it ended while it waited on its parents (one was discarded,
    /// cancelled or purged, its result was of another type, or a user cancelled it).
    Chain,
    /// A kind this build does not know (written by a newer castor).
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The name stored and shown: `error`, `panic`, `crash`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Error => "error",
            ErrorKind::Panic => "panic",
            ErrorKind::Crash => "crash",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Abandoned => "abandoned",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Chain => "chain",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt, as recorded in a task's list of errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The 1-based attempt number.
    pub attempt: u32,
    /// When the attempt ended (microseconds since the Unix epoch).
    pub at: i64,
    /// What kind of failure it was.
    pub kind: ErrorKind,
    /// The message.
    pub error: String,
    /// The worker that ran the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// A task log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail for debugging.
    Debug = 0,
    /// Normal progress.
    Info = 1,
    /// Something odd that did not stop the task.
    Warn = 2,
    /// Something failed.
    Error = 3,
}

impl LogLevel {
    /// `debug`, `info`, `warn` or `error`, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The level stored as `text`; anything unknown reads as `error`, so a line is never
    /// lost to an unreadable level.
    pub fn from_stored(text: &str) -> LogLevel {
        match text {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }

    /// The level with this number (as it crosses the plugin ABI); out of range means
    /// `error`.
    pub const fn from_u8(level: u8) -> LogLevel {
        match level {
            0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLog {
    /// When it was logged (microseconds since the epoch).
    pub at: i64,
    /// The attempt that logged it.
    pub attempt: u32,
    /// Its level; a process task's stdout is `info`, its stderr `warn`.
    pub level: LogLevel,
    /// The line.
    pub line: String,
}

/// A log line to append to a running attempt's log.
#[derive(Debug, Clone, Copy)]
pub struct NewLog<'a> {
    /// The task's row.
    pub seq: i64,
    /// The attempt that logged it.
    pub attempt: u32,
    /// When (microseconds since the epoch).
    pub at: i64,
    /// Its level.
    pub level: LogLevel,
    /// The line.
    pub line: &'a str,
}

/// How far a running task says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0: `done` is a fraction in millionths).
    pub total: u64,
    /// What the task is doing.
    pub message: Option<String>,
}

/// Everything stored about one task.
#[derive(Debug, Clone)]
pub struct TaskSnapshot {
    /// The row's sequence number.
    pub seq: i64,
    /// The task's id.
    pub id: Uuid,
    /// Its manager.
    pub manager: String,
    /// Its name.
    pub task: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The encoded result, once completed.
    pub result: Option<Vec<u8>>,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// When it was dispatched (microseconds since the epoch).
    pub created_at: i64,
    /// When it may run.
    pub scheduled_at: i64,
    /// When the latest attempt started.
    pub attempted_at: Option<i64>,
    /// When it reached a terminal state.
    pub finalized_at: Option<i64>,
    /// The worker of the latest attempt.
    pub attempted_by: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// The latest progress report of the running attempt.
    pub progress: Option<Progress>,
    /// The fingerprint of the argument tuple it was dispatched with; `None`: unknown.
    pub args_fingerprint: Option<String>,
    /// The fingerprint of the result's type in the library that produced the result;
    /// `None`: unknown (or no result).
    pub result_fingerprint: Option<String>,
    /// The partition of its task's keyed concurrency limit, as dispatched (`''` once a
    /// claim under a limit took it without one); `None`: none.
    pub concurrency_key: Option<String>,
}

/// Which tasks `list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these states (all if empty).
    pub states: Vec<TaskState>,
    /// Only this task name.
    pub task: Option<String>,
    /// Only this manager.
    pub manager: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// One line of `castor list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskSummary {
    /// The task's id.
    pub id: Uuid,
    /// Its manager.
    pub manager: String,
    /// Its name.
    pub task: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts so far.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// Dispatched at (microseconds since the epoch).
    pub created_at: i64,
    /// May run from.
    pub scheduled_at: i64,
    /// Finished at.
    pub finalized_at: Option<i64>,
    /// The worker of the latest attempt.
    pub attempted_by: Option<String>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The fingerprint of the argument tuple it was dispatched with; `None`: unknown.
    pub args_fingerprint: Option<String>,
    /// The partition of its task's keyed concurrency limit; `None`: none.
    pub concurrency_key: Option<String>,
}

/// How many tasks of one name are in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCount {
    /// The manager.
    pub manager: String,
    /// The task name.
    pub task: String,
    /// The state.
    pub state: TaskState,
    /// How many.
    pub count: u64,
}

/// A task waiting for its start time (scheduled, or retryable after a backoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The task's id.
    pub id: Uuid,
    /// Its name.
    pub task: String,
    /// When it becomes available (microseconds since the epoch).
    pub starts_at: i64,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It had not started: it is `cancelled` and will never run.
    Cancelled,
    /// It is running: its worker was asked to stop it (a process task is killed; a thread
    /// task sees `is_cancelled()`), and it ends `cancelled` unless it completes first.
    Requested,
    /// It had already finished in this state; nothing changed.
    AlreadyFinished(TaskState),
}

/// What `retry` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    /// It is `available` again, with one more attempt allowed.
    Retried,
    /// It waited on its parents and ended before they all completed (or with a result it
    /// could not take): it waits on them again, and is now in this state (`available`
    /// if they have all completed since, `cancelled` again if one still cannot).
    Rewaited(TaskState),
    /// It is not discarded or cancelled, so there is nothing to retry.
    NotRetryable(TaskState),
}

/// A running attempt whose lease has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The row.
    pub seq: i64,
    /// The task's id.
    pub id: Uuid,
    /// Its name.
    pub task: String,
    /// The attempt that was abandoned.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// The backoff before the next attempt.
    pub backoff: Backoff,
    /// The worker that held it.
    pub attempted_by: Option<String>,
}

/// A worker run as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    /// The run's unique id.
    pub id: String,
    /// The manager it serves.
    pub manager: String,
    /// The library it loaded.
    pub library: String,
    /// The machine it runs on.
    pub hostname: String,
    /// Where its pid means something (see [`LiveWorker::host_id`]); `None` in a row an
    /// older castor wrote.
    pub host_id: Option<String>,
    /// Its process id.
    pub pid: u32,
    /// Thread-pool size.
    pub threads: u32,
    /// Process-pool size.
    pub processes: u32,
    /// The task names it runs.
    pub tasks: Vec<String>,
    /// The argument fingerprint of each task it runs, by name (the signatures it claims
    /// besides unknown ones); empty in a row an older castor wrote (unknown).
    pub args_fingerprints: BTreeMap<String, String>,
    /// When it started (microseconds since the epoch).
    pub started_at: i64,
    /// Its last heartbeat.
    pub heartbeat_at: i64,
    /// When it stopped (cleanly, or declared dead by another worker).
    pub stopped_at: Option<i64>,
    /// Attempts it completed.
    pub completed: i64,
    /// Attempts it failed.
    pub failed: i64,
}

/// How this host's clock stands against the database server's, read once: the server's
/// clock as one statement read it, against the host's clock at the middle of that
/// statement's round trip (see [`crate::Driver::clock_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// The host's clock minus the server's, in microseconds: positive if the host is
    /// ahead.
    pub ahead_us: i64,
    /// The statement's round trip, in microseconds: the server read its clock somewhere
    /// in it, so `ahead_us` is right to within half of it.
    pub round_trip_us: i64,
    /// Whose the other clock is, for people: `the PostgreSQL server`.
    pub server: &'static str,
}

impl ClockOffset {
    /// The reading of one round trip: the host's clock `before` sending the statement
    /// and `after` its answer, and the `server`'s clock it answered with (all
    /// microseconds since the epoch), from `whose` server.
    pub fn from_round_trip(before: i64, server: i64, after: i64, whose: &'static str) -> Self {
        let round_trip_us = after.saturating_sub(before).max(0);
        ClockOffset {
            ahead_us: before
                .saturating_add(round_trip_us / 2)
                .saturating_sub(server),
            round_trip_us,
            server: whose,
        }
    }

    /// The least the two clocks differ by, whichever is ahead: the offset less half the
    /// round trip (0 if the round trip is too long to tell).
    pub fn at_least_us(&self) -> i64 {
        self.ahead_us
            .saturating_abs()
            .saturating_sub(self.round_trip_us / 2)
            .max(0)
    }

    /// The most the two clocks differ by: the offset plus half the round trip.
    pub fn at_most_us(&self) -> i64 {
        self.ahead_us
            .saturating_abs()
            .saturating_add(self.round_trip_us / 2)
    }
}

/// A worker run that has not recorded a stop, as the rescuer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    /// The run's id.
    pub id: String,
    /// Its machine.
    pub hostname: String,
    /// The kernel boot and process-id namespace its pid belongs to: two workers with the
    /// same host id can see each other's processes (two containers, or two machines,
    /// may share a hostname but never a host id). `None` in a row an older castor wrote.
    pub host_id: Option<String>,
    /// Its process id.
    pub pid: u32,
    /// Its last heartbeat.
    pub heartbeat_at: i64,
}

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
    /// The fingerprint of the arguments' type, copied into every run: the creating app's,
    /// or for a periodic schedule the declaring library's; `None`: unknown (any worker
    /// declaring the task runs them).
    pub args_fingerprint: Option<&'a str>,
}

/// A schedule whose tick has come, as a worker reads it to create the run.
#[derive(Debug, Clone)]
pub struct DueSchedule {
    /// The schedule's id.
    pub id: i64,
    /// The task each run is.
    pub task: String,
    /// The encoded arguments of every run.
    pub args: Vec<u8>,
    /// When it ticks; `None` if the stored cadence cannot be read (edited by hand).
    pub cadence: Option<Cadence>,
    /// The run limit.
    pub times: Option<u32>,
    /// No run after this time.
    pub until: Option<i64>,
    /// Runs created so far.
    pub runs: u32,
    /// The tick that is due (microseconds since the epoch).
    pub tick: i64,
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
    /// The fingerprint of the arguments' type, copied into the run; `None`: unknown.
    pub args_fingerprint: Option<String>,
}
