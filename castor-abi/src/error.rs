//! The errors castor-abi returns. Each variant names what it was doing and on what, so the
//! message alone tells a user where to look.

use std::time::Duration;

use uuid::Uuid;

use crate::codec::{DecodeError, EncodeError};
use castor_store::{AttemptError, StoreError};

/// A task could not be dispatched. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The task is not part of the manager it was dispatched to.
    #[error("task `{task}` is not declared by manager `{manager}` (it declares: {})", known.join(", "))]
    UnknownTask {
        /// The task's name.
        task: String,
        /// The manager's name.
        manager: String,
        /// The tasks the manager declares.
        known: Vec<String>,
    },
    /// The arguments could not be encoded.
    #[error("task `{task}`: {error}; nothing was dispatched")]
    EncodeArgs {
        /// The task's name.
        task: String,
        /// The codec's reason.
        error: EncodeError,
    },
    /// The encoded arguments are larger than [`MAX_PAYLOAD`](crate::codec::MAX_PAYLOAD).
    #[error("{}", crate::codec::args_too_large(.task, *.size))]
    ArgsTooLarge {
        /// The task's name.
        task: String,
        /// The encoded arguments' size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The dispatch options contradict each other or are out of range.
    #[error("task `{task}`: invalid dispatch options: {reason}")]
    InvalidOptions {
        /// The task's name.
        task: String,
        /// What is wrong.
        reason: String,
    },
    /// `delay_in` was given a manager whose database is not PostgreSQL: only a
    /// PostgreSQL database can take a task inside the app's own transaction.
    #[error(
        "task `{task}`: `delay_in` dispatches inside a PostgreSQL transaction, but manager \
         `{manager}` uses {database}, which is not one; use `delay`, or point the manager at a \
         postgres:// URL"
    )]
    NotPostgres {
        /// The task's name.
        task: String,
        /// The manager's name.
        manager: String,
        /// The manager's database.
        database: castor_store::Database,
    },
    /// The database refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker could not dispatch on the task's behalf.
    #[error("worker could not dispatch task `{task}`: {message}")]
    Host {
        /// The task's name.
        task: String,
        /// The worker's reason.
        message: String,
    },
}

/// A task's state could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// No task has this id: it never existed in this database, or it finished and was
    /// pruned after the retention period.
    #[error("no task {id} in the database (unknown id, or finished and pruned)")]
    NotFound {
        /// The task's id.
        id: Uuid,
    },
    /// No schedule has this id: it never existed, or it was removed.
    #[error("no schedule {id} in the database (unknown id, or removed)")]
    NoSchedule {
        /// The schedule's id.
        id: i64,
    },
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker could not read the task on the caller's behalf.
    #[error("worker could not read task {id}: {message}")]
    Host {
        /// The task's id.
        id: Uuid,
        /// The worker's reason.
        message: String,
    },
}

/// `join` or `resolve` did not produce the task's result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The task did not finish in time. It keeps going and can be joined again.
    #[error(
        "task {id} ({task}) did not finish within {}; it is {state} and can be joined again",
        castor_store::format::format_duration(*waited)
    )]
    Timeout {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// Its state when the wait ended.
        state: crate::TaskState,
        /// How long `join` waited.
        waited: Duration,
    },
    /// The task failed on its last allowed attempt.
    #[error("task {id} ({task}) failed after {attempts} attempt(s): {message}")]
    Failed {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// How many attempts ran.
        attempts: u32,
        /// The last attempt's error.
        message: String,
        /// Every attempt's error, oldest first.
        errors: Vec<AttemptError>,
    },
    /// The task's result was produced by a library whose result type has another shape
    /// (another type fingerprint) than this build's: decoding it could give a wrong
    /// value, so it is not decoded. Build the app and the worker from the same version
    /// of the task library (or mark an encoding-compatible change with
    /// `#[task(version = N)]`).
    #[error(
        "task {id} ({task}) completed with a result of another type: the worker's library \
         has result fingerprint {found}, this build expects {expected}; build the app and \
         the worker from the same version of the task library"
    )]
    IncompatibleResult {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// The result fingerprint recorded with the result (the worker's library).
        found: String,
        /// The result fingerprint of this build's declaration of the task.
        expected: String,
    },
    /// The task was cancelled.
    #[error("task {id} ({task}) was cancelled{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Cancelled {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// Why, when castor cancelled it: a task dispatched after others
        /// (`delay_after`) is cancelled when one of them is discarded, cancelled or
        /// purged, and this names it. `None` for a user's cancel of a task that ran or
        /// could have.
        reason: Option<String>,
    },
    /// The task's row is gone (it finished and was pruned after the retention period, or
    /// was purged).
    #[error("task {id} ({task}) is no longer in the database: it finished and was pruned")]
    Pruned {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
    },
    /// The stored result does not decode as the result type: the app and the library that
    /// ran the task disagree on the task's signature, or the result is over the size limit.
    #[error("task {id} ({task}) completed, but its result does not decode: {error}{}", decode_hint(.error))]
    DecodeResult {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// The codec's reason.
        error: DecodeError,
    },
    /// The task's state could not be read.
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// For a result that is not an encoding of the type asked for: the likely reason.
fn decode_hint(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::Invalid { .. } => {
            " (was the app built against another version of the task than the worker's library?)"
        }
        _ => "",
    }
}
