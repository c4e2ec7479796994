//! Several processes on one file: three workers draining one queue, and three apps
//! dispatching into it at once. Each is compared with one worker, or one app, measured
//! in the same run on the same number of tasks.
//!
//! The apps are this program re-executed in its hidden `dispatch` mode
//! ([`dispatch_child`]): each opens the database, says `ready`, waits for a line on its
//! standard input, then calls `delay()` one task at a time. The clock starts when the
//! last app is ready and stops when every task has finished.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Instant;

use castor_bench::noop;
use castor_store::{OpenOptions, Store};

use crate::ceiling::Ceilings;
use crate::scenarios::{DRAIN_TIMEOUT, client, err, fresh, timed_drain, wait_drained};
use crate::table::Report;
use crate::worker::Worker;
use crate::{Options, Row, count, measure_group};

/// How many workers, and how many apps, share the file.
const SEVERAL: usize = 3;

/// Both scenarios.
pub fn run(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    workers(options, ceilings, report)?;
    apps(options, ceilings, report)
}

/// Three workers with one thread each drain one queue, against one worker with its
/// default thread pool.
fn workers(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    let n = options.size(20_000);
    let rows = [
        Row::new(
            "workers_3",
            format!("{SEVERAL} workers x 1 thread: drain {} queued", count(n)),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "workers_ratio",
            format!("{SEVERAL} workers / 1 worker (default threads): drain"),
            "x",
        ),
        Row::new(
            "workers_min_share",
            format!("{SEVERAL} workers: least busy worker's share of tasks"),
            "%",
        ),
    ];
    measure_group(report, options, &rows, |run| {
        let db = fresh(options, "workers-1", run);
        let one = timed_drain(options, &db, n, false, &[&[]])?;
        let db = fresh(options, "workers-3", run);
        let one_thread: &[&str] = &["--threads", "1"];
        let several = timed_drain(options, &db, n, false, &[one_thread; SEVERAL])?;
        // The workers have stopped, each recording its final count.
        let store = Store::open(&db, OpenOptions::app()).map_err(err)?;
        let completed: Vec<i64> = store
            .workers(false)
            .map_err(err)?
            .iter()
            .map(|w| w.completed)
            .collect();
        let total: i64 = completed.iter().sum();
        let least = completed.iter().copied().min().unwrap_or(0);
        if completed.len() != SEVERAL || total == 0 {
            return Err(format!("worker counts {completed:?} after the drain"));
        }
        Ok(vec![
            several,
            several / one,
            least as f64 / total as f64 * 100.0,
        ])
    })
}

/// Three apps call `delay()` concurrently while one worker drains, against one app
/// making all the calls.
fn apps(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    let per_app = options.size(20_000) / SEVERAL;
    let rows = [
        Row::new(
            "apps_3",
            format!(
                "{SEVERAL} apps x {} delay() calls, 1 worker",
                count(per_app)
            ),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "apps_ratio",
            format!("{SEVERAL} apps / 1 app (same calls): end to end"),
            "x",
        ),
    ];
    measure_group(report, options, &rows, |run| {
        let db = fresh(options, "apps-1", run);
        let one = dispatching_apps(options, &db, 1, per_app * SEVERAL)?;
        let db = fresh(options, "apps-3", run);
        let several = dispatching_apps(options, &db, SEVERAL, per_app)?;
        Ok(vec![several, several / one])
    })
}

/// An app process in `dispatch` mode, ready to go.
struct App {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl App {
    /// Starts `castor-bench dispatch DB N` and waits for its `ready`.
    fn start(options: &Options, db: &Path, n: usize) -> Result<App, String> {
        let mut child = Command::new(&options.bench)
            .arg("dispatch")
            .arg(db)
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", options.bench.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipe to the dispatching app".into());
        };
        let mut app = App {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = app.read_line()?;
        if line != "ready" {
            return Err(format!(
                "the dispatching app said {line:?} instead of ready"
            ));
        }
        Ok(app)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading from the dispatching app: {e}"))?;
        Ok(line.trim().to_owned())
    }

    /// Lets it dispatch.
    fn go(&mut self) -> Result<(), String> {
        writeln!(self.stdin, "go").map_err(|e| format!("cannot start the dispatching app: {e}"))
    }

    /// Waits until it has dispatched everything and exited.
    fn finish(mut self) -> Result<(), String> {
        let line = self.read_line()?;
        let status = self.child.wait().map_err(err)?;
        if !status.success() || line != "done" {
            return Err(format!(
                "the dispatching app ended with {status} ({line:?})"
            ));
        }
        Ok(())
    }
}

/// `apps` app processes each make `per_app` `delay()` calls while one worker (default
/// options) drains; the tasks per second from the go signal until all have finished.
fn dispatching_apps(
    options: &Options,
    db: &Path,
    apps: usize,
    per_app: usize,
) -> Result<f64, String> {
    let _worker = Worker::start(options, db, &[])?;
    let mut started = (0..apps)
        .map(|_| App::start(options, db, per_app))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    for app in &mut started {
        app.go()?;
    }
    // Every task is dispatched once every app has exited; only then can "none
    // unfinished" mean "all done".
    for app in started {
        app.finish()?;
    }
    wait_drained(db, DRAIN_TIMEOUT)?;
    Ok((apps * per_app) as f64 / start.elapsed().as_secs_f64())
}

/// The app side of the several-apps scenario: `castor-bench dispatch DB N` opens the
/// bench manager on DB, prints `ready`, waits for a line on standard input, calls
/// `noop::delay` N times, prints `done` and exits. Standard input closing before the
/// line comes means the benchmark gave up: it exits without dispatching.
pub fn dispatch_child(args: &[String]) -> ExitCode {
    let (Some(db), Some(n)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: castor-bench dispatch DB N");
        return ExitCode::FAILURE;
    };
    match dispatch(Path::new(db), n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castor-bench dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The body of [`dispatch_child`].
fn dispatch(db: &Path, n: usize) -> Result<(), String> {
    let client = client(db, false)?;
    println!("ready");
    std::io::stdout().flush().map_err(err)?;
    let mut go = String::new();
    if std::io::stdin().read_line(&mut go).map_err(err)? == 0 {
        return Err("standard input closed before the go signal".into());
    }
    for _ in 0..n {
        noop::delay(&client).map_err(err)?;
    }
    println!("done");
    Ok(())
}
