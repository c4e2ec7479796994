//! The core scenarios, each one a real `castor` worker and a real app (this process, or
//! this program re-executed) on a fresh database in the scratch directory: dispatch,
//! drain, end to end and round trip (with the default durability and with `--durable`),
//! the round trip for each shape of library, and process mode. (The idle costs are in
//! `idle`.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use castor_abi::{Client, DispatchError, TaskHandle};
use castor_bench::{bench, noop, noop_ctx_logged, noop_logged};
use castor_store::{OpenOptions, Store};

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
pub fn wait_drained(
    db: impl Into<castor_store::Database>,
    timeout: Duration,
) -> Result<(), String> {
    let database = db.into();
    let store = Store::open(&database, OpenOptions::app()).map_err(err)?;
    let watcher = castor_store::notifier(&database).map_err(err)?;
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
    round_trip_shapes(options, report)?;
    process_mode(options, report)?;
    crate::idle::run(options, report)?;
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
    .vs("raw SQLite 100-row batches", ceilings.batched_rows);
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
        .vs("raw SQLite FULL cycle", ceilings.cycle_durable)
    } else {
        Row::new(
            "drain",
            format!("drain: {} queued no-op thread tasks", count(n)),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle)
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
    .vs("raw SQLite cycle", ceilings.cycle);
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
        .vs("raw SQLite FULL cycle", ceilings.cycle_durable)
    } else {
        Row::new(
            "e2e",
            format!("end to end: {} delay() calls while draining", count(n)),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle)
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
        "raw SQLite FULL commit latency"
    } else {
        "raw SQLite commit latency"
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

/// `n` sequential round trips (`dispatch`, then `join`) after a warm-up of `warmup`; their
/// latencies in milliseconds, sorted.
fn round_trips<R: serde::de::DeserializeOwned>(
    n: usize,
    warmup: usize,
    mut dispatch: impl FnMut() -> Result<TaskHandle<R>, DispatchError>,
) -> Result<Vec<f64>, String> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let start = Instant::now();
        dispatch()
            .map_err(err)?
            .join(Duration::from_secs(10))
            .map_err(err)?;
        if i >= warmup {
            latencies.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The round trip of a no-op task on a worker whose library declares one mode only: thread
/// tasks (the quickstart's shape) or process tasks. (`round_trip` and `process_mode` measure
/// the library with both.)
fn round_trip_shapes(options: &Options, report: &mut Report) -> Result<(), String> {
    let n = if options.quick { 50 } else { 300 };
    let rows = [
        Row::new(
            "roundtrip_threads_p50",
            format!("round trip, thread tasks only library, p50 of {n}"),
            "ms",
        ),
        Row::new(
            "roundtrip_threads_p99",
            format!("round trip, thread tasks only library, p99 of {n}"),
            "ms",
        ),
    ];
    measure_group(report, options, &rows, |run| {
        let db = fresh(options, "rt-threads", run);
        let target = format!("{}:bench_threads", options.library.display());
        let _worker = Worker::start_target(options, &target, &db, &[])?;
        let client = castor_bench::bench_threads()
            .with_database(&db)
            .open()
            .map_err(err)?;
        let latencies = round_trips(n, 20, || noop::delay(&client))?;
        Ok(vec![
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
        ])
    })?;
    let n = if options.quick { 30 } else { 200 };
    let rows = [
        Row::new(
            "roundtrip_processes_p50",
            format!("round trip, process tasks only library, p50 of {n}"),
            "ms",
        ),
        Row::new(
            "roundtrip_processes_p99",
            format!("round trip, process tasks only library, p99 of {n}"),
            "ms",
        ),
    ];
    measure_group(report, options, &rows, |run| {
        let db = fresh(options, "rt-processes", run);
        let target = format!("{}:bench_processes", options.library.display());
        let _worker = Worker::start_target(options, &target, &db, &[])?;
        let client = castor_bench::bench_processes()
            .with_database(&db)
            .open()
            .map_err(err)?;
        let latencies = round_trips(n, 10, || castor_bench::noop_process::delay(&client))?;
        Ok(vec![
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
        ])
    })
}
