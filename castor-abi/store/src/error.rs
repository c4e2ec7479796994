//! [`StoreError`]: every way the database can fail, named without any driver's types, so
//! that the worker, the CLI and apps match on one enum whatever the engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::target::Database;

/// The database could not be opened, read or written.
///
/// Each variant's message is one sentence that already holds its cause (the engine's or
/// the operating system's reason), so the cause is kept in a named field and not returned
/// again by [`source`](std::error::Error::source): printed with `{}` or with anyhow's
/// `{:#}`, the reason appears once. The variants that name a path concern a database file
/// (SQLite); the others name the [`Database`], shown as its path or its URL without a
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The setting names no engine castor knows, or one this build leaves out.
    #[error("cannot use database {given}: {reason}")]
    Unsupported {
        /// The setting as given.
        given: String,
        /// Why, and what castor accepts.
        reason: String,
    },
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
    /// The engine could not open the database, for a reason none of the other variants
    /// names.
    #[error("cannot open database {database}: {detail}")]
    Connect {
        /// The database.
        database: Database,
        /// The engine's reason.
        detail: String,
    },
    /// The file is not a database, or it is damaged.
    #[error(
        "database {database} is damaged or not a SQLite database: {detail} (found while castor tried to {operation}); \
         check it with `castor check --db {database}` and recover it as README's \"Recovering a damaged database\" says"
    )]
    Corrupt {
        /// The database.
        database: Database,
        /// What castor was doing when it found the damage.
        operation: &'static str,
        /// The engine's description, or the first problem its check found.
        detail: String,
    },
    /// The database (or its directory) is read-only for this user.
    #[error(
        "database {database} is read-only ({detail}); castor needs write access to it and its directory"
    )]
    ReadOnly {
        /// The database.
        database: Database,
        /// The engine's description.
        detail: String,
    },
    /// No space for the write (a full disk, a quota, a file-size limit); it was rolled
    /// back.
    #[error(
        "disk full while writing {database} during {operation} (no space left, a quota or a file-size limit); the write was rolled back"
    )]
    DiskFull {
        /// The database.
        database: Database,
        /// What castor was doing.
        operation: &'static str,
    },
    /// A setting did not take effect (e.g. the file system does not support WAL).
    #[error("database {database}: PRAGMA {pragma} is {found:?} after setting it to {expected:?}")]
    Pragma {
        /// The database.
        database: Database,
        /// The setting's name.
        pragma: &'static str,
        /// The value castor set.
        expected: String,
        /// The value the engine reports.
        found: String,
    },
    /// The database was migrated by a newer castor.
    #[error(
        "database {database} has schema version {found}, newer than this castor understands ({supported}); \
         upgrade castor (nothing was changed)"
    )]
    SchemaTooNew {
        /// The database.
        database: Database,
        /// The database's schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The database needs migrations this process was told not to apply.
    #[error(
        "database {database} has schema version {found} and this castor needs {current}; \
         run `castor migrate up --db {database}` (nothing was changed)"
    )]
    NeedsMigration {
        /// The database.
        database: Database,
        /// The database's schema version.
        found: u32,
        /// The version this build needs.
        current: u32,
    },
    /// The database stayed locked by other connections for longer than the busy timeout.
    #[error(
        "database {database} stayed locked during {operation} (other workers or apps held it for over {waited:?})"
    )]
    Busy {
        /// The database.
        database: Database,
        /// What castor was doing.
        operation: &'static str,
        /// How long castor waited.
        waited: Duration,
    },
    /// A statement failed.
    #[error("database {database}: {operation} failed: {detail}")]
    Query {
        /// The database.
        database: Database,
        /// What castor was doing.
        operation: &'static str,
        /// The engine's reason.
        detail: String,
    },
    /// A row holds a value castor does not understand (the file was edited by hand, or by
    /// a newer castor).
    #[error("database {database}: task row {seq} has an invalid {column}: {detail}")]
    InvalidRow {
        /// The database.
        database: Database,
        /// The row's sequence number.
        seq: i64,
        /// The column.
        column: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The change notifier could not be set up.
    #[error("cannot watch {database} for changes: {reason}")]
    Watch {
        /// The database.
        database: Database,
        /// The reason.
        reason: String,
    },
}

impl StoreError {
    /// True for errors no retry fixes: a damaged or read-only database, a schema this
    /// build cannot use, a file that cannot be a database, a row castor cannot read. A
    /// worker that meets one stops; others (a full disk, a lock held too long, an I/O
    /// error) are worth trying again.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::NeedsMigration { .. }
                | StoreError::MissingDirectory { .. }
                | StoreError::NotADirectory { .. }
                | StoreError::NotAFile { .. }
                | StoreError::InvalidRow { .. }
                | StoreError::Unsupported { .. }
        )
    }
}

/// What to do about a path that is not a file: for a directory, the file to name instead.
fn not_a_file_hint(path: &Path, kind: &str) -> String {
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
