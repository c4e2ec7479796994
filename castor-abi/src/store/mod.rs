//! The only code in Castor that speaks SQL: opening the database (WAL, busy timeout,
//! pragmas verified after setting), the schema, and every query the app, the worker and
//! the CLI run.
//!
//! Writes go through [`Store::write`], which opens an `IMMEDIATE` transaction (so two
//! writers never deadlock upgrading a read lock), retries a bounded number of times if the
//! database stays busy past the busy timeout, and hands the closure a [`WriteTx`] whose
//! methods name their guards (`finish_if_running`).

mod admin;
mod rescue;
mod rows;
mod schedules;
mod space;
mod watch;
mod workers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::admin::{CancelOutcome, ListFilter, RetryOutcome, StateCount, TaskSummary};
pub use self::rescue::Expired;
use self::rows::TaskRow;
pub use self::rows::{ClaimQuery, Claimed, Finish, NewTask, Progress, TaskFilter, TaskSnapshot};
pub use self::schedules::NewSchedule;
pub use self::watch::Watcher;
pub use self::workers::{LiveWorker, WorkerRow};
use crate::error::StoreError;
/// The error a statement inside [`Store::write`] returns (mapped to a [`StoreError`] by
/// `write`).
pub use rusqlite::Error as SqlError;

/// The schema version this build creates and understands (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = include_str!("schema.sql");

/// How long a connection waits for another writer before giving up on one try.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the database file is memory-mapped (SQLite's cap applies).
const MMAP_SIZE: i64 = 1 << 30;

/// How many log lines are kept per task; older ones are dropped.
pub const LOG_LINES_KEPT: i64 = 1000;

/// The most problems [`Store::integrity_check`] reports.
pub const CHECK_PROBLEMS: usize = 100;

/// How many times a write that stayed busy for [`BUSY_TIMEOUT`] is tried again.
const BUSY_RETRIES: u32 = 3;

/// The current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Converts a duration to whole microseconds, saturating.
pub fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// How a database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// `synchronous=FULL` instead of `NORMAL`: every acknowledged write survives a power
    /// loss, at the price of an fsync per commit. With `NORMAL` (the default) a crash of any
    /// process loses nothing; a power loss may lose the last commits.
    pub durable: bool,
    /// The connection's WAL bound: past this many pages, its commits copy the WAL into the
    /// database file (a checkpoint, with an fsync), at most once per this many new pages;
    /// past twice as many, it makes the WAL start over (see `store/space.rs`). 1000
    /// (SQLite's default) for the worker; an app's is larger, so that while a worker runs
    /// its `delay` calls leave checkpoints to the worker.
    pub checkpoint_pages: u32,
    /// How much of the file [`Store::open`] checks for damage before using it.
    pub check: OpenCheck,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: false,
            checkpoint_pages: 1000,
            check: OpenCheck::UpTo(QUICK_CHECK_BYTES),
        }
    }
}

/// The largest database [`OpenCheck::UpTo`] checks by default (about 6,000 tasks).
/// `PRAGMA quick_check` reads every page: measured here, opening a file of this size
/// takes about 3 ms with the check and 0.3 ms without, so a larger file is not checked
/// by an app (the worker checks it at start, `castor check` in full).
pub const QUICK_CHECK_BYTES: u64 = 1 << 20;

/// How much of the file [`Store::open`] checks before using it. Opening reads only the
/// header and the schema; a damaged page elsewhere shows only when a statement reads it,
/// after other statements may have written into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// No check: the caller checks ([`Store::quick_check_within`], as the worker does), or
    /// this process just checked the file through another connection.
    Skip,
    /// `PRAGMA quick_check` if the file holds at most this many bytes, else no check (an
    /// app or a CLI command, which should open quickly).
    UpTo(u64),
}

/// How far [`Store::quick_check_within`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckReach {
    /// Every page was checked; none is damaged.
    Whole,
    /// The time ran out first; the pages checked by then were sound, or the damage found
    /// was not reported before the check stopped (it shows when a statement reads it).
    OutOfTime,
}

/// The largest the WAL file is left at after a checkpoint resets it (8 MiB, an app's
/// checkpoint bound): a WAL that one large transaction grew gives its space back.
const JOURNAL_SIZE_LIMIT: i64 = 8 << 20;

/// One failed attempt, as recorded in a task's `errors` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The 1-based attempt number.
    pub attempt: u32,
    /// When the attempt ended (microseconds since the Unix epoch).
    pub at: i64,
    /// `error`, `panic`, `crash`, `timeout`, `abandoned` or `cancelled`.
    pub kind: String,
    /// The message.
    pub error: String,
    /// The worker that ran the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLog {
    /// When it was logged (microseconds since the epoch).
    pub at: i64,
    /// The attempt that logged it.
    pub attempt: u32,
    /// Its level; a process task's stdout is `info`, its stderr `warn`.
    pub level: crate::LogLevel,
    /// The line.
    pub line: String,
}

/// A connection to a Castor database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The WAL hook's state (see `space.rs`). Declared after `conn`, so it outlives the
    /// connection whose hook points at it.
    wal_hook: Option<Box<space::WalHook>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed, with mode 0600) the database at `path`, sets WAL mode,
    /// the busy timeout and `synchronous`, checks that each took effect, checks the file
    /// for damage as `options.check` says, and creates or checks the schema.
    ///
    /// # Errors
    /// [`StoreError::MissingDirectory`], [`StoreError::NotADirectory`],
    /// [`StoreError::NotAFile`] (a directory, FIFO, socket or device), [`StoreError::Open`]
    /// (cannot create or read the file), [`StoreError::Corrupt`] (not a SQLite file, or
    /// damaged), [`StoreError::ReadOnly`], [`StoreError::Pragma`] (e.g. WAL unsupported),
    /// [`StoreError::SchemaTooNew`].
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        prepare_file(&path, true)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut store = Store::connect(path, flags)?;
        store.configure(options)?;
        store.install_wal_hook(options.checkpoint_pages);
        match options.check {
            OpenCheck::Skip => {}
            OpenCheck::UpTo(limit) => {
                if store.size()? <= limit {
                    store.quick_check()?;
                }
            }
        }
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only, as it is: no pragma set, no schema created,
    /// nothing written (for `castor check`).
    ///
    /// # Errors
    /// The path does not name a readable file, or SQLite cannot open it.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        prepare_file(&path, false)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut store = Store::connect(path, flags)?;
        store
            .conn
            .busy_handler(Some(busy_wait))
            .map_err(|e| classify(&store.path, "set the busy handler", e))?;
        Ok(store)
    }

    fn connect(path: PathBuf, flags: OpenFlags) -> Result<Store, StoreError> {
        match Connection::open_with_flags(&path, flags) {
            Ok(conn) => Ok(Store {
                conn,
                path,
                wal_hook: None,
            }),
            Err(e) => Err(match classify(&path, "open the database", e) {
                StoreError::Query { path, error, .. } => StoreError::Sqlite {
                    detail: sqlite_reason(&error, &path),
                    path,
                },
                other => other,
            }),
        }
    }

    /// The database's size in bytes, as this connection sees it (the WAL's pages included).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn size(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| classify(&self.path, "read the database's size", e))
    }

    /// `PRAGMA quick_check`: reads every page and checks each b-tree's structure (not that
    /// the indexes match the table: see [`Store::integrity_check`]).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first problem found, or the failure to read.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        const OPERATION: &str = "run PRAGMA quick_check";
        let problems = self.check_pragma("quick_check", OPERATION)?;
        match problems.first() {
            None => Ok(()),
            Some(first) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                operation: OPERATION,
                detail: match problems.len() {
                    1 => first.clone(),
                    n => format!("{first}, and {} more problem(s)", n - 1),
                },
            }),
        }
    }

    /// [`Store::quick_check`], interrupted if it takes longer than `budget` (SQLite stops
    /// the check between pages): the cost of a check at start stays bounded, whatever the
    /// file's size and however cold its pages are.
    ///
    /// # Errors
    /// As [`Store::quick_check`], when it finishes in time.
    pub fn quick_check_within(&self, budget: Duration) -> Result<CheckReach, StoreError> {
        let interrupt = self.conn.get_interrupt_handle();
        let (finished, wait) = std::sync::mpsc::channel::<()>();
        let timer = std::thread::Builder::new()
            .name("castor-check-timer".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(budget) {
                    // Harmless if the check has just finished: SQLite clears the flag
                    // when the next statement starts on an idle connection.
                    interrupt.interrupt();
                }
            });
        let checked = self.quick_check();
        drop(finished);
        if let Ok(timer) = timer {
            let _ = timer.join();
        }
        match checked {
            Ok(()) => Ok(CheckReach::Whole),
            Err(StoreError::Query { error, .. })
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) =>
            {
                Ok(CheckReach::OutOfTime)
            }
            Err(e) => Err(e),
        }
    }

    /// `PRAGMA integrity_check`: [`Store::quick_check`] plus a check that every index
    /// matches its table; slower (about five times here). Returns the problems found, at
    /// most [`CHECK_PROBLEMS`]; none means the file is sound.
    ///
    /// # Errors
    /// Fails if the check cannot run at all (the file is not a database, say).
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        match self.check_pragma("integrity_check", "run PRAGMA integrity_check") {
            // integrity_check gives up on the first table it cannot scan; quick_check
            // walks every b-tree and lists what it finds.
            // (If quick_check cannot run either, the file is not a database at all.)
            Err(StoreError::Corrupt { detail, .. }) => {
                let mut problems = self.check_pragma("quick_check", "run PRAGMA quick_check")?;
                problems.retain(|p| *p != detail);
                problems.push(format!("PRAGMA integrity_check stopped: {detail}"));
                Ok(problems)
            }
            other => other,
        }
    }

    fn check_pragma(
        &self,
        pragma: &str,
        operation: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!("PRAGMA {pragma}({CHECK_PROBLEMS})");
        // The check may report problems, then fail on a page it cannot get past: keep what
        // it reported, and the failure as the last problem.
        let mut rows: Vec<String> = Vec::new();
        let failed = self
            .conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                for row in stmt.query_map([], |row| row.get::<_, String>(0))? {
                    rows.push(row?);
                }
                Ok(())
            })
            .err()
            .map(|e| classify(&self.path, operation, e));
        match failed {
            None => {}
            Some(StoreError::Corrupt { detail, .. }) if !rows.is_empty() => rows.push(detail),
            Some(e) => return Err(e),
        }
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(Vec::new());
        }
        // "Tree 2 page 93: .." names a b-tree by its root page: name it as the schema does.
        let names: HashMap<i64, String> = self
            .conn
            .prepare("SELECT rootpage, name FROM sqlite_schema WHERE rootpage > 0")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .unwrap_or_default();
        let name_tree = |line: &str| -> String {
            let named = line.strip_prefix("Tree ").and_then(|rest| {
                let (root, rest) = rest.split_once(' ')?;
                let name = names.get(&root.parse().ok()?)?;
                Some(format!("Tree {root} ({name}) {rest}"))
            });
            named.unwrap_or_else(|| line.to_owned())
        };
        Ok(rows
            .iter()
            .flat_map(|row| row.lines())
            .filter(|line| !line.starts_with("*** in database"))
            .map(name_tree)
            .collect())
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&mut self, options: StoreOptions) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.conn
            .busy_handler(Some(busy_wait))
            .map_err(|e| classify(&path, "set the busy handler", e))?;
        self.conn.set_prepared_statement_cache_capacity(64);
        // The first statement that reads the file: a corrupt or foreign file fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| classify(&path, "open the database", e))?;
        if self.conn.is_readonly("main").unwrap_or(false) {
            return Err(StoreError::ReadOnly {
                path,
                detail: "the file is not writable".into(),
            });
        }
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Pragma {
                path,
                pragma: "journal_mode",
                expected: "wal".into(),
                found: mode,
            });
        }
        // Memory-map the database: after another process commits, SQLite drops this
        // connection's page cache, and reading the pages back through mmap instead of one
        // pread per page is most of what keeps a claim or a dispatch near 20 us.
        self.conn
            .execute_batch(&format!("PRAGMA mmap_size = {MMAP_SIZE}"))
            .map_err(|e| classify(&path, "set mmap_size", e))?;
        // The claim's `IN (subquery)` builds a temporary table; on disk (the default) that
        // costs a temporary file per claim, about 90 us here. In memory, 2 us.
        self.conn
            .execute_batch("PRAGMA temp_store = MEMORY")
            .map_err(|e| classify(&path, "set temp_store", e))?;
        let temp_store: i64 = self
            .conn
            .query_row("PRAGMA temp_store", [], |row| row.get(0))
            .map_err(|e| classify(&path, "read temp_store", e))?;
        if temp_store != 2 {
            return Err(StoreError::Pragma {
                path,
                pragma: "temp_store",
                expected: "MEMORY".into(),
                found: temp_store.to_string(),
            });
        }
        // Checkpoints stay on the commit path. Moved to a background thread, they cost the
        // end-to-end rate a third (measured) for no gain in latency. The WAL file is cut
        // back after each reset.
        self.conn
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
                options.checkpoint_pages
            ))
            .map_err(|e| classify(&path, "set wal_autocheckpoint", e))?;
        let autocheckpoint: i64 = self
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
            .map_err(|e| classify(&path, "read wal_autocheckpoint", e))?;
        if autocheckpoint != i64::from(options.checkpoint_pages) {
            return Err(StoreError::Pragma {
                path,
                pragma: "wal_autocheckpoint",
                expected: options.checkpoint_pages.to_string(),
                found: autocheckpoint.to_string(),
            });
        }
        let (level, name) = if options.durable {
            (2, "FULL")
        } else {
            (1, "NORMAL")
        };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {name}"))
            .map_err(|e| classify(&path, "set synchronous", e))?;
        let found: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .map_err(|e| classify(&path, "read synchronous", e))?;
        if found != level {
            return Err(StoreError::Pragma {
                path,
                pragma: "synchronous",
                expected: name.into(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        self.write("create the schema", |tx| {
            // Another process may have created it between our read and our lock.
            let version: i64 = tx
                .tx
                .query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if version == 0 {
                tx.tx.execute_batch(SCHEMA)?;
                tx.tx
                    .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            }
            Ok(())
        })
    }

    /// The file's schema version (`PRAGMA user_version`; 0 for a file castor never set
    /// up).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| classify(&self.path, "read the schema version", e))
    }

    /// The tables and indexes of castor's schema that the file lacks (a copy recovered
    /// with sqlite3's `.dump` skips an index it cannot build).
    ///
    /// # Errors
    /// Fails if the schema cannot be read.
    pub fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError> {
        let present: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_schema")
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .map_err(|e| classify(&self.path, "read the schema", e))?;
        Ok(SCHEMA
            .lines()
            .filter_map(|line| {
                let rest = line.trim_start().strip_prefix("CREATE ")?;
                let rest = rest.strip_prefix("UNIQUE ").unwrap_or(rest);
                let rest = rest
                    .strip_prefix("TABLE IF NOT EXISTS ")
                    .or_else(|| rest.strip_prefix("INDEX IF NOT EXISTS "))?;
                rest.split([' ', '(']).next().map(str::to_owned)
            })
            .filter(|name| !present.contains(name))
            .collect())
    }

    /// A counter that changes whenever another connection commits (`PRAGMA data_version`).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(|e| classify(&self.path, "read data_version", e))
    }

    /// Runs `f` in an `IMMEDIATE` transaction and commits it. If the database stays busy
    /// past the busy timeout, the whole transaction is tried again, up to a bound.
    ///
    /// # Errors
    /// Whatever `f` returns, or the commit's failure, mapped to a [`StoreError`] that names
    /// `operation`.
    pub fn write<T>(
        &mut self,
        operation: &'static str,
        mut f: impl FnMut(&WriteTx<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = (|| {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = f(&WriteTx { tx: &tx })?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Ok(value) => {
                    self.restart_wal_if_asked();
                    return Ok(value);
                }
                Err(e) if is_busy(&e) && tries <= BUSY_RETRIES => continue,
                Err(e) if self.out_of_space(&e) => {
                    return Err(StoreError::DiskFull {
                        path: self.path.clone(),
                        operation,
                    });
                }
                Err(e) => return Err(classify(&self.path, operation, e)),
            }
        }
    }

    /// True if `e` is a write that failed for lack of space. SQLite reports ENOSPC as
    /// "disk full" but a quota (EDQUOT) or a file-size limit (EFBIG) as a generic I/O
    /// error, so the operating system's error number decides.
    fn out_of_space(&self, e: &rusqlite::Error) -> bool {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => true,
            Some(rusqlite::ErrorCode::SystemIoFailure) => {
                // SAFETY: reads the last OS error number of this open connection.
                let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
                matches!(errno, libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
            }
            _ => false,
        }
    }

    /// Inserts one task and returns its id (or, for a unique key that is already taken by
    /// an unfinished task, that task's id).
    ///
    /// # Errors
    /// Fails if the write fails.
    pub fn enqueue(&mut self, task: &NewTask<'_>) -> Result<(Uuid, bool), StoreError> {
        self.write("enqueue a task", |tx| tx.enqueue(task, now_us()))
    }

    /// Inserts many tasks in one transaction; returns their ids in order.
    ///
    /// # Errors
    /// Fails if the write fails; then nothing is inserted.
    pub fn enqueue_many(&mut self, tasks: &[NewTask<'_>]) -> Result<Vec<Uuid>, StoreError> {
        self.write("enqueue tasks", |tx| {
            let now = now_us();
            tasks
                .iter()
                .map(|task| tx.enqueue(task, now).map(|(id, _)| id))
                .collect()
        })
    }

    /// Reads one task by id; `None` if no row has that id.
    ///
    /// # Errors
    /// Fails if the database cannot be read or the row is invalid.
    pub fn snapshot(&self, id: Uuid) -> Result<Option<TaskSnapshot>, StoreError> {
        let row = self
            .conn
            .prepare_cached(rows::SNAPSHOT_SQL)
            .and_then(|mut stmt| {
                stmt.query_row([id.as_bytes().as_slice()], TaskRow::from_row)
                    .optional()
            })
            .map_err(|e| classify(&self.path, "read a task", e))?;
        row.map(|row| row.into_snapshot(&self.path)).transpose()
    }

    /// The earliest time a `scheduled` or `retryable` task of `manager` becomes due.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn next_due(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT min(scheduled_at) FROM castor_tasks \
                 WHERE manager = ?1 AND (state = 'scheduled' OR state = 'retryable')",
            )
            .and_then(|mut stmt| stmt.query_row([manager], |row| row.get(0)))
            .map_err(|e| classify(&self.path, "find the next due task", e))
    }

    /// A task's log lines, oldest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn logs(&self, id: Uuid) -> Result<Vec<TaskLog>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT l.at, l.attempt, l.level, l.line FROM castor_logs l \
                 JOIN castor_tasks t ON t.seq = l.task_seq WHERE t.id = ?1 ORDER BY l.rowid",
            )
            .and_then(|mut stmt| {
                stmt.query_map([id.as_bytes().as_slice()], |row| {
                    let level: String = row.get(2)?;
                    Ok(TaskLog {
                        at: row.get(0)?,
                        attempt: row.get(1)?,
                        level: match level.as_str() {
                            "debug" => crate::LogLevel::Debug,
                            "info" => crate::LogLevel::Info,
                            "warn" => crate::LogLevel::Warn,
                            _ => crate::LogLevel::Error,
                        },
                        line: row.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| classify(&self.path, "read a task's log", e))
    }

    /// How many tasks of `manager` are not finished yet (scheduled, available, running or
    /// retryable). Answered from the partial indexes, so it stays cheap on a big table.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn unfinished(&self, manager: &str) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM castor_tasks WHERE state = 'available' AND manager = ?1) \
                      + (SELECT count(*) FROM castor_tasks WHERE state = 'running' AND manager = ?1) \
                      + (SELECT count(*) FROM castor_tasks \
                         WHERE (state = 'scheduled' OR state = 'retryable') AND manager = ?1)",
            )
            .and_then(|mut stmt| stmt.query_row([manager], |row| row.get(0)))
            .map_err(|e| classify(&self.path, "count unfinished tasks", e))
    }

    /// The raw connection, for the few read-only helpers in this module's tests.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// A write transaction. Every method is one guarded statement.
pub struct WriteTx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
}

impl WriteTx<'_> {
    /// Inserts one task. With a unique key held by an unfinished task of the same name,
    /// inserts nothing and returns that task's id and `true`.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn enqueue(&self, task: &NewTask<'_>, now: i64) -> Result<(Uuid, bool), rusqlite::Error> {
        let id = Uuid::now_v7();
        let scheduled_at = task.run_at_us.unwrap_or(now);
        let state = if scheduled_at > now {
            "scheduled"
        } else {
            "available"
        };
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO castor_tasks (id, manager, task, state, priority, args, max_attempts, \
             backoff_base_ms, backoff_cap_ms, timeout_ms, unique_key, schedule_id, created_at, \
             scheduled_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT DO NOTHING",
        )?;
        let inserted = stmt.execute(params![
            id.as_bytes().as_slice(),
            task.manager,
            task.task,
            state,
            task.priority,
            task.args,
            task.max_attempts,
            task.backoff_base_ms,
            task.backoff_cap_ms,
            task.timeout_ms,
            task.unique_key,
            task.schedule_id,
            now,
            scheduled_at,
        ])?;
        if inserted == 1 {
            return Ok((id, false));
        }
        // Only the unique index can make the insert a no-op.
        let existing: Vec<u8> = self
            .tx
            .prepare_cached(
                "SELECT id FROM castor_tasks WHERE manager = ?1 AND task = ?2 AND unique_key = ?3 \
                 AND (state = 'scheduled' OR state = 'available' OR state = 'running' \
                      OR state = 'retryable')",
            )?
            .query_row(params![task.manager, task.task, task.unique_key], |row| {
                row.get(0)
            })?;
        let id = Uuid::from_slice(&existing).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        Ok((id, true))
    }

    /// Claims up to `limit` available tasks of the query's manager and task names, highest
    /// priority first, then oldest. Each claimed task is `running`, its attempt
    /// incremented, owned by `worker` until `lease_until`.
    ///
    /// The candidates are read first (an index seek per task name): no candidates, no
    /// write. A few are claimed row by row; a batch in one `UPDATE .. WHERE seq IN (..)
    /// RETURNING`, which costs more to start (about 50 us) and less per row.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn claim(
        &self,
        query: &ClaimQuery,
        worker: &str,
        limit: usize,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, rusqlite::Error> {
        /// Up to this many candidates are claimed row by row.
        const ROW_BY_ROW: usize = 32;
        let fixed: [&dyn rusqlite::ToSql; 5] = [
            &now,
            &worker,
            &lease_until,
            &query.filter().manager,
            &(limit as i64),
        ];
        let names = query
            .filter()
            .tasks
            .iter()
            .map(|t| t as &dyn rusqlite::ToSql);
        let params: Vec<&dyn rusqlite::ToSql> = fixed.into_iter().chain(names).collect();
        let candidates: Vec<i64> = {
            let mut select = self.tx.prepare_cached(query.select_sql())?;
            // The select uses ?4 onwards; bind the same list so the numbers line up.
            select
                .query_map(params.as_slice(), |row| row.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut claimed = if candidates.is_empty() {
            Vec::new()
        } else if candidates.len() <= ROW_BY_ROW {
            let mut one = self.tx.prepare_cached(rows::CLAIM_ONE_SQL)?;
            let mut claimed = Vec::with_capacity(candidates.len());
            for seq in candidates {
                claimed.extend(
                    one.query_row(params![seq, now, worker, lease_until], Claimed::from_row)
                        .optional()?,
                );
            }
            claimed
        } else {
            self.tx
                .prepare_cached(query.batch_sql())?
                .query_map(params.as_slice(), Claimed::from_row)?
                .collect::<Result<Vec<_>, _>>()?
        };
        // RETURNING has no order; run in claim order.
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
        Ok(claimed)
    }

    /// Records how an attempt ended, if the task is still `running` that same attempt.
    /// Returns `false` when it is not: the attempt lost its lease and was rescued (or
    /// cancelled), and a newer attempt owns the row.
    ///
    /// A task whose cancellation was requested while it ran ends `cancelled` instead of
    /// being retried.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn finish_if_running(
        &self,
        seq: i64,
        attempt: u32,
        finish: &Finish<'_>,
        now: i64,
    ) -> Result<bool, rusqlite::Error> {
        let changed = match finish {
            Finish::Completed { result } => self
                .tx
                .prepare_cached(
                    "UPDATE castor_tasks SET state = 'completed', result = ?3, finalized_at = ?4, \
                     lease_expires_at = NULL \
                     WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
                )?
                .execute(params![seq, attempt, result, now])?,
            Finish::Failed { transition, error } => {
                let error = serde_json::to_string(error)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                self.tx
                    .prepare_cached(
                        "UPDATE castor_tasks SET \
                         state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE ?3 END, \
                         scheduled_at = CASE WHEN cancel_requested_at IS NOT NULL THEN scheduled_at \
                                        ELSE coalesce(?4, scheduled_at) END, \
                         finalized_at = CASE WHEN cancel_requested_at IS NOT NULL OR ?3 IN \
                                        ('completed', 'discarded', 'cancelled') THEN ?5 END, \
                         lease_expires_at = NULL, \
                         errors = json_insert(coalesce(errors, '[]'), '$[#]', json(?6)) \
                         WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
                    )?
                    .execute(params![
                        seq,
                        attempt,
                        transition.state.as_str(),
                        transition.scheduled_at,
                        now,
                        error
                    ])?
            }
        };
        Ok(changed == 1)
    }

    /// Moves `scheduled` and `retryable` tasks of `manager` whose time has come to
    /// `available`; returns how many moved.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn stage_due(&self, manager: &str, now: i64) -> Result<usize, rusqlite::Error> {
        self.tx
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'available' \
                 WHERE manager = ?1 AND (state = 'scheduled' OR state = 'retryable') \
                 AND scheduled_at <= ?2",
            )?
            .execute(params![manager, now])
    }

    /// Gives claimed tasks that never started back: `available` again, the claim's
    /// attempt undone. Guarded by attempt, like every state change of a running task.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn release_if_running(&self, seq: i64, attempt: u32) -> Result<bool, rusqlite::Error> {
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'available', attempt = attempt - 1, \
                 attempted_at = NULL, attempted_by = NULL, lease_expires_at = NULL \
                 WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
            )?
            .execute(params![seq, attempt])?;
        Ok(changed == 1)
    }
}

impl WriteTx<'_> {
    /// Extends the lease of every task `worker` is running.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn renew_leases(&self, worker: &str, until: i64) -> Result<usize, rusqlite::Error> {
        self.tx
            .prepare_cached(
                "UPDATE castor_tasks SET lease_expires_at = ?2 \
                 WHERE attempted_by = ?1 AND state = 'running'",
            )?
            .execute(params![worker, until])
    }

    /// Appends a log line to a task's log, keeping only its newest [`LOG_LINES_KEPT`].
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn append_log(
        &self,
        seq: i64,
        attempt: u32,
        at: i64,
        level: crate::LogLevel,
        line: &str,
    ) -> Result<(), rusqlite::Error> {
        let rowid = self
            .tx
            .prepare_cached(
                "INSERT INTO castor_logs (task_seq, attempt, at, level, line) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .insert(params![seq, attempt, at, level.as_str(), line])?;
        if rowid % 64 == 0 {
            self.trim_log(seq)?;
        }
        Ok(())
    }

    /// Drops a task's oldest log lines beyond [`LOG_LINES_KEPT`].
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn trim_log(&self, seq: i64) -> Result<usize, rusqlite::Error> {
        self.tx
            .prepare_cached(
                "DELETE FROM castor_logs WHERE task_seq = ?1 AND rowid <= \
                 (SELECT rowid FROM castor_logs WHERE task_seq = ?1 \
                  ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![seq, LOG_LINES_KEPT])
    }

    /// Records a running task's progress.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn set_progress(
        &self,
        seq: i64,
        attempt: u32,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), rusqlite::Error> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.tx
            .prepare_cached(
                "UPDATE castor_tasks SET progress_done = ?3, progress_total = ?4, \
                 progress_message = nullif(?5, '') \
                 WHERE seq = ?1 AND attempt = ?2 AND state = 'running'",
            )?
            .execute(params![seq, attempt, clamp(done), clamp(total), message])?;
        Ok(())
    }
}

/// Waits before SQLite retries a lock another connection holds. The first tries only
/// yield the CPU: the other side's transaction usually ends within tens of microseconds,
/// and any sleep costs at least the kernel's timer slack (50 us). Then sleeps of 50 us,
/// doubling up to 5 ms, until [`BUSY_TIMEOUT`] has passed. (SQLite's own handler starts
/// at 1 ms, which dominated the latency of a claim landing just as an app's commit was
/// releasing the lock.)
fn busy_wait(attempt: i32) -> bool {
    /// Tries that only yield, a few microseconds each.
    const SPINS: u32 = 16;
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let Some(sleeps) = attempt.checked_sub(SPINS) else {
        std::thread::yield_now();
        return true;
    };
    let step = |n: u32| Duration::from_micros((50u64 << n.min(7)).min(5_000));
    // The time already slept, summed over the schedule (at most a few thousand terms).
    let waited: Duration = (0..sleeps).map(step).sum();
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(step(sleeps));
    true
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Maps SQLite's error codes to the errors a user can act on.
pub(crate) fn classify(path: &Path, operation: &'static str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            detail: sqlite_reason(&e, &path),
            path,
            operation,
        },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            detail: sqlite_reason(&e, &path),
            path,
        },
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, operation },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
            path,
            operation,
            waited: BUSY_TIMEOUT * (BUSY_RETRIES + 1),
        },
        _ => StoreError::Query {
            path,
            operation,
            error: e,
        },
    }
}

/// SQLite's reason for `e`, said once: rusqlite's message (without the path it appends to
/// "unable to open database file", which the caller's message names already), or the
/// error code's description, never both.
pub(crate) fn sqlite_reason(e: &rusqlite::Error, path: &Path) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => {
            let suffix = format!(": {}", path.display());
            message.strip_suffix(&suffix).unwrap_or(message).to_owned()
        }
        rusqlite::Error::SqliteFailure(code, None) => {
            rusqlite::ffi::code_to_str(code.extended_code).to_owned()
        }
        other => other.to_string(),
    }
}

/// Checks that `path` can be a database file before SQLite opens it (SQLite says only
/// "unable to open database file" for a directory, and blocks or fails on a FIFO), and,
/// with `create`, creates it readable and writable by its owner only. SQLite gives the
/// `-wal` and `-shm` files the same mode.
fn prepare_file(path: &Path, create: bool) -> Result<(), StoreError> {
    use std::io::ErrorKind;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let open_error = |error| StoreError::Open {
        path: path.to_path_buf(),
        error,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::NotADirectory {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(StoreError::MissingDirectory {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            return Err(StoreError::NotADirectory {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(open_error(e)),
    }
    match std::fs::metadata(path) {
        Ok(meta) => {
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                "a directory"
            } else if file_type.is_fifo() {
                "a FIFO (named pipe)"
            } else if file_type.is_socket() {
                "a socket"
            } else if file_type.is_char_device() || file_type.is_block_device() {
                "a device"
            } else {
                // A regular file: SQLite reports an unreadable one only as "unable to
                // open database file"; the operating system says why.
                return std::fs::File::open(path).map(drop).map_err(open_error);
            };
            Err(StoreError::NotAFile {
                path: path.to_path_buf(),
                kind,
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound && create => {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(open_error(e)),
            }
        }
        Err(e) => Err(open_error(e)),
    }
}

#[cfg(test)]
mod tests;
