//! The core scenarios, each one a real `castor` worker and a real app (this process, or
//! this program re-executed) on a fresh database in the scratch directory: dispatch,
//! drain, end to end and round trip (with the default durability and with `--durable`),
//! process mode, and the idle cost of a worker and of a waiting `join`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use castor_abi::store::{Store, StoreOptions, Watcher};
use castor_abi::{Client, DelayOptions};
use castor_bench::{bench, noop, noop_ctx_logged, noop_logged};

use crate::ceiling::Ceilings;
use crate::table::{Report, percentile};
use crate::worker::Worker;
use crate::{Options, Row, count, measure, measure_group};

/// The longest any drain may take before the scenario fails.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// A fresh database path (old files removed).
pub fn fresh(options: &Options, name: &str, run: usize) -> PathBuf {
    let path = options.scratch.join(format!("{name}-{run}.db"));
    remove_db(&path);
    path
}

/// Removes a database and its `-wal` and `-shm` files, if they exist.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The bench manager opened on `db`, with `synchronous=FULL` if `durable`.
pub fn client(db: &Path, durable: bool) -> Result<Client, String> {
    bench()
        .with_database(db)
        .durable(durable)
        .open()
        .map_err(|e| format!("cannot open {}: {e}", db.display()))
}

/// Error to string, for `map_err`.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The worker options for a durability setting.
pub fn durability(durable: bool) -> &'static [&'static str] {
    if durable { &["--durable"] } else { &[] }
}

/// Waits until no task of the bench manager is unfinished, waking on each commit.
/// (Counts the unfinished tasks on each wake-up: fine for tens of thousands, too slow
/// for a large backlog, which waits on the last task's handle instead.)
pub fn wait_drained(db: &Path, timeout: Duration) -> Result<(), String> {
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

/// Starts one worker per entry of `workers` (each entry its options) on `db`, queues `n`
/// no-op thread tasks in one transaction, and returns the tasks per second from that
/// commit until none is unfinished.
pub fn timed_drain(
    options: &Options,
    db: &Path,
    n: usize,
    durable: bool,
    workers: &[&[&str]],
) -> Result<f64, String> {
    let client = client(db, durable)?;
    let _workers = workers
        .iter()
        .map(|args| Worker::start(options, db, args))
        .collect::<Result<Vec<_>, _>>()?;
    noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
    let start = Instant::now();
    wait_drained(db, DRAIN_TIMEOUT)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Every scenario of this module, default durability first, then `--durable`.
pub fn run_all(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    batch_dispatch(options, ceilings, report)?;
    drain(options, ceilings, report, false)?;
    logged_drain(options, ceilings, report, false)?;
    logged_drain(options, ceilings, report, true)?;
    end_to_end(options, ceilings, report, false)?;
    round_trip(options, ceilings, report, false)?;
    process_mode(options, report)?;
    idle(options, report)?;
    drain(options, ceilings, report, true)?;
    end_to_end(options, ceilings, report, true)?;
    round_trip(options, ceilings, report, true)
}

/// `delay_many` of tens of thousands of tasks in one transaction, no worker running.
fn batch_dispatch(
    options: &Options,
    ceilings: &Ceilings,
    report: &mut Report,
) -> Result<(), String> {
    let n = options.size(50_000);
    let row = Row::new(
        "batch",
        format!("batch dispatch: delay_many of {}", count(n)),
        "/s",
    )
    .vs("raw 100-row batches", ceilings.batched_rows);
    measure(report, options, row, |run| {
        let db = fresh(options, "batch", run);
        let client = client(&db, false)?;
        let start = Instant::now();
        noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// A worker (default options) drains tasks queued in one transaction.
fn drain(
    options: &Options,
    ceilings: &Ceilings,
    report: &mut Report,
    durable: bool,
) -> Result<(), String> {
    let n = options.size(20_000);
    let row = if durable {
        Row::new(
            "durable_drain",
            format!("durable: drain {} queued no-op thread tasks", count(n)),
            "/s",
        )
        .vs("raw FULL cycle", ceilings.cycle_durable)
    } else {
        Row::new(
            "drain",
            format!("drain: {} queued no-op thread tasks", count(n)),
            "/s",
        )
        .vs("raw cycle", ceilings.cycle)
    };
    let name = if durable { "durable-drain" } else { "drain" };
    measure(report, options, row, |run| {
        let db = fresh(options, name, run);
        timed_drain(options, &db, n, durable, &[durability(durable)])
    })
}

/// The drain again, each task logging one line: through `tracing` (captured across the
/// library boundary, then stored), or through `ctx.info` (stored only), which tells the
/// capture's cost from the storage's.
fn logged_drain(
    options: &Options,
    ceilings: &Ceilings,
    report: &mut Report,
    via_ctx: bool,
) -> Result<(), String> {
    let n = options.size(20_000);
    let (id, how) = if via_ctx {
        ("ctx_log_drain", "a ctx.info line")
    } else {
        ("log_drain", "a tracing line")
    };
    let row = Row::new(
        id,
        format!("drain: {} thread tasks logging {how}", count(n)),
        "/s",
    )
    .vs("raw cycle", ceilings.cycle);
    measure(report, options, row, |run| {
        let db = fresh(options, id, run);
        let client = client(&db, false)?;
        let _worker = Worker::start(options, &db, &[])?;
        let last = if via_ctx {
            noop_ctx_logged::delay_many(&client, (0..n).map(|_| ())).map_err(err)?
        } else {
            noop_logged::delay_many(&client, (0..n).map(|_| ())).map_err(err)?
        }
        .pop()
        .ok_or("nothing was dispatched")?;
        let start = Instant::now();
        wait_drained(&db, DRAIN_TIMEOUT)?;
        let rate = n as f64 / start.elapsed().as_secs_f64();
        // The line really was stored (not dropped on the way).
        let logs = last.logs().map_err(err)?;
        match logs.as_slice() {
            [line] if line.line.ends_with("done answer=42") => Ok(rate),
            other => Err(format!(
                "the last task's log is {other:?}, not its one line"
            )),
        }
    })
}

/// One app calls `delay()` `n` times, one task per transaction, while a worker drains;
/// timed from the first call until every task has finished.
fn end_to_end(
    options: &Options,
    ceilings: &Ceilings,
    report: &mut Report,
    durable: bool,
) -> Result<(), String> {
    // With synchronous=FULL each delay() waits for an fsync: fewer calls keep it short.
    let n = options.size(if durable { 5_000 } else { 20_000 });
    let row = if durable {
        Row::new(
            "durable_e2e",
            format!("durable: end to end, {} delay() calls", count(n)),
            "/s",
        )
        .vs("raw FULL cycle", ceilings.cycle_durable)
    } else {
        Row::new(
            "e2e",
            format!("end to end: {} delay() calls while draining", count(n)),
            "/s",
        )
        .vs("raw cycle", ceilings.cycle)
    };
    let name = if durable { "durable-e2e" } else { "e2e" };
    measure(report, options, row, |run| {
        let db = fresh(options, name, run);
        let client = client(&db, durable)?;
        let _worker = Worker::start(options, &db, durability(durable))?;
        let start = Instant::now();
        for _ in 0..n {
            noop::delay(&client).map_err(err)?;
        }
        wait_drained(&db, DRAIN_TIMEOUT)?;
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// `delay` then `join` of one no-op task at a time on an otherwise idle worker: p50 and
/// p99 of the sequential round trips, after a warm-up of 20.
fn round_trip(
    options: &Options,
    ceilings: &Ceilings,
    report: &mut Report,
    durable: bool,
) -> Result<(), String> {
    let n = match (options.quick, durable) {
        (true, _) => 50,
        (false, false) => 300,
        (false, true) => 100,
    };
    let (prefix, id_prefix, commit_ms) = if durable {
        ("durable: ", "durable_", ceilings.commit_ms_durable)
    } else {
        ("", "", ceilings.commit_ms)
    };
    let (p50, p99) = (
        format!("{id_prefix}roundtrip_p50"),
        format!("{id_prefix}roundtrip_p99"),
    );
    let ceiling = if durable {
        "raw FULL commit latency"
    } else {
        "raw commit latency"
    };
    let rows = [
        Row::new(
            &p50,
            format!("{prefix}round trip delay+join, p50 of {n}"),
            "ms",
        )
        .vs(ceiling, commit_ms),
        Row::new(
            &p99,
            format!("{prefix}round trip delay+join, p99 of {n}"),
            "ms",
        )
        .vs(ceiling, commit_ms),
    ];
    let name = format!("{id_prefix}roundtrip");
    measure_group(report, options, &rows, |run| {
        let db = fresh(options, &name, run);
        let client = client(&db, durable)?;
        let _worker = Worker::start(options, &db, durability(durable))?;
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n + 20 {
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
        Ok(vec![
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
        ])
    })
}

/// Process mode: what a warm child costs per task, and how CPU-bound work scales over
/// the cores.
fn process_mode(options: &Options, report: &mut Report) -> Result<(), String> {
    let n = options.size(5_000);
    let mut per_task = |row: Row<'_>, process: bool| -> Result<(), String> {
        measure(report, options, row, |run| {
            let db = fresh(
                options,
                if process { "proc-noop" } else { "thread-noop" },
                run,
            );
            let client = client(&db, false)?;
            let _worker = Worker::start(options, &db, &[])?;
            let start = Instant::now();
            if process {
                castor_bench::noop_process::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            } else {
                noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            }
            wait_drained(&db, DRAIN_TIMEOUT)?;
            Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
        })
    };
    per_task(
        Row::new(
            "process_noop",
            format!("process mode: {} no-op tasks, wall time per task", count(n)),
            "us/task",
        ),
        true,
    )?;
    per_task(
        Row::new(
            "thread_noop",
            format!("thread mode: {} no-op tasks, wall time per task", count(n)),
            "us/task",
        ),
        false,
    )?;

    let n_rt = if options.quick { 30 } else { 200 };
    let row = Row::new(
        "process_roundtrip_p50",
        format!("process mode: round trip p50 of {n_rt}"),
        "ms",
    );
    measure(report, options, row, |run| {
        let db = fresh(options, "proc-rt", run);
        let client = client(&db, false)?;
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
    })?;

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (tasks, ms) = if options.quick { (4, 100) } else { (8, 250) };
    let timed = |processes: usize, run: usize| -> Result<f64, String> {
        let db = fresh(options, &format!("spin-{processes}"), run);
        let client = client(&db, false)?;
        let procs = processes.to_string();
        let _worker = Worker::start(options, &db, &["--processes", &procs])?;
        let start = Instant::now();
        let handles =
            castor_bench::spin::delay_many(&client, (0..tasks).map(|_| (ms,))).map_err(err)?;
        for handle in handles {
            handle.join(DRAIN_TIMEOUT).map_err(err)?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let row = Row::new(
        "process_speedup",
        format!("process mode: {tasks} x {ms} ms CPU, {cores} procs vs 1"),
        "x",
    );
    measure(report, options, row, |run| {
        let one = timed(1, run)?;
        let all = timed(cores, run)?;
        Ok(one / all)
    })
}

/// CPU used by an idle worker, and by an app blocked in `join` on a task that will not
/// run, over 10 s (2 s in quick mode).
fn idle(options: &Options, report: &mut Report) -> Result<(), String> {
    let idle = Duration::from_secs(if options.quick { 2 } else { 10 });
    let row = Row::new("idle_worker", "idle worker: CPU", "% of a core");
    measure(report, options, row, |run| {
        let db = fresh(options, "idle", run);
        let worker = Worker::start(options, &db, &[])?;
        std::thread::sleep(Duration::from_millis(500));
        let before = worker.cpu_time();
        std::thread::sleep(idle);
        let used = worker.cpu_time() - before;
        Ok(used.as_secs_f64() / idle.as_secs_f64() * 100.0)
    })?;
    let row = Row::new(
        "idle_join",
        "idle join: CPU of an app waiting on a task",
        "% of a core",
    );
    measure(report, options, row, |run| {
        let db = fresh(options, "idle-join", run);
        let out = std::process::Command::new(&options.bench)
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
    let _ = handle.join(Duration::from_millis(500));
    let before = cpu_self();
    let _ = handle.join(Duration::from_secs(secs));
    println!("{}", (cpu_self() - before).as_micros());
    ExitCode::SUCCESS
}

/// This process's CPU time so far.
fn cpu_self() -> Duration {
    crate::worker::cpu_time(std::process::id())
}
