//! Prometheus metrics: `castor LIB --metrics 127.0.0.1:9464` serves the OpenMetrics text
//! format on `GET /metrics` (404 elsewhere).
//!
//! Two sources feed them:
//!
//! - **Events** ([`Recorder`], on the coordinator thread, through [`Tee`], which hands
//!   each [`WorkerEvent`] to the recorder and then to the worker's own reporter): claims,
//!   committed turns, attempt ends by outcome, attempt durations and pool waits. Each
//!   task's handles are registered at start (the library declares its task names), so an
//!   event costs a hash lookup of its task name and an atomic add (a histogram's
//!   observation takes its uncontended lock); nothing is allocated per event.
//! - **Reads at scrape time** ([`Server`], on a thread of its own): tasks by name and state
//!   (`Driver::counts`), the longest-waiting available task (`Driver::oldest_available`)
//!   and this worker's recorded heartbeat (`Driver::workers`), through the storage seam on
//!   a connection the server opens at its first scrape. A read is reused for
//!   [`MIN_READ_INTERVAL`] (longer if it was slow): however often the endpoint is
//!   scraped, the database sees at most one read every two seconds, and a worker nobody
//!   scrapes reads nothing at all.
//!
//! The HTTP side is a `std::net::TcpListener` answering one request per connection on
//! its own thread: a scrape is one small GET, and a server crate would bring an async
//! runtime into a worker that has none (see ARCHITECTURE's Decisions).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use castor_abi::Uuid;
use castor_abi::abi::TaskMode;
use castor_store::{AttemptOutcome, Database, OpenOptions, Store, TaskState, now_us};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::worker::{AttemptStart, Reporter, WorkerEvent};

/// The shortest time between two reads of the database for a scrape.
pub const MIN_READ_INTERVAL: Duration = Duration::from_secs(2);

/// A read is reused for at least this many times its own duration (a huge table's
/// counts are not read back to back).
const SLOW_READ_FACTOR: u32 = 10;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// The histograms' buckets, in seconds: 0.1 ms (a thread task that only computes) to
/// 10 min.
const BUCKETS: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
    600.0,
];

/// The failed attempts' outcome kinds, as `AttemptOutcome::kind` names them.
const FAILURES: [&str; 5] = ["error", "panic", "crash", "timeout", "abandoned"];

/// `--metrics` could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be listened on (in use, not this host's, no permission).
    #[error("--metrics {addr}: cannot listen there: {error}")]
    Bind {
        /// The address given.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The server's thread could not start.
    #[error("cannot start the metrics thread: {error}")]
    Thread {
        /// Why.
        error: std::io::Error,
    },
}

/// The metrics endpoint's socket, bound at start so a bad address fails before the worker
/// runs anything.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Listens on `addr`.
    ///
    /// # Errors
    /// The address cannot be listened on.
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
        TcpListener::bind(addr)
            .map(|listener| Endpoint { listener })
            .map_err(|error| MetricsError::Bind { addr, error })
    }

    /// The address listened on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// What the metrics describe: the worker run, its tasks and pools.
pub struct Setup {
    /// The worker run's id.
    pub worker_id: String,
    /// The manager it runs.
    pub manager: String,
    /// Its database.
    pub database: Database,
    /// The library's task names and modes.
    pub tasks: Vec<(String, TaskMode)>,
    /// Thread slots.
    pub threads: usize,
    /// Process slots.
    pub processes: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    task: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    task: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker_id: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// One task's handles, registered at start.
struct TaskHandles {
    claimed: Counter,
    completed: Counter,
    failed: [Counter; FAILURES.len()],
    cancelled: Counter,
    discarded: Counter,
    dropped: Counter,
    duration: Histogram,
    wait: Histogram,
}

/// A claim handed to a pool and not yet ended.
struct Inflight {
    mode: TaskMode,
    claimed_at: Instant,
    start: AttemptStart,
}

type InflightMap = Arc<Mutex<HashMap<Uuid, Inflight>>>;

/// Starts serving `endpoint` on a thread of its own and returns the recorder the worker
/// feeds its events to.
///
/// # Errors
/// The thread cannot start.
pub fn start(endpoint: Endpoint, setup: Setup) -> Result<Recorder, MetricsError> {
    let mut registry = Registry::with_prefix("castor");
    let claimed = Family::<TaskLabels, Counter>::default();
    registry.register(
        "tasks_claimed",
        "Tasks this worker claimed (each attempt once)",
        claimed.clone(),
    );
    let turns = Counter::default();
    registry.register(
        "turns_committed",
        "Write transactions (turns) this worker committed",
        turns.clone(),
    );
    let completed = Family::<TaskLabels, Counter>::default();
    registry.register(
        "tasks_completed",
        "Attempts this worker ran that succeeded (the task is completed)",
        completed.clone(),
    );
    let failed = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "attempts_failed",
        "Attempts this worker ran that failed, by outcome (error, panic, crash, timeout, abandoned)",
        failed.clone(),
    );
    let cancelled = Family::<TaskLabels, Counter>::default();
    registry.register(
        "tasks_cancelled",
        "Attempts this worker ended as cancelled",
        cancelled.clone(),
    );
    let discarded = Family::<TaskLabels, Counter>::default();
    registry.register(
        "tasks_discarded",
        "Failed attempts that were the task's last (the task is discarded)",
        discarded.clone(),
    );
    let dropped = Family::<TaskLabels, Counter>::default();
    registry.register(
        "outcomes_dropped",
        "Attempts that ended after their lease was lost: another worker took the task over",
        dropped.clone(),
    );
    let duration: Histograms<TaskLabels> = Family::new_with_constructor(histogram);
    registry.register(
        "attempt_duration_seconds",
        "How long attempts ran, from start to end",
        duration.clone(),
    );
    let wait: Histograms<TaskLabels> = Family::new_with_constructor(histogram);
    registry.register(
        "attempt_wait_seconds",
        "How long claimed attempts waited in the worker for a thread or a child slot",
        wait.clone(),
    );
    let mut tasks = HashMap::new();
    for (name, _) in &setup.tasks {
        let label = TaskLabels { task: name.clone() };
        let failed = FAILURES.map(|outcome| {
            failed
                .get_or_create(&OutcomeLabels {
                    task: name.clone(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        });
        tasks.insert(
            name.clone(),
            TaskHandles {
                claimed: claimed.get_or_create_owned(&label),
                completed: completed.get_or_create_owned(&label),
                failed,
                cancelled: cancelled.get_or_create_owned(&label),
                discarded: discarded.get_or_create_owned(&label),
                dropped: dropped.get_or_create_owned(&label),
                duration: duration.get_or_create_owned(&label),
                wait: wait.get_or_create_owned(&label),
            },
        );
    }
    let inflight: InflightMap = Arc::new(Mutex::new(HashMap::with_capacity(
        2 * (setup.threads + setup.processes),
    )));
    let server = Server::new(&mut registry, setup, Arc::clone(&inflight));
    std::thread::Builder::new()
        .name("castor-metrics".into())
        .spawn(move || server.serve(&endpoint.listener, &registry))
        .map_err(|error| MetricsError::Thread { error })?;
    Ok(Recorder {
        tasks,
        turns,
        inflight,
    })
}

/// Turns the worker's events into counters and histograms (the coordinator's side).
pub struct Recorder {
    tasks: HashMap<String, TaskHandles>,
    turns: Counter,
    inflight: InflightMap,
}

impl Recorder {
    /// Counts one event.
    fn observe(&mut self, event: &WorkerEvent<'_>) {
        match event {
            WorkerEvent::Committed => {
                self.turns.inc();
            }
            WorkerEvent::Started {
                id,
                task,
                mode,
                start,
                ..
            } => {
                if let Some(handles) = self.tasks.get(*task) {
                    handles.claimed.inc();
                }
                self.inflight().insert(
                    *id,
                    Inflight {
                        mode: *mode,
                        claimed_at: Instant::now(),
                        start: start.clone(),
                    },
                );
            }
            WorkerEvent::Finished(f) => {
                let inflight = self.inflight().remove(&f.id);
                let Some(handles) = self.tasks.get(f.task) else {
                    return;
                };
                // A claim cancelled before it started never ran: no duration, no wait.
                let started = match &inflight {
                    Some(i) => i.start.started_at().map(|at| (i.claimed_at, at)),
                    None => None,
                };
                if let Some((claimed_at, started_at)) = started {
                    handles.wait.observe(
                        started_at
                            .saturating_duration_since(claimed_at)
                            .as_secs_f64(),
                    );
                    handles.duration.observe(f.elapsed.as_secs_f64());
                }
                if f.lost_lease {
                    handles.dropped.inc();
                    return;
                }
                match f.outcome {
                    AttemptOutcome::Succeeded => {
                        handles.completed.inc();
                    }
                    AttemptOutcome::Cancelled => {
                        handles.cancelled.inc();
                    }
                    outcome => {
                        let kind = outcome.kind();
                        if let Some(i) = FAILURES.iter().position(|k| *k == kind) {
                            handles.failed[i].inc();
                        }
                        if f.state == TaskState::Discarded {
                            handles.discarded.inc();
                        }
                    }
                }
            }
            WorkerEvent::Abandoned { id, .. } => {
                self.inflight().remove(id);
            }
            _ => {}
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Inflight>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reporter that counts each event ([`Recorder`]) before the worker's own reporter
/// sees it.
pub struct Tee<'a> {
    recorder: &'a mut Recorder,
    inner: &'a mut dyn Reporter,
}

impl<'a> Tee<'a> {
    /// Counts `recorder`'s events, then reports them to `inner`.
    pub fn new(recorder: &'a mut Recorder, inner: &'a mut dyn Reporter) -> Tee<'a> {
        Tee { recorder, inner }
    }
}

impl Reporter for Tee<'_> {
    fn event(&mut self, event: WorkerEvent<'_>) {
        self.recorder.observe(&event);
        self.inner.event(event);
    }

    fn flush(&mut self) {
        self.inner.flush();
    }
}

/// The gauges read at scrape time, and the connection they are read on.
struct Server {
    setup: Setup,
    inflight: InflightMap,
    store: Option<Store>,
    /// When the last read ended, and how long it took.
    last_read: Option<(Instant, Duration)>,
    tasks: Family<StateLabels, Gauge>,
    oldest: Gauge<f64, AtomicU64>,
    heartbeat: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    read_errors: Counter,
    running: Family<PoolLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
}

impl Server {
    fn new(registry: &mut Registry, setup: Setup, inflight: InflightMap) -> Server {
        let tasks = Family::<StateLabels, Gauge>::default();
        registry.register(
            "tasks",
            "Tasks of this worker's manager in the database, by name and state (read at most every 2 s)",
            tasks.clone(),
        );
        let oldest = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_available_age_seconds",
            "How long the longest-waiting available task of this worker's manager has been available (0 when none is)",
            oldest.clone(),
        );
        let up = Family::<WorkerLabels, Gauge>::default();
        registry.register("worker_up", "1 while this worker runs", up.clone());
        let worker = WorkerLabels {
            worker_id: setup.worker_id.clone(),
        };
        up.get_or_create(&worker).set(1);
        let heartbeat = Family::<WorkerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "worker_heartbeat_timestamp_seconds",
            "This worker's last heartbeat as recorded in the database (Unix time)",
            heartbeat.clone(),
        );
        let read_errors = Counter::default();
        registry.register(
            "metrics_read_errors",
            "Reads of the database for a scrape that failed (the gauges keep their last values)",
            read_errors.clone(),
        );
        let slots = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_slots",
            "Slots of each pool: threads for thread tasks, children for process tasks",
            slots.clone(),
        );
        let running = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_running",
            "Attempts running in each pool",
            running.clone(),
        );
        let waiting = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_waiting",
            "Claimed attempts waiting in each pool for a free slot",
            waiting.clone(),
        );
        for (pool, size) in [("thread", setup.threads), ("process", setup.processes)] {
            let label = PoolLabels {
                pool: pool.to_owned(),
            };
            slots
                .get_or_create(&label)
                .set(i64::try_from(size).unwrap_or(i64::MAX));
            running.get_or_create(&label).set(0);
            waiting.get_or_create(&label).set(0);
        }
        Server {
            setup,
            inflight,
            store: None,
            last_read: None,
            tasks,
            oldest,
            heartbeat,
            read_errors,
            running,
            waiting,
        }
    }

    fn serve(mut self, listener: &TcpListener, registry: &Registry) {
        for stream in listener.incoming() {
            // A failed accept (a connection reset before it was taken) ends nothing.
            let Ok(stream) = stream else { continue };
            // A scraper that hung up is not the worker's problem.
            let _ = self.answer(stream, registry);
        }
    }

    /// Answers one request: the metrics on `GET /metrics`, 404 for other paths.
    fn answer(&mut self, mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let head = read_head(&mut stream)?;
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default();
        let target = words.next().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        let (status, content_type, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => {
                self.refresh();
                let mut body = String::with_capacity(16 * 1024);
                match prometheus_client::encoding::text::encode(&mut body, registry) {
                    Ok(()) => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(_) => (
                        "500 Internal Server Error",
                        "text/plain; charset=utf-8",
                        "cannot encode the metrics\n".to_owned(),
                    ),
                }
            }
            (_, "/metrics") => (
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "only GET\n".to_owned(),
            ),
            _ => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: castor serves /metrics\n".to_owned(),
            ),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            response.push_str(&body);
        }
        stream.write_all(response.as_bytes())?;
        stream.flush()
    }

    /// Sets the gauges: the pools' from memory, the database's when the last read is old
    /// enough.
    fn refresh(&mut self) {
        let mut running = [0i64; 2];
        let mut waiting = [0i64; 2];
        {
            let inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            for i in inflight.values() {
                let pool = usize::from(i.mode == TaskMode::Process);
                if i.start.started_at().is_some() {
                    running[pool] += 1;
                } else {
                    waiting[pool] += 1;
                }
            }
        }
        for (i, pool) in ["thread", "process"].into_iter().enumerate() {
            let label = PoolLabels {
                pool: pool.to_owned(),
            };
            self.running.get_or_create(&label).set(running[i]);
            self.waiting.get_or_create(&label).set(waiting[i]);
        }
        let due = self.last_read.is_none_or(|(at, took)| {
            at.elapsed() >= MIN_READ_INTERVAL.max(took * SLOW_READ_FACTOR)
        });
        if !due {
            return;
        }
        let began = Instant::now();
        if let Err(error) = self.read() {
            self.read_errors.inc();
            // Opened again at the next read.
            self.store = None;
            tracing::debug!(target: "castor", "metrics: cannot read the database: {error:#}");
        }
        self.last_read = Some((Instant::now(), began.elapsed()));
    }

    fn read(&mut self) -> Result<(), castor_store::StoreError> {
        let store = match &mut self.store {
            Some(store) => store,
            None => self.store.insert(castor_store::open(
                &self.setup.database,
                &OpenOptions::inspect(),
            )?),
        };
        let counts = store.counts()?;
        let oldest = store.oldest_available(&self.setup.manager)?;
        let workers = store.workers(true)?;
        let now = now_us();
        self.tasks.clear();
        for (task, _) in &self.setup.tasks {
            for state in TaskState::ALL {
                self.tasks
                    .get_or_create(&StateLabels {
                        task: task.clone(),
                        state: state.as_str().to_owned(),
                    })
                    .set(0);
            }
        }
        for count in counts.iter().filter(|c| c.manager == self.setup.manager) {
            self.tasks
                .get_or_create(&StateLabels {
                    task: count.task.clone(),
                    state: count.state.as_str().to_owned(),
                })
                .set(i64::try_from(count.count).unwrap_or(i64::MAX));
        }
        #[expect(clippy::cast_precision_loss, reason = "an age in seconds")]
        self.oldest
            .set(oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1e6));
        if let Some(me) = workers.iter().find(|w| w.id == self.setup.worker_id) {
            #[expect(clippy::cast_precision_loss, reason = "a Unix time in seconds")]
            self.heartbeat
                .get_or_create(&WorkerLabels {
                    worker_id: me.id.clone(),
                })
                .set(me.heartbeat_at as f64 / 1e6);
        }
        Ok(())
    }
}

/// Reads a request's head (up to the blank line), at most [`MAX_REQUEST`] bytes.
fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
