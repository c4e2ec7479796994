//! The re-executed child: `castor __child` loads the same library as its worker and runs
//! the process tasks the worker sends it, one at a time, until its socket closes.
//!
//! Its standard input is the socket to the worker; it moves that to a private descriptor
//! and puts `/dev/null` in its place, so a task that reads stdin cannot eat protocol
//! bytes. It asks the kernel to kill it if the worker dies (`PR_SET_PDEATHSIG`) and also
//! exits when the socket closes, so no child outlives its worker.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::host::Services;
use abi_stable::std_types::{RResult, RSlice, RStr};
use anyhow::Context;
use castor_abi::Uuid;
use castor_abi::abi::{AttachFn, DispatchOptionsAbi, FailureKind, HostCtx, RunFn};
use castor_abi::codec;
use castor_store::LogLevel;
use crossbeam_channel::{Receiver, Sender};

use crate::cli::ChildArgs;
use crate::plugin::Plugin;
use crate::protocol::{
    self, END_MARKER, Failure, FromChild, Payload, Reply, Request, Snapshot, ToChild,
};

/// Runs the child until the worker closes the socket or goes away.
///
/// # Errors
/// Setting up the socket or loading the library failed (the worker is told).
pub fn run(args: ChildArgs) -> anyhow::Result<()> {
    let socket = take_socket()?;
    die_with_parent(args.parent)?;
    if let Some(bytes) = args.memory_limit {
        limit_memory(bytes)?;
    }
    let writer = Arc::new(Mutex::new(socket.try_clone().context("clone the socket")?));
    let (tasks, attach) = match load(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            let message = format!("{e:#}");
            send(&writer, &FromChild::LoadFailed { message });
            return Err(e);
        }
    };
    let services: &'static ChildServices = Box::leak(Box::new(ChildServices {
        writer: Arc::clone(&writer),
        pending: Mutex::new(HashMap::new()),
        next_call: AtomicU64::new(1),
    }));
    let cancelled: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let (runs, queue) = crossbeam_channel::unbounded();
    spawn_reader(socket, services, cancelled, runs)?;
    let host = crate::host::host_services(services);
    // The library's `log` and `tracing` records go to the worker as `Log` frames.
    attach(host, RStr::from(args.log_filter.as_str()));
    send(
        &writer,
        &FromChild::Ready {
            pid: std::process::id(),
        },
    );
    for run in queue {
        let ToChild::Run {
            id,
            task,
            attempt,
            max_attempts,
            args,
        } = run
        else {
            continue;
        };
        cancelled.store(false, Ordering::SeqCst);
        let result = match tasks.get(&task) {
            Some(&run) => {
                let ctx = HostCtx {
                    services: host,
                    task_id: id.into_bytes(),
                    task_name: RStr::from(task.as_str()),
                    attempt,
                    max_attempts,
                    cancelled,
                };
                call(run, &ctx, &args.0)
            }
            None => (
                Err(Failure {
                    kind: FailureKind::Error,
                    message: format!("this child does not know task `{task}`"),
                }),
                Duration::ZERO,
            ),
        };
        end_of_output();
        send(
            &writer,
            &FromChild::Done {
                result: result.0,
                elapsed_us: u64::try_from(result.1.as_micros()).unwrap_or(u64::MAX),
            },
        );
    }
    Ok(())
}

type Outcome = (Result<Payload, Failure>, Duration);

fn call(run: RunFn, ctx: &HostCtx<'_>, args: &[u8]) -> Outcome {
    let start = Instant::now();
    let returned = run(ctx, RSlice::from(args));
    let elapsed = start.elapsed();
    match returned {
        // The library's glue refuses such a result; one built against an older castor-abi
        // may not, and the frame would be refused, which the worker would take for a crash.
        RResult::ROk(bytes) if bytes.len() > codec::MAX_PAYLOAD => (
            Err(Failure {
                kind: FailureKind::Error,
                message: codec::result_too_large(ctx.task_name.as_str(), bytes.len()),
            }),
            elapsed,
        ),
        RResult::ROk(bytes) => (Ok(Payload(bytes.into_vec())), elapsed),
        RResult::RErr(failure) => (
            Err(Failure {
                kind: failure.kind,
                message: fit(failure.message.into_string()),
            }),
            elapsed,
        ),
    }
}

/// A task's text (an error, a log line) cut to fit in a frame, saying so.
fn fit(mut text: String) -> String {
    if text.len() <= codec::MAX_PAYLOAD {
        return text;
    }
    let len = text.len();
    let mut cut = codec::MAX_PAYLOAD - 100;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(
        " [cut: the text was {}]",
        codec::over_limit(len, codec::MAX_PAYLOAD)
    ));
    text
}

/// Moves the socket off standard input and puts `/dev/null` there instead.
fn take_socket() -> anyhow::Result<UnixStream> {
    // SAFETY: plain descriptor syscalls on descriptors this process owns.
    unsafe {
        let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("take the socket from stdin");
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        Ok(UnixStream::from(OwnedFd::from_raw_fd(fd)))
    }
}

/// Dies with the worker: the kernel sends SIGKILL when the parent exits. If the worker is
/// already gone (it died between spawning us and this call), exit now.
fn die_with_parent(parent: u32) -> anyhow::Result<()> {
    // SAFETY: prctl with constant arguments; getppid has no preconditions.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("set PR_SET_PDEATHSIG");
        }
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            anyhow::bail!("the worker ({parent}) is already gone");
        }
    }
    Ok(())
}

/// Caps the child's address space, so a runaway allocation fails in the child instead of
/// exhausting the machine.
fn limit_memory(bytes: u64) -> anyhow::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the live struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("set the memory limit");
    }
    Ok(())
}

type Loaded = (HashMap<String, RunFn>, AttachFn);

fn load(args: &ChildArgs) -> anyhow::Result<Loaded> {
    let plugin = Plugin::load(&args.library)?;
    let attach = plugin.attach();
    let manager = plugin.into_manager(&args.manager)?;
    let tasks = manager
        .tasks
        .iter()
        .map(|t| (t.name.to_string(), t.run))
        .collect();
    Ok((tasks, attach))
}

/// Writes the end-of-task marker to stdout and stderr, past any buffering, so the worker
/// can tell which output belongs to the task that just ended.
fn end_of_output() {
    let line = format!("{END_MARKER}\n");
    for fd in [1, 2] {
        // SAFETY: writes a live buffer to a descriptor this process owns.
        unsafe {
            libc::write(fd, line.as_ptr().cast(), line.len());
        }
    }
}

fn send(writer: &Mutex<UnixStream>, message: &FromChild) {
    let mut socket = writer.lock().unwrap_or_else(PoisonError::into_inner);
    if protocol::write_frame(&mut *socket, message).is_err() {
        // The worker is gone.
        std::process::exit(0);
    }
}

/// Reads the worker's messages: runs go to the main loop, replies to the task waiting for
/// them, cancellation to the flag. Exits the process when the socket closes.
fn spawn_reader(
    socket: UnixStream,
    services: &'static ChildServices,
    cancelled: &'static AtomicBool,
    runs: Sender<ToChild>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("castor-child-reader".into())
        .spawn(move || {
            let mut socket = socket;
            loop {
                match protocol::read_frame::<ToChild>(&mut socket) {
                    Ok(Some(run @ ToChild::Run { .. })) => {
                        let _ = runs.send(run);
                    }
                    Ok(Some(ToChild::Cancel)) => cancelled.store(true, Ordering::SeqCst),
                    Ok(Some(ToChild::Reply { call, reply })) => {
                        let waiter = services
                            .pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&call);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(reply);
                        }
                    }
                    // The worker closed the socket (retired us) or died.
                    Ok(None) | Err(_) => std::process::exit(0),
                }
            }
        })
        .context("start the reader thread")?;
    Ok(())
}

/// A task's services in a child: everything goes to the worker over the socket.
struct ChildServices {
    writer: Arc<Mutex<UnixStream>>,
    pending: Mutex<HashMap<u64, Sender<Reply>>>,
    next_call: AtomicU64,
}

impl ChildServices {
    fn ask(&self, request: Request) -> Option<Reply> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx): (Sender<Reply>, Receiver<Reply>) = crossbeam_channel::bounded(1);
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(call, tx);
        send(&self.writer, &FromChild::Call { call, request });
        rx.recv().ok()
    }
}

impl Services for ChildServices {
    fn dispatch(
        &self,
        task: &str,
        args: &[u8],
        options: &DispatchOptionsAbi,
    ) -> Result<Uuid, String> {
        if args.len() > codec::MAX_PAYLOAD {
            return Err(codec::args_too_large(task, args.len()));
        }
        match self.ask(Request::Dispatch {
            task: task.to_owned(),
            args: Payload(args.to_vec()),
            options: options.into(),
        }) {
            Some(Reply::Dispatched(result)) => result,
            _ => Err("the worker did not answer".into()),
        }
    }

    fn snapshot(&self, id: Uuid) -> Result<Option<Snapshot>, String> {
        match self.ask(Request::Snapshot { id }) {
            Some(Reply::Snapshot(result)) => result,
            _ => Err("the worker did not answer".into()),
        }
    }

    fn generation(&self) -> u64 {
        match self.ask(Request::Generation) {
            Some(Reply::Generation(g)) => g,
            _ => 0,
        }
    }

    fn wait_change(&self, since: u64, timeout_ms: u64) -> u64 {
        match self.ask(Request::WaitChange { since, timeout_ms }) {
            Some(Reply::Generation(g)) => g,
            _ => since.wrapping_add(1),
        }
    }

    fn log(&self, id: Uuid, level: LogLevel, line: &str) {
        send(
            &self.writer,
            &FromChild::Log {
                id,
                level,
                line: fit(line.to_owned()),
            },
        );
    }

    fn progress(&self, id: Uuid, done: u64, total: u64, message: &str) {
        send(
            &self.writer,
            &FromChild::Progress {
                id,
                done,
                total,
                message: fit(message.to_owned()),
            },
        );
    }
}
