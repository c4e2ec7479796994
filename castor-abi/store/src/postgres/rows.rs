//! The values that go into and come out of the PostgreSQL driver's statements.

use std::time::Duration;

use postgres::Row;
use postgres::types::{FromSql, Type};
use uuid::Uuid;

use crate::model::Claimed;
use crate::row::TaskRow;
use crate::state::{Backoff, TaskState};

/// A stored count (attempts, runs, a pid) as the engine keeps it; castor wrote it from a
/// `u32`, so only a hand-edited row is out of range (read as the nearest bound).
pub(super) fn u32_from(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Stored milliseconds as a duration (negative reads as zero).
pub(super) fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

/// Takes up to `$6` available tasks of manager `$4` and the (task name, argument
/// fingerprint) keys `$5`, `$7` (`TaskFilter::claim_keys`: the best of each key by an
/// index scan on (manager, task, args_fingerprint), locked with `SKIP LOCKED` so concurrent claimers pass
/// over each other's rows), highest priority first, then oldest, and makes them
/// `running` for worker `$2` from `$1` until `$3`, with no progress reported yet.
pub(super) const CLAIM_SQL: &str = "WITH picked AS ( \
       SELECT c.seq FROM unnest($5::text[], $7::text[]) AS n(task, fp) \
       CROSS JOIN LATERAL ( \
         SELECT seq, priority FROM castor_tasks \
         WHERE state = 'available' AND manager = $4 AND task = n.task \
           AND args_fingerprint = n.fp \
         ORDER BY priority DESC, seq LIMIT $6 \
         FOR UPDATE SKIP LOCKED) c \
       ORDER BY c.priority DESC, c.seq LIMIT $6) \
     UPDATE castor_tasks t SET state = 'running', attempt = t.attempt + 1, \
       attempted_at = $1, attempted_by = $2, lease_expires_at = $3, \
       progress_done = NULL, progress_total = NULL, progress_message = NULL \
     FROM picked WHERE t.seq = picked.seq \
     RETURNING t.seq, t.id, t.task, t.args, t.attempt, t.max_attempts, t.backoff_base_ms, \
       t.backoff_cap_ms, t.timeout_ms, t.priority";

/// A claimed row as [`CLAIM_SQL`] returns it.
pub(super) fn claimed_from(row: &Row) -> Result<Claimed, postgres::Error> {
    Ok(Claimed {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        task: row.try_get(2)?,
        args: row.try_get(3)?,
        attempt: u32_from(row.try_get(4)?),
        max_attempts: u32_from(row.try_get(5)?),
        backoff: Backoff {
            base: ms(row.try_get(6)?),
            cap: ms(row.try_get(7)?),
        },
        timeout: row.try_get::<_, Option<i64>>(8)?.map(ms),
        priority: row.try_get(9)?,
    })
}

pub(super) const SNAPSHOT_SQL: &str = "SELECT seq, id, manager, task, state, attempt, \
     max_attempts, result, errors::text, created_at, scheduled_at, attempted_at, finalized_at, \
     attempted_by, priority, progress_done, progress_total, progress_message, \
     args_fingerprint, result_fingerprint, concurrency_key \
     FROM castor_tasks WHERE id = $1";

/// Reads a row of [`SNAPSHOT_SQL`].
pub(super) fn task_row(row: &Row) -> Result<TaskRow<Uuid>, postgres::Error> {
    Ok(TaskRow {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        manager: row.try_get(2)?,
        task: row.try_get(3)?,
        state: row.try_get(4)?,
        attempt: u32_from(row.try_get(5)?),
        max_attempts: u32_from(row.try_get(6)?),
        result: row.try_get(7)?,
        errors: row.try_get(8)?,
        created_at: row.try_get(9)?,
        scheduled_at: row.try_get(10)?,
        attempted_at: row.try_get(11)?,
        finalized_at: row.try_get(12)?,
        attempted_by: row.try_get(13)?,
        priority: row.try_get(14)?,
        progress_done: row.try_get(15)?,
        progress_total: row.try_get(16)?,
        progress_message: row.try_get(17)?,
        args_fingerprint: row.try_get(18)?,
        result_fingerprint: row.try_get(19)?,
        concurrency_key: row.try_get(20)?,
    })
}

/// A state column, read as a [`TaskState`] (a name castor does not know fails the read).
pub(super) struct StateColumn(pub(super) TaskState);

impl<'a> FromSql<'a> for StateColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<StateColumn, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Ok(StateColumn(text.parse()?))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}
