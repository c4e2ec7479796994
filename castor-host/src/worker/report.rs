//! What the worker tells its user. The coordinator emits [`WorkerEvent`]s to a
//! [`Reporter`]: plain log lines by default ([`PlainReporter`]), or the dashboard.

use std::io::Write;
use std::time::Duration;

use castor_abi::{AttemptOutcome, StoreError, TaskState, Uuid, format_duration};

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
    /// An attempt was handed to a pool.
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
    /// A write failed; everything is kept and retried.
    StoreError {
        /// The failure.
        error: &'a StoreError,
        /// When the write is tried again.
        retry_in: Duration,
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
    /// A stop was requested.
    Stopping {
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

/// Log lines on stdout (stderr for problems), buffered per batch.
pub struct PlainReporter {
    out: std::io::BufWriter<std::io::Stdout>,
    quiet: bool,
}

impl PlainReporter {
    /// `quiet`: print failures and lifecycle only, not every completed task.
    pub fn new(quiet: bool) -> PlainReporter {
        PlainReporter {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            quiet,
        }
    }
}

impl Reporter for PlainReporter {
    fn event(&mut self, event: WorkerEvent<'_>) {
        let line = match event {
            // Plain output shows outcomes; starts, logs and progress are kept with the task
            // (`castor show`) and shown live by the dashboard.
            WorkerEvent::Started { .. }
            | WorkerEvent::TaskLog { .. }
            | WorkerEvent::Progress { .. } => {
                return;
            }
            WorkerEvent::Finished(f) => {
                if self.quiet && f.state == TaskState::Completed && !f.lost_lease {
                    return;
                }
                describe(f)
            }
            WorkerEvent::StoreError { error, retry_in } => {
                format!(
                    "database error: {error:#}; retrying in {}",
                    format_duration(retry_in)
                )
            }
            WorkerEvent::WriteFailing { error, retry_in } => write_failing(error, retry_in),
            WorkerEvent::WriteRecovered { failed_for, tries } => write_recovered(failed_for, tries),
            WorkerEvent::Stopping { running, grace } => format!(
                "stopping: no new tasks; waiting up to {} for {running} running task(s) (Ctrl+C again to stop now)",
                format_duration(grace)
            ),
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
            WorkerEvent::Stopped { summary } => format!(
                "stopped: {} completed, {} failed, {} abandoned",
                summary.completed, summary.failed, summary.abandoned
            ),
        };
        // The clock is read only for lines that are printed: at 100k tasks a second, a
        // quiet worker would otherwise spend most of its reporting time formatting it.
        let now = timestamp(castor_abi::store::now_us());
        let _ = writeln!(self.out, "{now} {line}");
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl Drop for PlainReporter {
    fn drop(&mut self) {
        let _ = self.out.flush();
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
    let message = f.outcome.message().unwrap_or_default();
    match f.state {
        TaskState::Completed => format!("{head} in {took}"),
        TaskState::Retryable => {
            let wait = f
                .retry_at
                .map(|at| at - castor_abi::store::now_us())
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

/// `2026-11-27T15:04:05.123Z` from microseconds since the epoch.
pub fn timestamp(us: i64) -> String {
    castor_abi::format_timestamp(us)
}
