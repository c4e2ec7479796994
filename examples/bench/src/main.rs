//! `castor-bench`: measures Castor against SQLite's own ceiling on this machine, in one
//! run, on one file system. Run it with `cargo run --release -p castor-bench`; it builds
//! the `castor` worker it drives, runs every scenario several times, prints a table
//! (median, min-max, ratio to the raw-SQLite figure it relates to) and writes the results
//! as JSON for later comparison.
//!
//! Timing goals live here, never in tests: a busy machine makes this slower, not red.

mod ceiling;
mod scenarios;
mod table;
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
    /// Only scenarios whose name contains one of these.
    pub only: Vec<String>,
    /// Where the JSON goes.
    pub json: PathBuf,
    /// Scratch directory for databases (on the file system being measured).
    pub scratch: PathBuf,
    /// The `castor` binary.
    pub castor: PathBuf,
    /// The benchmark's task library.
    pub library: PathBuf,
}

impl Options {
    /// Scales a size down in quick mode.
    pub fn size(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }

    pub fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| scenario.contains(o.as_str()))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("idle-join") {
        return scenarios::idle_join_child(&args[1..]);
    }
    match parse(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castor-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: castor-bench [--quick] [--runs N] [--only NAME,..] [--json PATH]";

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
    for path in [&options.castor, &options.library] {
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
    let mut report = Report::new(machine());
    println!("{}", report.header());
    let ceiling = ceiling::measure_all(&options, &mut report)?;
    scenarios::run_all(&options, &ceiling, &mut report)?;
    report.write_json(&options.json)?;
    println!("\n{}", report.table());
    println!("results written to {}", options.json.display());
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

/// Runs `f` `runs` times and records the values under `name`.
pub fn measure(
    report: &mut Report,
    options: &Options,
    name: &str,
    unit: &str,
    ceiling: Option<(&str, f64)>,
    mut f: impl FnMut(usize) -> Result<f64, String>,
) -> Result<(), String> {
    // The raw-SQLite ceilings always run: every other figure is read against them.
    if !name.starts_with("raw SQLite") && !options.wants(name) {
        return Ok(());
    }
    let mut values = Vec::with_capacity(options.runs);
    for run in 0..options.runs {
        values.push(f(run)?);
    }
    let m = Measurement::new(name, unit, values, ceiling);
    println!("{}", m.line());
    report.push(m);
    Ok(())
}
