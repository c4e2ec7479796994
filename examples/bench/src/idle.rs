//! The idle cost: the CPU a worker with nothing to do uses, for each shape of library
//! (thread tasks only: the quickstart's own library, the shape a new user runs first;
//! process tasks only; both), with every task scheduled far ahead, after draining a burst,
//! under the dashboard (`castor -i` in a tmux pseudo terminal), and of an app blocked in
//! `join`. Each over 10 s (2 s in quick mode), worker children included.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use castor_abi::DelayOptions;
use castor_bench::noop;

use crate::scenarios::{DRAIN_TIMEOUT, client, err, fresh, wait_drained};
use crate::table::Report;
use crate::worker::{Worker, tree_cpu_time};
use crate::{Options, Row, count, measure};

/// Left to pass after start-up (and after a burst) before the measurement begins.
const SETTLE: Duration = Duration::from_millis(500);

/// What runs while it is measured; stopped on drop.
enum Subject {
    Worker(Worker),
    Dashboard(Dashboard),
}

impl Subject {
    fn pid(&self) -> u32 {
        match self {
            Subject::Worker(worker) => worker.pid(),
            Subject::Dashboard(dashboard) => dashboard.pid,
        }
    }
}

/// Every idle scenario.
pub fn run(options: &Options, report: &mut Report) -> Result<(), String> {
    let idle = Duration::from_secs(if options.quick { 2 } else { 10 });
    let quickstart = format!("{}:manager", options.quickstart.display());
    let threads_only = format!("{}:bench_threads", options.library.display());
    let processes_only = format!("{}:bench_processes", options.library.display());
    let mut case = |id: &'static str,
                    name: &str,
                    start: &mut dyn FnMut(&Path) -> Result<Subject, String>|
     -> Result<(), String> {
        let row = Row::new(id, name, "% of a core");
        measure(report, options, row, |run| {
            let db = fresh(options, id, run);
            let subject = start(&db)?;
            std::thread::sleep(SETTLE);
            let before = tree_cpu_time(subject.pid());
            std::thread::sleep(idle);
            let used = tree_cpu_time(subject.pid()) - before;
            Ok(used.as_secs_f64() / idle.as_secs_f64() * 100.0)
        })
    };
    case(
        "idle_worker_threads",
        "idle worker, thread tasks only (quickstart): CPU",
        &mut |db| Worker::start_target(options, &quickstart, db, &[]).map(Subject::Worker),
    )?;
    case(
        "idle_worker_processes",
        "idle worker, process tasks only: CPU",
        &mut |db| Worker::start_target(options, &processes_only, db, &[]).map(Subject::Worker),
    )?;
    case(
        "idle_worker",
        "idle worker, thread and process tasks: CPU",
        &mut |db| Worker::start(options, db, &[]).map(Subject::Worker),
    )?;
    let ahead = options.size(1_000);
    case(
        "idle_scheduled_ahead",
        &format!("idle worker, {} tasks due in 1 h: CPU", count(ahead)),
        &mut |db| {
            let worker = Worker::start(options, db, &[])?;
            let app = client(db, false)?;
            let later = DelayOptions::new().after(Duration::from_secs(3600));
            for _ in 0..ahead {
                noop::delay_with(&app, &later).map_err(err)?;
            }
            Ok(Subject::Worker(worker))
        },
    )?;
    let burst = options.size(20_000);
    case(
        "idle_after_burst",
        &format!(
            "idle worker after a {} burst, thread only: CPU",
            count(burst)
        ),
        &mut |db| {
            let worker = Worker::start_target(options, &threads_only, db, &[])?;
            let app = castor_bench::bench_threads()
                .with_database(db)
                .open()
                .map_err(err)?;
            noop::delay_many(&app, (0..burst).map(|_| ())).map_err(err)?;
            wait_drained(db, DRAIN_TIMEOUT)?;
            Ok(Subject::Worker(worker))
        },
    )?;
    case(
        "idle_dashboard",
        "idle dashboard (castor -i, in tmux): CPU",
        &mut |db| Dashboard::start(options, db).map(Subject::Dashboard),
    )?;
    idle_join(options, report, idle)
}

/// An app blocked in `join` on a task that will not run (another process: this program
/// re-executed).
fn idle_join(options: &Options, report: &mut Report, idle: Duration) -> Result<(), String> {
    let row = Row::new(
        "idle_join",
        "idle join: CPU of an app waiting on a task",
        "% of a core",
    );
    measure(report, options, row, |run| {
        let db = fresh(options, "idle-join", run);
        let out = Command::new(&options.bench)
            .arg("idle-join")
            .arg(&db)
            .arg(idle.as_secs().to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", options.bench.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let cpu_us: f64 = text.trim().parse().map_err(|_| {
            format!(
                "idle-join printed {text:?} ({}; stderr {:?})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok(cpu_us / 1e6 / idle.as_secs_f64() * 100.0)
    })
}

/// The child side of the idle-join scenario: wait on a task that will not run for the
/// given seconds (after a short settle), then print this process's CPU time in
/// microseconds.
pub fn idle_join_child(args: &[String]) -> ExitCode {
    let (Some(db), Some(secs)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: castor-bench idle-join DB SECONDS");
        return ExitCode::FAILURE;
    };
    let client = match client(Path::new(db), false) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("idle-join: {e}");
            return ExitCode::FAILURE;
        }
    };
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let handle = match noop::delay_with(&client, &later) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("idle-join: cannot dispatch: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Start the watcher, let start-up costs pass, then measure only the wait.
    let _ = handle.join(SETTLE);
    let before = cpu_self();
    let _ = handle.join(Duration::from_secs(secs));
    println!("{}", (cpu_self() - before).as_micros());
    ExitCode::SUCCESS
}

/// This process's CPU time so far.
fn cpu_self() -> Duration {
    crate::worker::cpu_time(std::process::id())
}

/// `castor LIB:bench -i` in a tmux server of its own (a real pseudo terminal, redrawn as a
/// user's would be); quit with `q` and the server killed on drop.
struct Dashboard {
    socket: String,
    pid: u32,
}

impl Dashboard {
    fn start(options: &Options, db: &Path) -> Result<Dashboard, String> {
        // Built first, so that a failure below still kills the tmux server on drop.
        let mut dashboard = Dashboard {
            socket: format!("castor-bench-{}-{}", std::process::id(), fresh_suffix()),
            pid: 0,
        };
        // `exec`: the pane's process is the dashboard itself, not a shell around it.
        let command = format!(
            "exec '{}' '{}:bench' --db '{}' -i",
            options.castor.display(),
            options.library.display(),
            db.display()
        );
        let started = dashboard.tmux(&[
            "new-session",
            "-d",
            "-s",
            "castor",
            "-x",
            "120",
            "-y",
            "40",
            &command,
        ])?;
        if !started.status.success() {
            return Err(format!(
                "tmux could not start the dashboard: {}",
                String::from_utf8_lossy(&started.stderr).trim()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = dashboard.tmux(&["capture-pane", "-p", "-t", "castor"])?;
            if String::from_utf8_lossy(&screen.stdout).contains("Tasks by state") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the dashboard did not show up within 30 s:\n{}",
                    String::from_utf8_lossy(&screen.stdout)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let panes = dashboard.tmux(&["list-panes", "-t", "castor", "-F", "#{pane_pid}"])?;
        dashboard.pid = String::from_utf8_lossy(&panes.stdout)
            .trim()
            .parse()
            .map_err(|_| "tmux gave no pane pid for the dashboard".to_owned())?;
        Ok(dashboard)
    }

    fn tmux(&self, args: &[&str]) -> Result<std::process::Output, String> {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run tmux (needed for the idle dashboard scenario): {e}"))
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = self.tmux(&["send-keys", "-t", "castor", "q"]);
            let deadline = Instant::now() + Duration::from_secs(30);
            // SAFETY: signal 0 only asks whether our dashboard process still exists.
            while Instant::now() < deadline && unsafe { libc::kill(self.pid as i32, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.tmux(&["kill-server"]);
    }
}

/// A suffix that differs between calls in one process.
fn fresh_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
