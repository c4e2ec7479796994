//! The worker: one coordinator thread that owns the write connection and loops
//! claim -> execute -> complete ([`coordinator`]), a rayon pool that runs thread tasks
//! ([`executor`]), and a pool of warm child processes that run process tasks ([`child`]).
//!
//! Each turn of the loop is one `IMMEDIATE` transaction that records every outcome that
//! arrived since the last turn, writes buffered logs and progress, stages due tasks and
//! claims as many new tasks as there is room for: a group commit, so the cost of a
//! commit is shared by every task in it. Between turns the coordinator sleeps on one
//! channel fed by the pools (outcomes), the change watcher (another connection committed),
//! the signal handler (stop) and its own timers (due tasks, timeouts, leases).

mod child;
mod clock;
mod completer;
mod context;
mod coordinator;
mod executor;
mod producer;
mod pruner;
mod recovery;
mod report;
mod rescuer;
mod services;
mod stager;
mod turn;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use abi_stable::std_types::RStr;
use castor_abi::Uuid;
use castor_abi::abi::{AttachFn, HostServices, ManagerDecl, RunFn, TaskMode};
use castor_abi::schedule::{Cadence, Missed};
use castor_store::{
    CheckReach, Database, DeclaredLimits, LimitRow, Limits, NewSchedule, Notifier, OpenOptions,
    Rate, ScheduleFilter, Store, TaskFilter, WorkerRow, now_us,
};
use castor_store::{LogLevel, StoreError};
use crossbeam_channel::{Receiver, Sender};

use self::child::{PoolConfig, ProcessPool};
use self::context::Context;
use self::coordinator::{Coordinator, Pools};
use self::producer::PerMode;
pub use self::report::{
    Finished, PlainReporter, Reporter, WorkerEvent, clock_in_line, clock_skewed, describe,
    mismatched_line, reloading, stop_not_recorded, timestamp, write_failing, write_recovered,
};
use self::services::WorkerServices;

/// The longest the worker checks the database at start (`PRAGMA quick_check`): measured
/// here, a million tasks (140 MiB) take 0.4 to 0.6 s with the file in the page cache,
/// and the whole start took 1.4 s with the file read cold from disk; the time grows with
/// the file. A file the budget does not cover is checked in part, and the worker says so.
pub const START_CHECK_BUDGET: Duration = Duration::from_secs(2);

/// What the worker's check at start covered.
#[derive(Debug, Clone, Copy)]
pub struct StartCheck {
    /// The check reached the end of the file (and found no damage).
    pub whole: bool,
    /// How long it ran.
    pub took: Duration,
    /// The database's size.
    pub bytes: u64,
}

/// Everything a worker needs to run.
#[derive(Debug)]
pub struct WorkerConfig {
    /// The library the tasks come from (process-mode children load it too).
    pub library: PathBuf,
    /// The library as the operator named it, for the workers table: with `--reload` the
    /// worker loads a private copy of it (`library`).
    pub shown_library: PathBuf,
    /// The manager whose tasks to run.
    pub manager: ManagerDecl,
    /// The database.
    pub database: Database,
    /// Thread-pool size.
    pub threads: usize,
    /// How many process-mode children.
    pub processes: usize,
    /// A child is replaced after this many tasks.
    pub max_tasks_per_child: u32,
    /// Each child's address-space limit, in bytes.
    pub child_memory: Option<u64>,
    /// Between SIGTERM and SIGKILL for a child that must stop.
    pub kill_grace: Duration,
    /// How long running tasks may take to finish after a stop is requested.
    pub grace: Duration,
    /// How long a claim is valid without renewal.
    pub lease: Duration,
    /// `synchronous=FULL`.
    pub durable: bool,
    /// Apply pending schema migrations at open; without, a database that needs one is
    /// refused.
    pub migrate: bool,
    /// Finished tasks are deleted this long after they finish.
    pub retention: Duration,
    /// The library's `attach`, called once the worker's services exist.
    pub attach: AttachFn,
    /// What the library forwards to task logs (see [`crate::logging`]).
    pub log_filter: String,
    /// Serve Prometheus metrics here (`--metrics`; see [`crate::metrics`]).
    pub metrics: Option<crate::metrics::Endpoint>,
}

/// Messages to the coordinator.
#[derive(Debug)]
pub enum Event {
    /// An attempt ended (or never started, if the worker was stopping).
    Done(Done),
    /// A thread task with a timeout started running.
    Started {
        /// The task's row.
        seq: i64,
        /// When it started.
        at: std::time::Instant,
    },
    /// Another connection may have committed.
    DbChanged,
    /// A running task logged a line (or printed one, in a child).
    Log {
        /// The task.
        id: Uuid,
        /// Its level.
        level: LogLevel,
        /// The line.
        line: String,
        /// When (microseconds since the epoch).
        at: i64,
    },
    /// A running task reported progress.
    Progress {
        /// The task.
        id: Uuid,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What it is doing.
        message: String,
    },
    /// A child printed something while it ran no task.
    ChildOutput {
        /// The child's pid.
        pid: u32,
        /// The line.
        line: String,
    },
    /// Stop claiming and let running tasks finish within the grace period; a second
    /// request stops now.
    Shutdown,
    /// A checked new build of the library is waiting (`--reload`): stop as for
    /// [`Event::Shutdown`], and end the run with [`Summary::reload`] set, so the caller
    /// re-executes itself on it. A stop request during it makes it an ordinary stop.
    Reload {
        /// What was checked, for the report: `new build of libapp.so checked (4 tasks)`.
        build: String,
    },
    /// A task's services met an error no retry fixes (a damaged file): stop at once.
    Fatal(StoreError),
}

/// An attempt's end, from a pool.
#[derive(Debug)]
pub struct Done {
    seq: i64,
    /// Which attempt: a timed-out thread task may answer after its retry started.
    attempt: u32,
    outcome: Option<executor::Attempt>,
}

/// The flags an attempt shares with whoever runs it: the runner sets `started` (through
/// [`Flags::start`]), the coordinator sets `cancelled`.
#[derive(Debug, Default)]
struct Flags {
    started: AtomicBool,
    /// When the runner took the attempt; set just before `started`.
    started_at: std::sync::OnceLock<std::time::Instant>,
    cancelled: AtomicBool,
}

/// What a runner (a pool thread, or a child's slot) does with a claim when its turn
/// comes.
#[derive(Debug)]
enum Begin {
    /// Run it: it is marked started.
    Run,
    /// Do not run it; report this instead: the outcome of a claim cancelled while it
    /// waited for its slot, or `None` to give the claim back (the worker is stopping).
    Skip(Option<executor::Attempt>),
}

impl Flags {
    /// The runner's turn for this claim has come: a claim cancelled while it waited never
    /// runs (it is recorded cancelled, not given back: given back, it would run later);
    /// one the stopping worker no longer runs is given back; any other begins now.
    fn begin(&self, stopping: &AtomicBool) -> Begin {
        if self.cancelled.load(Ordering::SeqCst) {
            return Begin::Skip(Some(cancelled_before_start()));
        }
        if stopping.load(Ordering::SeqCst) {
            return Begin::Skip(None);
        }
        let _ = self.started_at.set(std::time::Instant::now());
        self.started.store(true, Ordering::SeqCst);
        Begin::Run
    }
}

/// The end of a claim cancelled before it started: the completer tells it from a
/// cancellation while running because the attempt never started.
fn cancelled_before_start() -> executor::Attempt {
    executor::Attempt {
        outcome: castor_store::AttemptOutcome::Cancelled,
        result: None,
        elapsed: Duration::ZERO,
    }
}

/// Whether a claimed attempt has begun running, and since when: a claim waits in its
/// pool's queue until a thread or a child slot is free. Cheap to clone; what
/// [`WorkerEvent::Started`] hands a reporter.
#[derive(Debug, Clone)]
pub struct AttemptStart(Arc<Flags>);

impl AttemptStart {
    /// When the attempt began running; `None` while it waits for a slot.
    pub fn started_at(&self) -> Option<std::time::Instant> {
        self.0.started_at.get().copied()
    }
}

/// Asks a running worker to stop. Cheap to clone; usable from a signal thread.
#[derive(Debug, Clone)]
pub struct Controller {
    events: Sender<Event>,
}

impl Controller {
    /// Stops claiming and lets running tasks finish within the grace period. Asked a
    /// second time, stops now: running tasks are recorded as abandoned and retried.
    pub fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown);
    }

    /// Stops as [`Controller::shutdown`] does (no new claims, running tasks finish within
    /// the grace period, the rest handed back, children retired), for a reload onto the
    /// new build `build` describes; the run's [`Summary::reload`] says so. Ignored once a
    /// stop is under way.
    pub fn reload(&self, build: String) {
        let _ = self.events.send(Event::Reload { build });
    }
}

/// How a worker run ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Attempts that succeeded.
    pub completed: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Attempts given up at shutdown.
    pub abandoned: u64,
    /// The run stopped for a reload ([`Controller::reload`]) that no stop request
    /// overrode: the caller re-executes itself on the new build.
    pub reload: bool,
}

/// A worker stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The rayon pool could not start.
    #[error("cannot start the thread pool: {0}")]
    Pool(String),
    /// The metrics endpoint's thread could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The database failed before the worker ran anything.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed in a way no retry fixes (damaged, read-only, replaced): the
    /// worker stopped at once and wrote nothing more.
    #[error("{error}; the worker stopped at once{}", left_behind(*claimed))]
    Stopped {
        /// What failed.
        error: StoreError,
        /// Tasks this worker had claimed, left `running` in the file.
        claimed: usize,
    },
}

fn left_behind(claimed: usize) -> String {
    match claimed {
        0 => ", with no task of its own left running".to_owned(),
        n => format!(
            ": the {n} task(s) it had claimed stay `running` in the file, and the first \
             worker on a sound file rescues them as failed attempts"
        ),
    }
}

/// A task of the library, as the worker runs it.
#[derive(Debug, Clone, Copy)]
struct TaskInfo {
    run: RunFn,
    mode: TaskMode,
    /// The library's fingerprint of the argument tuple: the claim takes tasks
    /// dispatched with it (or with none). Kept for the process's life, like the library.
    args_fingerprint: &'static str,
    /// The library's fingerprint of the result's type, recorded with each result.
    result_fingerprint: &'static str,
}

/// A worker ready to run.
pub struct Worker {
    id: String,
    hostname: String,
    host_id: String,
    config: WorkerConfig,
    store: Store,
    /// One claim per mode, so a backlog of one kind never starves the other.
    thread_claim: Option<TaskFilter>,
    process_claim: Option<TaskFilter>,
    tasks: HashMap<String, TaskInfo>,
    watcher: Arc<Notifier>,
    host: &'static HostServices,
    events: (Sender<Event>, Receiver<Event>),
    processes: Option<ProcessPool>,
    stopping: Arc<AtomicBool>,
    start_check: StartCheck,
}

impl Worker {
    /// Opens the worker's connections and change watcher.
    ///
    /// # Errors
    /// The database cannot be opened or watched.
    pub fn new(config: WorkerConfig) -> Result<Worker, StoreError> {
        let options = OpenOptions {
            durable: config.durable,
            migrate: config.migrate,
            ..OpenOptions::worker()
        };
        let store = castor_store::open(&config.database, &options)?;
        // Damage found now stops the worker before it runs anything; met mid-run, it
        // stops the worker with tasks half done.
        let started = Instant::now();
        let reach = store.quick_check(Some(START_CHECK_BUDGET))?;
        let start_check = StartCheck {
            whole: reach == CheckReach::Whole,
            took: started.elapsed(),
            bytes: store.size()?,
        };
        let service_store = castor_store::open(&config.database, &options)?;
        let watcher = Arc::new(castor_store::notifier(&config.database)?);
        let events = crossbeam_channel::unbounded();
        let manager = config.manager.name.to_string();
        let tasks: HashMap<String, TaskInfo> = config
            .manager
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    TaskInfo {
                        run: t.run,
                        mode: t.mode,
                        args_fingerprint: Box::leak(
                            t.args_fingerprint.as_str().to_owned().into_boxed_str(),
                        ),
                        result_fingerprint: Box::leak(
                            t.result_fingerprint.as_str().to_owned().into_boxed_str(),
                        ),
                    },
                )
            })
            .collect();
        let claim_for = |mode: TaskMode| {
            let mut names: Vec<String> = tasks
                .iter()
                .filter(|(_, info)| info.mode == mode)
                .map(|(name, _)| name.clone())
                .collect();
            names.sort();
            let args_fingerprints = names
                .iter()
                .map(|name| {
                    tasks
                        .get(name)
                        .map(|info| info.args_fingerprint.to_owned())
                        .filter(|fp| !fp.is_empty())
                })
                .collect();
            (!names.is_empty()).then(|| TaskFilter {
                manager: manager.clone(),
                tasks: names,
                args_fingerprints,
            })
        };
        let thread_claim = claim_for(TaskMode::Thread);
        let process_claim = claim_for(TaskMode::Process);
        let mut names: Vec<String> = tasks.keys().cloned().collect();
        names.sort();
        // The services live for the rest of the process: tasks may keep handles.
        let services: &'static WorkerServices = Box::leak(Box::new(WorkerServices::new(
            manager,
            names,
            service_store,
            Arc::clone(&watcher),
            events.0.clone(),
        )));
        let host = crate::host::host_services(services);
        // From now on the library's `log` and `tracing` records reach task logs (and,
        // outside tasks, the worker's log).
        (config.attach)(host, RStr::from(config.log_filter.as_str()));
        let stopping = Arc::new(AtomicBool::new(false));
        // Warm children before the worker says it started.
        let processes = process_claim.as_ref().map(|_| {
            ProcessPool::start(
                PoolConfig {
                    library: config.library.clone(),
                    manager: config.manager.name.to_string(),
                    processes: config.processes,
                    max_tasks_per_child: config.max_tasks_per_child,
                    memory_limit: config.child_memory,
                    kill_grace: config.kill_grace,
                    log_filter: config.log_filter.clone(),
                },
                services,
                events.0.clone(),
                Arc::clone(&stopping),
            )
        });
        Ok(Worker {
            id: Uuid::now_v7().simple().to_string(),
            hostname: hostname(),
            host_id: host_id(),
            config,
            store,
            thread_claim,
            process_claim,
            tasks,
            watcher,
            host,
            events,
            processes,
            stopping,
            start_check,
        })
    }

    /// What the check at start covered.
    pub fn start_check(&self) -> StartCheck {
        self.start_check
    }

    /// This worker run's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A handle to stop the worker from another thread.
    pub fn controller(&self) -> Controller {
        Controller {
            events: self.events.0.clone(),
        }
    }

    /// How many child processes this worker keeps (none if it has no process tasks).
    pub fn processes(&self) -> usize {
        if self.process_claim.is_some() {
            self.config.processes
        } else {
            0
        }
    }

    /// The schedules this worker runs: its manager's, of its task names and periodic names.
    fn schedule_filter(&self) -> ScheduleFilter {
        let mut tasks: Vec<String> = self.tasks.keys().cloned().collect();
        tasks.sort_unstable();
        ScheduleFilter {
            manager: self.config.manager.name.to_string(),
            tasks,
            periodic: self
                .config
                .manager
                .periodic
                .iter()
                .map(|p| p.name.to_string())
                .collect(),
        }
    }

    /// Runs until stopped.
    ///
    /// # Errors
    /// The thread pool cannot start, or the database fails in a way retrying cannot fix
    /// (it became corrupt or read-only).
    pub fn run(mut self, reporter: &mut dyn Reporter) -> Result<Summary, WorkerError> {
        let mut recorder = match self.config.metrics.take() {
            Some(endpoint) => Some(crate::metrics::start(endpoint, self.metrics_setup())?),
            None => None,
        };
        let mut tee;
        let reporter: &mut dyn Reporter = match &mut recorder {
            Some(recorder) => {
                tee = crate::metrics::Tee::new(recorder, reporter);
                &mut tee
            }
            None => reporter,
        };
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads)
            .thread_name(|i| format!("castor-thread-{i}"))
            .build()
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        let pending = Arc::new(AtomicBool::new(false));
        {
            let sender = self.events.0.clone();
            let pending = Arc::clone(&pending);
            self.watcher.subscribe(move || {
                // Coalesce: one wake-up message until the coordinator takes it.
                if !pending.swap(true, Ordering::AcqRel) {
                    let _ = sender.send(Event::DbChanged);
                }
            });
        }
        let events = self.events.1.clone();
        let mut coordinator = self.into_coordinator(threads);
        loop {
            coordinator.wait(&events, &pending, reporter);
            let turned = coordinator.turn(reporter);
            reporter.flush();
            if let Err(error) = turned
                && error.is_fatal()
            {
                let claimed = coordinator.abort();
                return Err(WorkerError::Stopped { error, claimed });
            }
            if coordinator.finished() {
                break;
            }
        }
        let summary = coordinator.finish(reporter)?;
        reporter.event(WorkerEvent::Stopped { summary: &summary });
        reporter.flush();
        Ok(summary)
    }

    /// What the metrics describe (see [`crate::metrics`]).
    fn metrics_setup(&self) -> crate::metrics::Setup {
        let mut tasks: Vec<(String, TaskMode)> = self
            .tasks
            .iter()
            .map(|(name, info)| (name.clone(), info.mode))
            .collect();
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        crate::metrics::Setup {
            worker_id: self.id.clone(),
            manager: self.config.manager.name.to_string(),
            database: self.config.database.clone(),
            tasks,
            threads: if self.thread_claim.is_some() {
                self.config.threads
            } else {
                0
            },
            processes: self.processes(),
        }
    }

    /// Hands the worker over to its coordinator: what it needs to know ([`Context`]), its
    /// connection, its first write ([`Registration`]) and its pools.
    fn into_coordinator(self, threads: rayon::ThreadPool) -> Coordinator {
        let slots = PerMode {
            thread: if self.thread_claim.is_some() {
                self.config.threads
            } else {
                0
            },
            process: self.processes(),
        };
        let schedules = self.schedule_filter();
        let mut task_names: Vec<String> = self.tasks.keys().cloned().collect();
        task_names.sort();
        // The signature of each task it runs, so `castor list` can tell the tasks no live
        // worker claims (dispatched with another one).
        let args_fingerprints = self
            .tasks
            .iter()
            .filter(|(_, info)| !info.args_fingerprint.is_empty())
            .map(|(name, info)| (name.clone(), info.args_fingerprint.to_owned()))
            .collect();
        let row = WorkerRow {
            id: self.id.clone(),
            manager: self.config.manager.name.to_string(),
            library: self.config.shown_library.display().to_string(),
            hostname: self.hostname.clone(),
            host_id: Some(self.host_id.clone()),
            pid: std::process::id(),
            threads: u32::try_from(self.config.threads).unwrap_or(u32::MAX),
            processes: u32::try_from(slots.process).unwrap_or(u32::MAX),
            tasks: task_names,
            args_fingerprints,
            // Stamped when written.
            started_at: 0,
            heartbeat_at: 0,
            stopped_at: None,
            completed: 0,
            failed: 0,
        };
        let Worker {
            id,
            hostname,
            host_id,
            config,
            store,
            thread_claim,
            process_claim,
            tasks,
            host,
            events: (events, _),
            processes,
            stopping,
            watcher,
            ..
        } = self;
        let ctx = Context {
            id,
            hostname,
            host_id,
            manager: config.manager.name.to_string(),
            lease: config.lease,
            grace: config.grace,
            retention: config.retention,
            slots,
            claims: PerMode {
                thread: thread_claim,
                process: process_claim,
            },
            schedules,
            tasks,
            host,
            events,
            watcher,
        };
        let registration = Registration {
            manager: config.manager,
            row,
        };
        let pools = Pools {
            threads,
            processes,
            stopping,
        };
        Coordinator::new(ctx, store, registration, pools)
    }
}

/// The worker's first write, made in its first turn (on a full disk it waits like any
/// write): the library's periodic schedules declared, then the worker's row.
struct Registration {
    /// The manager as the library declares it.
    manager: ManagerDecl,
    /// The worker's row, stamped with the time when written.
    row: WorkerRow,
}

impl Registration {
    /// Writes the registration; returns the manager's limit rows, read in the same
    /// transaction.
    fn write(&self, store: &mut Store) -> Result<Vec<LimitRow>, StoreError> {
        let now = now_us();
        self.declare_periodic(store, now)?;
        let row = WorkerRow {
            started_at: now,
            heartbeat_at: now,
            ..self.row.clone()
        };
        let manager = self.manager.name.as_str();
        let declared: Vec<DeclaredLimits<'_>> = self
            .manager
            .tasks
            .iter()
            .map(|t| DeclaredLimits {
                task: t.name.as_str(),
                limits: Limits {
                    concurrency: (t.concurrency > 0).then_some(t.concurrency),
                    rate: (t.rate_count > 0 && t.rate_per_ms > 0).then(|| Rate {
                        count: t.rate_count,
                        per: Duration::from_millis(t.rate_per_ms),
                    }),
                },
                key: Some(t.concurrency_key.as_str()).filter(|k| !k.is_empty()),
            })
            .collect();
        store.write(|tx| {
            tx.declare_limits(manager, &declared, now)?;
            tx.register_worker(&row)?;
            tx.limits_of(manager)
        })
    }

    /// Makes the database's periodic schedules match this library's declarations.
    fn declare_periodic(&self, store: &mut Store, now: i64) -> Result<(), StoreError> {
        let manager = self.manager.name.to_string();
        let mut schedules = Vec::new();
        for p in self.manager.periodic.iter() {
            let cadence = if p.every_ms > 0 {
                Cadence::Every(Duration::from_millis(p.every_ms))
            } else {
                match p.cron.as_str().parse() {
                    Ok(cron) => Cadence::Cron(cron),
                    Err(_) => continue,
                }
            };
            let Some(task) = self.manager.tasks.iter().find(|t| t.name == p.task) else {
                continue;
            };
            let first = cadence.next_after(now, now).unwrap_or(now);
            schedules.push((p, task, cadence, first));
        }
        store.write(|tx| {
            for (p, task, cadence, first) in &schedules {
                let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                tx.upsert_periodic(
                    &NewSchedule {
                        manager: &manager,
                        task: task.name.as_str(),
                        name: Some(p.name.as_str()),
                        args: p.args.as_slice(),
                        cadence,
                        times: None,
                        until: None,
                        first_run_at: *first,
                        missed: if p.skip_missed {
                            Missed::Skip
                        } else {
                            Missed::RunOnce
                        },
                        priority: 0,
                        max_attempts: task.max_attempts,
                        backoff_base_ms: ms(task.backoff_base_ms),
                        backoff_cap_ms: ms(task.backoff_cap_ms),
                        timeout_ms: (task.timeout_ms > 0).then(|| ms(task.timeout_ms)),
                        args_fingerprint: Some(task.args_fingerprint.as_str())
                            .filter(|fp| !fp.is_empty()),
                    },
                    now,
                )?;
            }
            Ok(())
        })
    }
}

/// Where this process's pid means something, for the workers table: the kernel's boot
/// id (random at every boot, so unique across machines) and the process-id namespace
/// (`pid:[4026531836]`; each container has its own). Two processes with the same host id
/// see each other's pids, so the rescuer may check whether a worker's process exists;
/// a hostname cannot tell that (containers, cloned machines). Without `/proc`, an id of
/// this run alone: other workers then go by heartbeat only.
pub(super) fn host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => format!("{}/{}", boot.trim(), namespace.display()),
        _ => format!("run-{}", castor_abi::Uuid::now_v7().simple()),
    }
}

/// The machine's name, for the workers table.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the live buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".to_owned()
    }
}
