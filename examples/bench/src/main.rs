//! `castor-bench`: measures Castor against SQLite's own ceiling on this machine, in one
//! run, on one file system. Run it with `cargo run --release -p castor-bench`; it builds
//! the `castor` worker it drives, runs every scenario several times, prints a table
//! (median, min-max, ratio to the raw engine's figure it relates to: plain SQL on
//! SQLite, or on the PostgreSQL server for its rows), checks the issue's
//! targets and writes everything as JSON for later comparison.
//!
//! Scenarios: the raw-SQLite ceilings (`ceiling`), dispatch, drain, end to end, round
//! trip (per shape of library) and process mode (`scenarios`), the same with `--durable`,
//! the idle costs (`idle`), a large backlog (`backlog`), several workers or apps on one
//! file (`several`), a full disk (`full_disk`), and the same library on PostgreSQL against
//! that server's own ceiling (`postgres`).
//!
//! Timing goals live here, never in tests: a busy machine makes this slower, not red.

mod backlog;
mod ceiling;
mod full_disk;
mod idle;
mod postgres;
mod scenarios;
mod several;
mod table;
mod targets;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::table::{Measurement, Report};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per scenario.
    pub runs: usize,
    /// Smaller sizes, one run: a smoke test of the benchmark itself.
    pub quick: bool,
    /// Only scenarios whose id or printed name contains one of these.
    pub only: Vec<String>,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// Scratch directory for databases (on the file system being measured).
    pub scratch: PathBuf,
    /// The `castor` binary.
    pub castor: PathBuf,
    /// The benchmark's task library.
    pub library: PathBuf,
    /// The quickstart's task library (thread tasks only), for the idle cost of the shape
    /// a new user runs first.
    pub quickstart: PathBuf,
    /// This program, re-executed as an app in its hidden modes. Not
    /// `std::env::current_exe()`: the build at start-up may replace the file this process
    /// runs from, and `/proc/self/exe` then names the deleted one.
    pub bench: PathBuf,
}

impl Options {
    /// Scales a size down in quick mode.
    pub fn size(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }

    /// Whether `--only` names PostgreSQL scenarios alone (`--only postgres`): then the
    /// SQLite scenarios, their ceilings included, are left out.
    pub fn only_postgres(&self) -> bool {
        !self.only.is_empty()
            && self
                .only
                .iter()
                .all(|o| o.starts_with("postgres") || o.starts_with("pg_"))
    }

    /// Whether `--only` selects a scenario: one of its words is part of the scenario's
    /// id or its printed name.
    pub fn wants(&self, id: &str, name: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| id.contains(o.as_str()) || name.contains(o.as_str()))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden modes: this program re-executed as a separate app process.
    match args.first().map(String::as_str) {
        Some("idle-join") => return idle::idle_join_child(&args[1..]),
        Some("dispatch") => return several::dispatch_child(&args[1..]),
        Some("fill") => return backlog::fill_child(&args[1..]),
        _ => {}
    }
    match parse(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castor-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: castor-bench [--quick] [--runs N] [--only NAME,..] [--json PATH]

  --quick        one run of each scenario at smaller sizes (a smoke test, under a minute)
  --runs N       runs per scenario (default 3)
  --only A,B     only scenarios whose id or name contains A or B (the raw-SQLite
                 ceilings always run); ids: batch, drain, log_drain, ctx_log_drain, e2e,
                 roundtrip (and roundtrip_threads, roundtrip_processes), process, thread_noop, idle
                 (idle_worker_threads, idle_worker_processes, idle_worker,
                 idle_scheduled_ahead, idle_after_burst, idle_dashboard, idle_join),
                 durable, backlog, workers, apps, full_disk (mounts a tmpfs: root only);
                 postgres runs the PostgreSQL scenarios alone (pg_raw_cycle, pg_drain_1,
                 pg_drain_2, pg_drain_4, pg_e2e, pg_roundtrip, pg_idle; their raw ceilings
                 always run) on a throwaway local cluster, or on CASTOR_BENCH_POSTGRES
  --json PATH    where the results go (default TARGET_DIR/castor-bench/results.json)

  CASTOR_BENCH_WORKER_ARGS  words added to every worker's arguments, e.g.
                 `--metrics 127.0.0.1:9464` to measure what serving metrics costs

  castor-bench fill DB N   queues N no-op tasks on DB and exits (a backlog to profile
                           a worker on by hand)";

fn parse(args: &[String]) -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let bin_dir = exe.parent().ok_or("no parent directory")?.to_path_buf();
    let target_dir = bin_dir.parent().unwrap_or(&bin_dir).to_path_buf();
    let mut options = Options {
        runs: 3,
        quick: false,
        only: Vec::new(),
        json: target_dir.join("castor-bench").join("results.json"),
        scratch: target_dir.join("castor-bench").join("scratch"),
        castor: bin_dir.join("castor"),
        library: bin_dir.join("libcastor_bench.so"),
        quickstart: bin_dir.join("libquickstart.so"),
        bench: bin_dir.join("castor-bench"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or(format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => {
                options.quick = true;
                options.runs = 1;
            }
            "--runs" => {
                options.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?;
                if options.runs == 0 {
                    return Err(format!("--runs must be at least 1\n{USAGE}"));
                }
            }
            "--only" => options.only = value()?.split(',').map(str::to_owned).collect(),
            "--json" => options.json = PathBuf::from(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

/// Builds the worker binary next to this one, with the same profile.
fn build_castor(options: &Options) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let release = options
        .castor
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "release");
    let mut command = std::process::Command::new(cargo);
    command.args([
        "build",
        "--quiet",
        "-p",
        "castor-host",
        "-p",
        "castor-bench",
        "-p",
        "quickstart",
    ]);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo to build castor: {e}"))?;
    if !status.success() {
        return Err("building castor failed".into());
    }
    for path in [&options.castor, &options.library, &options.quickstart] {
        if !path.exists() {
            return Err(format!("{} is missing after the build", path.display()));
        }
    }
    Ok(())
}

fn run(options: Options) -> Result<(), String> {
    build_castor(&options)?;
    std::fs::create_dir_all(&options.scratch)
        .map_err(|e| format!("cannot create {}: {e}", options.scratch.display()))?;
    let mut report = Report::new(machine(), options.runs, options.quick);
    println!("{}", report.header());
    if !options.only_postgres() {
        let ceilings = ceiling::measure_all(&options, &mut report)?;
        scenarios::run_all(&options, &ceilings, &mut report)?;
        backlog::run(&options, &ceilings, &mut report)?;
        several::run(&options, &ceilings, &mut report)?;
        full_disk::run(&options, &mut report)?;
    }
    postgres::run(&options, &mut report)?;
    report.targets = targets::evaluate(&report);
    report.write_json(&options.json)?;
    println!("\n{}", report.table());
    println!("\n{}", targets::summary(&report.targets));
    println!("\nresults written to {}", options.json.display());
    Ok(())
}

/// A line about where this ran.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// One row a scenario produces.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The stable id (see [`Measurement::id`]).
    pub id: &'a str,
    /// The printed name; keep it within 52 characters so the streamed rows line up.
    pub name: String,
    pub unit: &'a str,
    /// The raw engine's figure it is read against: a short name that names the engine
    /// (`raw SQLite cycle`, `raw PostgreSQL cycle`) and its median.
    pub ceiling: Option<(&'a str, f64)>,
}

impl<'a> Row<'a> {
    /// A row without a ceiling.
    pub fn new(id: &'a str, name: impl Into<String>, unit: &'a str) -> Row<'a> {
        Row {
            id,
            name: name.into(),
            unit,
            ceiling: None,
        }
    }

    /// The same row read against a raw engine's figure (`ceiling` names the engine).
    pub fn vs(mut self, ceiling: &'a str, value: f64) -> Row<'a> {
        self.ceiling = Some((ceiling, value));
        self
    }
}

/// Runs `f` `runs` times and records the values under one row.
pub fn measure(
    report: &mut Report,
    options: &Options,
    row: Row<'_>,
    mut f: impl FnMut(usize) -> Result<f64, String>,
) -> Result<(), String> {
    measure_group(report, options, std::slice::from_ref(&row), |run| {
        f(run).map(|v| vec![v])
    })
}

/// Runs `f` `runs` times; each run returns one value per row, in the order of `rows`
/// (for figures that come out of the same run: p50 and p99, or a rate and a ratio).
/// Skipped unless `--only` selects one of the rows; the raw-SQLite ceilings always run,
/// since every other figure is read against them.
pub fn measure_group(
    report: &mut Report,
    options: &Options,
    rows: &[Row<'_>],
    mut f: impl FnMut(usize) -> Result<Vec<f64>, String>,
) -> Result<(), String> {
    let wanted = rows
        .iter()
        .any(|r| r.id.starts_with("raw_") || options.wants(r.id, &r.name));
    if !wanted {
        return Ok(());
    }
    let mut values = vec![Vec::with_capacity(options.runs); rows.len()];
    for run in 0..options.runs {
        let got = f(run).map_err(|e| format!("{}: {e}", rows[0].name))?;
        if got.len() != rows.len() {
            return Err(format!(
                "{}: {} values for {} rows",
                rows[0].name,
                got.len(),
                rows.len()
            ));
        }
        for (column, value) in values.iter_mut().zip(got) {
            column.push(value);
        }
    }
    for (row, values) in rows.iter().zip(values) {
        report.push(Measurement::new(
            row.id,
            &row.name,
            row.unit,
            values,
            row.ceiling,
        ));
    }
    Ok(())
}

/// A task count for scenario names: `1M`, `50k`, or the plain number.
pub fn count(n: usize) -> String {
    match n {
        n if n < 1_000 => n.to_string(),
        n if n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        n => table::human(n as f64),
    }
}
