//! Versioned migrations: each driver lists its own, numbered from 1; each is applied in
//! one transaction and recorded in the database, so a database says which schema it has
//! and an upgrade applies exactly what is missing. Opening a database applies pending
//! migrations unless the caller opts out ([`crate::OpenOptions::migrate`]); a database
//! newer than the binary is refused, untouched.

use crate::driver::Driver;
use crate::error::StoreError;

/// One schema change of one driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number: 1 for the first, without gaps.
    pub version: u32,
    /// A short name (`initial`, `migrations_table`).
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// A migration recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// When it was applied (microseconds since the epoch); `None` for one a castor before
    /// versioned migrations applied.
    pub applied_at: Option<i64>,
}

/// Where a database stands against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The database's schema version (0: empty).
    pub version: u32,
    /// The newest version this build knows.
    pub latest: u32,
    /// The migrations recorded as applied.
    pub applied: Vec<AppliedMigration>,
    /// The migrations this build would apply, oldest first.
    pub pending: Vec<Migration>,
}

impl MigrationStatus {
    /// True when the database is newer than this build.
    pub fn too_new(&self) -> bool {
        self.version > self.latest
    }
}

/// Reads where `driver`'s database stands.
///
/// # Errors
/// The database cannot be read.
pub fn status(driver: &dyn Driver) -> Result<MigrationStatus, StoreError> {
    let version = driver.schema_version()?;
    let migrations = driver.migrations();
    Ok(MigrationStatus {
        version,
        latest: migrations.last().map_or(0, |m| m.version),
        applied: driver.applied_migrations()?,
        pending: migrations
            .iter()
            .filter(|m| m.version > version)
            .copied()
            .collect(),
    })
}

/// Applies every pending migration in order, each in its own transaction; returns the
/// versions this call applied (another process may have applied some first).
///
/// # Errors
/// [`StoreError::SchemaTooNew`] for a database newer than this build (nothing changed);
/// a migration's failure (the ones before it stay applied, it leaves nothing).
pub fn migrate(driver: &mut dyn Driver, now: i64) -> Result<Vec<u32>, StoreError> {
    let status = status(driver)?;
    if status.too_new() {
        return Err(StoreError::SchemaTooNew {
            database: driver.database().clone(),
            found: status.version,
            supported: status.latest,
        });
    }
    let mut applied = Vec::new();
    for migration in &status.pending {
        if driver.apply_migration(migration, now)? {
            applied.push(migration.version);
        }
    }
    Ok(applied)
}

/// Checks that a driver's list is numbered 1, 2, 3, ... (a test helper for drivers).
pub fn check_numbering(migrations: &[Migration]) -> Result<(), String> {
    for (i, m) in migrations.iter().enumerate() {
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if m.version != expected {
            return Err(format!(
                "migration `{}` is numbered {} where {expected} was expected",
                m.name, m.version
            ));
        }
    }
    Ok(())
}
