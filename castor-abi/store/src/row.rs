//! A task row as a driver reads it, before validation, and the one validation into a
//! [`TaskSnapshot`] that every driver shares. `Id` is the id column as the engine stores
//! it (SQLite: 16 bytes; PostgreSQL: a `uuid`).

use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{Progress, TaskSnapshot};
use crate::state::TaskState;
use crate::target::Database;

/// A task row as read, before validation.
#[derive(Debug)]
pub(crate) struct TaskRow<Id> {
    pub(crate) seq: i64,
    pub(crate) id: Id,
    pub(crate) manager: String,
    pub(crate) task: String,
    pub(crate) state: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) errors: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) scheduled_at: i64,
    pub(crate) attempted_at: Option<i64>,
    pub(crate) finalized_at: Option<i64>,
    pub(crate) attempted_by: Option<String>,
    pub(crate) priority: i32,
    pub(crate) progress_done: Option<i64>,
    pub(crate) progress_total: Option<i64>,
    pub(crate) progress_message: Option<String>,
    pub(crate) args_fingerprint: String,
    pub(crate) result_fingerprint: String,
    pub(crate) concurrency_key: Option<String>,
}

impl<Id> TaskRow<Id> {
    /// Validates the row: its id (by `id`, which says what is wrong with a bad one), its
    /// state and its errors' JSON; a bad column is [`StoreError::InvalidRow`].
    pub(crate) fn into_snapshot(
        self,
        database: &Database,
        id: impl FnOnce(Id) -> Result<Uuid, String>,
    ) -> Result<TaskSnapshot, StoreError> {
        let invalid = |column: &'static str, detail: String| StoreError::InvalidRow {
            database: database.clone(),
            seq: self.seq,
            column,
            detail,
        };
        let id = id(self.id).map_err(|detail| invalid("id", detail))?;
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
        let known = |fp: String| (!fp.is_empty()).then_some(fp);
        Ok(TaskSnapshot {
            args_fingerprint: known(self.args_fingerprint),
            result_fingerprint: known(self.result_fingerprint),
            concurrency_key: self.concurrency_key,
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
