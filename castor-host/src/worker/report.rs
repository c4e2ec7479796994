//! What the worker tells its user. The coordinator emits [`WorkerEvent`]s to a
//! [`Reporter`]: log lines through `tracing` by default ([`PlainReporter`]), or the
//! dashboard.

use std::time::Duration;

use castor_abi::Uuid;
use castor_store::format::format_duration;
use castor_store::{AttemptOutcome, ClockOffset, LogLevel, StoreError, TaskState};
use tracing::Level;

use crate::event_at;
use crate::logging;

use super::Summary;

/// One attempt's end, as reported.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The task's id.
    pub id: Uuid,
    /// The task's name.
    pub task: &'a str,
    /// The attempt's number.
    pub attempt: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// How it ended.
    pub outcome: &'a AttemptOutcome,
    /// The error recorded for it (`None` for success): the outcome's message, except for
    /// a claim cancelled before it started.
    pub error: Option<&'a str>,
    /// The task's state now.
    pub state: TaskState,
    /// For `retryable`: when it runs again (microseconds since the epoch).
    pub retry_at: Option<i64>,
    /// How long the attempt ran.
    pub elapsed: Duration,
    /// The row had moved on (the lease was lost): this outcome was not recorded.
    pub lost_lease: bool,
}

/// Something the worker did or saw.
#[derive(Debug)]
pub enum WorkerEvent<'a> {
    /// An attempt was claimed and handed to a pool, where it may wait for a free slot
    /// before it runs (`start` tells when it does).
    Started {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: &'a str,
        /// `thread` or `process`.
        mode: castor_abi::TaskMode,
        /// The attempt's number.
        attempt: u32,
        /// The attempt limit.
        max_attempts: u32,
        /// Set when a thread or a child slot begins the attempt.
        start: super::AttemptStart,
    },
    /// A running task logged a line (or a process task printed one).
    TaskLog {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: &'a str,
        /// The line's level.
        level: castor_abi::LogLevel,
        /// The line.
        line: &'a str,
    },
    /// A task library logged a line outside any task (a `log` or `tracing` record on a
    /// thread of its own).
    LibraryLog {
        /// The line's level.
        level: castor_abi::LogLevel,
        /// The line: `target: message fields`.
        line: &'a str,
    },
    /// A running task reported progress.
    Progress {
        /// The task's id.
        id: Uuid,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What it is doing.
        message: &'a str,
    },
    /// An attempt ended.
    Finished(&'a Finished<'a>),
    /// A turn's write transaction committed (its outcomes, claims and maintenance), just
    /// before its outcomes and claims are reported.
    Committed,
    /// The worker's stop could not be recorded (at the end of a stop; nothing else is
    /// lost: other workers see it gone by its process or its heartbeat).
    StopNotRecorded {
        /// The failure.
        error: &'a StoreError,
    },
    /// Writes to the database started failing (a full disk, an I/O error, a lock held past
    /// every retry): the worker keeps its running tasks' outcomes, claims nothing new, and
    /// tries again with backoff. Sent once per failure, not at every try.
    WriteFailing {
        /// The first try's error.
        error: &'a StoreError,
        /// When the first retry comes.
        retry_in: Duration,
    },
    /// Writes work again, and everything kept while they failed is written.
    WriteRecovered {
        /// From the first failed try to the end of the recovery.
        failed_for: Duration,
        /// Failed tries in all.
        tries: u32,
    },
    /// This host's clock and the database server's differ by more than
    /// [`super::clock::SKEW_LIMIT`]: every lease, due time and heartbeat the worker writes
    /// is off by as much for the other hosts. Said once, until they are back in line.
    ClockSkewed {
        /// The reading that showed it.
        offset: &'a ClockOffset,
    },
    /// The clocks said to differ are back in line (within
    /// [`super::clock::BACK_IN_LINE`]).
    ClockInLine {
        /// The reading that showed it.
        offset: &'a ClockOffset,
    },
    /// A stop was requested.
    Stopping {
        /// Tasks still running.
        running: usize,
        /// How long they have.
        grace: Duration,
    },
    /// A checked new build is waiting (`--reload`): no new tasks; running ones have the
    /// grace period, then the worker re-executes itself on the new build.
    Reloading {
        /// What was checked: `new build of libapp.so checked (4 tasks)`.
        build: &'a str,
        /// Tasks still running.
        running: usize,
        /// How long they have.
        grace: Duration,
    },
    /// A second stop request: stop now.
    Forced {
        /// Tasks still running.
        running: usize,
    },
    /// A running task was given up at shutdown.
    Abandoned {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: &'a str,
    },
    /// Another worker run was found dead; its tasks are rescued.
    Buried {
        /// The dead run's id.
        worker: &'a str,
        /// How it was found dead.
        why: &'a str,
    },
    /// An attempt whose worker is gone was recorded as abandoned.
    Rescued {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: &'a str,
        /// Its state now (`retryable` or `discarded`).
        state: TaskState,
    },
    /// Available tasks of a name the library declares were dispatched with another
    /// argument fingerprint: the worker leaves them for a worker built from the matching
    /// version of the library. Said once per name and fingerprint, again when the count
    /// changes by half or more.
    Mismatched {
        /// The task's name.
        task: &'a str,
        /// How many it leaves.
        count: u64,
        /// Their argument fingerprint.
        found: &'a str,
        /// This library's.
        own: &'a str,
    },
    /// Finished tasks past the retention period were deleted.
    Pruned {
        /// How many.
        count: usize,
    },
    /// A process-mode child printed a line while it ran no task.
    ChildOutput {
        /// The child's pid.
        pid: u32,
        /// The line.
        line: &'a str,
    },
    /// The worker stopped.
    Stopped {
        /// What it did.
        summary: &'a Summary,
    },
}

/// Receives the worker's events on the coordinator thread; keep it quick.
pub trait Reporter {
    /// Handles one event.
    fn event(&mut self, event: WorkerEvent<'_>);

    /// Called after each batch of events: a good moment to flush output.
    fn flush(&mut self) {}
}

/// The worker's log lines: each event becomes one `tracing` event (see
/// [`crate::logging`] for the targets, the filter and the formats), held until the
/// batch's [`Reporter::flush`].
pub struct PlainReporter;

impl PlainReporter {
    /// A reporter for the installed log.
    pub fn new() -> PlainReporter {
        PlainReporter
    }
}

impl Default for PlainReporter {
    fn default() -> Self {
        PlainReporter::new()
    }
}

/// How much an event matters, for the filter (`-q` is `castor::task=warn`).
fn level(event: &WorkerEvent<'_>) -> Level {
    match event {
        WorkerEvent::StopNotRecorded { .. } => Level::ERROR,
        WorkerEvent::Forced { .. }
        | WorkerEvent::ClockSkewed { .. }
        | WorkerEvent::Abandoned { .. }
        | WorkerEvent::Buried { .. }
        | WorkerEvent::Mismatched { .. }
        | WorkerEvent::Rescued { .. } => Level::WARN,
        WorkerEvent::Started { .. }
        | WorkerEvent::TaskLog { .. }
        | WorkerEvent::Progress { .. } => Level::DEBUG,
        WorkerEvent::LibraryLog { level, .. } => tracing_level(*level),
        WorkerEvent::Finished(f) => match f.state {
            _ if f.lost_lease => Level::WARN,
            TaskState::Completed => Level::INFO,
            TaskState::Discarded => Level::ERROR,
            _ => Level::WARN,
        },
        _ => Level::INFO,
    }
}

fn tracing_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Info => Level::INFO,
        LogLevel::Warn => Level::WARN,
        LogLevel::Error => Level::ERROR,
    }
}

impl Reporter for PlainReporter {
    fn event(&mut self, event: WorkerEvent<'_>) {
        logging::hold();
        let level = level(&event);
        let line = match event {
            // Starts and progress are shown live by the dashboard; logs are kept with the
            // task (`castor show`) and printed at debug.
            WorkerEvent::Started { .. } | WorkerEvent::Progress { .. } | WorkerEvent::Committed => {
                return;
            }
            WorkerEvent::TaskLog {
                id,
                task,
                level: task_level,
                line,
            } => {
                tracing::debug!(
                    target: logging::TASK_LOG,
                    task_id = %id,
                    task,
                    task_level = task_level.as_str(),
                    "{line}"
                );
                return;
            }
            WorkerEvent::LibraryLog { line, .. } => {
                event_at!(level, target: logging::LIBRARY, "{line}");
                return;
            }
            WorkerEvent::Finished(f) => {
                event_at!(
                    level,
                    target: logging::TASK,
                    task_id = %f.id,
                    task = f.task,
                    attempt = f.attempt,
                    max_attempts = f.max_attempts,
                    state = f.state.as_str(),
                    outcome = f.outcome.kind(),
                    duration_ms = f.elapsed.as_secs_f64() * 1e3,
                    error = f.error,
                    lost_lease = f.lost_lease,
                    "{}",
                    describe(f)
                );
                return;
            }
            WorkerEvent::StopNotRecorded { error } => stop_not_recorded(error),
            WorkerEvent::WriteFailing { error, retry_in } => write_failing(error, retry_in),
            WorkerEvent::WriteRecovered { failed_for, tries } => write_recovered(failed_for, tries),
            WorkerEvent::ClockSkewed { offset } => clock_skewed(offset),
            WorkerEvent::ClockInLine { offset } => clock_in_line(offset),
            WorkerEvent::Stopping { running, grace } => format!(
                "stopping: no new tasks; waiting up to {} for {running} running task(s) (Ctrl+C again to stop now)",
                format_duration(grace)
            ),
            WorkerEvent::Reloading {
                build,
                running,
                grace,
            } => reloading(build, running, grace),
            WorkerEvent::Forced { running } => {
                format!("stopping now; giving up on {running} running task(s)")
            }
            WorkerEvent::Abandoned { id, task } => {
                format!("abandoned  {task} {id}: still running at shutdown; it will be retried")
            }
            WorkerEvent::ChildOutput { pid, line } => format!("child {pid}: {line}"),
            WorkerEvent::Buried { worker, why } => {
                format!("rescuing the tasks of worker {worker}: it {why}")
            }
            WorkerEvent::Rescued { id, task, state } => {
                format!(
                    "{:<10} {task} {id}: rescued from a dead worker",
                    state.as_str()
                )
            }
            WorkerEvent::Pruned { count } => {
                format!("pruned {count} finished task(s) past the retention period")
            }
            WorkerEvent::Mismatched {
                task,
                count,
                found,
                own,
            } => mismatched_line(task, count, found, own),
            WorkerEvent::Stopped { summary } => format!(
                "stopped: {} completed, {} failed, {} abandoned",
                summary.completed, summary.failed, summary.abandoned
            ),
        };
        // The one place the worker's other events enter `tracing`.
        event_at!(level, target: "castor", "{line}");
    }

    fn flush(&mut self) {
        logging::flush();
    }
}

impl Drop for PlainReporter {
    fn drop(&mut self) {
        logging::release();
    }
}

/// One line about an attempt's end, as the plain log and the dashboard's log print it.
pub fn describe(f: &Finished<'_>) -> String {
    let took = format_duration(f.elapsed);
    let head = format!("{:<10} {} {}", f.state.as_str(), f.task, f.id);
    if f.lost_lease {
        return format!(
            "{head}: attempt {} finished after its lease expired and another worker took the task over; outcome dropped",
            f.attempt
        );
    }
    let message = f.error.unwrap_or_default();
    match f.state {
        TaskState::Completed => format!("{head} in {took}"),
        TaskState::Retryable => {
            let wait = f
                .retry_at
                .map(|at| at - castor_store::now_us())
                .and_then(|us| u64::try_from(us).ok())
                .map_or_else(String::new, |us| {
                    format!("; retry in {}", format_duration(Duration::from_micros(us)))
                });
            format!(
                "{head}: attempt {}/{} failed after {took}: {message}{wait}",
                f.attempt, f.max_attempts
            )
        }
        _ => format!(
            "{head}: attempt {}/{} after {took}: {message}",
            f.attempt, f.max_attempts
        ),
    }
}

/// The line that says writes started failing, and what happens now.
pub fn write_failing(error: &StoreError, retry_in: Duration) -> String {
    let remedy = match error {
        StoreError::DiskFull { .. } => "free space on its file system; meanwhile ",
        _ => "",
    };
    format!(
        "{error:#}; {remedy}the worker keeps what its running tasks return and claims no new task until a write succeeds (next try in {}, backing off to {})",
        format_duration(retry_in),
        format_duration(super::recovery::MAX_RETRY)
    )
}

/// The line that says writes work again.
pub fn write_recovered(failed_for: Duration, tries: u32) -> String {
    format!(
        "database writes work again after {} and {tries} failed tries; everything kept meanwhile is written, claiming tasks again",
        format_duration(failed_for)
    )
}

/// `3.2s ahead` or `0.4s behind`: how a clock stands against the server's.
fn ahead_or_behind(offset: &ClockOffset) -> String {
    let by = format_duration(Duration::from_micros(offset.ahead_us.unsigned_abs()));
    if offset.ahead_us >= 0 {
        format!("{by} ahead of")
    } else {
        format!("{by} behind")
    }
}

/// The line for [`WorkerEvent::ClockSkewed`].
pub fn clock_skewed(offset: &ClockOffset) -> String {
    format!(
        "this host's clock is {} {}'s (to within {}); leases, heartbeats and schedules \
         assume synchronised clocks, and this host's are off by as much for the other \
         hosts: run NTP (chrony, systemd-timesyncd) on every host",
        ahead_or_behind(offset),
        offset.server,
        format_duration(Duration::from_micros(
            offset.round_trip_us.unsigned_abs() / 2
        ))
    )
}

/// The line for [`WorkerEvent::ClockInLine`].
pub fn clock_in_line(offset: &ClockOffset) -> String {
    format!(
        "this host's clock is back in line with {}'s ({} it)",
        offset.server,
        ahead_or_behind(offset)
    )
}

/// `2026-11-27T15:04:05.123Z` from microseconds since the epoch.
pub fn timestamp(us: i64) -> String {
    castor_store::format::format_timestamp(us)
}

/// The line for [`WorkerEvent::Mismatched`].
pub fn mismatched_line(task: &str, count: u64, found: &str, own: &str) -> String {
    let own = if own.is_empty() { "none" } else { own };
    format!(
        "leaving {count} task(s) of `{task}` dispatched with a different signature (args \
         fingerprint {found} != this library's {own}): a worker built from the matching \
         version of the library will run them"
    )
}

/// The line for [`WorkerEvent::StopNotRecorded`].
pub fn stop_not_recorded(error: &StoreError) -> String {
    format!(
        "could not record the worker's stop: {error:#}; other workers will see it gone by its \
         process or its heartbeat"
    )
}

/// What a worker says as it begins a reload: what was checked, and what it waits for.
pub fn reloading(build: &str, running: usize, grace: Duration) -> String {
    match running {
        0 => format!("reloading: {build}; no task running"),
        n => format!(
            "reloading: {build}; waiting up to {} for {n} running task(s) (Ctrl+C stops instead)",
            format_duration(grace)
        ),
    }
}
