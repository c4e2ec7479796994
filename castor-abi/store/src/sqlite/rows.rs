//! The values that go into and come out of the store's statements.

use std::time::Duration;

use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{Claimed, Progress, TaskSnapshot};
use crate::state::{Backoff, TaskState};
use crate::target::Database;

/// Reads a 16-byte id column.
pub(super) fn id_from(bytes: Vec<u8>, column: usize) -> rusqlite::Result<Uuid> {
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// Reads a state column.
pub(super) fn state_from(text: String, column: usize) -> rusqlite::Result<TaskState> {
    text.parse::<TaskState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The claim statements for a [`TaskFilter`] of some number of task names (the text
/// depends only on that number, so the driver builds them once per count).
#[derive(Debug, Clone)]
pub(super) struct ClaimSql {
    /// The rows to claim, in claim order: the best `limit` of each task name (one index
    /// seek each), merged.
    pub(super) select: String,
    /// Claims them all in one statement: cheapest for big batches.
    pub(super) batch: String,
}

impl ClaimSql {
    /// Builds the claim statements for `names` task names.
    pub(super) fn new(names: usize) -> ClaimSql {
        let arms = (0..names)
            .map(|i| {
                format!(
                    "SELECT * FROM (SELECT seq, priority FROM castor_tasks \
                     WHERE state = 'available' AND manager = ?4 AND task = ?{} \
                     ORDER BY priority DESC, seq LIMIT ?5)",
                    i + 6
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let select = format!("SELECT seq FROM ({arms}) ORDER BY priority DESC, seq LIMIT ?5");
        let batch = format!(
            "UPDATE castor_tasks SET state = 'running', attempt = attempt + 1, \
             attempted_at = ?1, attempted_by = ?2, lease_expires_at = ?3, {NO_PROGRESS} \
             WHERE seq IN ({select}) RETURNING {CLAIMED_COLUMNS}"
        );
        ClaimSql { select, batch }
    }
}

/// A new attempt starts without the last one's progress.
const NO_PROGRESS: &str = "progress_done = NULL, progress_total = NULL, progress_message = NULL";

/// Claims one row, found by [`ClaimSql`]'s select, guarded by its state.
pub(super) const CLAIM_ONE_SQL: &str = "UPDATE castor_tasks SET state = 'running', \
     attempt = attempt + 1, attempted_at = ?2, attempted_by = ?3, lease_expires_at = ?4, \
     progress_done = NULL, progress_total = NULL, progress_message = NULL \
     WHERE seq = ?1 AND state = 'available' \
     RETURNING seq, id, task, args, attempt, max_attempts, backoff_base_ms, backoff_cap_ms, \
     timeout_ms, priority";

const CLAIMED_COLUMNS: &str = "seq, id, task, args, attempt, max_attempts, backoff_base_ms, \
                               backoff_cap_ms, timeout_ms, priority";

/// A claimed row as the claim statements return it.
pub(super) fn claimed_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    Ok(Claimed {
        seq: row.get(0)?,
        id: id_from(row.get(1)?, 1)?,
        task: row.get(2)?,
        args: row.get(3)?,
        attempt: row.get(4)?,
        max_attempts: row.get(5)?,
        backoff: Backoff {
            base: ms(row.get(6)?),
            cap: ms(row.get(7)?),
        },
        timeout: row.get::<_, Option<i64>>(8)?.map(ms),
        priority: row.get(9)?,
    })
}

pub(super) const SNAPSHOT_SQL: &str = "SELECT seq, id, manager, task, state, attempt, max_attempts, \
     result, errors, created_at, scheduled_at, attempted_at, finalized_at, attempted_by, \
     priority, progress_done, progress_total, progress_message \
     FROM castor_tasks WHERE id = ?1";

/// A task row as read, before validation.
#[derive(Debug)]
pub(super) struct TaskRow {
    seq: i64,
    id: Vec<u8>,
    manager: String,
    task: String,
    state: String,
    attempt: u32,
    max_attempts: u32,
    result: Option<Vec<u8>>,
    errors: Option<String>,
    created_at: i64,
    scheduled_at: i64,
    attempted_at: Option<i64>,
    finalized_at: Option<i64>,
    attempted_by: Option<String>,
    priority: i32,
    progress_done: Option<i64>,
    progress_total: Option<i64>,
    progress_message: Option<String>,
}

impl TaskRow {
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            seq: row.get(0)?,
            id: row.get(1)?,
            manager: row.get(2)?,
            task: row.get(3)?,
            state: row.get(4)?,
            attempt: row.get(5)?,
            max_attempts: row.get(6)?,
            result: row.get(7)?,
            errors: row.get(8)?,
            created_at: row.get(9)?,
            scheduled_at: row.get(10)?,
            attempted_at: row.get(11)?,
            finalized_at: row.get(12)?,
            attempted_by: row.get(13)?,
            priority: row.get(14)?,
            progress_done: row.get(15)?,
            progress_total: row.get(16)?,
            progress_message: row.get(17)?,
        })
    }

    pub(super) fn into_snapshot(self, database: &Database) -> Result<TaskSnapshot, StoreError> {
        let invalid = |column: &'static str, detail: String| StoreError::InvalidRow {
            database: database.clone(),
            seq: self.seq,
            column,
            detail,
        };
        let id = Uuid::from_slice(&self.id).map_err(|e| invalid("id", e.to_string()))?;
        let state = self
            .state
            .parse::<TaskState>()
            .map_err(|e| invalid("state", e.to_string()))?;
        let errors = match &self.errors {
            None => Vec::new(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| invalid("errors", e.to_string()))?
            }
        };
        let progress = match (self.progress_done, self.progress_total) {
            (Some(done), Some(total)) => Some(Progress {
                done: u64::try_from(done).unwrap_or(0),
                total: u64::try_from(total).unwrap_or(0),
                message: self.progress_message,
            }),
            _ => None,
        };
        Ok(TaskSnapshot {
            seq: self.seq,
            id,
            manager: self.manager,
            task: self.task,
            state,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            result: self.result,
            errors,
            created_at: self.created_at,
            scheduled_at: self.scheduled_at,
            attempted_at: self.attempted_at,
            finalized_at: self.finalized_at,
            attempted_by: self.attempted_by,
            priority: self.priority,
            progress,
        })
    }
}
