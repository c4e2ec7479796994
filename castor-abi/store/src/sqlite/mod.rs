//! The SQLite driver: the only code in Castor that speaks SQLite's SQL. Opening a database
//! (WAL, busy handler, pragmas verified after setting, a WAL hook of our own), its
//! migrations, its checks, every read ([`SqliteDriver`]) and every guarded write
//! ([`SqliteTx`]), and its wake-up sources ([`watch`]).
//!
//! A write is an `IMMEDIATE` transaction, so two writers never deadlock upgrading a read
//! lock; the busy handler waits for the lock (see [`busy_wait`]) and [`crate::Store::write`]
//! retries a transaction that stayed busy past [`BUSY_TIMEOUT`].

mod admin;
mod limits;
mod rescue;
mod rows;
mod schedules;
mod space;
mod tx;
mod watch;
mod workers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use uuid::Uuid;

pub use self::tx::SqliteTx;
pub(crate) use self::watch::notifier;
use crate::driver::{CheckReach, Driver, LimitUsage, Tx};
use crate::error::StoreError;
use crate::limits::{LimitRow, Rate};
use crate::migrate::{AppliedMigration, Migration};
use crate::model::{
    ListFilter, LogLevel, ScheduleFilter, StateCount, TaskLog, TaskSnapshot, TaskSummary, Waiting,
    WorkerRow,
};
use crate::schedule::ScheduleInfo;
use crate::state::TaskState;
use crate::target::Database;
use crate::{OpenCheck, OpenOptions, Role};

/// The SQLite driver's migrations, oldest first. Migration 1 is the schema castor 0.1
/// created (which recorded only `PRAGMA user_version = 1`); `user_version` stays equal to
/// the newest migration applied, so opening an up-to-date database reads one pragma.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "migrations_table",
        sql: include_str!("migrations/0002_migrations_table.sql"),
    },
    Migration {
        version: 3,
        name: "worker_host_id",
        sql: include_str!("migrations/0003_worker_host_id.sql"),
    },
    Migration {
        version: 4,
        name: "fingerprints",
        sql: include_str!("migrations/0004_fingerprints.sql"),
    },
    Migration {
        version: 5,
        name: "signatures",
        sql: include_str!("migrations/0005_signatures.sql"),
    },
    Migration {
        version: 6,
        name: "unsigned",
        sql: include_str!("migrations/0006_unsigned.sql"),
    },
    Migration {
        version: 7,
        name: "limits",
        sql: include_str!("migrations/0007_limits.sql"),
    },
    Migration {
        version: 8,
        name: "chains",
        sql: include_str!("migrations/0008_chains.sql"),
    },
];

/// How long a connection waits for another writer before giving up on one try.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the database file is memory-mapped (SQLite's cap applies).
const MMAP_SIZE: i64 = 1 << 30;

/// The most problems [`SqliteDriver::integrity_check`] reports.
pub const CHECK_PROBLEMS: usize = 100;

/// A worker's WAL bound, in pages (SQLite's default): past it, its commits checkpoint
/// (see `space.rs`).
const WORKER_CHECKPOINT_PAGES: u32 = 1000;

/// An app's WAL bound, in pages (8 MiB): larger than the worker's, so that while a worker
/// runs, `delay` calls leave checkpoints to it, and small enough that a disk an app filled
/// alone can take the checkpoint back once space is freed.
const APP_CHECKPOINT_PAGES: u32 = 2000;

/// The largest the WAL file is left at after a checkpoint resets it (8 MiB, an app's
/// checkpoint bound): a WAL that one large transaction grew gives its space back.
const JOURNAL_SIZE_LIMIT: i64 = 8 << 20;

/// A connection to a SQLite database: the SQLite driver.
pub struct SqliteDriver {
    conn: Connection,
    path: PathBuf,
    database: Database,
    /// The claim statements, by the number of task names they list (see `tx.rs`).
    claims: HashMap<usize, rows::ClaimSql>,
    /// When to trim task logs (see [`crate::log_trim`]).
    log_trim: crate::log_trim::LogTrim,
    /// The WAL hook's state (see `space.rs`). Declared after `conn`, so it outlives the
    /// connection whose hook points at it.
    wal_hook: Option<Box<space::WalHook>>,
}

impl std::fmt::Debug for SqliteDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDriver")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteDriver {
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
    pub fn open(path: &Path, options: &OpenOptions) -> Result<SqliteDriver, StoreError> {
        if options.role == Role::Inspect {
            return SqliteDriver::open_read_only(path);
        }
        // Told not to migrate, castor does not create a database either (migration 1 does).
        match prepare_file(path, options.migrate) {
            Err(StoreError::Open { error, .. })
                if !options.migrate && error.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(StoreError::NeedsMigration {
                    database: Database::Sqlite(path.to_path_buf()),
                    found: 0,
                    current: MIGRATIONS.last().map_or(0, |m| m.version),
                });
            }
            prepared => prepared?,
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut driver = SqliteDriver::connect(path.to_path_buf(), flags)?;
        // Before anything is set on the file (its journal mode is stored in it): a schema
        // this build cannot use, or must not migrate, is refused untouched.
        driver.refuse_schema(options.migrate)?;
        let bound = match options.role {
            Role::App => APP_CHECKPOINT_PAGES,
            Role::Worker | Role::Inspect => WORKER_CHECKPOINT_PAGES,
        };
        driver.configure(options.durable, bound)?;
        driver.install_wal_hook(bound);
        match options.check {
            OpenCheck::Skip => {}
            OpenCheck::UpTo(limit) => {
                if driver.size()? <= limit {
                    driver.quick_check()?;
                }
            }
        }
        Ok(driver)
    }

    /// Opens an existing database read-only, as it is: no pragma set, no schema created,
    /// nothing written (for `castor check`).
    ///
    /// # Errors
    /// The path does not name a readable file, or SQLite cannot open it.
    fn open_read_only(path: &Path) -> Result<SqliteDriver, StoreError> {
        prepare_file(path, false)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut driver = SqliteDriver::connect(path.to_path_buf(), flags)?;
        driver
            .conn
            .busy_handler(Some(busy_wait))
            .map_err(|e| driver.error("set the busy handler", e))?;
        Ok(driver)
    }

    fn connect(path: PathBuf, flags: OpenFlags) -> Result<SqliteDriver, StoreError> {
        let database = Database::Sqlite(path.clone());
        match Connection::open_with_flags(&path, flags) {
            Ok(conn) => Ok(SqliteDriver {
                conn,
                path,
                database,
                wal_hook: None,
                claims: HashMap::new(),
                log_trim: crate::log_trim::LogTrim::default(),
            }),
            Err(e) => Err(match classify(&database, "open the database", e) {
                StoreError::Query {
                    database, detail, ..
                } => StoreError::Connect { database, detail },
                other => other,
            }),
        }
    }

    /// Maps a SQLite error met during `operation` to a [`StoreError`]: a write that failed
    /// for lack of space is [`StoreError::DiskFull`] whatever SQLite calls it (it reports
    /// ENOSPC as "disk full" but a quota or a file-size limit as an I/O error, so the
    /// operating system's error number decides).
    pub(crate) fn error(&self, operation: &'static str, e: rusqlite::Error) -> StoreError {
        let out_of_space = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => true,
            Some(rusqlite::ErrorCode::SystemIoFailure) => {
                // SAFETY: reads the last OS error number of this open connection.
                let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
                matches!(errno, libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
            }
            _ => false,
        };
        if out_of_space {
            StoreError::DiskFull {
                database: self.database.clone(),
                operation,
            }
        } else {
            classify(&self.database, operation, e)
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
            .map_err(|e| self.error("read the database's size", e))
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
                database: self.database.clone(),
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
        let interrupted = Arc::new(AtomicBool::new(false));
        let timer_interrupted = Arc::clone(&interrupted);
        let (finished, wait) = std::sync::mpsc::channel::<()>();
        let timer = std::thread::Builder::new()
            .name("castor-check-timer".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(budget) {
                    // Harmless if the check has just finished: SQLite clears the flag
                    // when the next statement starts on an idle connection.
                    timer_interrupted.store(true, Ordering::SeqCst);
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
            Err(StoreError::Query { .. }) if interrupted.load(Ordering::SeqCst) => {
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
            .map(|e| self.error(operation, e));
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

    fn configure(&mut self, durable: bool, checkpoint_pages: u32) -> Result<(), StoreError> {
        let database = self.database.clone();
        self.conn
            .busy_handler(Some(busy_wait))
            .map_err(|e| self.error("set the busy handler", e))?;
        self.conn.set_prepared_statement_cache_capacity(64);
        // The query planner stability guarantee: a plan never depends on a bound value.
        // Without it SQLite prepares a statement again at every run once its planning
        // looked at one (an equality before an ORDER BY, a `LIMIT ?`, a partial index's
        // condition), which was 90% of a claim's time; castor keeps no statistics that
        // such plans could use anyway.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(|e| self.error("configure the query planner", e))?;
        // The first statement that reads the file: a corrupt or foreign file fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| self.error("open the database", e))?;
        if self.conn.is_readonly("main").unwrap_or(false) {
            return Err(StoreError::ReadOnly {
                database,
                detail: "the file is not writable".into(),
            });
        }
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Pragma {
                database,
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
            .map_err(|e| self.error("set mmap_size", e))?;
        // The claim's `IN (subquery)` builds a temporary table; on disk (the default) that
        // costs a temporary file per claim, about 90 us here. In memory, 2 us.
        self.conn
            .execute_batch("PRAGMA temp_store = MEMORY")
            .map_err(|e| self.error("set temp_store", e))?;
        let temp_store: i64 = self
            .conn
            .query_row("PRAGMA temp_store", [], |row| row.get(0))
            .map_err(|e| self.error("read temp_store", e))?;
        if temp_store != 2 {
            return Err(StoreError::Pragma {
                database,
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
                checkpoint_pages
            ))
            .map_err(|e| self.error("set wal_autocheckpoint", e))?;
        let autocheckpoint: i64 = self
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
            .map_err(|e| self.error("read wal_autocheckpoint", e))?;
        if autocheckpoint != i64::from(checkpoint_pages) {
            return Err(StoreError::Pragma {
                database,
                pragma: "wal_autocheckpoint",
                expected: checkpoint_pages.to_string(),
                found: autocheckpoint.to_string(),
            });
        }
        let (level, name) = if durable { (2, "FULL") } else { (1, "NORMAL") };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {name}"))
            .map_err(|e| self.error("set synchronous", e))?;
        let found: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .map_err(|e| self.error("read synchronous", e))?;
        if found != level {
            return Err(StoreError::Pragma {
                database,
                pragma: "synchronous",
                expected: name.into(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    /// The tables and indexes of the migrations the file has applied that it lacks (a
    /// copy recovered with sqlite3's `.dump` skips an index it cannot build). A table of a
    /// migration still pending is not missing.
    ///
    /// # Errors
    /// Fails if the schema cannot be read.
    pub fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError> {
        let version = self.user_version()?;
        let present: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_schema")
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .map_err(|e| self.error("read the schema", e))?;
        Ok(SqliteDriver::schema_objects(version)
            .into_iter()
            .filter(|name| !present.iter().any(|p| p == name))
            .map(str::to_owned)
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
            .map_err(|e| self.error("read data_version", e))
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
                stmt.query_row([id.as_bytes().as_slice()], rows::task_row)
                    .optional()
            })
            .map_err(|e| self.error("read a task", e))?;
        row.map(|row| {
            row.into_snapshot(&self.database, |bytes| {
                Uuid::from_slice(&bytes).map_err(|e| e.to_string())
            })
        })
        .transpose()
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
            .map_err(|e| self.error("find the next due task", e))
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
                        level: LogLevel::from_stored(&level),
                        line: row.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("read a task's log", e))
    }

    /// How many tasks of `manager` are not finished yet (waiting, scheduled, available,
    /// running or retryable). Answered from the partial indexes, so it stays cheap on a big table.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn unfinished(&self, manager: &str) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT (SELECT count(*) FROM castor_tasks WHERE state = 'available' AND manager = ?1) \
                      + (SELECT count(*) FROM castor_tasks WHERE state = 'running' AND manager = ?1) \
                      + (SELECT count(*) FROM castor_tasks \
                         WHERE (state = 'scheduled' OR state = 'retryable') AND manager = ?1) \
                      + (SELECT count(*) FROM castor_tasks WHERE state = 'waiting' AND manager = ?1)",
            )
            .and_then(|mut stmt| stmt.query_row([manager], |row| row.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.error("count unfinished tasks", e))
    }

    /// The raw connection, for the few read-only helpers in this module's tests.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Reads one task's state.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, StoreError> {
        self.conn
            .prepare_cached("SELECT state FROM castor_tasks WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id.as_bytes().as_slice()], |row| {
                    rows::state_from(row.get(0)?, 0)
                })
                .optional()
            })
            .map_err(|e| self.error("read a task's state", e))
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

/// Maps SQLite's error codes to the errors a user can act on.
pub(crate) fn classify(
    database: &Database,
    operation: &'static str,
    e: rusqlite::Error,
) -> StoreError {
    use rusqlite::ErrorCode;
    let path = database.sqlite_path().unwrap_or(Path::new(""));
    let database = database.clone();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            detail: sqlite_reason(&e, path),
            database,
            operation,
        },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            detail: sqlite_reason(&e, path),
            database,
        },
        Some(ErrorCode::DiskFull) => StoreError::DiskFull {
            database,
            operation,
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
            database,
            operation,
            waited: BUSY_TIMEOUT * (crate::BUSY_RETRIES + 1),
        },
        _ => StoreError::Query {
            detail: sqlite_reason(&e, path),
            database,
            operation,
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

impl SqliteDriver {
    /// The file's schema version (`PRAGMA user_version`: 0 for a file castor never set
    /// up).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn user_version(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
            .map_err(|e| self.error("read the schema version", e))
    }

    /// Refuses a database newer than this build, or one that needs migrations when
    /// `migrate` is false ([`crate::Store`] checks the same, through any driver, once
    /// open). The first read of the file: a foreign or damaged one fails here.
    fn refuse_schema(&mut self, migrate: bool) -> Result<(), StoreError> {
        self.conn
            .busy_handler(Some(busy_wait))
            .map_err(|e| self.error("set the busy handler", e))?;
        let found = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
            .map_err(|e| self.error("open the database", e))?;
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        if found > latest {
            return Err(StoreError::SchemaTooNew {
                database: self.database.clone(),
                found,
                supported: latest,
            });
        }
        if found < latest && !migrate {
            return Err(StoreError::NeedsMigration {
                database: self.database.clone(),
                found,
                current: latest,
            });
        }
        Ok(())
    }

    fn applied(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let recorded: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'castor_migrations'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.error("read the migrations", e))?;
        if !recorded {
            // Before migration 2, the version alone says what was applied.
            let version = self.user_version()?;
            return Ok(MIGRATIONS
                .iter()
                .filter(|m| m.version <= version)
                .map(|m| AppliedMigration {
                    version: m.version,
                    name: m.name.to_owned(),
                    applied_at: None,
                })
                .collect());
        }
        self.conn
            .prepare("SELECT version, name, applied_at FROM castor_migrations ORDER BY version")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok(AppliedMigration {
                        version: row.get(0)?,
                        name: row.get(1)?,
                        applied_at: row.get(2)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("read the migrations", e))
    }

    fn apply(&mut self, migration: &Migration, now: i64) -> Result<bool, StoreError> {
        const OPERATION: &str = "apply a migration";
        let tx = self.begin_immediate()?;
        // Another process may have applied it between our read and our lock.
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.error(OPERATION, e))?;
        if version >= i64::from(migration.version) {
            return Ok(false);
        }
        let applied = (|| {
            tx.execute_batch(migration.sql)?;
            let recorded: bool = tx.query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'castor_migrations'",
                [],
                |row| row.get(0),
            )?;
            if recorded {
                tx.execute(
                    "INSERT OR REPLACE INTO castor_migrations (version, name, applied_at) \
                     VALUES (?1, ?2, ?3)",
                    params![migration.version, migration.name, now],
                )?;
            }
            tx.execute_batch(&format!("PRAGMA user_version = {}", migration.version))?;
            tx.commit()
        })();
        applied.map_err(|e| self.error(OPERATION, e))?;
        Ok(true)
    }

    /// Runs one statement with no result through the statement cache (`BEGIN IMMEDIATE`,
    /// `COMMIT`, `ROLLBACK`).
    fn statement(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    fn begin_immediate(&self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.error("begin a write", e))
    }

    /// Every `CREATE TABLE` and `CREATE INDEX` name of the migrations up to `version`.
    fn schema_objects(version: u32) -> Vec<&'static str> {
        MIGRATIONS
            .iter()
            .filter(|m| m.version <= version)
            .flat_map(|m| m.sql.lines())
            .filter_map(|line| {
                let rest = line.trim_start().strip_prefix("CREATE ")?;
                let rest = rest.strip_prefix("UNIQUE ").unwrap_or(rest);
                let rest = rest
                    .strip_prefix("TABLE IF NOT EXISTS ")
                    .or_else(|| rest.strip_prefix("INDEX IF NOT EXISTS "))?;
                rest.split([' ', '(']).next()
            })
            // Migration 6 rebuilt the task table: its objects are named again.
            .fold(Vec::new(), |mut names, name| {
                if !names.contains(&name) {
                    names.push(name);
                }
                names
            })
    }
}

impl Driver for SqliteDriver {
    fn database(&self) -> &Database {
        &self.database
    }

    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        Ok(Box::new(SqliteTx::begin(self)?))
    }

    fn change_counter(&self) -> Result<Option<i64>, StoreError> {
        self.data_version().map(Some)
    }

    fn snapshot(&self, id: Uuid) -> Result<Option<TaskSnapshot>, StoreError> {
        SqliteDriver::snapshot(self, id)
    }

    fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, StoreError> {
        SqliteDriver::state_of(self, id)
    }

    fn args_of(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        SqliteDriver::args_of(self, id)
    }

    fn logs(&self, id: Uuid) -> Result<Vec<TaskLog>, StoreError> {
        SqliteDriver::logs(self, id)
    }

    fn next_due(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        SqliteDriver::next_due(self, manager)
    }

    fn unfinished(&self, manager: &str) -> Result<u64, StoreError> {
        SqliteDriver::unfinished(self, manager)
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<TaskSummary>, StoreError> {
        SqliteDriver::list(self, filter)
    }

    fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        SqliteDriver::counts(self)
    }

    fn oldest_available(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        SqliteDriver::oldest_available(self, manager)
    }

    fn completed_since(&self, since: i64) -> Result<u64, StoreError> {
        SqliteDriver::completed_since(self, since)
    }

    fn workers(&self, live_only: bool) -> Result<Vec<WorkerRow>, StoreError> {
        SqliteDriver::workers(self, live_only)
    }

    fn parents(&self, id: Uuid) -> Result<Vec<crate::ParentInfo>, StoreError> {
        SqliteDriver::parents(self, id)
    }

    fn waiting_on_parents(
        &self,
        manager: &str,
        limit: usize,
    ) -> Result<Vec<crate::AfterParents>, StoreError> {
        SqliteDriver::waiting_on_parents(self, manager, limit)
    }

    fn waiting(&self, manager: &str, limit: usize) -> Result<Vec<Waiting>, StoreError> {
        SqliteDriver::waiting(self, manager, limit)
    }

    fn mismatched(&self, filter: &crate::TaskFilter) -> Result<Vec<crate::Mismatched>, StoreError> {
        SqliteDriver::mismatched(self, filter)
    }

    fn available_signatures(&self) -> Result<Vec<crate::SignatureCount>, StoreError> {
        SqliteDriver::available_signatures(self)
    }

    fn next_schedule_due(&self, filter: &ScheduleFilter) -> Result<Option<i64>, StoreError> {
        SqliteDriver::next_schedule_due(self, filter)
    }

    fn limits(&self, manager: Option<&str>) -> Result<Vec<LimitRow>, StoreError> {
        self.read_limits(manager)
            .map_err(|e| self.error("read tasks' limits", e))
    }

    fn limit_usage(
        &self,
        manager: &str,
        task: &str,
        rate: Option<Rate>,
        now: i64,
    ) -> Result<LimitUsage, StoreError> {
        self.read_limit_usage(manager, task, rate, now)
            .map_err(|e| self.error("read a task's limit usage", e))
    }

    fn schedules(&self, manager: Option<&str>) -> Result<Vec<ScheduleInfo>, StoreError> {
        SqliteDriver::schedules(self, manager)
    }

    fn schedule(&self, id: i64) -> Result<Option<ScheduleInfo>, StoreError> {
        SqliteDriver::schedule(self, id)
    }

    fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError> {
        SqliteDriver::schedule_runs(self, id)
    }

    fn size(&self) -> Result<u64, StoreError> {
        SqliteDriver::size(self)
    }

    fn quick_check(&self, budget: Option<Duration>) -> Result<CheckReach, StoreError> {
        match budget {
            Some(budget) => self.quick_check_within(budget),
            None => SqliteDriver::quick_check(self).map(|()| CheckReach::Whole),
        }
    }

    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        SqliteDriver::integrity_check(self)
    }

    fn integrity_check_name(&self) -> &'static str {
        "PRAGMA integrity_check"
    }

    fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError> {
        SqliteDriver::missing_schema_objects(self)
    }

    fn free_bytes(&self) -> Option<u64> {
        SqliteDriver::free_bytes(self)
    }

    fn reclaimable_bytes(&self) -> u64 {
        self.wal_bytes()
    }

    fn reclaim_space(&mut self) -> Result<bool, StoreError> {
        self.truncate_wal()
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        self.user_version()
    }

    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.applied()
    }

    fn apply_migration(&mut self, migration: &Migration, now: i64) -> Result<bool, StoreError> {
        self.apply(migration, now)
    }
}

// mod tests;

#[cfg(test)]
mod tests;
