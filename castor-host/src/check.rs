//! `castor check`: is a database file sound? A full `PRAGMA integrity_check` (every page,
//! and every index against its table), the schema version, and the task counts by state,
//! read through a read-only connection so that checking never writes to a damaged file.
//! Exits 1 on a problem, so scripts can test it.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use castor_store::format::{format_duration, format_size};
use castor_store::{OpenOptions, Store, StoreError, TaskState};
use serde::Serialize;

use crate::cli::CheckArgs;

/// What `castor check` found.
#[derive(Debug, Serialize)]
struct Report {
    database: String,
    bytes: Option<u64>,
    /// The full check's problems (at most `CHECK_PROBLEMS`); empty when sound.
    integrity: Vec<String>,
    /// What the full check runs (SQLite: `PRAGMA integrity_check`).
    check: &'static str,
    check_ms: u64,
    schema_version: Option<u32>,
    supported_schema_version: u32,
    /// Tables and indexes of castor's schema the file lacks.
    missing: Vec<String>,
    /// Tasks by state, when the table could be read.
    tasks: Option<BTreeMap<&'static str, u64>>,
    /// Why the tasks could not be counted.
    tasks_error: Option<String>,
    /// Every problem, one sentence each; empty when the file is sound.
    problems: Vec<String>,
}

/// Runs `castor check`.
///
/// # Errors
/// The database is missing, damaged, unreadable or from a newer castor.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let lib = args.target.as_ref().or(args.db.lib.as_ref());
    let (database, _) = crate::commands::database(args.db.db.as_ref(), lib)?;
    let store = castor_store::open(&database, &OpenOptions::inspect())?;
    let report = check(&store);
    if args.db.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    match report.problems.as_slice() {
        [] => Ok(()),
        [one] => bail!("database {} is not sound: {one}", report.database),
        [first, rest @ ..] => bail!(
            "database {} is not sound: {first}; {}",
            report.database,
            rest.join("; ")
        ),
    }
}

/// What a store error says about the file, without the advice to run `castor check`.
fn reason(e: StoreError) -> String {
    match e {
        StoreError::Corrupt { detail, .. } => detail,
        e => e.to_string(),
    }
}

fn check(store: &Store) -> Report {
    let started = Instant::now();
    let integrity = store.integrity_check();
    let check_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut report = Report {
        database: store.database().to_string(),
        bytes: store.size().ok(),
        integrity: Vec::new(),
        check: store.integrity_check_name(),
        check_ms,
        schema_version: None,
        supported_schema_version: store.migrations().last().map_or(0, |m| m.version),
        missing: Vec::new(),
        tasks: None,
        tasks_error: None,
        problems: Vec::new(),
    };
    match integrity {
        Ok(found) => report.integrity = found,
        // The file is not a database, or its first pages are damaged: nothing else can
        // be read either.
        Err(e) => {
            let reason = reason(e);
            report
                .problems
                .push(format!("{} cannot run: {reason}", report.check));
            report.integrity = vec![reason.clone()];
            report.tasks_error = Some(reason);
            return report;
        }
    }
    if !report.integrity.is_empty() {
        report.problems.push(format!(
            "{} found {} problem(s); recover the file as README's \
             \"Recovering a damaged database\" says",
            report.check,
            report.integrity.len()
        ));
    }
    match store.schema_version() {
        Ok(0) => report.problems.push(
            "schema version 0: castor never set this file up (is it a castor database?)".to_owned(),
        ),
        Ok(found) if found > report.supported_schema_version => report.problems.push(format!(
            "schema version {found} is newer than this castor understands ({}); upgrade castor",
            report.supported_schema_version
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(reason(e)),
    }
    report.schema_version = store.schema_version().ok();
    match store.missing_schema_objects() {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            report.problems.push(format!(
                "the schema lacks {} (castor creates what is missing when it opens a file of \
                 schema version 0)",
                missing.join(", ")
            ));
            report.missing = missing;
        }
        Err(e) => report.problems.push(reason(e)),
    }
    match store.counts() {
        Ok(counts) => {
            let mut by_state: BTreeMap<&'static str, u64> =
                TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            for c in counts {
                *by_state.entry(c.state.as_str()).or_default() += c.count;
            }
            report.tasks = Some(by_state);
        }
        Err(e) => {
            let reason = reason(e);
            report
                .problems
                .push(format!("the tasks cannot be counted: {reason}"));
            report.tasks_error = Some(reason);
        }
    }
    report
}

fn print(report: &Report) {
    let size = report.bytes.map_or_else(
        || "size unknown".to_owned(),
        |b| format_size(usize::try_from(b).unwrap_or(usize::MAX)),
    );
    println!("database   {} ({size})", report.database);
    let took = format_duration(std::time::Duration::from_millis(report.check_ms));
    if report.integrity.is_empty() {
        println!("integrity  ok ({}, {took})", report.check);
    } else {
        println!(
            "integrity  {} problem(s) ({}, {took}):",
            report.integrity.len(),
            report.check
        );
        for problem in &report.integrity {
            println!("  {problem}");
        }
    }
    match report.schema_version {
        Some(v) if report.missing.is_empty() => println!(
            "schema     version {v} (this castor: {})",
            report.supported_schema_version
        ),
        Some(v) => println!(
            "schema     version {v} (this castor: {}), lacking {}",
            report.supported_schema_version,
            report.missing.join(", ")
        ),
        None => println!("schema     unreadable"),
    }
    match &report.tasks {
        Some(by_state) => {
            let counts: Vec<String> = TaskState::ALL
                .iter()
                .map(|s| format!("{} {}", by_state.get(s.as_str()).unwrap_or(&0), s))
                .collect();
            println!("tasks      {}", counts.join(", "));
        }
        None => println!(
            "tasks      unreadable: {}",
            report.tasks_error.as_deref().unwrap_or("unknown reason")
        ),
    }
}
