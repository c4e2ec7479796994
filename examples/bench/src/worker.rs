//! Starts and stops real `castor` workers for the scenarios, and reads their CPU time
//! and memory from `/proc`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Options;

/// A running `castor` worker; stopped (Ctrl+C) on drop.
pub struct Worker {
    child: Child,
}

/// The variable whose words are added to every worker's arguments (e.g. `--metrics
/// 127.0.0.1:9464`, to measure what serving metrics costs).
pub const WORKER_ARGS_ENV: &str = "CASTOR_BENCH_WORKER_ARGS";

/// The words of [`WORKER_ARGS_ENV`].
fn extra_args() -> Vec<String> {
    std::env::var(WORKER_ARGS_ENV)
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Worker {
    /// Starts `castor LIB:bench --db DB --quiet ARGS..` and waits until it is ready (`DB`
    /// a SQLite file's path or a `postgres://` URL).
    pub fn start(
        options: &Options,
        db: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Result<Worker, String> {
        let target = format!("{}:bench", options.library.display());
        Worker::start_target(options, &target, db, args)
    }

    /// Starts `castor TARGET --db DB --quiet ARGS..` and waits until it is ready.
    pub fn start_target(
        options: &Options,
        target: &str,
        db: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Result<Worker, String> {
        let mut child = Command::new(&options.castor)
            .arg(target)
            .arg("--db")
            .arg(db)
            .arg("--quiet")
            .args(args)
            .args(extra_args())
            // `--quiet` decides what it prints (and the start-up line waited for below),
            // not the shell's RUST_LOG.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", options.castor.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ctrl+C to stop") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the worker did not start within 30 s".to_owned())?;
        Ok(Worker { child })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts sampling the worker's anonymous memory (see [`HeapSampler`]).
    pub fn sample_heap(&self) -> HeapSampler {
        HeapSampler::start(self.pid())
    }

    /// The worker's peak resident set so far (`VmHWM`), in KiB. It counts the database
    /// pages the worker touched through SQLite's memory map as well as its heap.
    pub fn peak_rss_kib(&self) -> Result<u64, String> {
        status_kib(self.pid(), "VmHWM")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every thread's on-CPU time (`/proc/PID/task/*/schedstat`, in nanoseconds, so
/// small idle costs are measurable in seconds rather than minutes of clock ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// CPU time so far of a process, its threads, and every process descended from it.
pub fn tree_cpu_time(pid: u32) -> Duration {
    let mut total = cpu_time(pid);
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for child in children(parent) {
            total += cpu_time(child);
            parents.push(child);
        }
    }
    total
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            std::fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| {
                    // Fields after the name in parentheses: state, then the parent's pid.
                    let after_name = stat.rsplit_once(')')?.1.to_owned();
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A field of `/proc/PID/status` given in kB (`VmHWM`, `RssAnon`, ..).
pub fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("{path} has no {field} line"))
}

/// Samples a process's `RssAnon` (heap and other private memory, not the memory-mapped
/// database file) every few milliseconds on a thread, keeping the peak: the kernel keeps
/// a peak only of the total (`VmHWM`), which grows with every database page read through
/// the map and so says nothing about what the process holds itself.
pub struct HeapSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl HeapSampler {
    /// How often the sampler reads `/proc/PID/status`.
    const EVERY: Duration = Duration::from_millis(5);

    fn start(pid: u32) -> HeapSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                if let Ok(kib) = status_kib(pid, "RssAnon") {
                    peak = peak.max(kib);
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Self::EVERY);
            }
        });
        HeapSampler { stop, thread }
    }

    /// Stops sampling and returns the peak `RssAnon` seen, in KiB.
    pub fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(0) => Err("could not read the worker's RssAnon".into()),
            Ok(peak) => Ok(peak),
            Err(_) => Err("the memory sampler panicked".into()),
        }
    }
}
