//! The errors castor-abi returns. Each variant names what it was doing and on what, so the
//! message alone tells a user where to look.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::codec::{DecodeError, EncodeError};
use crate::store::AttemptError;

/// The database could not be opened, read or written.
///
/// Each variant's message is one sentence that already holds its cause (SQLite's or the
/// operating system's reason), so the cause is kept in a named field and not returned
/// again by [`source`](std::error::Error::source): printed with `{}` or with anyhow's
/// `{:#}`, the reason appears once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory that should hold the database does not exist.
    #[error("cannot open database {path}: directory {dir} does not exist; create it first")]
    MissingDirectory {
        /// The database path.
        path: PathBuf,
        /// The directory that is missing.
        dir: PathBuf,
    },
    /// What should be the database's directory is a file (or something else).
    #[error("cannot open database {path}: {dir} is not a directory")]
    NotADirectory {
        /// The database path.
        path: PathBuf,
        /// The path that should be a directory.
        dir: PathBuf,
    },
    /// The path names a directory, a FIFO, a socket or a device instead of a file.
    #[error("cannot open database {path}: it is {kind}, not a database file{}", not_a_file_hint(.path, .kind))]
    NotAFile {
        /// The database path.
        path: PathBuf,
        /// What it is instead: `a directory`, `a FIFO (named pipe)`, `a socket`, `a device`.
        kind: &'static str,
    },
    /// The database file could not be created or opened.
    #[error("cannot open database {path}: {}", io_reason(.error))]
    Open {
        /// The database path.
        path: PathBuf,
        /// The operating system's reason.
        error: std::io::Error,
    },
    /// SQLite could not open the file, for a reason none of the other variants names.
    #[error("cannot open database {path}: {detail}")]
    Sqlite {
        /// The database path.
        path: PathBuf,
        /// SQLite's reason.
        detail: String,
    },
    /// The file is not a SQLite database, or it is damaged.
    #[error(
        "database {path} is damaged or not a SQLite database: {detail} (found while castor tried to {operation}); \
         check it with `castor check --db {path}` and recover it as README's \"Recovering a damaged database\" says"
    )]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What castor was doing when it found the damage.
        operation: &'static str,
        /// SQLite's description, or the first problem `PRAGMA quick_check` found.
        detail: String,
    },
    /// The database (or its directory) is read-only for this user.
    #[error(
        "database {path} is read-only ({detail}); castor needs write access to it and its directory"
    )]
    ReadOnly {
        /// The database path.
        path: PathBuf,
        /// SQLite's description.
        detail: String,
    },
    /// No space for the write (a full disk, a quota, a file-size limit); it was rolled
    /// back.
    #[error(
        "disk full while writing {path} during {operation} (no space left, a quota or a file-size limit); the write was rolled back"
    )]
    DiskFull {
        /// The database path.
        path: PathBuf,
        /// What castor was doing.
        operation: &'static str,
    },
    /// A pragma did not take effect (e.g. the file system does not support WAL).
    #[error("database {path}: PRAGMA {pragma} is {found:?} after setting it to {expected:?}")]
    Pragma {
        /// The database path.
        path: PathBuf,
        /// The pragma's name.
        pragma: &'static str,
        /// The value castor set.
        expected: String,
        /// The value SQLite reports.
        found: String,
    },
    /// The database was created by a newer castor.
    #[error(
        "database {path} has schema version {found}, newer than this castor understands ({supported}); upgrade castor"
    )]
    SchemaTooNew {
        /// The database path.
        path: PathBuf,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The database stayed locked by other connections for longer than the busy timeout.
    #[error(
        "database {path} stayed locked during {operation} (other workers or apps held it for over {waited:?})"
    )]
    Busy {
        /// The database path.
        path: PathBuf,
        /// What castor was doing.
        operation: &'static str,
        /// How long castor waited.
        waited: Duration,
    },
    /// A query failed.
    #[error("database {path}: {operation} failed: {}", crate::store::sqlite_reason(.error, .path))]
    Query {
        /// The database path.
        path: PathBuf,
        /// What castor was doing.
        operation: &'static str,
        /// SQLite's error (part of the message, not a separate cause).
        error: rusqlite::Error,
    },
    /// A row holds a value castor does not understand (the file was edited by hand, or by
    /// a newer castor).
    #[error("database {path}: task row {seq} has an invalid {column}: {detail}")]
    InvalidRow {
        /// The database path.
        path: PathBuf,
        /// The row's sequence number.
        seq: i64,
        /// The column.
        column: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The change watcher (inotify) could not be set up.
    #[error("cannot watch {path} for changes: {reason}")]
    Watch {
        /// The watched file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
}

/// What to do about a path that is not a file: for a directory, the file to name instead.
fn not_a_file_hint(path: &std::path::Path, kind: &str) -> String {
    if kind == "a directory" {
        format!(
            "; give the path of a file, e.g. {}",
            path.join("tasks.db").display()
        )
    } else {
        String::new()
    }
}

/// The operating system's reason, with what to do where that is clear.
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (this user needs read and write access to the file and its directory)".to_owned()
        }
        _ => error.to_string(),
    }
}

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
        crate::format_duration(*waited)
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
    /// The task was cancelled.
    #[error("task {id} ({task}) was cancelled")]
    Cancelled {
        /// The task's id.
        id: Uuid,
        /// The task's name.
        task: String,
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
