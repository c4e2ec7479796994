//! The worker: one coordinator thread that owns the write connection and loops
//! claim -> execute -> complete, and a rayon pool that runs thread tasks.
//!
//! Each turn of the loop is one `IMMEDIATE` transaction that records every outcome that
//! arrived since the last turn, writes buffered logs and progress, stages due tasks and
//! claims as many new tasks as there is room for: a group commit, so the cost of a
//! commit is shared by every task in it. Between turns the coordinator sleeps on one
//! channel fed by the pool (outcomes), the change watcher (another connection committed),
//! the signal handler (stop) and its own timers (due tasks, timeouts, leases).

mod executor;
mod report;
mod services;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use castor_abi::abi::{HostServices, ManagerDecl, RunFn, TaskMode};
use castor_abi::state::{Transition, next_state};
use castor_abi::store::{
    AttemptError, ClaimQuery, Claimed, Finish, Store, StoreOptions, TaskFilter, Watcher, WorkerRow,
    duration_us, now_us,
};
use castor_abi::{AttemptOutcome, LogLevel, StoreError, TaskState, Uuid};
use crossbeam_channel::{Receiver, Sender};

pub use self::report::{Finished, PlainReporter, Reporter, WorkerEvent};
use self::services::WorkerServices;

/// Everything a worker needs to run.
#[derive(Debug)]
pub struct WorkerConfig {
    /// The library the tasks come from (for the record).
    pub library: PathBuf,
    /// The manager whose tasks to run.
    pub manager: ManagerDecl,
    /// The database.
    pub database: PathBuf,
    /// Thread-pool size.
    pub threads: usize,
    /// How long running tasks may take to finish after a stop is requested.
    pub grace: Duration,
    /// How long a claim is valid without renewal.
    pub lease: Duration,
    /// `synchronous=FULL`.
    pub durable: bool,
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
        at: Instant,
    },
    /// Another connection may have committed.
    DbChanged,
    /// A running task logged a line.
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
    /// Stop claiming and let running tasks finish within the grace period; a second
    /// request stops now.
    Shutdown,
}

/// An attempt's end, from the pool.
#[derive(Debug)]
pub struct Done {
    seq: i64,
    outcome: Option<executor::Attempt>,
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
}

/// A worker ready to run.
pub struct Worker {
    id: String,
    config: WorkerConfig,
    store: Store,
    query: ClaimQuery,
    tasks: HashMap<String, TaskInfo>,
    watcher: Arc<Watcher>,
    services: &'static HostServices,
    events: (Sender<Event>, Receiver<Event>),
}

#[derive(Debug, Clone, Copy)]
struct TaskInfo {
    run: RunFn,
    mode: TaskMode,
}

/// The attempt's shared flags: the pool sets `started`, the coordinator sets `cancelled`.
#[derive(Debug, Default)]
struct Flags {
    started: AtomicBool,
    cancelled: AtomicBool,
}

struct Inflight {
    id: Uuid,
    task: String,
    attempt: u32,
    max_attempts: u32,
    backoff: castor_abi::Backoff,
    timeout: Option<Duration>,
    started_at: Option<Instant>,
    flags: Arc<Flags>,
    /// The attempt was already recorded (timed out); the pool's late answer is ignored.
    recorded: bool,
}

/// An outcome waiting to be written.
struct Outcome {
    seq: i64,
    id: Uuid,
    task: String,
    attempt: u32,
    max_attempts: u32,
    backoff: castor_abi::Backoff,
    outcome: AttemptOutcome,
    result: Option<Vec<u8>>,
    elapsed: Duration,
}

struct LogLine {
    seq: i64,
    attempt: u32,
    at: i64,
    level: LogLevel,
    line: String,
}

/// How often leases are renewed, as a fraction of the lease.
const RENEW_EVERY: u32 = 3;

/// Target time each claim batch should keep the pool busy for; the claim window grows
/// for short tasks (to share commits) and shrinks to the thread count for long ones (to
/// leave tasks for other workers).
const BATCH_TARGET: Duration = Duration::from_millis(5);

/// The most tasks one worker holds at once, whatever their speed.
const MAX_WINDOW: usize = 1024;

impl Worker {
    /// Opens the worker's connections and change watcher.
    ///
    /// # Errors
    /// The database cannot be opened or watched.
    pub fn new(config: WorkerConfig) -> Result<Worker, StoreError> {
        let options = StoreOptions {
            durable: config.durable,
        };
        let store = Store::open(&config.database, options)?;
        let service_store = Store::open(&config.database, options)?;
        let watcher = Arc::new(Watcher::start(&config.database)?);
        let events = crossbeam_channel::unbounded();
        let manager = config.manager.name.to_string();
        let names: Vec<String> = config
            .manager
            .tasks
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        let tasks = config
            .manager
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.to_string(),
                    TaskInfo {
                        run: t.run,
                        mode: t.mode,
                    },
                )
            })
            .collect();
        let query = ClaimQuery::new(TaskFilter {
            manager: manager.clone(),
            tasks: names.clone(),
        });
        // The services live for the rest of the process: tasks may keep handles.
        let services: &'static WorkerServices = Box::leak(Box::new(WorkerServices::new(
            manager,
            names,
            service_store,
            Arc::clone(&watcher),
            events.0.clone(),
        )));
        let services = castor_abi::host::host_services(services);
        Ok(Worker {
            id: Uuid::now_v7().simple().to_string(),
            config,
            store,
            query,
            tasks,
            watcher,
            services,
            events,
        })
    }

    fn register(&mut self) -> Result<(), StoreError> {
        let now = now_us();
        let row = WorkerRow {
            id: self.id.clone(),
            manager: self.config.manager.name.to_string(),
            library: self.config.library.display().to_string(),
            hostname: hostname(),
            pid: std::process::id(),
            threads: u32::try_from(self.config.threads).unwrap_or(u32::MAX),
            processes: 0,
            tasks: self.tasks.keys().cloned().collect(),
            started_at: now,
            heartbeat_at: now,
            stopped_at: None,
            completed: 0,
            failed: 0,
        };
        self.store
            .write("register the worker", |tx| tx.register_worker(&row))
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

    /// Runs until stopped.
    ///
    /// # Errors
    /// The thread pool cannot start, or the database fails in a way retrying cannot fix
    /// (it became corrupt or read-only).
    pub fn run(mut self, reporter: &mut dyn Reporter) -> Result<Summary, WorkerError> {
        let pool = rayon::ThreadPoolBuilder::new()
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
        self.register()?;
        let mut run = Loop::new(&self);
        let stopping = Arc::new(AtomicBool::new(false));
        let events = self.events.1.clone();
        loop {
            run.wait(&events, &pending, &mut self, reporter, &stopping);
            let turned = run.turn(&mut self, &pool, &stopping, reporter);
            reporter.flush();
            if let Err(e) = turned
                && run.fatal(&e)
            {
                return Err(WorkerError::Store(e));
            }
            if run.finished() {
                break;
            }
        }
        let summary = run.finish(&mut self, reporter);
        reporter.event(WorkerEvent::Stopped { summary: &summary });
        Ok(summary)
    }
}

/// A worker stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The rayon pool could not start.
    #[error("cannot start the thread pool: {0}")]
    Pool(String),
    /// The database failed in a way the worker cannot work around.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The coordinator's state between turns.
struct Loop {
    inflight: HashMap<i64, Inflight>,
    by_id: HashMap<Uuid, i64>,
    outcomes: Vec<Outcome>,
    releases: Vec<(i64, u32)>,
    logs: Vec<LogLine>,
    progress: HashMap<i64, (u32, u64, u64, String)>,
    want_claim: bool,
    data_version: Option<i64>,
    next_due: Option<i64>,
    check_due: bool,
    next_renewal: Instant,
    /// Mean attempt time, for sizing the claim window.
    mean_task_time: Duration,
    stop: Option<Stop>,
    retry_at: Option<Instant>,
    summary: Summary,
}

struct Stop {
    deadline: Instant,
    forced: bool,
}

impl Loop {
    fn new(worker: &Worker) -> Loop {
        Loop {
            inflight: HashMap::new(),
            by_id: HashMap::new(),
            outcomes: Vec::new(),
            releases: Vec::new(),
            logs: Vec::new(),
            progress: HashMap::new(),
            want_claim: true,
            data_version: None,
            next_due: None,
            check_due: true,
            next_renewal: Instant::now() + worker.config.lease / RENEW_EVERY,
            mean_task_time: Duration::from_millis(1),
            stop: None,
            retry_at: None,
            summary: Summary::default(),
        }
    }

    fn window(&self, threads: usize) -> usize {
        let per_thread = BATCH_TARGET.as_secs_f64() / self.mean_task_time.as_secs_f64().max(1e-7);
        let extra = (threads as f64 * per_thread) as usize;
        (threads + extra).clamp(threads, MAX_WINDOW.max(threads))
    }

    fn active(&self) -> usize {
        self.inflight.len()
    }

    fn finished(&self) -> bool {
        match &self.stop {
            Some(stop) => {
                (self.inflight.values().all(|i| i.recorded) && self.outcomes.is_empty())
                    || stop.forced
                    || Instant::now() >= stop.deadline
            }
            None => false,
        }
    }

    /// Sleeps until the next event or timer, then takes every queued event.
    fn wait(
        &mut self,
        events: &Receiver<Event>,
        pending: &AtomicBool,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
        stopping: &AtomicBool,
    ) {
        let has_work = !self.outcomes.is_empty()
            || !self.releases.is_empty()
            || (self.want_claim && self.stop.is_none() && self.retry_at.is_none());
        let timeout = if has_work {
            Duration::ZERO
        } else {
            self.next_timer(worker)
                .saturating_duration_since(Instant::now())
        };
        let first = events.recv_timeout(timeout).ok();
        for event in first.into_iter().chain(events.try_iter()) {
            match event {
                Event::Done(done) => self.on_done(done),
                Event::Started { seq, at } => {
                    if let Some(task) = self.inflight.get_mut(&seq) {
                        task.started_at = Some(at);
                    }
                }
                Event::DbChanged => {
                    pending.store(false, Ordering::Release);
                    match worker.store.data_version() {
                        Ok(version) if Some(version) == self.data_version => {}
                        Ok(version) => {
                            self.data_version = Some(version);
                            self.want_claim = true;
                            self.check_due = true;
                        }
                        Err(_) => self.want_claim = true,
                    }
                }
                Event::Log {
                    id,
                    level,
                    line,
                    at,
                } => {
                    if let Some(&seq) = self.by_id.get(&id) {
                        let attempt = self.inflight.get(&seq).map_or(0, |t| t.attempt);
                        self.logs.push(LogLine {
                            seq,
                            attempt,
                            at,
                            level,
                            line,
                        });
                    }
                }
                Event::Progress {
                    id,
                    done,
                    total,
                    message,
                } => {
                    if let Some(&seq) = self.by_id.get(&id) {
                        let attempt = self.inflight.get(&seq).map_or(0, |t| t.attempt);
                        self.progress.insert(seq, (attempt, done, total, message));
                    }
                }
                Event::Shutdown => {
                    if self.stop.is_some() {
                        self.force(reporter);
                    } else {
                        stopping.store(true, Ordering::SeqCst);
                        let running = self.inflight.values().filter(|t| !t.recorded).count();
                        self.stop = Some(Stop {
                            deadline: Instant::now() + worker.config.grace,
                            forced: false,
                        });
                        reporter.event(WorkerEvent::Stopping {
                            running,
                            grace: worker.config.grace,
                        });
                    }
                }
            }
        }
    }

    fn force(&mut self, reporter: &mut dyn Reporter) {
        let running = self.inflight.values().filter(|t| !t.recorded).count();
        self.stop = Some(Stop {
            deadline: Instant::now(),
            forced: true,
        });
        reporter.event(WorkerEvent::Forced { running });
    }

    fn next_timer(&self, worker: &Worker) -> Instant {
        let now = Instant::now();
        let mut next = self.next_renewal;
        if let Some(at) = self.retry_at {
            next = next.min(at);
        }
        if let Some(stop) = &self.stop {
            next = next.min(stop.deadline);
        }
        if let Some(due) = self.next_due {
            let wait = Duration::from_micros(u64::try_from(due - now_us()).unwrap_or(0));
            next = next.min(now + wait);
        }
        for task in self.inflight.values() {
            if let (Some(timeout), Some(started)) = (task.timeout, task.started_at)
                && !task.recorded
            {
                next = next.min(started + timeout);
            }
        }
        let _ = worker;
        next
    }

    fn on_done(&mut self, done: Done) {
        let Some(task) = self.inflight.remove(&done.seq) else {
            return;
        };
        self.by_id.remove(&task.id);
        if task.recorded {
            return;
        }
        let Some(attempt) = done.outcome else {
            // Never started: the worker is stopping. Give the claim back.
            self.releases.push((done.seq, task.attempt));
            return;
        };
        let elapsed = attempt.elapsed;
        // An exponential moving average of how long attempts take, for the claim window.
        self.mean_task_time = self.mean_task_time.mul_f64(0.9) + elapsed.mul_f64(0.1);
        self.outcomes.push(Outcome {
            seq: done.seq,
            id: task.id,
            task: task.task,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            backoff: task.backoff,
            outcome: attempt.outcome,
            result: attempt.result,
            elapsed,
        });
    }

    /// Thread tasks past their timeout: signal cooperative cancellation and record the
    /// attempt as timed out now. The thread cannot be killed; its late answer is ignored.
    fn expire_timeouts(&mut self) {
        let now = Instant::now();
        for (&seq, task) in &mut self.inflight {
            let (Some(timeout), Some(started)) = (task.timeout, task.started_at) else {
                continue;
            };
            if task.recorded || now < started + timeout {
                continue;
            }
            task.flags.cancelled.store(true, Ordering::SeqCst);
            task.recorded = true;
            self.outcomes.push(Outcome {
                seq,
                id: task.id,
                task: task.task.clone(),
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                backoff: task.backoff,
                outcome: AttemptOutcome::TimedOut { after: timeout },
                result: None,
                elapsed: now - started,
            });
        }
    }

    /// Expires timeouts, commits, and starts what was claimed.
    fn turn(
        &mut self,
        worker: &mut Worker,
        pool: &rayon::ThreadPool,
        stopping: &Arc<AtomicBool>,
        reporter: &mut dyn Reporter,
    ) -> Result<(), StoreError> {
        self.expire_timeouts();
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return Ok(());
            }
            self.retry_at = None;
        }
        for task in self.commit(worker, reporter)? {
            self.start(worker, pool, stopping, task);
        }
        Ok(())
    }

    /// One transaction: outcomes, releases, logs, progress, staging, lease renewal, claim.
    /// Returns the claimed tasks.
    fn commit(
        &mut self,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = now_us();
        let renew = Instant::now() >= self.next_renewal;
        if self.check_due {
            self.next_due = worker.store.next_due(&worker.config.manager.name)?;
            self.check_due = false;
        }
        let stage = self.next_due.is_some_and(|due| due <= now);
        let room = self
            .window(worker.config.threads)
            .saturating_sub(self.active());
        let limit = if self.stop.is_none() && self.want_claim {
            room
        } else {
            0
        };
        if self.outcomes.is_empty()
            && self.releases.is_empty()
            && self.logs.is_empty()
            && self.progress.is_empty()
            && !stage
            && !renew
            && limit == 0
        {
            return Ok(Vec::new());
        }
        let lease_until = now + duration_us(worker.config.lease);
        let worker_id = worker.id.clone();
        let manager = worker.config.manager.name.to_string();
        let jitter = jitter_source();
        let transitions: Vec<Option<Transition>> = self
            .outcomes
            .iter()
            .map(|o| match o.outcome {
                AttemptOutcome::Succeeded => None,
                _ => Some(next_state(
                    &o.outcome,
                    o.attempt,
                    o.max_attempts,
                    o.backoff,
                    now,
                    jitter(o.seq),
                )),
            })
            .collect();
        let written = worker.store.write("record outcomes and claim tasks", |tx| {
            let mut applied = Vec::with_capacity(self.outcomes.len());
            for (o, transition) in self.outcomes.iter().zip(&transitions) {
                applied.push(tx.finish_if_running(
                    o.seq,
                    o.attempt,
                    &finish_of(o, transition.as_ref(), &worker_id, now),
                    now,
                )?);
            }
            for &(seq, attempt) in &self.releases {
                tx.release_if_running(seq, attempt)?;
            }
            for log in &self.logs {
                tx.append_log(log.seq, log.attempt, log.at, log.level, &log.line)?;
            }
            for (&seq, (attempt, done, total, message)) in &self.progress {
                tx.set_progress(seq, *attempt, *done, *total, message)?;
            }
            let staged = if stage {
                tx.stage_due(&manager, now)?
            } else {
                0
            };
            if renew {
                tx.renew_leases(&worker_id, lease_until)?;
                tx.heartbeat(&worker_id, now, self.summary.completed, self.summary.failed)?;
            }
            let claimed = if limit > 0 {
                tx.claim(&worker.query, &worker_id, limit, now, lease_until)?
            } else {
                Vec::new()
            };
            Ok((applied, staged, claimed))
        });
        let (applied, staged, claimed) = match written {
            Ok(written) => written,
            Err(e) => {
                // Everything stays pending; try again shortly.
                self.retry_at = Some(Instant::now() + STORE_RETRY);
                reporter.event(WorkerEvent::StoreError {
                    error: &e,
                    retry_in: STORE_RETRY,
                });
                return Err(e);
            }
        };
        for ((outcome, transition), applied) in
            self.outcomes.drain(..).zip(transitions).zip(applied)
        {
            let state = transition.map_or(TaskState::Completed, |t| t.state);
            if state == TaskState::Retryable {
                self.check_due = true;
            }
            match outcome.outcome {
                AttemptOutcome::Succeeded => self.summary.completed += 1,
                AttemptOutcome::Abandoned { .. } => self.summary.abandoned += 1,
                _ => self.summary.failed += 1,
            }
            reporter.event(WorkerEvent::Finished(&Finished {
                id: outcome.id,
                task: &outcome.task,
                attempt: outcome.attempt,
                max_attempts: outcome.max_attempts,
                outcome: &outcome.outcome,
                state,
                retry_at: transition.and_then(|t| t.scheduled_at),
                elapsed: outcome.elapsed,
                lost_lease: !applied,
            }));
        }
        self.releases.clear();
        self.logs.clear();
        self.progress.clear();
        if renew {
            self.next_renewal = Instant::now() + worker.config.lease / RENEW_EVERY;
        }
        if staged > 0 {
            self.want_claim = true;
            self.check_due = true;
        }
        if limit > 0 {
            self.want_claim = claimed.len() == limit;
        }
        Ok(claimed)
    }

    /// Hands a claimed task to the pool.
    fn start(
        &mut self,
        worker: &Worker,
        pool: &rayon::ThreadPool,
        stopping: &Arc<AtomicBool>,
        task: Claimed,
    ) {
        let Some(info) = worker.tasks.get(&task.task).copied() else {
            // The claim only selects known names; this is unreachable but harmless.
            self.releases.push((task.seq, task.attempt));
            return;
        };
        let _ = info.mode;
        let flags = Arc::new(Flags::default());
        let seq = task.seq;
        self.by_id.insert(task.id, seq);
        self.inflight.insert(
            seq,
            Inflight {
                id: task.id,
                task: task.task.clone(),
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                backoff: task.backoff,
                timeout: task.timeout,
                started_at: None,
                flags: Arc::clone(&flags),
                recorded: false,
            },
        );
        let events = worker.events.0.clone();
        let services = worker.services;
        let stopping = Arc::clone(stopping);
        pool.spawn(move || {
            if stopping.load(Ordering::SeqCst) {
                let _ = events.send(Event::Done(Done { seq, outcome: None }));
                return;
            }
            flags.started.store(true, Ordering::SeqCst);
            if task.timeout.is_some() {
                let _ = events.send(Event::Started {
                    seq,
                    at: Instant::now(),
                });
            }
            let attempt = executor::run_attempt(info.run, services, &task, &flags.cancelled);
            let _ = events.send(Event::Done(Done {
                seq,
                outcome: Some(attempt),
            }));
        });
    }

    /// True for errors that waiting cannot fix.
    fn fatal(&self, e: &StoreError) -> bool {
        matches!(
            e,
            StoreError::Corrupt { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::MissingDirectory { .. }
                | StoreError::InvalidRow { .. }
        )
    }

    /// After the loop: tasks still running are recorded as abandoned (and retried under
    /// their policy by whichever worker runs next); claims never started are given back.
    fn finish(&mut self, worker: &mut Worker, reporter: &mut dyn Reporter) -> Summary {
        let grace = worker.config.grace;
        for (seq, task) in std::mem::take(&mut self.inflight) {
            if task.recorded {
                continue;
            }
            if !task.flags.started.load(Ordering::SeqCst) {
                self.releases.push((seq, task.attempt));
                continue;
            }
            task.flags.cancelled.store(true, Ordering::SeqCst);
            reporter.event(WorkerEvent::Abandoned {
                id: task.id,
                task: &task.task,
            });
            self.outcomes.push(Outcome {
                seq,
                id: task.id,
                task: task.task,
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                backoff: task.backoff,
                outcome: AttemptOutcome::Abandoned {
                    message: format!(
                        "the worker stopped before the task finished (grace period {})",
                        castor_abi::format_duration(grace)
                    ),
                },
                result: None,
                elapsed: task.started_at.map_or(Duration::ZERO, |t| t.elapsed()),
            });
        }
        self.want_claim = false;
        // A few tries: a briefly busy database should not lose these outcomes.
        for _ in 0..3 {
            if self.outcomes.is_empty() && self.releases.is_empty() && self.logs.is_empty() {
                break;
            }
            if self.commit(worker, reporter).is_ok() {
                break;
            }
        }
        let (id, summary) = (worker.id.clone(), self.summary.clone());
        let stopped = worker.store.write("record the worker's stop", |tx| {
            tx.heartbeat(&id, now_us(), summary.completed, summary.failed)?;
            tx.stop_worker(&id, now_us())
        });
        if let Err(error) = stopped {
            reporter.event(WorkerEvent::StoreError {
                error: &error,
                retry_in: Duration::ZERO,
            });
        }
        self.summary.clone()
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

/// How long the coordinator waits before retrying a write that failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

fn finish_of<'a>(
    o: &'a Outcome,
    transition: Option<&Transition>,
    worker: &str,
    now: i64,
) -> Finish<'a> {
    match transition {
        None => Finish::Completed {
            result: o.result.as_deref().unwrap_or_default(),
        },
        Some(transition) => Finish::Failed {
            transition: *transition,
            error: AttemptError {
                attempt: o.attempt,
                at: now,
                kind: o.outcome.kind().to_owned(),
                error: o.outcome.message().unwrap_or_default(),
                worker: Some(worker.to_owned()),
            },
        },
    }
}

/// A cheap, per-call source of jitter in `[0, 1)` for backoff (no RNG dependency: the
/// row number and the clock's low bits are random enough to spread retries).
fn jitter_source() -> impl Fn(i64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    move |seq: i64| {
        let mut x = (seq as u64) ^ (u64::from(nanos) << 17) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
