//! [`StoreError`]: every way the database can fail, named without any driver's types, so
//! that the worker, the CLI and apps match on one enum whatever the engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::target::{Database, SslMode};

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
    /// A PostgreSQL connection's TLS failed: its settings (`sslmode`, `sslrootcert`) cannot
    /// be used, the server refused TLS where the URL requires it, or its certificate did
    /// not verify.
    #[error("cannot connect to {database}: {problem}")]
    Tls {
        /// The database.
        database: Database,
        /// What went wrong.
        problem: TlsProblem,
    },
    /// A task was dispatched to run after a task that is not in the database (an id of
    /// another database, or a task purged or pruned since).
    #[error(
        "database {database}: cannot dispatch `{task}` after task {parent}: no such task (another \
         database's, or purged or pruned since); nothing was dispatched"
    )]
    UnknownParent {
        /// The database.
        database: Database,
        /// The dependent task's name.
        task: String,
        /// The parent's id.
        parent: uuid::Uuid,
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
        ) || matches!(self, StoreError::Tls { problem, .. } if problem.is_setting())
    }
}

/// Why a PostgreSQL connection's TLS failed ([`StoreError::Tls`]). Each message names the
/// server or the file concerned and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsProblem {
    /// A TLS parameter of the URL has a value castor does not take, or names a feature it
    /// does not have.
    #[error("{parameter}={value} cannot be used: {reason}")]
    Setting {
        /// The URL parameter (`sslmode`, `sslrootcert`, ...).
        parameter: String,
        /// Its value, as given.
        value: String,
        /// Why, and what castor accepts.
        reason: String,
    },
    /// The file `sslrootcert` names cannot be read, or holds no usable certificate.
    #[error("cannot use sslrootcert={}: {reason}", .path.display())]
    RootCert {
        /// The file, as the URL gives it.
        path: PathBuf,
        /// Why (the operating system's reason, or what is wrong with its contents).
        reason: String,
    },
    /// No `sslrootcert` was given for a mode that verifies the server's certificate, and
    /// the system's trusted root certificates could not be loaded.
    #[error(
        "sslmode={mode} verifies the server's certificate, and no sslrootcert=PATH names the \
         certificate authority to trust, but the system's trusted root certificates cannot be \
         loaded ({reason}); install them (Debian: the ca-certificates package) or add \
         sslrootcert=PATH to the URL"
    )]
    SystemRoots {
        /// The mode that needed them.
        mode: SslMode,
        /// Why they could not be loaded.
        reason: String,
    },
    /// The server answered that it does not accept TLS, and the mode requires it.
    #[error(
        "server {host} does not accept TLS connections, and sslmode={mode} requires TLS; \
         turn on `ssl` in the server's configuration, or connect with sslmode=prefer or \
         sslmode=disable on a network you trust"
    )]
    Refused {
        /// The server (`host:port`; several, comma-separated, for a URL naming several).
        host: String,
        /// The mode.
        mode: SslMode,
    },
    /// The server's certificate did not verify.
    #[error("the certificate of server {host} does not verify under sslmode={mode}: {reason}")]
    Certificate {
        /// The server's name as the URL gives it (the name checked under `verify-full`).
        host: String,
        /// The mode.
        mode: SslMode,
        /// What kind of failure.
        fault: CertificateFault,
        /// Why, in words, with what to change.
        reason: String,
    },
    /// The TLS handshake failed for a reason other than the certificate (no protocol
    /// version or cipher in common, a connection cut in the middle, ...).
    #[error("the TLS handshake with server {host} failed: {reason}")]
    Handshake {
        /// The server's name as the URL gives it.
        host: String,
        /// The TLS library's or the operating system's reason.
        reason: String,
    },
}

impl TlsProblem {
    /// True for a problem of the URL's settings (read once when the database is opened),
    /// which no retry fixes.
    pub fn is_setting(&self) -> bool {
        matches!(
            self,
            TlsProblem::Setting { .. }
                | TlsProblem::RootCert { .. }
                | TlsProblem::SystemRoots { .. }
        )
    }
}

/// What kind of certificate failure a [`TlsProblem::Certificate`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateFault {
    /// No trusted root (the `sslrootcert` file's, or the system's) signed it.
    UnknownIssuer,
    /// It is not issued for the host name the URL gives (`verify-full` only).
    WrongName,
    /// It has expired.
    Expired,
    /// It is not valid yet.
    NotYetValid,
    /// It was revoked.
    Revoked,
    /// Any other reason (a bad signature, an unsupported algorithm, a certificate that
    /// cannot be parsed, one not meant for servers).
    Other,
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
