//! The scenarios: each one a real `castor` worker and a real app (this process) on a
//! fresh database in the scratch directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use castor_abi::store::{Store, StoreOptions, Watcher};
use castor_abi::{Client, DelayOptions};
use castor_bench::{bench, noop};

use crate::ceiling::Ceilings;
use crate::table::{Report, percentile};
use crate::worker::Worker;
use crate::{Options, measure};

/// A fresh database path (old files removed).
fn fresh(options: &Options, name: &str, run: usize) -> PathBuf {
    let path = options.scratch.join(format!("{name}-{run}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    path
}

fn client(db: &Path) -> Result<Client, String> {
    bench().with_database(db).open().map_err(|e| e.to_string())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Waits until no task of the bench manager is unfinished, waking on each commit.
fn wait_drained(db: &Path, timeout: Duration) -> Result<(), String> {
    let store = Store::open(db, StoreOptions::default()).map_err(err)?;
    let watcher = Watcher::start(db).map_err(err)?;
    let deadline = Instant::now() + timeout;
    loop {
        let generation = watcher.generation();
        if store.unfinished("bench").map_err(err)? == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("tasks still unfinished after {timeout:?}"));
        }
        watcher.wait_past(generation, deadline);
    }
}

pub fn run_all(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    let n_batch = options.size(50_000);
    measure(
        report,
        options,
        &format!("batch dispatch: delay_many of {n_batch}"),
        "/s",
        Some(("raw 100-row batches", ceilings.batched_rows)),
        |run| {
            let db = fresh(options, "batch", run);
            let client = client(&db)?;
            let start = Instant::now();
            noop::delay_many(&client, (0..n_batch).map(|_| ())).map_err(err)?;
            Ok(n_batch as f64 / start.elapsed().as_secs_f64())
        },
    )?;

    let n_drain = options.size(20_000);
    measure(
        report,
        options,
        &format!("drain: {n_drain} queued no-op thread tasks"),
        "/s",
        Some(("raw cycle", ceilings.cycle)),
        |run| {
            let db = fresh(options, "drain", run);
            let client = client(&db)?;
            let _worker = Worker::start(options, &db, &[])?;
            noop::delay_many(&client, (0..n_drain).map(|_| ())).map_err(err)?;
            let start = Instant::now();
            wait_drained(&db, Duration::from_secs(600))?;
            Ok(n_drain as f64 / start.elapsed().as_secs_f64())
        },
    )?;

    let n_e2e = options.size(20_000);
    measure(
        report,
        options,
        &format!("end to end: {n_e2e} delay() calls while draining"),
        "/s",
        Some(("raw cycle", ceilings.cycle)),
        |run| {
            let db = fresh(options, "e2e", run);
            let client = client(&db)?;
            let _worker = Worker::start(options, &db, &[])?;
            let start = Instant::now();
            for _ in 0..n_e2e {
                noop::delay(&client).map_err(err)?;
            }
            wait_drained(&db, Duration::from_secs(600))?;
            Ok(n_e2e as f64 / start.elapsed().as_secs_f64())
        },
    )?;

    let n_rt = if options.quick { 50 } else { 300 };
    let mut p99s = Vec::new();
    measure(
        report,
        options,
        &format!("round trip p50: delay+join, {n_rt} sequential"),
        "ms",
        Some(("raw commit latency", ceilings.commit_ms)),
        |run| {
            let db = fresh(options, "roundtrip", run);
            let client = client(&db)?;
            let _worker = Worker::start(options, &db, &[])?;
            let mut latencies = Vec::with_capacity(n_rt);
            for i in 0..n_rt + 20 {
                let start = Instant::now();
                noop::delay(&client)
                    .map_err(err)?
                    .join(Duration::from_secs(10))
                    .map_err(err)?;
                if i >= 20 {
                    latencies.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            latencies.sort_by(f64::total_cmp);
            p99s.push(percentile(&latencies, 99.0));
            Ok(percentile(&latencies, 50.0))
        },
    )?;
    if !p99s.is_empty() {
        let m = crate::table::Measurement::new(
            &format!("round trip p99: delay+join, {n_rt} sequential"),
            "ms",
            p99s,
            Some(("raw commit latency", ceilings.commit_ms)),
        );
        println!("{}", m.line());
        report.push(m);
    }

    process_mode(options, report)?;

    let idle = Duration::from_secs(if options.quick { 2 } else { 10 });
    measure(
        report,
        options,
        "idle worker CPU",
        "% of a core",
        None,
        |run| {
            let db = fresh(options, "idle", run);
            let worker = Worker::start(options, &db, &[])?;
            std::thread::sleep(Duration::from_millis(500));
            let before = worker.cpu_time();
            std::thread::sleep(idle);
            let used = worker.cpu_time() - before;
            Ok(used.as_secs_f64() / idle.as_secs_f64() * 100.0)
        },
    )?;
    measure(
        report,
        options,
        "idle join CPU (app waiting on a task)",
        "% of a core",
        None,
        |run| {
            let db = fresh(options, "idle-join", run);
            let exe = std::env::current_exe().map_err(err)?;
            let out = std::process::Command::new(exe)
                .arg("idle-join")
                .arg(&db)
                .arg(idle.as_secs().to_string())
                .output()
                .map_err(err)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let cpu_us: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("idle-join printed {text:?}"))?;
            Ok(cpu_us / 1e6 / idle.as_secs_f64() * 100.0)
        },
    )?;
    Ok(())
}

/// Process mode: what a warm child costs per task, and how CPU-bound work scales over
/// the cores.
fn process_mode(options: &Options, report: &mut Report) -> Result<(), String> {
    let n = options.size(5_000);
    let mut per_task = |name: &str, process: bool| -> Result<(), String> {
        measure(report, options, name, "us/task", None, |run| {
            let db = fresh(
                options,
                if process { "proc-noop" } else { "thread-noop" },
                run,
            );
            let client = client(&db)?;
            let _worker = Worker::start(options, &db, &[])?;
            let start = Instant::now();
            if process {
                castor_bench::noop_process::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            } else {
                noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            }
            wait_drained(&db, Duration::from_secs(600))?;
            Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
        })
    };
    per_task(
        &format!("process mode: {n} no-op process tasks, wall time per task"),
        true,
    )?;
    per_task(
        &format!("thread mode: {n} no-op thread tasks, wall time per task"),
        false,
    )?;

    let n_rt = if options.quick { 30 } else { 200 };
    measure(
        report,
        options,
        &format!("process mode: round trip p50, {n_rt} sequential"),
        "ms",
        None,
        |run| {
            let db = fresh(options, "proc-rt", run);
            let client = client(&db)?;
            let _worker = Worker::start(options, &db, &[])?;
            let mut latencies = Vec::with_capacity(n_rt);
            for i in 0..n_rt + 10 {
                let start = Instant::now();
                castor_bench::noop_process::delay(&client)
                    .map_err(err)?
                    .join(Duration::from_secs(10))
                    .map_err(err)?;
                if i >= 10 {
                    latencies.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            latencies.sort_by(f64::total_cmp);
            Ok(percentile(&latencies, 50.0))
        },
    )?;

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (tasks, ms) = if options.quick { (4, 100) } else { (8, 250) };
    let timed = |processes: usize, run: usize| -> Result<f64, String> {
        let db = fresh(options, &format!("spin-{processes}"), run);
        let client = client(&db)?;
        let procs = processes.to_string();
        let _worker = Worker::start(options, &db, &["--processes", &procs])?;
        let start = Instant::now();
        let handles =
            castor_bench::spin::delay_many(&client, (0..tasks).map(|_| (ms,))).map_err(err)?;
        for handle in handles {
            handle.join(Duration::from_secs(600)).map_err(err)?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    measure(
        report,
        options,
        &format!("process mode: {tasks} x {ms} ms CPU tasks, speed-up {cores} procs vs 1"),
        "x",
        None,
        |run| {
            let one = timed(1, run)?;
            let all = timed(cores, run)?;
            Ok(one / all)
        },
    )
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
    let Ok(client) = client(Path::new(db)) else {
        return ExitCode::FAILURE;
    };
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let Ok(handle) = noop::delay_with(&client, &later) else {
        return ExitCode::FAILURE;
    };
    // Start the watcher, let start-up costs pass, then measure only the wait.
    let _ = handle.join(Duration::from_millis(500));
    let before = cpu_self();
    let _ = handle.join(Duration::from_secs(secs));
    println!("{}", (cpu_self() - before).as_micros());
    ExitCode::SUCCESS
}

fn cpu_self() -> Duration {
    crate::worker::cpu_time(std::process::id())
}
