//! Managers: a named task set plus its database path ([`Manager`]), and a manager opened
//! against its database ([`Client`]), which is what an app dispatches to and joins through.
//! There is no global state: every dispatch names the client or context it goes through.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use uuid::Uuid;

use castor_store::{Database, LogLevel, Notifier, OpenOptions, Store, StoreError};

use crate::abi::{DispatchOptionsAbi, ManagerDecl};
use crate::backend::{Backend, View};
use crate::error::{DispatchError, StatusError};
use crate::handle::TaskHandle;
use crate::task::{NewTaskFromAbi, TaskContext, TaskSpec};

/// A declared manager is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Two tasks share a name.
    #[error("manager `{manager}` declares task `{task}` twice")]
    DuplicateTask {
        /// The manager's name.
        manager: String,
        /// The repeated task name.
        task: String,
    },
    /// The manager's name cannot be used after the colon of `castor LIB:NAME`.
    #[error(
        "invalid manager name {name:?}: use letters, digits and underscores, starting with a letter or underscore"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A periodic task's declaration is invalid.
    #[error("manager `{manager}`: periodic task `{name}`: {reason}")]
    InvalidPeriodic {
        /// The manager's name.
        manager: String,
        /// The periodic task's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// True if `name` can name a manager: `[A-Za-z_][A-Za-z0-9_]*`, like a Rust identifier.
pub fn is_valid_manager_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A named set of tasks and the database they go through: what `castor LIB:NAME` runs and
/// what an app opens to dispatch. Usually written with [`manager!`](crate::manager).
#[derive(Debug, Clone)]
pub struct Manager {
    name: String,
    database: Database,
    tasks: Vec<TaskSpec>,
    periodic: Vec<crate::schedule::PeriodicSpec>,
    options: OpenOptions,
}

impl Manager {
    /// A manager with no tasks yet. `database` is a [`Database`] setting: a SQLite file
    /// (`tasks.db`, relative to the working directory of whichever process opens it: the
    /// app, or the worker without `--db`) or `sqlite:///abs/path.db`.
    pub fn new(name: impl Into<String>, database: impl Into<Database>) -> Manager {
        Manager {
            name: name.into(),
            database: database.into(),
            tasks: Vec::new(),
            periodic: Vec::new(),
            options: OpenOptions::app(),
        }
    }

    /// Adds a task (its `SPEC`, as `#[task]` declares it).
    #[must_use]
    pub fn task(mut self, spec: TaskSpec) -> Manager {
        self.tasks.push(spec);
        self
    }

    /// Adds a periodic task (the generated `my_task::periodic(Periodic::every(..))`).
    #[must_use]
    pub fn periodic(mut self, spec: crate::schedule::PeriodicSpec) -> Manager {
        self.periodic.push(spec);
        self
    }

    /// The declared periodic tasks.
    pub fn periodic_tasks(&self) -> &[crate::schedule::PeriodicSpec] {
        &self.periodic
    }

    /// Uses another database (a test's temporary file, say): a path or a setting string.
    #[must_use]
    pub fn with_database(mut self, database: impl Into<Database>) -> Manager {
        self.database = database.into();
        self
    }

    /// Makes every acknowledged dispatch survive a power loss (`synchronous=FULL`), at the
    /// cost of an fsync per commit. Off by default: a crashed process never loses a commit
    /// either way; only a power loss can take the last few.
    #[must_use]
    pub fn durable(mut self, durable: bool) -> Manager {
        self.options.durable = durable;
        self
    }

    /// The manager's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database setting.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Opens without applying pending schema migrations: a database that needs one is
    /// refused with [`StoreError::NeedsMigration`] (for operators who run `castor migrate`
    /// themselves). Migrations are applied on open by default.
    #[must_use]
    pub fn without_migrations(mut self) -> Manager {
        self.options.migrate = false;
        self
    }

    /// The declared tasks.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    /// Checks the declaration: a valid name and unique task names.
    ///
    /// # Errors
    /// [`OpenError::InvalidName`] or [`OpenError::DuplicateTask`].
    pub fn validate(&self) -> Result<(), OpenError> {
        if !is_valid_manager_name(&self.name) {
            return Err(OpenError::InvalidName {
                name: self.name.clone(),
            });
        }
        let mut seen = HashSet::new();
        for spec in &self.tasks {
            if !seen.insert(spec.name) {
                return Err(OpenError::DuplicateTask {
                    manager: self.name.clone(),
                    task: spec.name.to_owned(),
                });
            }
        }
        let mut names = HashSet::new();
        for periodic in &self.periodic {
            let invalid = |reason: String| OpenError::InvalidPeriodic {
                manager: self.name.clone(),
                name: periodic.name.clone(),
                reason,
            };
            if !seen.contains(periodic.task) {
                return Err(invalid(format!(
                    "its task `{}` is not in the manager's tasks",
                    periodic.task
                )));
            }
            if !names.insert(periodic.name.as_str()) {
                return Err(invalid(
                    "two periodic tasks have this name; name them with .named(..)".into(),
                ));
            }
            if let Err(reason) = &periodic.cadence {
                return Err(invalid(reason.clone()));
            }
            if let Err(reason) = &periodic.args {
                return Err(invalid(reason.clone()));
            }
        }
        Ok(())
    }

    /// Opens the manager's database (creating it if needed, and applying pending schema
    /// migrations) for dispatching and joining. A SQLite file of up to 1 MiB is checked for
    /// damage first (a few milliseconds); a larger one only as far as statements read it.
    ///
    /// # Errors
    /// An invalid declaration, or a database that cannot be opened, is damaged, or has a
    /// schema newer than this build.
    pub fn open(&self) -> Result<Client, OpenError> {
        self.validate()?;
        let store = castor_store::open(&self.database, &self.options)?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                manager: self.name.clone(),
                tasks: self.tasks.iter().map(|t| t.name).collect(),
                database: self.database.clone(),
                store: Mutex::new(store),
                watcher: OnceLock::new(),
            }),
        })
    }

    pub(crate) fn to_decl(&self) -> Result<ManagerDecl, OpenError> {
        self.validate()?;
        let periodic = self
            .periodic
            .iter()
            .map(|p| {
                let (every_ms, cron) = match &p.cadence {
                    Ok(crate::schedule::Cadence::Every(d)) => (
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                        String::new(),
                    ),
                    Ok(crate::schedule::Cadence::Cron(c)) => (0, c.to_string()),
                    Err(_) => (0, String::new()),
                };
                crate::abi::PeriodicDecl {
                    task: p.task.into(),
                    name: p.name.as_str().into(),
                    every_ms,
                    cron: cron.into(),
                    args: p.args.clone().unwrap_or_default().into(),
                    skip_missed: p.missed == crate::schedule::Missed::Skip,
                }
            })
            .collect();
        Ok(ManagerDecl {
            name: self.name.as_str().into(),
            database: self.database.to_setting().into(),
            tasks: self.tasks.iter().map(|t| t.to_decl()).collect(),
            periodic,
        })
    }
}

/// A manager opened against its database: dispatch with `my_task::delay(&client, ..)`,
/// then `status`, `join` or `resolve` the handle. Cheap to clone; clones share one
/// connection and one change watcher. Dropping the last clone closes them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("manager", &self.inner.manager)
            .field("database", &self.inner.database)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The manager's name.
    pub fn manager(&self) -> &str {
        &self.inner.manager
    }

    /// The database setting.
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// A handle on an existing task by id (e.g. one another process dispatched), typed by
    /// the caller: prefer the generated `my_task::handle(&client, id)`, which picks `R`.
    pub fn handle<R>(&self, id: Uuid, task: &'static str) -> TaskHandle<R> {
        TaskHandle::attach(id, task, Arc::clone(&self.inner) as Arc<dyn Backend>)
    }

    /// Inserts a task with the manager's name through the app's own PostgreSQL client or
    /// transaction (the generated `my_task::delay_in`).
    #[cfg(feature = "postgres")]
    pub(crate) fn dispatch_in(
        &self,
        tx: &mut impl postgres::GenericClient,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, DispatchError> {
        let inner = &self.inner;
        inner.check_task(task)?;
        if !matches!(inner.database, Database::Postgres(_)) {
            return Err(DispatchError::NotPostgres {
                task: task.to_owned(),
                manager: inner.manager.clone(),
                database: inner.database.clone(),
            });
        }
        let new = options.new_task(&inner.manager, task, args);
        let enqueued =
            castor_store::postgres::enqueue_in(tx, &inner.database, &new, castor_store::now_us())?;
        Ok(enqueued.id)
    }

    /// Opens a PostgreSQL connection of the app's own to this manager's database, for
    /// `my_task::delay_in` inside the app's transactions: connected as castor's driver
    /// connects (TLS as the URL's `sslmode` and `sslrootcert` say, castor's connect and
    /// keepalive timeouts), with none of castor's session settings.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] if the manager's database is not a PostgreSQL URL;
    /// [`StoreError::Tls`] for TLS that fails (a server refusing it under `require`, a
    /// certificate that does not verify, an unreadable `sslrootcert`);
    /// [`StoreError::Connect`] for any other failure to connect.
    #[cfg(feature = "postgres")]
    pub fn connect_postgres(&self) -> Result<postgres::Client, StoreError> {
        castor_store::postgres::connect(&self.inner.database)
    }

    /// A task context outside any worker, for calling a task function directly in a test:
    /// dispatches go to this client's database, logs go to stderr.
    pub fn context(&self, task: &str) -> TaskContext {
        TaskContext::detached(Arc::clone(&self.inner) as Arc<dyn Backend>, task)
    }
}

impl sealed::Sealed for Client {}

impl Dispatch for Client {
    fn dispatcher(&self) -> Dispatcher {
        Dispatcher(Arc::clone(&self.inner) as Arc<dyn Backend>)
    }
}

struct ClientInner {
    manager: String,
    tasks: Vec<&'static str>,
    database: Database,
    store: Mutex<Store>,
    watcher: OnceLock<Result<Notifier, String>>,
}

impl ClientInner {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the connection half-way: every write
        // is a transaction that rolls back on drop.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn watcher(&self) -> Result<&Notifier, StatusError> {
        self.watcher
            .get_or_init(|| castor_store::notifier(&self.database).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| {
                StatusError::Store(StoreError::Watch {
                    database: self.database.clone(),
                    reason: reason.clone(),
                })
            })
    }

    fn check_task(&self, task: &str) -> Result<(), DispatchError> {
        if self.tasks.contains(&task) {
            return Ok(());
        }
        Err(DispatchError::UnknownTask {
            task: task.to_owned(),
            manager: self.manager.clone(),
            known: self.tasks.iter().map(|t| (*t).to_owned()).collect(),
        })
    }
}

impl Backend for ClientInner {
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, DispatchError> {
        self.check_task(task)?;
        let new = options.new_task(&self.manager, task, args);
        Ok(self.store().enqueue(&new)?.id)
    }

    fn dispatch_many(
        &self,
        task: &str,
        args: &[Vec<u8>],
        keys: &[Option<String>],
        options: &DispatchOptionsAbi,
    ) -> Result<Vec<Uuid>, DispatchError> {
        self.check_task(task)?;
        let tasks: Vec<castor_store::NewTask<'_>> = args
            .iter()
            .enumerate()
            .map(|(i, args)| {
                let mut new = options.new_task(&self.manager, task, args);
                if let Some(key) = keys.get(i) {
                    new.concurrency_key = key.as_deref();
                }
                new
            })
            .collect();
        Ok(self.store().enqueue_many(&tasks)?)
    }

    fn dispatch_after(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
        parents: &[(Uuid, Option<&'static str>)],
        fan_in: bool,
    ) -> Result<Uuid, DispatchError> {
        self.check_task(task)?;
        let new = options.new_task(&self.manager, task, args);
        let parents: Vec<castor_store::ParentRef<'_>> = parents
            .iter()
            .map(|&(id, result_fingerprint)| castor_store::ParentRef {
                id,
                result_fingerprint,
            })
            .collect();
        let after = castor_store::After {
            parents: &parents,
            fan_in,
        };
        let enqueued = self
            .store()
            .write(|tx| tx.enqueue_after(&new, &after, castor_store::now_us()))?;
        Ok(enqueued.id)
    }

    fn view(&self, id: Uuid) -> Result<Option<View>, StatusError> {
        let snapshot = self.store().snapshot(id)?;
        Ok(snapshot.map(|s| View {
            state: s.state,
            task: s.task,
            attempt: s.attempt,
            result: s.result,
            errors: s.errors,
            progress: s.progress,
            result_fingerprint: s.result_fingerprint,
        }))
    }

    fn create_schedule(
        &self,
        task: &str,
        args: &[u8],
        schedule: &crate::schedule::ResolvedSchedule,
    ) -> Result<i64, DispatchError> {
        self.check_task(task)?;
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let o = &schedule.options;
        let cadence = crate::schedule::Cadence::Every(std::time::Duration::from_millis(
            u64::try_from(schedule.every_ms).unwrap_or(1),
        ));
        let new = castor_store::NewSchedule {
            manager: &self.manager,
            task,
            name: None,
            args,
            cadence: &cadence,
            times: schedule.times,
            until: schedule.until_us,
            first_run_at: schedule.first_run_us,
            missed: schedule.missed,
            priority: o.priority,
            max_attempts: o.max_attempts,
            backoff_base_ms: ms(o.backoff_base_ms),
            backoff_cap_ms: ms(o.backoff_cap_ms),
            timeout_ms: o.timeout_ms.into_option().map(ms),
            args_fingerprint: Some(o.args_fingerprint.as_str()).filter(|fp| !fp.is_empty()),
        };
        let now = castor_store::now_us();
        Ok(self.store().write(|tx| tx.create_schedule(&new, now))?)
    }

    fn schedule(&self, id: i64) -> Result<crate::schedule::ScheduleInfo, StatusError> {
        self.store()
            .schedule(id)?
            .ok_or(StatusError::NoSchedule { id })
    }

    fn schedule_runs(&self, id: i64) -> Result<Vec<Uuid>, StatusError> {
        Ok(self.store().schedule_runs(id)?)
    }

    fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<(), StatusError> {
        let found = self
            .store()
            .write(|tx| tx.set_schedule_paused(id, paused))?;
        if found {
            Ok(())
        } else {
            Err(StatusError::NoSchedule { id })
        }
    }

    fn remove_schedule(&self, id: i64) -> Result<(), StatusError> {
        let found = self.store().write(|tx| tx.remove_schedule(id))?;
        if found {
            Ok(())
        } else {
            Err(StatusError::NoSchedule { id })
        }
    }

    fn cancel(&self, id: Uuid) -> Result<castor_store::CancelOutcome, StatusError> {
        let now = castor_store::now_us();
        self.store()
            .write(|tx| tx.cancel(id, now))?
            .ok_or(StatusError::NotFound { id })
    }

    fn logs(&self, id: Uuid) -> Result<Vec<castor_store::TaskLog>, StatusError> {
        Ok(self.store().logs(id)?)
    }

    fn generation(&self) -> Result<u64, StatusError> {
        Ok(self.watcher()?.generation())
    }

    fn wait_past(&self, since: u64, deadline: Instant) -> u64 {
        match self.watcher() {
            Ok(watcher) => watcher.wait_past(since, deadline),
            Err(_) => {
                // No watcher: fall back to a short sleep so callers poll.
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(Duration::from_millis(5)));
                since.wrapping_add(1)
            }
        }
    }

    fn wake_on_change(&self, since: u64, waker: &Waker) {
        match self.watcher() {
            Ok(watcher) => watcher.wake_on_change(since, waker),
            Err(_) => waker.wake_by_ref(),
        }
    }

    fn log(&self, id: Uuid, level: LogLevel, line: &str) {
        eprintln!("[{} {id}] {}: {line}", self.manager, level.as_str());
    }

    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str) {
        eprintln!("[{} {id}] progress {done}/{total} {message}", self.manager);
    }
}

pub(crate) mod sealed {
    /// Only castor-abi's types can be dispatched through.
    pub trait Sealed {}
}

/// Something tasks can be dispatched through: a [`Client`] in an app, or the
/// [`TaskContext`] of a running task (which dispatches through the worker).
pub trait Dispatch: sealed::Sealed {
    #[doc(hidden)]
    fn dispatcher(&self) -> Dispatcher;
}

/// The connection a dispatch goes through (opaque).
#[doc(hidden)]
pub struct Dispatcher(pub(crate) Arc<dyn Backend>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_names_are_identifiers() {
        for ok in ["manager", "_m", "reports2", "A_b"] {
            assert!(is_valid_manager_name(ok), "{ok}");
        }
        for bad in ["", "2x", "my-manager", "a:b", "a b", "é"] {
            assert!(!is_valid_manager_name(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod periodic_tests {
    use std::time::Duration;

    use crate::Periodic;

    #[crate::task(thread)]
    fn report(kind: String) -> String {
        kind
    }

    #[crate::task(thread)]
    fn tick() {}

    fn check(manager: crate::Manager) -> String {
        manager.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn periodic_declarations_are_checked() {
        let base = || {
            crate::Manager::new("m", "x.db")
                .task(report::SPEC)
                .task(tick::SPEC)
        };
        assert!(
            base()
                .periodic(tick::periodic(Periodic::every(Duration::from_secs(1))))
                .periodic(report::periodic(
                    Periodic::cron("@daily").with(("d".into(),))
                ))
                .validate()
                .is_ok()
        );
        let bad_cron = check(base().periodic(tick::periodic(Periodic::cron("99 * * * *"))));
        assert!(bad_cron.contains("minute"), "{bad_cron}");
        let no_args = check(base().periodic(report::periodic(Periodic::cron("@daily"))));
        assert!(no_args.contains("takes arguments"), "{no_args}");
        let twice = check(
            base()
                .periodic(tick::periodic(Periodic::every(Duration::from_secs(1))))
                .periodic(tick::periodic(Periodic::every(Duration::from_secs(2)))),
        );
        assert!(twice.contains(".named"), "{twice}");
        let undeclared = check(
            crate::Manager::new("m", "x.db")
                .task(report::SPEC)
                .periodic(tick::periodic(Periodic::every(Duration::from_secs(1)))),
        );
        assert!(
            undeclared.contains("not in the manager's tasks"),
            "{undeclared}"
        );
        let zero = check(base().periodic(tick::periodic(Periodic::every(Duration::ZERO))));
        assert!(zero.contains("longer than zero"), "{zero}");
    }
}
