//! `castor migrate`: where a database's schema stands (`status`, the default) and applying
//! what is pending (`up`). Workers, apps and the other subcommands apply pending
//! migrations when they open a database; this is for operators who migrate explicitly and
//! run those with `--no-migrate` (`CASTOR_NO_MIGRATE=1`, `Manager::without_migrations`).
//!
//! `status` opens the database read-only and writes nothing (not even its journal mode).
//! Exit codes: 0 when the database is up to date; [`PENDING_EXIT`] (3) from `status` when
//! migrations are pending; 1 on an error, a database newer than this castor among them
//! (the message names both versions), or when `up` could not apply a migration (the ones
//! before it stay applied).

use std::time::Instant;

use castor_store::format::format_duration;
use castor_store::migrate::MigrationStatus;
use castor_store::{Database, OpenOptions, StoreError, now_us};
use serde::Serialize;

use crate::cli::{MigrateAction, MigrateArgs};
use crate::commands::{named_database, print_json, table};
use crate::worker::timestamp;

/// The exit code of `castor migrate status` when migrations are pending.
pub const PENDING_EXIT: u8 = 3;

/// `castor migrate status` found migrations to apply.
#[derive(Debug, thiserror::Error)]
#[error(
    "database {database} has schema version {version} and this castor needs {latest} \
     (pending: {}); apply them with `castor migrate up --db {database}`",
    pending.join(", ")
)]
pub struct Pending {
    /// The database.
    database: Database,
    /// Its schema version.
    version: u32,
    /// This castor's.
    latest: u32,
    /// The pending migrations, `2 migrations_table`.
    pending: Vec<String>,
}

/// Runs `castor migrate`.
///
/// # Errors
/// See the module's exit codes.
pub fn run(args: &MigrateArgs) -> anyhow::Result<()> {
    match args.action.unwrap_or(MigrateAction::Status) {
        MigrateAction::Status => status(args),
        MigrateAction::Up => up(args),
    }
}

/// One migration, as `status --json` prints it.
#[derive(Serialize)]
struct MigrationJson {
    version: u32,
    name: String,
    /// Microseconds since the epoch; `null` for applied before migrations were recorded,
    /// and for pending ones.
    applied_at: Option<i64>,
}

/// What `status --json` prints.
#[derive(Serialize)]
struct StatusJson {
    database: String,
    version: u32,
    latest: u32,
    /// `current`, `pending` or `too_new`.
    state: &'static str,
    applied: Vec<MigrationJson>,
    pending: Vec<MigrationJson>,
}

fn status(args: &MigrateArgs) -> anyhow::Result<()> {
    let (database, _) = crate::commands::database(args.db.db.as_ref(), args.db.lib.as_ref())?;
    let store = castor_store::open(&database, &OpenOptions::inspect())?;
    let status = store.migration_status()?;
    let state = if status.too_new() {
        "too_new"
    } else if status.pending.is_empty() {
        "current"
    } else {
        "pending"
    };
    if args.db.json {
        print_json(&StatusJson {
            database: database.to_string(),
            version: status.version,
            latest: status.latest,
            state,
            applied: status
                .applied
                .iter()
                .map(|m| MigrationJson {
                    version: m.version,
                    name: m.name.clone(),
                    applied_at: m.applied_at,
                })
                .collect(),
            pending: status
                .pending
                .iter()
                .map(|m| MigrationJson {
                    version: m.version,
                    name: m.name.to_owned(),
                    applied_at: None,
                })
                .collect(),
        })?;
    } else {
        print_status(&database, &status);
    }
    if status.too_new() {
        return Err(StoreError::SchemaTooNew {
            database,
            found: status.version,
            supported: status.latest,
        }
        .into());
    }
    if !status.pending.is_empty() {
        return Err(Pending {
            database,
            version: status.version,
            latest: status.latest,
            pending: status
                .pending
                .iter()
                .map(|m| format!("{} {}", m.version, m.name))
                .collect(),
        }
        .into());
    }
    Ok(())
}

fn print_status(database: &Database, status: &MigrationStatus) {
    println!("database  {database}");
    println!(
        "schema    version {} (this castor: {})",
        status.version, status.latest
    );
    let mut rows: Vec<Vec<String>> = status
        .applied
        .iter()
        .map(|m| {
            let applied = m
                .applied_at
                .map_or_else(|| "before records".to_owned(), timestamp);
            vec![m.version.to_string(), m.name.clone(), applied]
        })
        .collect();
    rows.extend(status.pending.iter().map(|m| {
        vec![
            m.version.to_string(),
            m.name.to_owned(),
            "pending".to_owned(),
        ]
    }));
    if rows.is_empty() {
        println!("no migrations applied or pending");
        return;
    }
    println!();
    table(&["VERSION", "NAME", "APPLIED"], &rows);
}

/// One migration `up` applied, as `--json` prints it.
#[derive(Serialize)]
struct AppliedJson {
    version: u32,
    name: &'static str,
    /// False when another process applied it between our read and our write lock.
    by_us: bool,
    took_us: u64,
}

fn up(args: &MigrateArgs) -> anyhow::Result<()> {
    let (database, _) = named_database(args.db.db.as_ref(), args.db.lib.as_ref())?;
    let mut store = castor_store::open_unmigrated(&database, &OpenOptions::app())?;
    let status = store.migration_status()?;
    if status.too_new() {
        return Err(StoreError::SchemaTooNew {
            database,
            found: status.version,
            supported: status.latest,
        }
        .into());
    }
    let mut applied = Vec::new();
    for migration in &status.pending {
        let started = Instant::now();
        let by_us = store
            .apply_migration(migration, now_us())
            .map_err(|error| ApplyError {
                version: migration.version,
                name: migration.name,
                error,
            })?;
        let took = started.elapsed();
        if !args.db.json {
            if by_us {
                println!(
                    "applied   {} {} ({})",
                    migration.version,
                    migration.name,
                    format_duration(took)
                );
            } else {
                println!(
                    "skipped   {} {}: another process applied it first",
                    migration.version, migration.name
                );
            }
        }
        applied.push(AppliedJson {
            version: migration.version,
            name: migration.name,
            by_us,
            took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        });
    }
    let version = store.schema_version()?;
    if args.db.json {
        return print_json(&serde_json::json!({
            "database": database.to_string(),
            "version": version,
            "applied": applied,
        }));
    }
    if applied.is_empty() {
        println!("database {database} is up to date (schema version {version})");
    } else {
        println!("database {database} is now at schema version {version}");
    }
    Ok(())
}

/// A migration `up` could not apply: it left nothing, the ones before it stay applied.
#[derive(Debug, thiserror::Error)]
#[error(
    "migration {version} ({name}) failed and left nothing (the migrations before it stay applied): {error}"
)]
struct ApplyError {
    version: u32,
    name: &'static str,
    error: StoreError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_error_names_both_versions_and_what_to_run() {
        let error = Pending {
            database: Database::parse("tasks.db"),
            version: 1,
            latest: 3,
            pending: vec!["2 migrations_table".into(), "3 more".into()],
        };
        assert_eq!(
            error.to_string(),
            "database tasks.db has schema version 1 and this castor needs 3 (pending: 2 \
             migrations_table, 3 more); apply them with `castor migrate up --db tasks.db`"
        );
    }
}
