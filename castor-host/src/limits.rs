//! `castor limits`: the global concurrency and rate limits in force (as declared by the
//! libraries' workers, and as overridden), what counts against them and what they hold
//! back; `set` and `clear` the run-time override every worker on the database applies.
//! Also the words `list`, `show`, `stats` and the dashboard use for a limit.

use anyhow::{Context, bail};
use castor_store::{Held, LimitRow, LimitStatus, Limits, Store, now_us};
use serde::Serialize;

use crate::cli::{LimitAction, LimitsArgs};
use crate::commands::{open, print_json, table};

/// Runs `castor limits`.
///
/// # Errors
/// The database cannot be opened or written, no manager is named for a change, or a
/// change names no limit, or a task the library does not declare.
pub fn run(args: &LimitsArgs) -> anyhow::Result<()> {
    let (mut store, declared) = open(&args.db)?;
    let manager = args
        .manager
        .clone()
        .or_else(|| declared.as_ref().map(|m| m.name.to_string()));
    let Some(action) = &args.action else {
        return show(&store, manager.as_deref(), args.db.json);
    };
    let Some(manager) = manager else {
        bail!("say whose task: --lib LIB:MANAGER or --manager NAME");
    };
    let task = match action {
        LimitAction::Set { task, .. } | LimitAction::Clear { task } => task,
    };
    if let Some(decl) = &declared
        && !decl.tasks.iter().any(|t| t.name.as_str() == task)
    {
        let known: Vec<&str> = decl.tasks.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "manager {manager} declares no task {task:?}; its tasks: {}",
            known.join(", ")
        );
    }
    let overridden = match action {
        LimitAction::Set {
            concurrency, rate, ..
        } => {
            if concurrency.is_none() && rate.is_none() {
                bail!("say what to set: --concurrency N, --rate N/UNIT (e.g. 20/s), or both");
            }
            let current = store
                .limits(Some(&manager))?
                .into_iter()
                .find(|r| &r.task == task)
                .map(|r| r.overridden)
                .unwrap_or_default();
            Limits {
                concurrency: concurrency.or(current.concurrency),
                rate: rate.or(current.rate),
            }
        }
        LimitAction::Clear { .. } => Limits::default(),
    };
    let now = now_us();
    let row = store
        .write(|tx| tx.set_limit_override(&manager, task, &overridden, now))
        .with_context(|| format!("cannot set the limits of {manager}:{task}"))?;
    if args.db.json {
        return print_json(&row);
    }
    println!(
        "{manager}:{task}: {}; every worker on the database applies it at its next claim \
         (one whose tasks had no limit, within a third of its lease)",
        in_force(&row)
    );
    Ok(())
}

/// One limited task in `castor limits --json`: its status and what holds its tasks back.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    status: &'a LimitStatus,
    /// The limits in force.
    effective: Limits,
    /// Why its available tasks wait, if a limit holds them (for a keyed concurrency
    /// limit, each task's own partition says: `castor list`).
    held: Option<String>,
}

fn show(store: &Store, manager: Option<&str>, json: bool) -> anyhow::Result<()> {
    let statuses = store.limit_status(manager, now_us())?;
    if json {
        let shown: Vec<Shown<'_>> = statuses
            .iter()
            .map(|status| Shown {
                status,
                effective: status.row.effective(),
                held: status.held_task().map(|h| h.to_string()),
            })
            .collect();
        return print_json(&shown);
    }
    if statuses.is_empty() {
        println!("no limits in force");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            vec![
                s.row.manager.clone(),
                s.row.task.clone(),
                concurrency_shown(&s.row),
                rate_shown(&s.row),
                s.running.to_string(),
                s.available.to_string(),
                s.held_task().map(|h| h.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "MANAGER",
            "TASK",
            "CONCURRENCY",
            "RATE",
            "RUNNING",
            "AVAILABLE",
            "HELD",
        ],
        &rows,
    );
    Ok(())
}

/// `2 per customer (override; declared 4)`, `-` for none.
pub fn concurrency_shown(row: &LimitRow) -> String {
    let per = row
        .key
        .as_ref()
        .map(|k| format!(" per {k}"))
        .unwrap_or_default();
    source(
        row.declared.concurrency.map(|c| format!("{c}{per}")),
        row.overridden.concurrency.map(|c| format!("{c}{per}")),
    )
}

/// `20/s (declared)`, `-` for none.
pub fn rate_shown(row: &LimitRow) -> String {
    source(
        row.declared.rate.map(|r| r.to_string()),
        row.overridden.rate.map(|r| r.to_string()),
    )
}

fn source(declared: Option<String>, overridden: Option<String>) -> String {
    match (declared, overridden) {
        (Some(d), Some(o)) => format!("{o} (override; declared {d})"),
        (None, Some(o)) => format!("{o} (override)"),
        (Some(d), None) => format!("{d} (declared)"),
        (None, None) => "-".to_owned(),
    }
}

/// `concurrency 2 (override; declared 4), rate 20/s (declared)`, or `no limits`.
pub fn in_force(row: &LimitRow) -> String {
    let effective = row.effective();
    let mut parts = Vec::new();
    if effective.concurrency.is_some() {
        parts.push(format!("concurrency {}", concurrency_shown(row)));
    }
    if effective.rate.is_some() {
        parts.push(format!("rate {}", rate_shown(row)));
    }
    if parts.is_empty() {
        "no limits".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Why an available task of `manager`'s `task` in partition `key` waits, from the
/// statuses read once for a listing.
pub fn held(
    statuses: &[LimitStatus],
    manager: &str,
    task: &str,
    key: Option<&str>,
) -> Option<Held> {
    statuses
        .iter()
        .find(|s| s.row.manager == manager && s.row.task == task)
        .and_then(|s| s.held(key))
}
