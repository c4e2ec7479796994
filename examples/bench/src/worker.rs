//! Starts and stops real `castor` workers for the scenarios, and reads their CPU time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Options;

/// A running `castor` worker; stopped (Ctrl+C) on drop.
pub struct Worker {
    child: Child,
}

impl Worker {
    /// Starts `castor LIB:bench --db DB --quiet ARGS..` and waits until it is ready.
    pub fn start(options: &Options, db: &Path, args: &[&str]) -> Result<Worker, String> {
        let target = format!("{}:bench", options.library.display());
        let mut child = Command::new(&options.castor)
            .arg(target)
            .arg("--db")
            .arg(db)
            .arg("--quiet")
            .args(args)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far by all of the worker's threads.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
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
