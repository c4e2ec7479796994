//! The PostgreSQL driver: the only code in Castor that speaks PostgreSQL's SQL, through the
//! synchronous `postgres` client (the worker's threads block on the database anyway).
//! Connecting, its migrations, every read ([`PostgresDriver`]) and every guarded write
//! ([`PostgresTx`]), and its wake-up source (`LISTEN`, in [`watch`]).
//!
//! The rules are the SQLite driver's, in PostgreSQL's terms: claims take rows with
//! `FOR UPDATE SKIP LOCKED`, so any number of workers on any number of hosts claim without
//! waiting on each other and never claim one task twice; every change to a running task
//! is guarded by `state = 'running' AND attempt = ..`; unique keys are a partial unique
//! index; times are the caller's (`now`, microseconds), never the server's clock.
//!
//! A write is a `READ COMMITTED` transaction: each guarded `UPDATE` re-checks its guard on
//! the newest version of the row, so of two writers racing for one row exactly one wins.
//! Deadlocks and serialization failures come back as [`StoreError::Busy`], which
//! [`crate::Store::write`] retries.

/// The server's clock in microseconds since the epoch, as SQL (a macro, for `concat!`):
/// `clock_timestamp()`, the time as the statement reads it (not the transaction's start,
/// which `now()` is).
macro_rules! server_clock_us {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    };
}

mod admin;
mod limits;
mod rescue;
mod rows;
mod schedules;
mod space;
mod tls;
mod tx;
mod watch;
mod workers;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use uuid::Uuid;

use self::tls::{ParseError, Target};
pub use self::tx::{PostgresTx, enqueue_in};
pub(crate) use self::watch::notifier;
use crate::driver::{CheckReach, Driver, LimitUsage, Tx};
use crate::error::StoreError;
use crate::limits::{LimitRow, Rate};
use crate::migrate::{AppliedMigration, Migration};
use crate::model::{
    ClockOffset, ListFilter, LogLevel, ScheduleFilter, StateCount, TaskLog, TaskSnapshot,
    TaskSummary, Waiting, WorkerRow,
};
use crate::schedule::ScheduleInfo;
use crate::state::TaskState;
use crate::target::Database;
use crate::{OpenOptions, Role};

/// The PostgreSQL driver's migrations, oldest first (numbered on their own, not
/// SQLite's). Each is applied in one transaction and recorded in `castor_migrations`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "worker_host_id",
        sql: include_str!("migrations/0002_worker_host_id.sql"),
    },
    Migration {
        version: 3,
        name: "fingerprints",
        sql: include_str!("migrations/0003_fingerprints.sql"),
    },
    Migration {
        version: 4,
        name: "signatures",
        sql: include_str!("migrations/0004_signatures.sql"),
    },
    Migration {
        version: 5,
        name: "limits",
        sql: include_str!("migrations/0005_limits.sql"),
    },
    Migration {
        version: 6,
        name: "chains",
        sql: include_str!("migrations/0006_chains.sql"),
    },
];

/// How long connecting may take when the URL does not say (`connect_timeout=`): an app's
/// `delay` during an outage fails after this instead of hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sent data may stay unacknowledged before the connection counts as dead, when
/// the URL does not say (`tcp_user_timeout=`): a statement sent to a server that vanished
/// (a machine off, a network cut) fails after this instead of hanging.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle time before TCP keepalives start, when the URL does not say: an idle
/// connection to a vanished server is found dead within about this plus three probes.
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(15);

/// The client's default idle time before keepalives (two hours), left to the URL's choice
/// when it differs.
const KEEPALIVES_IDLE_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);

/// The longest a worker's or an app's statement may run on the server, when the URL's
/// `options` do not set `statement_timeout`: a statement stuck behind a lock or a hung
/// server fails instead of stalling the worker past its lease (migrations are exempt).
/// Castor's statements take milliseconds; the CLI (`purge` of a large table) has none.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whose clock a [`ClockOffset`] of this driver compares with.
const SERVER: &str = "the PostgreSQL server";

/// Reads the server's clock alone (when no write read it along: [`Driver::clock_offset`]).
const CLOCK_SQL: &str = concat!("SELECT ", server_clock_us!());

/// The advisory lock that serializes migrations between processes (`castor` in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_7374_6f72;

/// Whether the migrations table exists, read from the catalog with the statement's own
/// snapshot (`to_regclass` may answer from a cache that predates a migration another
/// process just committed).
const RECORDED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relname = 'castor_migrations' AND n.nspname = current_schema())";

/// The tables castor keeps (for the size and the schema check), the newest migration's
/// included.
const TABLES: [&str; 8] = [
    "castor_migrations",
    "castor_tasks",
    "castor_logs",
    "castor_workers",
    "castor_schedules",
    "castor_limits",
    "castor_starts",
    "castor_dependencies",
];

/// A parameter list, as the client takes it.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection and its prepared statements (by their text: every statement the driver
/// runs is a constant, so each is parsed and planned once per connection).
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// The connection was lost (a statement failed for it): connect again before the
    /// next statement, even if the client has not noticed yet.
    lost: bool,
    /// The server's backend pid for this connection (a worker's only: its notifier skips
    /// this session's notifications).
    backend_pid: Option<i32>,
    /// How many statements ran on it (a transaction tells from it whether any ran that
    /// its commit must flush).
    pub(crate) ran: u64,
}

impl Conn {
    /// Runs `sql`, whose first column is the server's clock ([`server_clock_us`]), timing
    /// its round trip on this host's clock (the statement prepared first, so that only
    /// the execution is timed); `None` if it returned no row.
    fn query_clock(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<ClockOffset>, postgres::Error> {
        self.ran += 1;
        let statement = self.prepared(sql)?;
        let before = crate::now_us();
        let row = self.client.query_opt(&statement, params)?;
        let after = crate::now_us();
        row.map(|row| {
            let server: i64 = row.try_get(0)?;
            Ok(ClockOffset::from_round_trip(before, server, after, SERVER))
        })
        .transpose()
    }

    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        self.ran += 1;
        let statement = self.prepared(sql)?;
        self.client.query(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        self.ran += 1;
        let statement = self.prepared(sql)?;
        self.client.query_opt(&statement, params)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        self.ran += 1;
        let statement = self.prepared(sql)?;
        self.client.query_one(&statement, params)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        self.ran += 1;
        let statement = self.prepared(sql)?;
        self.client.execute(&statement, params)
    }

    /// Statements with no parameters and no result (`BEGIN`, `COMMIT`, a migration).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.ran += 1;
        self.client.batch_execute(sql)
    }
}

/// A connection to a PostgreSQL database: the PostgreSQL driver. Reads take `&self`
/// (the [`Driver`] trait's), so the connection sits in a `RefCell`; nothing holds it
/// across a call.
pub struct PostgresDriver {
    conn: RefCell<Conn>,
    target: Target,
    database: Database,
    role: Role,
    durable: bool,
    /// When to trim task logs (see [`crate::log_trim`]).
    log_trim: crate::log_trim::LogTrim,
    /// The server's clock as the last worker registration or heartbeat read it along
    /// with its write, until [`Driver::clock_offset`] takes it.
    clock: Cell<Option<ClockOffset>>,
}

impl std::fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDriver")
            .field("database", &self.database.to_string())
            .finish_non_exhaustive()
    }
}

/// Reads a `postgres://` URL into the client's settings and its TLS ([`Target`]), with
/// castor's defaults where the URL says nothing: connect, TCP user and keepalive
/// timeouts, and for `role` an application name (shown in `pg_stat_activity`).
pub(crate) fn target(
    database: &Database,
    url: &str,
    role: Option<Role>,
) -> Result<Target, StoreError> {
    let mut target = Target::parse(url).map_err(|e| match e {
        ParseError::Tls(problem) => StoreError::Tls {
            database: database.clone(),
            problem,
        },
        ParseError::Client(e) => StoreError::Connect {
            database: database.clone(),
            detail: format!(
                "the URL cannot be read ({e}); write it as \
                 postgres://user:password@host:5432/dbname"
            ),
        },
    })?;
    let config = &mut target.config;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_idle() == KEEPALIVES_IDLE_DEFAULT {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if let Some(role) = role
        && config.get_application_name().is_none()
    {
        config.application_name(match role {
            Role::Worker => "castor worker",
            Role::App => "castor app",
            Role::Inspect => "castor inspect",
        });
    }
    Ok(target)
}

/// Opens a connection of the app's own to the database `database` names, as castor's
/// driver connects (TLS as the URL's `sslmode` and `sslrootcert` say, castor's connect
/// and keepalive timeouts), with no session setting of castor's: for `delay_in` in the
/// app's own transactions.
///
/// # Errors
/// [`StoreError::Unsupported`] if `database` is not a PostgreSQL URL;
/// [`StoreError::Tls`] for a TLS setting that cannot be used, a server refusing TLS or a
/// certificate that does not verify; [`StoreError::Connect`] otherwise.
pub fn connect(database: &Database) -> Result<Client, StoreError> {
    let Database::Postgres(url) = database else {
        return Err(StoreError::Unsupported {
            given: database.to_string(),
            reason: "a PostgreSQL connection needs a postgres:// URL".to_owned(),
        });
    };
    let target = target(database, url, None)?;
    target
        .connect()
        .map_err(|e| connect_error(&target, database, &e))
}

impl PostgresDriver {
    /// Connects to the database `url` names. The database itself must exist (castor
    /// creates its tables, not databases); its schema is checked and migrated by
    /// [`crate::open`].
    ///
    /// # Errors
    /// [`StoreError::Connect`]: the URL cannot be read, the server cannot be reached,
    /// refuses the login, or has no such database.
    pub fn open(url: &str, options: &OpenOptions) -> Result<PostgresDriver, StoreError> {
        let database = Database::Postgres(url.to_owned());
        let target = target(&database, url, Some(options.role))?;
        let mut driver = PostgresDriver {
            conn: RefCell::new(connect_conn(
                &target,
                options.role,
                options.durable,
                &database,
            )?),
            target,
            database,
            role: options.role,
            durable: options.durable,
            log_trim: crate::log_trim::LogTrim::default(),
            clock: Cell::new(None),
        };
        // The first statement: a server that answers the login but cannot run queries
        // fails here, as connecting.
        driver
            .conn
            .get_mut()
            .batch("SELECT 1")
            .map_err(|e| StoreError::Connect {
                database: driver.database.clone(),
                detail: reason(&e),
            })?;
        Ok(driver)
    }

    /// Maps an error met during `operation` to a [`StoreError`] (a connection made again
    /// may fail for TLS).
    pub(crate) fn error(&self, operation: &'static str, e: postgres::Error) -> StoreError {
        match self.target.problem(&e) {
            Some(problem) => StoreError::Tls {
                database: self.database.clone(),
                problem,
            },
            None => classify(&self.database, operation, &e),
        }
    }

    /// The connection, connected again first if the server dropped it (a restart): the
    /// statements that failed with it are not retried here, but the next ones work.
    fn conn(&self) -> Result<RefMut<'_, Conn>, postgres::Error> {
        let mut conn = self.conn.borrow_mut();
        if conn.lost || conn.client.is_closed() {
            *conn = connect_client(&self.target, self.role, self.durable)?;
        }
        Ok(conn)
    }

    /// Runs `f` on the connection, naming `operation` in its error. A read that meets a
    /// connection the server dropped (a restart since the last statement) runs once more
    /// on a new one: reads change nothing, so running one twice is harmless.
    fn read<T>(
        &self,
        operation: &'static str,
        f: impl Fn(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.conn().and_then(|mut conn| {
                let result = f(&mut conn);
                if let Err(e) = &result {
                    conn.lost = lost(e);
                }
                result
            });
            match result {
                Err(e) if tries < 2 && lost(&e) => {}
                result => return result.map_err(|e| self.error(operation, e)),
            }
        }
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        self.read("read the schema version", |conn| {
            let recorded: bool = conn.query_one(RECORDED_SQL, &[])?.try_get(0)?;
            if !recorded {
                return Ok(0);
            }
            let version: Option<i32> = conn
                .query_one("SELECT max(version) FROM castor_migrations", &[])?
                .try_get(0)?;
            Ok(version.map_or(0, |v| u32::try_from(v).unwrap_or(0)))
        })
    }

    fn applied(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        if self.schema_version()? == 0 {
            return Ok(Vec::new());
        }
        self.read("read the migrations", |conn| {
            conn.query(
                "SELECT version, name, applied_at FROM castor_migrations ORDER BY version",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(AppliedMigration {
                    version: u32::try_from(row.try_get::<_, i32>(0)?).unwrap_or(0),
                    name: row.try_get(1)?,
                    applied_at: row.try_get(2)?,
                })
            })
            .collect()
        })
    }

    fn apply(&mut self, migration: &Migration, now: i64) -> Result<bool, StoreError> {
        const OPERATION: &str = "apply a migration";
        let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
        let mut conn = self.conn().map_err(|e| self.error(OPERATION, e))?;
        let applied = (|| {
            let mut tx = conn.client.transaction()?;
            // A migration may take long on a large table, and the lock waits for another
            // process's: no statement timeout here.
            tx.batch_execute("SET LOCAL statement_timeout = 0")?;
            // One process migrates at a time; the others wait here, then find it done.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let recorded: bool = tx.query_one(RECORDED_SQL, &[])?.try_get(0)?;
            if recorded {
                let newest: Option<i32> = tx
                    .query_one("SELECT max(version) FROM castor_migrations", &[])?
                    .try_get(0)?;
                if newest.is_some_and(|v| v >= version) {
                    return Ok(false);
                }
            }
            tx.batch_execute(migration.sql)?;
            tx.execute(
                "INSERT INTO castor_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&version, &migration.name, &now],
            )?;
            tx.commit()?;
            Ok(true)
        })();
        drop(conn);
        applied.map_err(|e| self.error(OPERATION, e))
    }

    /// The tables and indexes of migrations up to `version` (as their `CREATE`
    /// statements name them).
    fn schema_objects(version: u32) -> Vec<&'static str> {
        MIGRATIONS
            .iter()
            .filter(|m| m.version <= version)
            .flat_map(|m| m.sql.lines())
            .filter_map(|line| {
                let rest = line.trim_start().strip_prefix("CREATE ")?;
                let rest = rest.strip_prefix("UNIQUE ").unwrap_or(rest);
                let rest = rest
                    .strip_prefix("TABLE ")
                    .or_else(|| rest.strip_prefix("INDEX "))?;
                rest.split([' ', '(']).next()
            })
            // Migration 6 dropped and made the unique index again: named once.
            .fold(Vec::new(), |mut names, name| {
                if !names.contains(&name) {
                    names.push(name);
                }
                names
            })
    }

    fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError> {
        let version = self.schema_version()?;
        let expected: Vec<String> = PostgresDriver::schema_objects(version)
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.read("read the schema", |conn| {
            conn.query(
                "SELECT name FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NULL",
                &[&expected],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
        })
    }

    /// Reads one task by id; `None` if no row has that id.
    ///
    /// # Errors
    /// Fails if the database cannot be read or the row is invalid.
    pub fn snapshot(&self, id: Uuid) -> Result<Option<TaskSnapshot>, StoreError> {
        let row = self.read("read a task", |conn| {
            conn.query_opt(rows::SNAPSHOT_SQL, &[&id])?
                .map(|row| rows::task_row(&row))
                .transpose()
        })?;
        row.map(|row| row.into_snapshot(&self.database, Ok))
            .transpose()
    }

    /// Reads one task's state.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, StoreError> {
        let state: Option<String> = self.read("read a task's state", |conn| {
            conn.query_opt("SELECT state FROM castor_tasks WHERE id = $1", &[&id])?
                .map(|row| row.try_get(0))
                .transpose()
        })?;
        state
            .map(|s| {
                s.parse::<TaskState>().map_err(|e| StoreError::InvalidRow {
                    database: self.database.clone(),
                    seq: 0,
                    column: "state",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// The earliest time a `scheduled` or `retryable` task of `manager` becomes due.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn next_due(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        self.read("find the next due task", |conn| {
            conn.query_one(
                "SELECT min(scheduled_at) FROM castor_tasks \
                 WHERE manager = $1 AND state IN ('scheduled', 'retryable')",
                &[&manager],
            )?
            .try_get(0)
        })
    }

    /// A task's log lines, oldest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn logs(&self, id: Uuid) -> Result<Vec<TaskLog>, StoreError> {
        self.read("read a task's log", |conn| {
            conn.query(
                "SELECT l.at, l.attempt, l.level, l.line FROM castor_logs l \
                 JOIN castor_tasks t ON t.seq = l.task_seq WHERE t.id = $1 ORDER BY l.id",
                &[&id],
            )?
            .iter()
            .map(|row| {
                let level: String = row.try_get(2)?;
                Ok(TaskLog {
                    at: row.try_get(0)?,
                    attempt: rows::u32_from(row.try_get(1)?),
                    level: LogLevel::from_stored(&level),
                    line: row.try_get(3)?,
                })
            })
            .collect()
        })
    }

    /// How many tasks of `manager` are not finished yet, counted from the partial indexes.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn unfinished(&self, manager: &str) -> Result<u64, StoreError> {
        self.read("count unfinished tasks", |conn| {
            let n: i64 = conn
                .query_one(
                    "SELECT (SELECT count(*) FROM castor_tasks \
                             WHERE state = 'available' AND manager = $1) \
                          + (SELECT count(*) FROM castor_tasks \
                             WHERE state = 'running' AND manager = $1) \
                          + (SELECT count(*) FROM castor_tasks \
                             WHERE state IN ('scheduled', 'retryable') AND manager = $1) \
                          + (SELECT count(*) FROM castor_tasks \
                             WHERE state = 'waiting' AND manager = $1)",
                    &[&manager],
                )?
                .try_get(0)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

/// Opens a connection and sets it up for `role`.
fn connect_conn(
    target: &Target,
    role: Role,
    durable: bool,
    database: &Database,
) -> Result<Conn, StoreError> {
    connect_client(target, role, durable).map_err(|e| connect_error(target, database, &e))
}

/// A failure to connect in words: TLS's, or the server's with what to do.
fn connect_error(target: &Target, database: &Database, e: &postgres::Error) -> StoreError {
    if let Some(problem) = target.problem(e) {
        return StoreError::Tls {
            database: database.clone(),
            problem,
        };
    }
    let mut detail = reason(e);
    if e.code() == Some(&postgres::error::SqlState::INVALID_CATALOG_NAME) {
        detail.push_str(
            "; castor creates its tables but not the database: create it first \
             (`createdb`, or CREATE DATABASE)",
        );
    }
    StoreError::Connect {
        database: database.clone(),
        detail,
    }
}

fn connect_client(target: &Target, role: Role, durable: bool) -> Result<Conn, postgres::Error> {
    let config = &target.config;
    let mut client = target.connect()?;
    // Durable: every commit waits for the server's flush, whatever the server's default.
    // Otherwise the server's own setting stands.
    // Every statement castor runs is prepared once and written for its indexes (states
    // as literals, so the partial indexes apply): planning it again at each execution,
    // as the server does for a statement with an array parameter such as the claim's
    // task names, costs more than running it (0.1-0.2 ms against 0.03 ms for a claim),
    // and the custom plan can even choose a worse one on a small table.
    let mut setup = String::from("SET plan_cache_mode = force_generic_plan;");
    if durable {
        setup.push_str("SET synchronous_commit = on;");
    }
    if role == Role::Inspect {
        setup.push_str("SET default_transaction_read_only = on;");
    } else if !config
        .get_options()
        .is_some_and(|o| o.contains("statement_timeout"))
    {
        setup.push_str(&format!(
            "SET statement_timeout = {};",
            STATEMENT_TIMEOUT.as_millis()
        ));
    }
    client.batch_execute(&setup)?;
    let backend_pid = match role {
        Role::Worker => Some(
            client
                .query_one("SELECT pg_backend_pid()", &[])?
                .try_get(0)?,
        ),
        Role::App | Role::Inspect => None,
    };
    Ok(Conn {
        client,
        statements: HashMap::new(),
        lost: false,
        backend_pid,
        ran: 0,
    })
}

/// True if `e` means the connection is gone (closed, a network error, or the server
/// ending it: a shutdown, a restart, an administrator's terminate), so the statement may
/// work on a new one. A failure to connect is not: connecting again at once fails too.
pub(crate) fn lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 57P: operator intervention (admin_shutdown, crash_shutdown, ...).
        return code.code().starts_with("57P");
    }
    // An I/O error on an established connection (the client's own kinds are not public:
    // its message names them).
    e.as_db_error().is_none()
        && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        && !e.to_string().starts_with("error connecting")
}

/// The server's reason for `e`, said once: its message (with its detail and hint, if
/// any), or the client's description of a connection problem.
pub(crate) fn reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_owned();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; {hint}"));
        }
        return text;
    }
    if e.is_closed() {
        return "the connection to the server was closed (the server stopped or restarted, \
                or the network dropped it)"
            .to_owned();
    }
    // The client's message names the step ("error connecting to server"); its source, the
    // cause (the operating system's or the protocol's reason).
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Maps PostgreSQL's errors to the errors a user can act on.
pub(crate) fn classify(
    database: &Database,
    operation: &'static str,
    e: &postgres::Error,
) -> StoreError {
    use postgres::error::SqlState;
    let database = database.clone();
    match e.code() {
        Some(code) if *code == SqlState::DISK_FULL => StoreError::DiskFull {
            database,
            operation,
        },
        Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => StoreError::ReadOnly {
            database,
            detail: reason(e),
        },
        // Two transactions waited on each other and the server cancelled this one, or a
        // lock could not be had: trying the whole transaction again is the cure.
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::Busy {
                database,
                operation,
                waited: DEADLOCK_TIMEOUT,
            }
        }
        _ if unreachable(e) => StoreError::Query {
            database,
            operation,
            detail: format!(
                "the server cannot be reached ({}); check that it is running and reachable \
                 (castor connects again at its next statement)",
                reason(e)
            ),
        },
        _ => StoreError::Query {
            database,
            operation,
            detail: reason(e),
        },
    }
}

/// True if `e` is a failure to connect (the server is down, restarting, or out of reach).
fn unreachable(e: &postgres::Error) -> bool {
    let starting = e
        .code()
        .is_some_and(|c| *c == postgres::error::SqlState::CANNOT_CONNECT_NOW);
    starting || (e.as_db_error().is_none() && e.to_string().starts_with("error connecting"))
}

/// PostgreSQL's default `deadlock_timeout`: how long a transaction waited before the
/// server found it deadlocked.
const DEADLOCK_TIMEOUT: Duration = Duration::from_secs(1);

impl Driver for PostgresDriver {
    fn database(&self) -> &Database {
        &self.database
    }

    fn begin(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        Ok(Box::new(PostgresTx::begin(self)?))
    }

    fn change_counter(&self) -> Result<Option<i64>, StoreError> {
        // Nothing cheap tells another connection's commit from this one's here; the
        // notifier does, by the session (`session`).
        Ok(None)
    }

    fn session(&self) -> Option<i64> {
        let conn = self.conn.try_borrow().ok()?;
        conn.backend_pid.map(i64::from)
    }

    fn clock_offset(&self) -> Result<Option<ClockOffset>, StoreError> {
        if let Some(reading) = self.clock.take() {
            return Ok(Some(reading));
        }
        self.read("read the server's clock", |conn| {
            conn.query_clock(CLOCK_SQL, &[])
        })
    }

    fn snapshot(&self, id: Uuid) -> Result<Option<TaskSnapshot>, StoreError> {
        PostgresDriver::snapshot(self, id)
    }

    fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, StoreError> {
        PostgresDriver::state_of(self, id)
    }

    fn args_of(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        PostgresDriver::args_of(self, id)
    }

    fn logs(&self, id: Uuid) -> Result<Vec<TaskLog>, StoreError> {
        PostgresDriver::logs(self, id)
    }

    fn next_due(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        PostgresDriver::next_due(self, manager)
    }

    fn unfinished(&self, manager: &str) -> Result<u64, StoreError> {
        PostgresDriver::unfinished(self, manager)
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<TaskSummary>, StoreError> {
        PostgresDriver::list(self, filter)
    }

    fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        PostgresDriver::counts(self)
    }

    fn oldest_available(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        PostgresDriver::oldest_available(self, manager)
    }

    fn completed_since(&self, since: i64) -> Result<u64, StoreError> {
        PostgresDriver::completed_since(self, since)
    }

    fn workers(&self, live_only: bool) -> Result<Vec<WorkerRow>, StoreError> {
        PostgresDriver::workers(self, live_only)
    }

    fn parents(&self, id: Uuid) -> Result<Vec<crate::ParentInfo>, StoreError> {
        PostgresDriver::parents(self, id)
    }

    fn waiting_on_parents(
        &self,
        manager: &str,
        limit: usize,
    ) -> Result<Vec<crate::AfterParents>, StoreError> {
        PostgresDriver::waiting_on_parents(self, manager, limit)
    }

    fn waiting(&self, manager: &str, limit: usize) -> Result<Vec<Waiting>, StoreError> {
        PostgresDriver::waiting(self, manager, limit)
    }

    fn mismatched(&self, filter: &crate::TaskFilter) -> Result<Vec<crate::Mismatched>, StoreError> {
        PostgresDriver::mismatched(self, filter)
    }

    fn available_signatures(&self) -> Result<Vec<crate::SignatureCount>, StoreError> {
        PostgresDriver::available_signatures(self)
    }

    fn next_schedule_due(&self, filter: &ScheduleFilter) -> Result<Option<i64>, StoreError> {
        PostgresDriver::next_schedule_due(self, filter)
    }

    fn limits(&self, manager: Option<&str>) -> Result<Vec<LimitRow>, StoreError> {
        self.read_limits(manager)
    }

    fn limit_usage(
        &self,
        manager: &str,
        task: &str,
        rate: Option<Rate>,
        now: i64,
    ) -> Result<LimitUsage, StoreError> {
        self.read_limit_usage(manager, task, rate, now)
    }

    fn schedules(&self, manager: Option<&str>) -> Result<Vec<ScheduleInfo>, StoreError> {
        PostgresDriver::schedules(self, manager)
    }

    fn schedule(&self, id: i64) -> Result<Option<ScheduleInfo>, StoreError> {
        PostgresDriver::schedule(self, id)
    }

    fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StoreError> {
        PostgresDriver::schedule_runs(self, id)
    }

    fn size(&self) -> Result<u64, StoreError> {
        PostgresDriver::size(self)
    }

    fn quick_check(&self, _budget: Option<Duration>) -> Result<CheckReach, StoreError> {
        PostgresDriver::check(self).map(|()| CheckReach::Whole)
    }

    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        PostgresDriver::check(self).map(|()| Vec::new())
    }

    fn integrity_check_name(&self) -> &'static str {
        "a read of every castor table"
    }

    fn missing_schema_objects(&self) -> Result<Vec<String>, StoreError> {
        PostgresDriver::missing_schema_objects(self)
    }

    fn free_bytes(&self) -> Option<u64> {
        // The server's disk is not this process's to see.
        None
    }

    fn reclaimable_bytes(&self) -> u64 {
        0
    }

    fn reclaim_space(&mut self) -> Result<bool, StoreError> {
        // Autovacuum gives dead rows' space back; there is nothing for a client to do.
        Ok(true)
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        PostgresDriver::schema_version(self)
    }

    fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.applied()
    }

    fn apply_migration(&mut self, migration: &Migration, now: i64) -> Result<bool, StoreError> {
        self.apply(migration, now)
    }
}

#[cfg(test)]
mod tests;
