//! Process tasks: a pool of warm children, each `castor` re-executed in child mode, kept
//! and reused across tasks. One slot thread per child sends it tasks, answers its calls
//! on the worker's connection, enforces timeouts and cancellation by killing it, and
//! turns its death into an attempt outcome that names what happened.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::Services;
use castor_abi::{Uuid, codec};
use castor_store::{AttemptOutcome, LogLevel};
use castor_store::{Claimed, now_us};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::executor::{Attempt, outcome_of};
use super::services::WorkerServices;
use super::{Begin, Done, Event, Flags};
use crate::protocol::{self, END_MARKER, Failure, FromChild, Payload, Reply, Request, ToChild};

/// How the pool runs its children.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The library the children load.
    pub library: PathBuf,
    /// The manager they run.
    pub manager: String,
    /// How many children.
    pub processes: usize,
    /// A child is replaced after this many tasks.
    pub max_tasks_per_child: u32,
    /// The children's address-space limit, in bytes.
    pub memory_limit: Option<u64>,
    /// Between SIGTERM and SIGKILL when a child must go.
    pub kill_grace: Duration,
    /// What the library forwards to task logs (passed to each child).
    pub log_filter: String,
}

/// A process task for a slot.
pub struct Job {
    /// The claimed task.
    pub task: Claimed,
    /// Its flags (cancellation, started).
    pub flags: Arc<Flags>,
}

/// The children and their slot threads.
pub struct ProcessPool {
    jobs: Option<Sender<Job>>,
    slots: Vec<JoinHandle<()>>,
    kill: Arc<AtomicBool>,
}

/// How often a slot looks at its task's cancellation flag while the child runs it.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The longest a child's request to wait for a database change may block its slot.
const MAX_CHILD_WAIT: Duration = Duration::from_millis(100);

/// How long a new child may take to load the library.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl ProcessPool {
    /// Starts `config.processes` children and waits until each has loaded the library
    /// (or failed to; its slot retries at its first task).
    pub fn start(
        config: PoolConfig,
        services: &'static WorkerServices,
        events: Sender<Event>,
        stopping: Arc<AtomicBool>,
    ) -> ProcessPool {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let kill = Arc::new(AtomicBool::new(false));
        let (warm, warmed) = crossbeam_channel::bounded::<()>(config.processes);
        let slots = (0..config.processes)
            .filter_map(|i| {
                let slot = Slot {
                    config: config.clone(),
                    services,
                    events: events.clone(),
                    stopping: Arc::clone(&stopping),
                    kill: Arc::clone(&kill),
                    child: None,
                };
                let queue = queue.clone();
                let warm = warm.clone();
                std::thread::Builder::new()
                    .name(format!("castor-process-{i}"))
                    .spawn(move || slot.run(&queue, &warm))
                    .ok()
            })
            .collect::<Vec<_>>();
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..slots.len() {
            if warmed.recv_deadline(deadline).is_err() {
                break;
            }
        }
        ProcessPool {
            jobs: Some(jobs),
            slots,
            kill,
        }
    }

    /// Queues a task for the next free child.
    pub fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Stops the pool: children finish their task unless `kill`, then exit; every child
    /// is reaped before this returns.
    pub fn shutdown(mut self, kill: bool) {
        self.kill.store(kill, Ordering::SeqCst);
        self.jobs = None;
        for slot in self.slots.drain(..) {
            let _ = slot.join();
        }
    }
}

struct Slot {
    config: PoolConfig,
    services: &'static WorkerServices,
    events: Sender<Event>,
    stopping: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
    child: Option<ChildProcess>,
}

impl Slot {
    fn run(mut self, queue: &Receiver<Job>, warm: &Sender<()>) {
        // Warm: the first task should not pay for the start.
        self.child = self.spawn().ok();
        let _ = warm.send(());
        // Idle slots block: the pool's shutdown closes the queue, which ends the loop.
        while let Ok(job) = queue.recv() {
            let (seq, attempt) = (job.task.seq, job.task.attempt);
            let outcome = match job.flags.begin(&self.stopping) {
                Begin::Skip(outcome) => outcome,
                Begin::Run => Some(self.run_job(&job)),
            };
            let _ = self.events.send(Event::Done(Done {
                seq,
                attempt,
                outcome,
            }));
        }
        if let Some(child) = self.child.take() {
            let grace = if self.kill.load(Ordering::SeqCst) {
                Duration::ZERO
            } else {
                self.config.kill_grace
            };
            child.retire(grace);
        }
    }

    fn spawn(&self) -> Result<ChildProcess, String> {
        ChildProcess::spawn(&self.config, &self.events)
    }

    fn run_job(&mut self, job: &Job) -> Attempt {
        let child = match self.child.take() {
            Some(child) => child,
            None => match self.spawn() {
                Ok(child) => child,
                Err(message) => {
                    // Do not spin on a library that will not load.
                    std::thread::sleep(Duration::from_secs(1));
                    return Attempt {
                        outcome: AttemptOutcome::Crashed {
                            message: format!("could not start a child process: {message}"),
                        },
                        result: None,
                        elapsed: Duration::ZERO,
                    };
                }
            },
        };
        let (attempt, child) = self.attempt(child, job);
        self.child = child.filter(|c| c.tasks_run < self.config.max_tasks_per_child.max(1));
        attempt
    }

    /// Runs one attempt on `child`; returns the outcome and the child if it is still
    /// usable.
    fn attempt(&self, mut child: ChildProcess, job: &Job) -> (Attempt, Option<ChildProcess>) {
        let task = &job.task;
        let started = Instant::now();
        if task.args.len() > codec::MAX_PAYLOAD {
            // Stored by something that did not check the limit: the frame would be
            // refused, so say why here instead of sending it.
            let attempt = Attempt {
                outcome: AttemptOutcome::Errored {
                    message: format!(
                        "task `{}`: its stored arguments cannot be read: they are {}",
                        task.task,
                        codec::over_limit(task.args.len(), codec::MAX_PAYLOAD)
                    ),
                    retry: false,
                },
                result: None,
                elapsed: Duration::ZERO,
            };
            return (attempt, Some(child));
        }
        child.output.begin(task.id);
        child.tasks_run += 1;
        let run = ToChild::Run {
            id: task.id,
            task: task.task.clone(),
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            args: Payload(task.args.clone()),
        };
        if child.send(&run).is_err() {
            let outcome = child.died(self.config.kill_grace);
            return (crashed(outcome, started), None);
        }
        let deadline = task.timeout.map(|t| started + t);
        loop {
            let wait = deadline.map_or(CANCEL_POLL, |d| {
                d.saturating_duration_since(Instant::now()).min(CANCEL_POLL)
            });
            match child.messages.recv_timeout(wait) {
                Ok(FromChild::Done { result, elapsed_us }) => {
                    child.output.wait_end(Duration::from_millis(500));
                    child.output.end();
                    let elapsed = Duration::from_micros(elapsed_us);
                    let attempt = match result {
                        Ok(bytes) => Attempt {
                            outcome: AttemptOutcome::Succeeded,
                            result: Some(bytes.0),
                            elapsed,
                        },
                        Err(Failure { kind, message }) => Attempt {
                            outcome: outcome_of(castor_abi::abi::TaskFailure {
                                kind,
                                message: message.into(),
                            }),
                            result: None,
                            elapsed,
                        },
                    };
                    return (attempt, Some(child));
                }
                Ok(FromChild::Call { call, request }) => {
                    let reply = self.answer(request);
                    if child.send(&ToChild::Reply { call, reply }).is_err() {
                        let outcome = child.died(self.config.kill_grace);
                        return (crashed(outcome, started), None);
                    }
                }
                Ok(FromChild::Progress {
                    id,
                    done,
                    total,
                    message,
                }) => {
                    let _ = self.events.send(Event::Progress {
                        id,
                        done,
                        total,
                        message,
                    });
                }
                Ok(
                    FromChild::Ready { .. } | FromChild::LoadFailed { .. } | FromChild::Log { .. },
                ) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let outcome = child.died(self.config.kill_grace);
                    return (crashed(outcome, started), None);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.kill.load(Ordering::SeqCst) {
                        // The worker gave up on this task at shutdown; it is recorded.
                        child.kill(Duration::ZERO);
                        return (crashed("killed at shutdown".into(), started), None);
                    }
                    if let (Some(deadline), Some(timeout)) = (deadline, task.timeout)
                        && Instant::now() >= deadline
                    {
                        let _ = child.send(&ToChild::Cancel);
                        child.kill(self.config.kill_grace);
                        return (
                            Attempt {
                                outcome: AttemptOutcome::TimedOut { after: timeout },
                                result: None,
                                elapsed: started.elapsed(),
                            },
                            None,
                        );
                    }
                    if job.flags.cancelled.load(Ordering::SeqCst) {
                        // Cancelled by a user: tell the task, then stop its process.
                        let _ = child.send(&ToChild::Cancel);
                        child.kill(self.config.kill_grace);
                        return (
                            Attempt {
                                outcome: AttemptOutcome::Cancelled,
                                result: None,
                                elapsed: started.elapsed(),
                            },
                            None,
                        );
                    }
                }
            }
        }
    }

    fn answer(&self, request: Request) -> Reply {
        let services = self.services;
        match request {
            Request::Dispatch {
                task,
                args,
                options,
            } => Reply::Dispatched(services.dispatch(&task, &args.0, &options.into())),
            Request::Snapshot { id } => {
                Reply::Snapshot(services.snapshot(id).and_then(|snapshot| {
                    match snapshot {
                        // Stored by something that did not check the limit: it would not
                        // fit in the reply's frame.
                        Some(s)
                            if s.result
                                .as_ref()
                                .is_some_and(|r| r.0.len() > codec::MAX_PAYLOAD) =>
                        {
                            Err(format!(
                                "task {id} has a stored result over the {} limit",
                                castor_store::format::format_size(codec::MAX_PAYLOAD)
                            ))
                        }
                        s => Ok(s),
                    }
                }))
            }
            Request::Generation => Reply::Generation(services.generation()),
            Request::WaitChange { since, timeout_ms } => {
                let cap = u64::try_from(MAX_CHILD_WAIT.as_millis()).unwrap_or(100);
                Reply::Generation(services.wait_change(since, timeout_ms.min(cap)))
            }
        }
    }
}

fn crashed(message: String, started: Instant) -> Attempt {
    Attempt {
        outcome: AttemptOutcome::Crashed { message },
        result: None,
        elapsed: started.elapsed(),
    }
}

/// A child's stdout and stderr, as the running task's log.
#[derive(Default)]
struct Output {
    current: Mutex<Option<Uuid>>,
    /// End markers seen, per stream (stdout, stderr), since the task began.
    ends: Mutex<(u32, u32)>,
    ended: Condvar,
    /// The last lines of stderr, to explain a crash.
    tail: Mutex<VecDeque<String>>,
}

const TAIL_LINES: usize = 20;

impl Output {
    fn begin(&self, id: Uuid) {
        *self.ends.lock().unwrap_or_else(PoisonError::into_inner) = (0, 0);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(id);
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn end(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Waits until both streams passed the task's end marker (or `timeout`).
    fn wait_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        while ends.0 == 0 || ends.1 == 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            ends = self
                .ended
                .wait_timeout(ends, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Forwards one stream's lines as the current task's log.
    fn read(
        self: Arc<Self>,
        stream: impl Read + Send + 'static,
        stderr: bool,
        pid: u32,
        events: Sender<Event>,
    ) -> Option<JoinHandle<()>> {
        let name = format!("castor-output-{pid}");
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line == END_MARKER {
                        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
                        if stderr {
                            ends.1 += 1;
                        } else {
                            ends.0 += 1;
                        }
                        self.ended.notify_all();
                        continue;
                    }
                    if stderr {
                        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.to_owned());
                    }
                    let current = *self.current.lock().unwrap_or_else(PoisonError::into_inner);
                    let level = if stderr {
                        LogLevel::Warn
                    } else {
                        LogLevel::Info
                    };
                    let _ = events.send(match current {
                        Some(id) => Event::Log {
                            id,
                            level,
                            line: line.to_owned(),
                            at: now_us(),
                        },
                        None => Event::ChildOutput {
                            pid,
                            line: line.to_owned(),
                        },
                    });
                }
            })
            .ok()
    }
}

/// One child process and the threads that listen to it.
struct ChildProcess {
    process: Child,
    pid: u32,
    socket: UnixStream,
    messages: Receiver<FromChild>,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    tasks_run: u32,
}

impl ChildProcess {
    fn spawn(config: &PoolConfig, events: &Sender<Event>) -> Result<ChildProcess, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
        // `/proc/self/exe`, not `current_exe()`: after a rebuild the latter names a
        // deleted file and the spawn fails; the former still opens the running binary.
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("castor")
            .arg("__child")
            .arg("--library")
            .arg(&config.library)
            .arg("--manager")
            .arg(&config.manager)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--log-filter")
            .arg(&config.log_filter);
        if let Some(bytes) = config.memory_limit {
            command.arg("--memory-limit").arg(bytes.to_string());
        }
        let mut process = command
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", "/proc/self/exe"))?;
        let pid = process.id();
        let output = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(stdout) = process.stdout.take() {
            readers.extend(Arc::clone(&output).read(stdout, false, pid, events.clone()));
        }
        if let Some(stderr) = process.stderr.take() {
            readers.extend(Arc::clone(&output).read(stderr, true, pid, events.clone()));
        }
        let (tx, messages) = crossbeam_channel::unbounded();
        let reader = ours.try_clone().map_err(|e| format!("socket: {e}"))?;
        let log = events.clone();
        readers.extend(
            std::thread::Builder::new()
                .name(format!("castor-socket-{pid}"))
                .spawn(move || {
                    let mut reader = reader;
                    while let Ok(Some(message)) = protocol::read_frame::<FromChild>(&mut reader) {
                        // Log lines go straight to the coordinator: a library's line made
                        // outside any task may come while the child runs none. (A task's
                        // lines still precede its `Done`, which takes the slot's way.)
                        if let FromChild::Log { id, level, line } = message {
                            let _ = log.send(Event::Log {
                                id,
                                level,
                                line,
                                at: now_us(),
                            });
                        } else if tx.send(message).is_err() {
                            return;
                        }
                    }
                })
                .ok(),
        );
        let mut child = ChildProcess {
            process,
            pid,
            socket: ours,
            messages,
            output,
            readers,
            tasks_run: 0,
        };
        match child.messages.recv_timeout(READY_TIMEOUT) {
            Ok(FromChild::Ready { .. }) => Ok(child),
            Ok(FromChild::LoadFailed { message }) => {
                child.kill(Duration::ZERO);
                Err(message)
            }
            _ => {
                let why = child.died(Duration::ZERO);
                Err(format!("the child did not start: {why}"))
            }
        }
    }

    fn send(&mut self, message: &ToChild) -> std::io::Result<()> {
        protocol::write_frame(&mut self.socket, message)
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    fn kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.process.try_wait() {
            return Some(status);
        }
        if !grace.is_zero() {
            signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.process.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _ = self.process.kill();
        self.process.wait().ok()
    }

    /// The child's socket closed mid-task: reap it and say what happened.
    fn died(&mut self, grace: Duration) -> String {
        // It is dying; give it a moment to finish, then make sure.
        let deadline = Instant::now() + grace.max(Duration::from_millis(200));
        let status = loop {
            match self.process.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => break self.kill(Duration::ZERO),
            }
        };
        // Let the output readers reach end of file, so the tail holds the last words.
        let until = Instant::now() + Duration::from_millis(200);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.output.end();
        describe_death(status, &self.output.tail())
    }

    /// Closes the socket (the child exits at end of file) and reaps it, killing it if it
    /// does not exit within `grace`.
    fn retire(mut self, grace: Duration) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + grace.max(Duration::from_millis(100));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill(Duration::ZERO);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Never leave a child running or unreaped.
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
        }
        let _ = self.process.wait();
    }
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: signalling a child process this worker started and has not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// "killed by SIGSEGV", "exited with code 3", with the child's last words when they say
/// more ("memory allocation of 1073741824 bytes failed", a stack overflow).
pub fn describe_death(status: Option<ExitStatus>, stderr_tail: &[String]) -> String {
    let mut message = match status {
        Some(status) => match (status.signal(), status.code()) {
            (Some(signal), _) => {
                let core = if status.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                };
                format!("was killed by {}{core}", signal_name(signal))
            }
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended".to_owned(),
        },
        None => "vanished".to_owned(),
    };
    message.insert_str(0, "the task's process ");
    let hint = stderr_tail.iter().rev().find_map(|line| {
        if line.contains("memory allocation of") {
            Some(format!("out of memory: {}", line.trim()))
        } else if line.contains("has overflowed its stack") {
            Some(format!("stack overflow: {}", line.trim()))
        } else {
            None
        }
    });
    match hint.or_else(|| stderr_tail.last().map(|l| l.trim().to_owned())) {
        Some(last) if !last.is_empty() => format!("{message} ({last})"),
        _ => message,
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_are_named() {
        let status = |raw| Some(ExitStatus::from_raw(raw));
        assert_eq!(
            describe_death(status(libc::SIGSEGV), &[]),
            "the task's process was killed by SIGSEGV"
        );
        assert_eq!(
            describe_death(status(3 << 8), &[]),
            "the task's process exited with code 3"
        );
        assert_eq!(
            describe_death(
                status(libc::SIGABRT),
                &["memory allocation of 1024 bytes failed".into()]
            ),
            "the task's process was killed by SIGABRT (out of memory: memory allocation of 1024 bytes failed)"
        );
        assert_eq!(
            describe_death(
                status(libc::SIGABRT),
                &[
                    "thread 'main' has overflowed its stack".into(),
                    "fatal runtime error: stack overflow, aborting".into()
                ]
            ),
            "the task's process was killed by SIGABRT (stack overflow: thread 'main' has overflowed its stack)"
        );
    }
}
