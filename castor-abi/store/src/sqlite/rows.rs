//! The values that go into and come out of the store's statements.

use std::time::Duration;

use uuid::Uuid;

use crate::model::Claimed;
#[cfg(doc)]
use crate::model::TaskFilter;
use crate::row::TaskRow;
use crate::state::{Backoff, TaskState};

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

/// The claim statements for a [`TaskFilter`] of some number of (task name, argument
/// fingerprint) keys ([`TaskFilter::claim_keys`]; the text depends only on that number,
/// so the driver builds them once per count).
#[derive(Debug, Clone)]
pub(super) struct ClaimSql {
    /// The rows to claim, in claim order: the best `limit` of each task name (one index
    /// seek each), merged.
    pub(super) select: String,
    /// Claims them all in one statement: cheapest for big batches.
    pub(super) batch: String,
}

impl ClaimSql {
    /// Builds the claim statements for `keys` (name, fingerprint) keys: one index seek
    /// each, on (manager, task, args_fingerprint), in claim order.
    pub(super) fn new(keys: usize) -> ClaimSql {
        let arms = (0..keys)
            .map(|i| {
                format!(
                    "SELECT * FROM (SELECT seq, priority FROM castor_tasks \
                     WHERE state = 'available' AND manager = ?4 AND task = ?{} \
                     AND args_fingerprint = ?{} \
                     ORDER BY priority DESC, seq LIMIT ?5)",
                    2 * i + 6,
                    2 * i + 7
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

/// Whether a manager has an available task dispatched without an argument fingerprint
/// (through the `castor_tasks_unsigned` index, empty once such rows have run).
pub(super) const UNSIGNED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM castor_tasks \
     INDEXED BY castor_tasks_unsigned \
     WHERE manager = ?1 AND state = 'available' AND args_fingerprint = '')";

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
     priority, progress_done, progress_total, progress_message, args_fingerprint, \
     result_fingerprint, concurrency_key \
     FROM castor_tasks WHERE id = ?1";

/// Reads a row of [`SNAPSHOT_SQL`].
pub(super) fn task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow<Vec<u8>>> {
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
        args_fingerprint: row.get(18)?,
        result_fingerprint: row.get(19)?,
        concurrency_key: row.get(20)?,
    })
}
