//! The values that go into and come out of the store's statements.

use std::path::Path;
use std::time::Duration;

use uuid::Uuid;

use super::AttemptError;
use crate::error::StoreError;
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
}

impl<'a> NewTask<'a> {
    /// A task dispatched with resolved options (as `delay` and a task's context send them).
    pub fn with_options(
        manager: &'a str,
        task: &'a str,
        args: &'a [u8],
        options: &'a crate::abi::DispatchOptionsAbi,
    ) -> NewTask<'a> {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        NewTask {
            manager,
            task,
            args,
            run_at_us: options.run_at_us.into_option(),
            priority: options.priority,
            unique_key: options
                .unique_key
                .as_ref()
                .map(|k| k.as_str())
                .into_option(),
            max_attempts: options.max_attempts,
            backoff_base_ms: ms(options.backoff_base_ms),
            backoff_cap_ms: ms(options.backoff_cap_ms),
            timeout_ms: options.timeout_ms.into_option().map(ms),
            schedule_id: None,
        }
    }
}

/// Which tasks a worker may claim: its manager, and the task names its library declares.
/// A task whose name is not listed stays for a worker that knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    /// The manager's name.
    pub manager: String,
    /// The task names the worker can run.
    pub tasks: Vec<String>,
}

/// A prepared claim for one [`TaskFilter`] (the statement text depends on how many task
/// names it lists, so it is built once per worker).
#[derive(Debug, Clone)]
pub struct ClaimQuery {
    filter: TaskFilter,
    /// The rows to claim, in claim order: the best `limit` of each task name (one index
    /// seek each), merged.
    select: String,
    /// Claims them all in one statement: cheapest for big batches.
    batch: String,
}

impl ClaimQuery {
    /// Builds the claim statements for `filter`.
    pub fn new(filter: TaskFilter) -> ClaimQuery {
        let arms = (0..filter.tasks.len())
            .map(|i| {
                format!(
                    "SELECT * FROM (SELECT seq, priority FROM castor_tasks \
                     WHERE state = 'available' AND manager = ?4 AND task = ?{} \
                     ORDER BY priority DESC, seq LIMIT ?5)",
                    i + 6
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let select = format!("SELECT seq FROM ({arms}) ORDER BY priority DESC, seq LIMIT ?5");
        let batch = format!(
            "UPDATE castor_tasks SET state = 'running', attempt = attempt + 1, \
             attempted_at = ?1, attempted_by = ?2, lease_expires_at = ?3 \
             WHERE seq IN ({select}) RETURNING {CLAIMED_COLUMNS}"
        );
        ClaimQuery {
            filter,
            select,
            batch,
        }
    }

    /// The filter this query claims for.
    pub fn filter(&self) -> &TaskFilter {
        &self.filter
    }

    pub(super) fn select_sql(&self) -> &str {
        &self.select
    }

    pub(super) fn batch_sql(&self) -> &str {
        &self.batch
    }
}

/// Claims one row, found by [`ClaimQuery`]'s select, guarded by its state.
pub(super) const CLAIM_ONE_SQL: &str = "UPDATE castor_tasks SET state = 'running', \
     attempt = attempt + 1, attempted_at = ?2, attempted_by = ?3, lease_expires_at = ?4 \
     WHERE seq = ?1 AND state = 'available' \
     RETURNING seq, id, task, args, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, \
     timeout_ms, priority";

const CLAIMED_COLUMNS: &str = "seq, id, task, args, attempt, max_attempts, backoff_base_ms, \
                               backoff_cap_ms, timeout_ms, priority";

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

impl Claimed {
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
        let id: Vec<u8> = row.get(1)?;
        let id = Uuid::from_slice(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(Claimed {
            seq: row.get(0)?,
            id,
            task: row.get(2)?,
            args: row.get(3)?,
            attempt: row.get(4)?,
            max_attempts: row.get(5)?,
            backoff: Backoff {
                base: ms(row.get(6)?),
                cap: ms(row.get(7)?),
            },
            timeout: row.get::<_, Option<i64>>(8)?.map(ms),
            priority: row.get(9)?,
        })
    }
}

/// How an attempt ended, as written to its row.
#[derive(Debug, Clone)]
pub enum Finish<'a> {
    /// The task returned this encoded result.
    Completed {
        /// The encoded result.
        result: &'a [u8],
    },
    /// The attempt failed; `transition` says what comes next.
    Failed {
        /// The next state and, for `retryable`, when.
        transition: Transition,
        /// The attempt's error, appended to the row's `errors`.
        error: AttemptError,
    },
}

pub(super) const SNAPSHOT_SQL: &str = "SELECT seq, id, manager, task, state, attempt, max_attempts, \
     result, errors, created_at, scheduled_at, attempted_at, finalized_at, attempted_by, \
     priority, progress_done, progress_total, progress_message \
     FROM castor_tasks WHERE id = ?1";

/// A task row as read, before validation.
#[derive(Debug)]
pub struct TaskRow {
    seq: i64,
    id: Vec<u8>,
    manager: String,
    task: String,
    state: String,
    attempt: u32,
    max_attempts: u32,
    result: Option<Vec<u8>>,
    errors: Option<String>,
    created_at: i64,
    scheduled_at: i64,
    attempted_at: Option<i64>,
    finalized_at: Option<i64>,
    attempted_by: Option<String>,
    priority: i32,
    progress_done: Option<i64>,
    progress_total: Option<i64>,
    progress_message: Option<String>,
}

impl TaskRow {
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            seq: row.get(0)?,
            id: row.get(1)?,
            manager: row.get(2)?,
            task: row.get(3)?,
            state: row.get(4)?,
            attempt: row.get(5)?,
            max_attempts: row.get(6)?,
            result: row.get(7)?,
            errors: row.get(8)?,
            created_at: row.get(9)?,
            scheduled_at: row.get(10)?,
            attempted_at: row.get(11)?,
            finalized_at: row.get(12)?,
            attempted_by: row.get(13)?,
            priority: row.get(14)?,
            progress_done: row.get(15)?,
            progress_total: row.get(16)?,
            progress_message: row.get(17)?,
        })
    }

    pub(super) fn into_snapshot(self, path: &Path) -> Result<TaskSnapshot, StoreError> {
        let invalid = |column: &'static str, detail: String| StoreError::InvalidRow {
            path: path.to_path_buf(),
            seq: self.seq,
            column,
            detail,
        };
        let id = Uuid::from_slice(&self.id).map_err(|e| invalid("id", e.to_string()))?;
        let state = self
            .state
            .parse::<TaskState>()
            .map_err(|e| invalid("state", e.to_string()))?;
        let errors = match &self.errors {
            None => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| invalid("errors", e.to_string()))?
            }
        };
        let progress = match (self.progress_done, self.progress_total) {
            (Some(done), Some(total)) => Some(Progress {
                done: u64::try_from(done).unwrap_or(0),
                total: u64::try_from(total).unwrap_or(0),
                message: self.progress_message,
            }),
            _ => None,
        };
        Ok(TaskSnapshot {
            seq: self.seq,
            id,
            manager: self.manager,
            task: self.task,
            state,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            result: self.result,
            errors,
            created_at: self.created_at,
            scheduled_at: self.scheduled_at,
            attempted_at: self.attempted_at,
            finalized_at: self.finalized_at,
            attempted_by: self.attempted_by,
            priority: self.priority,
            progress,
        })
    }
}

/// How far a running task says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
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
    /// The latest progress report.
    pub progress: Option<Progress>,
}
