//! Backlog scaling: does the drain slow down, or the worker grow, when a million tasks
//! wait instead of a thousand?
//!
//! - Small backlog: a worker already running (and warmed up by one untimed round) gets
//!   1,000 tasks in one `delay_many` transaction, round after round. Each round is timed
//!   from that commit until the round's last task has completed.
//! - Large backlog: 1,000,000 tasks (100,000 with `--quick`) are queued with no worker
//!   running, in `delay_many` transactions of 50,000; then a worker starts and is timed
//!   from the moment it says it is ready until the task 50,000 places down the queue
//!   (5,000 with `--quick`) has completed: the worker claims in queue order, so that many
//!   tasks have been run by then.
//!
//! Each size is measured twice: on a quiet database, and while another app dispatches
//! one task every 2 ms with `delay()` (a commit from another connection wakes the worker
//! to look for new work, which is where a scan over the backlog would show).
//!
//! Both clocks stop when `join` on the last task's handle returns, never by counting
//! unfinished rows (a count over a million-row index on every commit would compete with
//! the worker for the two cores). Both include one wake-up of the worker and one of the
//! `join` (a fraction of a millisecond, about 3% of a 1,000-task round, well under 1% of
//! the large window). Completions are committed in groups, so timing from the first
//! task's completion instead would leave out most of a 1,000-task round.
//!
//! Meanwhile a sampler records the worker's peak `RssAnon` (its heap: it must not load
//! the backlog), and `VmHWM` (the peak of all resident memory, which also counts the
//! database pages the worker touched through SQLite's memory map, and the pages the
//! kernel mapped around them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use castor_abi::Uuid;
use castor_bench::noop;
use castor_store::{OpenCheck, OpenOptions, Store};

use crate::ceiling::Ceilings;
use crate::scenarios::{DRAIN_TIMEOUT, client, err, fresh, remove_db};
use crate::table::Report;
use crate::worker::Worker;
use crate::{Options, Row, count, measure_group};

/// Tasks per `delay_many` transaction while queueing the large backlog.
const CHUNK: usize = 50_000;

/// How often the busy variant's app dispatches a task.
const PACE: Duration = Duration::from_millis(2);

/// What one backlog drain measured.
struct Drained {
    /// Tasks per second while the clock ran.
    rate: f64,
    /// The worker's peak `RssAnon`, in MiB.
    heap_mib: f64,
    /// The worker's `VmHWM`, in MiB.
    rss_mib: f64,
}

/// KiB to MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Records the small and the large backlog, quiet and busy, run after run.
pub fn run(options: &Options, ceilings: &Ceilings, report: &mut Report) -> Result<(), String> {
    let small = 1_000;
    let rounds = if options.quick { 3 } else { 20 };
    let large = if options.quick { 100_000 } else { 1_000_000 };
    let window = options.size(50_000);
    let (s, l) = (count(small), count(large));
    let busy = format!("app dispatching every {} ms", PACE.as_millis());
    let rows = [
        Row::new(
            "backlog_small",
            format!("backlog {s}: drain rate, {rounds} rounds of {s}"),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "backlog_large",
            format!("backlog {l}: drain rate of the first {}", count(window)),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "backlog_ratio",
            format!("backlog: drain rate {l} / {s}"),
            "x",
        ),
        Row::new(
            "backlog_small_busy",
            format!("backlog {s} + {busy}: drain"),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "backlog_large_busy",
            format!("backlog {l} + {busy}: drain"),
            "/s",
        )
        .vs("raw SQLite cycle", ceilings.cycle),
        Row::new(
            "backlog_busy_ratio",
            format!("backlog + app dispatching: drain rate {l} / {s}"),
            "x",
        ),
        Row::new(
            "backlog_small_heap",
            format!("backlog {s}: worker peak heap (RssAnon)"),
            "MiB",
        ),
        Row::new(
            "backlog_large_heap",
            format!("backlog {l}: worker peak heap (RssAnon)"),
            "MiB",
        ),
        Row::new(
            "backlog_heap_growth",
            format!("backlog: worker peak heap growth, {s} to {l}"),
            "MiB",
        ),
        Row::new(
            "backlog_small_rss",
            format!("backlog {s}: worker peak RSS (VmHWM)"),
            "MiB",
        ),
        Row::new(
            "backlog_large_rss",
            format!("backlog {l}: worker peak RSS (VmHWM)"),
            "MiB",
        ),
        Row::new(
            "backlog_enqueue",
            format!("backlog {l}: enqueue, delay_many of {}", count(CHUNK)),
            "/s",
        )
        .vs("raw SQLite 100-row batches", ceilings.batched_rows),
        Row::new(
            "backlog_quick_check",
            format!("backlog {l}: worker's start check (quick_check)"),
            "ms",
        ),
        Row::new(
            "backlog_integrity_check",
            format!("backlog {l}: `castor check` (integrity_check)"),
            "ms",
        ),
        Row::new(
            "open_checked",
            format!("app open, {OPEN_TASKS} tasks (<= 1 MiB): checked"),
            "ms",
        ),
        Row::new(
            "open_unchecked",
            format!("app open, {OPEN_TASKS} tasks: check skipped"),
            "ms",
        ),
    ];
    measure_group(report, options, &rows, |run| {
        let mut small_runs = Vec::new();
        for busy in [false, true] {
            let db = fresh(options, "backlog-small", run);
            let drained = drain_small(options, &db, small, rounds, busy);
            remove_db(&db);
            small_runs.push(drained?);
        }
        let db = fresh(options, "open-check", run);
        let opens = time_open(&db);
        remove_db(&db);
        let (open_checked, open_unchecked) = opens?;
        let db = fresh(options, "backlog-large", run);
        let copy = fresh(options, "backlog-large-copy", run);
        let large = drain_large(options, &db, &copy, large, window);
        // A million rows are a few hundred MB: do not leave them behind.
        remove_db(&db);
        remove_db(&copy);
        let (large_runs, enqueue_rate, checks) = large?;
        let peak =
            |runs: &[Drained], f: fn(&Drained) -> f64| runs.iter().map(f).fold(0.0, f64::max);
        let (small_heap, large_heap) = (
            peak(&small_runs, |d| d.heap_mib),
            peak(&large_runs, |d| d.heap_mib),
        );
        Ok(vec![
            small_runs[0].rate,
            large_runs[0].rate,
            large_runs[0].rate / small_runs[0].rate,
            small_runs[1].rate,
            large_runs[1].rate,
            large_runs[1].rate / small_runs[1].rate,
            small_heap,
            large_heap,
            large_heap - small_heap,
            peak(&small_runs, |d| d.rss_mib),
            peak(&large_runs, |d| d.rss_mib),
            enqueue_rate,
            checks.quick_ms,
            checks.integrity_ms,
            open_checked,
            open_unchecked,
        ])
    })
}

/// The small backlog: `rounds` timed rounds of `backlog` tasks after an untimed one,
/// with an app dispatching alongside if `busy`.
fn drain_small(
    options: &Options,
    db: &Path,
    backlog: usize,
    rounds: usize,
    busy: bool,
) -> Result<Drained, String> {
    let client = client(db, false)?;
    let worker = Worker::start(options, db, &[])?;
    let heap = worker.sample_heap();
    let mut app = None;
    let (mut tasks, mut secs) = (0, 0.0);
    for round in 0..=rounds {
        if round == 1 && busy {
            app = Some(PacedApp::start(db)?);
        }
        let handles = noop::delay_many(&client, (0..backlog).map(|_| ())).map_err(err)?;
        let start = Instant::now();
        let last = handles.last().ok_or("delay_many returned no handles")?;
        last.join(DRAIN_TIMEOUT).map_err(err)?;
        if round > 0 {
            tasks += handles.len();
            secs += start.elapsed().as_secs_f64();
        }
    }
    if let Some(app) = app {
        app.finish()?;
    }
    Ok(Drained {
        rate: tasks as f64 / secs,
        heap_mib: mib(heap.finish()?),
        rss_mib: mib(worker.peak_rss_kib()?),
    })
}

/// Tasks in the file whose opening is timed: as many as stay under the size up to which
/// an app's `open` checks the file.
const OPEN_TASKS: usize = 5_000;

/// The median time of opening a file of [`OPEN_TASKS`] tasks as an app does (which runs
/// `PRAGMA quick_check` on a file this small), and with the check skipped, in ms.
fn time_open(db: &Path) -> Result<(f64, f64), String> {
    drop(noop::delay_many(&client(db, false)?, (0..OPEN_TASKS).map(|_| ())).map_err(err)?);
    let size = std::fs::metadata(db).map_err(err)?.len();
    if size > castor_store::QUICK_CHECK_BYTES {
        return Err(format!(
            "{OPEN_TASKS} tasks take {size} bytes, past the checked size"
        ));
    }
    let median = |check: OpenCheck| -> Result<f64, String> {
        let mut times = Vec::new();
        for _ in 0..21 {
            let start = Instant::now();
            let options = OpenOptions {
                check,
                ..OpenOptions::app()
            };
            drop(Store::open(db, options).map_err(err)?);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    };
    Ok((
        median(OpenCheck::UpTo(castor_store::QUICK_CHECK_BYTES))?,
        median(OpenCheck::Skip)?,
    ))
}

/// What the checks of a database cost.
struct Checks {
    /// `PRAGMA quick_check`, which a worker runs on the whole file at start.
    quick_ms: f64,
    /// `PRAGMA integrity_check`, which `castor check` runs.
    integrity_ms: f64,
}

/// Times the checks on `db`, as the worker and `castor check` run them (the file is in
/// the page cache, as it is right after it was written: a cold read adds the disk's time).
fn time_checks(db: &Path) -> Result<Checks, String> {
    let store = Store::open(
        db,
        OpenOptions {
            check: OpenCheck::Skip,
            ..OpenOptions::app()
        },
    )
    .map_err(err)?;
    let start = Instant::now();
    store.quick_check(None).map_err(err)?;
    let quick_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let problems = store.integrity_check().map_err(err)?;
    let integrity_ms = start.elapsed().as_secs_f64() * 1e3;
    if !problems.is_empty() {
        return Err(format!("the backlog is damaged: {problems:?}"));
    }
    Ok(Checks {
        quick_ms,
        integrity_ms,
    })
}

/// The large backlog: queues `backlog` tasks on `db` with no worker and copies the file
/// to `copy`; then times a fresh worker on each, from ready until the task `window`
/// places down the queue has completed: quiet on `db`, with an app dispatching on
/// `copy`. Also returns the enqueue rate and what the checks cost.
fn drain_large(
    options: &Options,
    db: &Path,
    copy: &Path,
    backlog: usize,
    window: usize,
) -> Result<([Drained; 2], f64, Checks), String> {
    let window = window.min(backlog - 1);
    let mut last: Option<Uuid> = None;
    let start = Instant::now();
    {
        let client = client(db, false)?;
        for chunk in (0..backlog).step_by(CHUNK) {
            let n = CHUNK.min(backlog - chunk);
            let handles = noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            if (chunk..chunk + n).contains(&window) {
                last = handles.get(window - chunk).map(|h| h.id());
            }
        }
        // Closing the last connection checkpoints the WAL into the file, so the file
        // alone can be copied.
    }
    let enqueue_rate = backlog as f64 / start.elapsed().as_secs_f64();
    let last = last.ok_or("the last timed task's id is missing")?;
    std::fs::copy(db, copy).map_err(|e| format!("cannot copy {}: {e}", db.display()))?;
    let checks = time_checks(copy)?;
    let quiet = drain_window(options, db, last, window, false)?;
    let busy = drain_window(options, copy, last, window, true)?;
    Ok(([quiet, busy], enqueue_rate, checks))
}

/// Starts a worker on a queued backlog and times it from ready until task `last`
/// (`window` places down the queue) has completed.
fn drain_window(
    options: &Options,
    db: &Path,
    last: Uuid,
    window: usize,
    busy: bool,
) -> Result<Drained, String> {
    let client = client(db, false)?;
    let last = noop::handle(&client, last);
    let app = if busy {
        Some(PacedApp::start(db)?)
    } else {
        None
    };
    let worker = Worker::start(options, db, &[])?;
    let start = Instant::now();
    let heap = worker.sample_heap();
    last.join(DRAIN_TIMEOUT).map_err(err)?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(app) = app {
        app.finish()?;
    }
    Ok(Drained {
        // Tasks 0 to `window`, both included.
        rate: (window + 1) as f64 / secs,
        heap_mib: mib(heap.finish()?),
        rss_mib: mib(worker.peak_rss_kib()?),
    })
}

/// Another app on its own connection (a thread of this process) calling `delay()` once
/// every [`PACE`] until stopped.
struct PacedApp {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), String>>,
}

impl PacedApp {
    fn start(db: &Path) -> Result<PacedApp, String> {
        let client = client(db, false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                noop::delay(&client).map_err(err)?;
                next += PACE;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        });
        Ok(PacedApp { stop, thread })
    }

    /// Stops dispatching; fails if a dispatch failed.
    fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the dispatching app panicked".to_owned())?
            .map_err(|e| format!("the dispatching app failed: {e}"))
    }
}

/// `castor-bench fill DB N`: queues N no-op thread tasks on DB in `delay_many`
/// transactions of 50,000 and exits, leaving a backlog to profile a worker on by hand,
/// e.g. `valgrind --tool=callgrind castor LIB:bench --db DB --quiet`.
pub fn fill_child(args: &[String]) -> ExitCode {
    let (Some(db), Some(n)) = (
        args.first().map(PathBuf::from),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: castor-bench fill DB N");
        return ExitCode::FAILURE;
    };
    let filled = client(&db, false).and_then(|client| {
        for chunk in (0..n).step_by(CHUNK) {
            noop::delay_many(&client, (0..CHUNK.min(n - chunk)).map(|_| ())).map_err(err)?;
        }
        Ok(())
    });
    match filled {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castor-bench fill: {e}");
            ExitCode::FAILURE
        }
    }
}
