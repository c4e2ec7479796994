//! Castor's storage engine: the task table, its state machine, and the one seam every
//! database engine plugs into.
//!
//! The worker, the CLI and an app's `Client` (through castor-abi) reach the database only
//! through this crate: [`open`] turns a [`Database`] setting into a [`Store`], whose
//! [`Driver`] answers reads and starts write transactions ([`Tx`]), one named, guarded
//! operation per statement, and [`notifier`] gives the matching wake-up source. A driver
//! is a module (`sqlite`, `postgres`) behind those two traits, registered in `connect` (behind [`open`]) and
//! [`notifier`]; nothing else in Castor names an engine. Plugin authors never see this
//! crate: castor-abi re-exports the few types an app uses (states, errors, log lines).
//!
//! Invariants every driver keeps (and `conformance` checks): every change to a running
//! task is guarded by its state and attempt; claims never hand one task to two claimers;
//! a schedule's tick and its run are one write; times come from the caller.
#![deny(missing_docs)]

pub mod chain;
pub mod cron;
pub mod driver;
mod error;
pub mod format;
pub mod limits;
mod log_trim;
pub mod migrate;
mod model;
pub mod notify;
mod row;
mod schedule;
mod state;
mod target;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

pub use crate::driver::{CheckReach, Driver, LimitUsage, Tx};
pub use crate::error::{CertificateFault, StoreError, TlsProblem};
pub use crate::limits::{
    DeclaredLimits, Held, LimitRow, LimitStatus, LimitedClaim, Limits, Rate, RateError,
};
pub use crate::model::{
    After, AfterParents, AttemptEnd, AttemptError, CancelOutcome, Claimed, ClockOffset,
    DueSchedule, Enqueued, ErrorKind, Expired, Finish, ListFilter, LiveWorker, LogLevel,
    Mismatched, NewLog, NewSchedule, NewTask, ParentInfo, ParentRef, Progress, RetryOutcome,
    ScheduleFilter, SignatureCount, Signatures, StateCount, TaskFilter, TaskLog, TaskSnapshot,
    TaskSummary, Waiting, WorkerRow,
};
pub use crate::notify::Notifier;
pub use crate::schedule::{
    Cadence, MISSED_AFTER, Missed, ScheduleInfo, TickPlan, plan_tick, run_due_schedules,
};
pub use crate::state::{AttemptOutcome, Backoff, TaskState, Transition, UnknownState, next_state};
pub use crate::target::{Database, SslMode};
pub use uuid;

/// How many times a write whose lock stayed busy past the engine's timeout is tried again.
pub const BUSY_RETRIES: u32 = 3;

/// How many log lines are kept per task: once an attempt is over, its task's log holds
/// at most this many, its newest; older ones are dropped.
pub const LOG_LINES_KEPT: i64 = 1000;

/// While an attempt runs, its task's log may hold fewer than this many lines more than
/// [`LOG_LINES_KEPT`]: drivers trim it in steps, not at every line.
pub const LOG_LINES_SLACK: i64 = 64;

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

/// Who opens the database, which sets how it is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker: commits all the time and keeps the WAL short.
    Worker,
    /// An app: lets a running worker do most checkpoints, so `delay` seldom pays for one.
    App,
    /// `castor check` and the like: read-only, as the file is; nothing set, created or
    /// migrated.
    Inspect,
}

/// How much of the database [`open`] checks for damage before using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// No check: the caller checks (as the worker does, within a budget), or this
    /// process just checked the database through another connection.
    Skip,
    /// A quick structural check if the database holds at most this many bytes, else none
    /// (an app or a CLI command, which should open quickly).
    UpTo(u64),
}

/// The largest database [`OpenCheck::UpTo`] checks by default (about 6,000 tasks):
/// measured here, opening a file of this size takes about 3 ms with the check and 0.3 ms
/// without, so a larger one is not checked by an app (the worker checks it at start,
/// `castor check` in full).
pub const QUICK_CHECK_BYTES: u64 = 1 << 20;

/// How a database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Every acknowledged write survives a power loss (SQLite `synchronous=FULL`), at the
    /// price of an fsync per commit. Without it a crash of any process loses nothing; a
    /// power loss may lose the last commits.
    pub durable: bool,
    /// Who opens it.
    pub role: Role,
    /// How much to check for damage first.
    pub check: OpenCheck,
    /// Apply pending migrations (the default). Without, a database that needs one is
    /// refused with [`StoreError::NeedsMigration`], for operators who migrate explicitly.
    pub migrate: bool,
}

impl OpenOptions {
    /// An app's options: a quick check of a small file, migrations applied.
    pub fn app() -> OpenOptions {
        OpenOptions {
            durable: false,
            role: Role::App,
            check: OpenCheck::UpTo(QUICK_CHECK_BYTES),
            migrate: true,
        }
    }

    /// A worker's options: it checks the file itself, within a budget, after opening.
    pub fn worker() -> OpenOptions {
        OpenOptions {
            durable: false,
            role: Role::Worker,
            check: OpenCheck::Skip,
            migrate: true,
        }
    }

    /// Read-only, untouched (for `castor check` and `castor migrate status`).
    pub fn inspect() -> OpenOptions {
        OpenOptions {
            durable: false,
            role: Role::Inspect,
            check: OpenCheck::Skip,
            migrate: false,
        }
    }
}

/// A connection to a Castor database, through whichever driver its setting names. Reads
/// go straight to the [`Driver`] (`store.snapshot(id)`); writes go through
/// [`Store::write`].
pub struct Store {
    driver: Box<dyn Driver>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", self.driver.database())
            .finish_non_exhaustive()
    }
}

/// Opens `database` with the driver its setting names, applying pending migrations (or
/// refusing them, without `options.migrate`).
///
/// # Errors
/// [`StoreError::Unsupported`] for a setting no driver of this build takes; otherwise
/// the driver's errors (a missing directory, a damaged file, a schema too new, ...).
pub fn open(database: &Database, options: &OpenOptions) -> Result<Store, StoreError> {
    let mut store = connect(database, options)?;
    if options.role != Role::Inspect {
        store.upgrade(options.migrate)?;
    }
    Ok(store)
}

/// Opens `database` as [`open`] does, but leaves pending migrations pending, whatever
/// `options.migrate` says: for `castor migrate up`, which applies them one at a time
/// ([`Store::migration_status`], [`Driver::apply_migration`]) and says what it did. A
/// database newer than this build is still refused, untouched.
///
/// # Errors
/// As [`open`], without [`StoreError::NeedsMigration`].
pub fn open_unmigrated(database: &Database, options: &OpenOptions) -> Result<Store, StoreError> {
    connect(
        database,
        &OpenOptions {
            migrate: true,
            ..*options
        },
    )
}

/// The one registration of drivers: the driver `database` names, opened.
fn connect(database: &Database, options: &OpenOptions) -> Result<Store, StoreError> {
    let driver: Box<dyn Driver> = match database {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(path) => Box::new(sqlite::SqliteDriver::open(path, options)?),
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => Box::new(postgres::PostgresDriver::open(url, options)?),
        other => return Err(unsupported(other)),
    };
    Ok(Store { driver })
}

/// Starts a [`Notifier`] for `database`'s changes, from the driver its setting names.
///
/// # Errors
/// [`StoreError::Unsupported`], or [`StoreError::Watch`] if the source cannot be set up.
pub fn notifier(database: &Database) -> Result<Notifier, StoreError> {
    match database {
        #[cfg(feature = "sqlite")]
        Database::Sqlite(path) => sqlite::notifier(database, path),
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => postgres::notifier(database, url),
        other => Err(unsupported(other)),
    }
}

fn unsupported(database: &Database) -> StoreError {
    let reason = match database {
        Database::Sqlite(_) => {
            "this build of castor has no SQLite driver (the `sqlite` feature is off)".to_owned()
        }
        Database::Postgres(_) => "this build of castor has no PostgreSQL driver; build it with \
                                  the `postgres` feature (castor-abi's, for an app)"
            .to_owned(),
        Database::Unknown(_) => "castor supports SQLite files (`tasks.db`, \
                                 `sqlite:///abs/path/tasks.db`) and PostgreSQL URLs \
                                 (`postgres://user@host/db`)"
            .to_owned(),
    };
    StoreError::Unsupported {
        given: database.to_string(),
        reason,
    }
}

impl Store {
    /// [`open`] as an associated function: `Store::open("tasks.db", OpenOptions::app())`.
    ///
    /// # Errors
    /// As [`open`].
    pub fn open(database: impl Into<Database>, options: OpenOptions) -> Result<Store, StoreError> {
        open(&database.into(), &options)
    }

    /// Wraps a driver (for drivers' own tests and the conformance suite).
    pub fn from_driver(driver: Box<dyn Driver>) -> Store {
        Store { driver }
    }

    /// Brings the schema up to date, or refuses a database that needs it (`migrate`
    /// false) or is newer than this build.
    fn upgrade(&mut self, migrate: bool) -> Result<(), StoreError> {
        let version = self.driver.schema_version()?;
        let latest = self.driver.migrations().last().map_or(0, |m| m.version);
        if version == latest {
            return Ok(());
        }
        if version > latest {
            return Err(StoreError::SchemaTooNew {
                database: self.driver.database().clone(),
                found: version,
                supported: latest,
            });
        }
        if !migrate {
            return Err(StoreError::NeedsMigration {
                database: self.driver.database().clone(),
                found: version,
                current: latest,
            });
        }
        migrate::migrate(&mut *self.driver, now_us()).map(drop)
    }

    /// Runs `f` in a write transaction and commits it. If the write lock stayed busy past
    /// the engine's timeout, the whole transaction is tried again, up to
    /// [`BUSY_RETRIES`] times.
    ///
    /// # Errors
    /// Whatever `f` returns, or the commit's failure; nothing of the transaction remains.
    pub fn write<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = (|| {
                let mut tx = self.driver.begin()?;
                let value = f(&mut *tx)?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Err(StoreError::Busy { .. }) if tries <= BUSY_RETRIES => continue,
                other => return other,
            }
        }
    }

    /// Inserts one task (see [`Tx::enqueue`]).
    ///
    /// # Errors
    /// The write failed; nothing was inserted.
    pub fn enqueue(&mut self, task: &NewTask<'_>) -> Result<Enqueued, StoreError> {
        self.write(|tx| tx.enqueue(task, now_us()))
    }

    /// Inserts many tasks in one transaction; returns their ids in order.
    ///
    /// # Errors
    /// The write failed; then nothing is inserted.
    pub fn enqueue_many(&mut self, tasks: &[NewTask<'_>]) -> Result<Vec<Uuid>, StoreError> {
        self.write(|tx| {
            let now = now_us();
            tasks
                .iter()
                .map(|task| tx.enqueue(task, now).map(|e| e.id))
                .collect()
        })
    }

    /// Where the database stands against this build's migrations.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn migration_status(&self) -> Result<migrate::MigrationStatus, StoreError> {
        migrate::status(&*self.driver)
    }

    /// Applies pending migrations; returns the versions applied.
    ///
    /// # Errors
    /// As [`migrate::migrate`].
    pub fn migrate(&mut self) -> Result<Vec<u32>, StoreError> {
        migrate::migrate(&mut *self.driver, now_us())
    }
}

impl Deref for Store {
    type Target = dyn Driver;

    fn deref(&self) -> &(dyn Driver + 'static) {
        &*self.driver
    }
}

impl DerefMut for Store {
    fn deref_mut(&mut self) -> &mut (dyn Driver + 'static) {
        &mut *self.driver
    }
}
