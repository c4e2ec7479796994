//! What people do to tasks from outside a worker: list, count, cancel, retry, purge, and
//! the retention sweep.

use uuid::Uuid;

use super::rows::{StateColumn, u32_from};
use super::{PostgresDriver, PostgresTx};
use crate::error::StoreError;
use crate::model::{
    AfterParents, CancelOutcome, ListFilter, ParentInfo, RetryOutcome, StateCount, TaskSummary,
    Waiting, WorkerRow,
};
use crate::state::TaskState;

impl PostgresDriver {
    /// Tasks matching `filter`, newest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<TaskSummary>, StoreError> {
        let states: Option<Vec<&str>> =
            (!filter.states.is_empty()).then(|| filter.states.iter().map(|s| s.as_str()).collect());
        let limit = i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX);
        self.read("list tasks", |conn| {
            conn.query(
                "SELECT id, manager, task, state, attempt, max_attempts, created_at, \
                 scheduled_at, finalized_at, attempted_by, errors -> -1 ->> 'error', \
                 args_fingerprint, concurrency_key FROM castor_tasks WHERE ($1::text[] IS NULL OR state = ANY($1)) \
                 AND ($2::text IS NULL OR task = $2) AND ($3::text IS NULL OR manager = $3) \
                 ORDER BY seq DESC LIMIT $4",
                &[&states, &filter.task, &filter.manager, &limit],
            )?
            .iter()
            .map(|row| {
                Ok(TaskSummary {
                    id: row.try_get(0)?,
                    manager: row.try_get(1)?,
                    task: row.try_get(2)?,
                    state: row.try_get::<_, StateColumn>(3)?.0,
                    attempt: u32_from(row.try_get(4)?),
                    max_attempts: u32_from(row.try_get(5)?),
                    created_at: row.try_get(6)?,
                    scheduled_at: row.try_get(7)?,
                    finalized_at: row.try_get(8)?,
                    attempted_by: row.try_get(9)?,
                    last_error: row.try_get(10)?,
                    args_fingerprint: Some(row.try_get::<_, String>(11)?)
                        .filter(|fp| !fp.is_empty()),
                    concurrency_key: row.try_get(12)?,
                })
            })
            .collect()
        })
    }

    /// Task counts by manager, name and state (a full scan: for the CLI, not hot paths).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        self.read("count tasks", |conn| {
            conn.query(
                "SELECT manager, task, state, count(*) FROM castor_tasks \
                 GROUP BY manager, task, state ORDER BY manager, task, state",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(StateCount {
                    manager: row.try_get(0)?,
                    task: row.try_get(1)?,
                    state: row.try_get::<_, StateColumn>(2)?.0,
                    count: u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .collect()
        })
    }

    /// When the longest-waiting available task of `manager` became available.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn oldest_available(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        self.read("read the oldest available task", |conn| {
            conn.query_one(
                "SELECT min(scheduled_at) FROM castor_tasks \
                 WHERE state = 'available' AND manager = $1",
                &[&manager],
            )?
            .try_get::<_, Option<i64>>(0)
        })
    }

    /// How many tasks completed since `since` (microseconds since the epoch).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn completed_since(&self, since: i64) -> Result<u64, StoreError> {
        self.read("count completed tasks", |conn| {
            let n: i64 = conn
                .query_one(
                    "SELECT count(*) FROM castor_tasks \
                     WHERE finalized_at >= $1 AND state = 'completed'",
                    &[&since],
                )?
                .try_get(0)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Every worker run recorded, newest first; with `live_only`, those not stopped.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn workers(&self, live_only: bool) -> Result<Vec<WorkerRow>, StoreError> {
        self.read("list workers", |conn| {
            conn.query(
                "SELECT id, manager, library, hostname, pid, threads, processes, tasks, \
                 started_at, heartbeat_at, stopped_at, completed, failed, host_id, \
                 args_fingerprints FROM castor_workers WHERE NOT $1 OR stopped_at IS NULL ORDER BY started_at DESC",
                &[&live_only],
            )?
            .iter()
            .map(|row| {
                let tasks: String = row.try_get(7)?;
                let prints: String = row.try_get(14)?;
                Ok(WorkerRow {
                    id: row.try_get(0)?,
                    manager: row.try_get(1)?,
                    library: row.try_get(2)?,
                    hostname: row.try_get(3)?,
                    host_id: row.try_get(13)?,
                    pid: u32_from(row.try_get(4)?),
                    threads: u32_from(row.try_get(5)?),
                    processes: u32_from(row.try_get(6)?),
                    tasks: serde_json::from_str(&tasks).unwrap_or_default(),
                    args_fingerprints: serde_json::from_str(&prints).unwrap_or_default(),
                    started_at: row.try_get(8)?,
                    heartbeat_at: row.try_get(9)?,
                    stopped_at: row.try_get(10)?,
                    completed: row.try_get(11)?,
                    failed: row.try_get(12)?,
                })
            })
            .collect()
        })
    }

    /// The next `limit` tasks of `manager` waiting for a start time, soonest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn waiting(&self, manager: &str, limit: usize) -> Result<Vec<Waiting>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("list waiting tasks", |conn| {
            conn.query(
                "SELECT id, task, scheduled_at FROM castor_tasks \
                 WHERE manager = $1 AND state IN ('scheduled', 'retryable') \
                 ORDER BY scheduled_at LIMIT $2",
                &[&manager, &limit],
            )?
            .iter()
            .map(|row| {
                Ok(Waiting {
                    id: row.try_get(0)?,
                    task: row.try_get(1)?,
                    starts_at: row.try_get(2)?,
                })
            })
            .collect()
        })
    }

    /// The parents of the task `id`, in order, each with its state now.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn parents(&self, id: Uuid) -> Result<Vec<ParentInfo>, StoreError> {
        self.read("read a task's parents", |conn| {
            conn.query(
                "SELECT d.position, d.parent_id, d.parent_task, p.state \
                 FROM castor_tasks c JOIN castor_dependencies d ON d.child_seq = c.seq \
                 LEFT JOIN castor_tasks p ON p.id = d.parent_id \
                 WHERE c.id = $1 ORDER BY d.position",
                &[&id],
            )?
            .iter()
            .map(parent_info)
            .collect()
        })
    }

    /// The first `limit` waiting tasks of `manager`, oldest first, with their parents.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn waiting_on_parents(
        &self,
        manager: &str,
        limit: usize,
    ) -> Result<Vec<AfterParents>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("list tasks waiting on their parents", |conn| {
            let rows = conn.query(
                "SELECT c.id, c.task, d.position, d.parent_id, d.parent_task, p.state \
                 FROM (SELECT seq, id, task FROM castor_tasks \
                       WHERE manager = $1 AND state = 'waiting' ORDER BY seq LIMIT $2) c \
                 JOIN castor_dependencies d ON d.child_seq = c.seq \
                 LEFT JOIN castor_tasks p ON p.id = d.parent_id \
                 ORDER BY c.seq, d.position",
                &[&manager, &limit],
            )?;
            let mut out: Vec<AfterParents> = Vec::new();
            for row in &rows {
                let id: Uuid = row.try_get(0)?;
                let parent = ParentInfo {
                    position: u32::try_from(row.try_get::<_, i32>(2)?).unwrap_or(0),
                    id: row.try_get(3)?,
                    task: row.try_get(4)?,
                    state: row.try_get::<_, Option<StateColumn>>(5)?.map(|s| s.0),
                };
                match out.last_mut() {
                    Some(last) if last.id == id => last.parents.push(parent),
                    _ => out.push(AfterParents {
                        id,
                        task: row.try_get(1)?,
                        parents: vec![parent],
                    }),
                }
            }
            Ok(out)
        })
    }

    /// See [`crate::Driver::mismatched`]: one statement, an index range per task name.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn mismatched(
        &self,
        filter: &crate::TaskFilter,
    ) -> Result<Vec<crate::Mismatched>, StoreError> {
        let own: Vec<String> = (0..filter.tasks.len())
            .map(|i| {
                filter
                    .args_fingerprints
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            })
            .collect();
        self.read("count tasks of another signature", |conn| {
            conn.query(
                "SELECT t.task, t.args_fingerprint, count(*) \
                 FROM unnest($2::text[], $3::text[]) AS n(task, fp) \
                 JOIN castor_tasks t ON t.manager = $1 AND t.task = n.task \
                 AND t.state = 'available' AND t.args_fingerprint > '' \
                 AND t.args_fingerprint <> n.fp \
                 GROUP BY t.task, t.args_fingerprint ORDER BY t.task, t.args_fingerprint",
                &[&filter.manager, &filter.tasks, &own],
            )?
            .iter()
            .map(|row| {
                Ok(crate::Mismatched {
                    task: row.try_get(0)?,
                    args_fingerprint: row.try_get(1)?,
                    count: u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
                })
            })
            .collect()
        })
    }

    /// The available tasks dispatched with a known argument fingerprint, counted by
    /// manager, name and fingerprint.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn available_signatures(&self) -> Result<Vec<crate::SignatureCount>, StoreError> {
        self.read("count available tasks by signature", |conn| {
            conn.query(
                "SELECT manager, task, args_fingerprint, count(*) FROM castor_tasks \
                 WHERE state = 'available' AND args_fingerprint > '' \
                 GROUP BY manager, task, args_fingerprint \
                 ORDER BY manager, task, args_fingerprint",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(crate::SignatureCount {
                    manager: row.try_get(0)?,
                    task: row.try_get(1)?,
                    args_fingerprint: row.try_get(2)?,
                    count: u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .collect()
        })
    }

    /// The stored (encoded) arguments of the task with this id.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn args_of(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        self.read("read a task's arguments", |conn| {
            conn.query_opt("SELECT args FROM castor_tasks WHERE id = $1", &[&id])?
                .map(|row| row.try_get(0))
                .transpose()
        })
    }
}

/// A parent as `parents` reads it: (position, id, name, state or NULL).
fn parent_info(row: &postgres::Row) -> Result<ParentInfo, postgres::Error> {
    Ok(ParentInfo {
        position: u32::try_from(row.try_get::<_, i32>(0)?).unwrap_or(0),
        id: row.try_get(1)?,
        task: row.try_get(2)?,
        state: row.try_get::<_, Option<StateColumn>>(3)?.map(|s| s.0),
    })
}

impl PostgresTx<'_> {
    /// Cancels a task: one that has not started never will; a running one is flagged for
    /// its worker. `None` if no task has this id. With it, whether the task ended now and
    /// has dependents to settle. `waited` is the error a waiting task records (JSON).
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn cancel(
        &mut self,
        id: Uuid,
        now: i64,
        waited: &str,
    ) -> Result<(Option<CancelOutcome>, bool), postgres::Error> {
        let stopped = self.conn().query_opt(
            "UPDATE castor_tasks SET state = 'cancelled', finalized_at = $2, \
             errors = CASE WHEN state = 'waiting' \
                      THEN coalesce(errors, '[]'::jsonb) || jsonb_build_array($3::text::jsonb) \
                      ELSE errors END \
             WHERE id = $1 AND state IN ('waiting', 'scheduled', 'available', 'retryable') \
             RETURNING has_dependents",
            &[&id, &now, &waited],
        )?;
        if let Some(row) = stopped {
            return Ok((Some(CancelOutcome::Cancelled), row.try_get(0)?));
        }
        let flagged = self.conn().execute(
            "UPDATE castor_tasks SET cancel_requested_at = coalesce(cancel_requested_at, $2) \
             WHERE id = $1 AND state = 'running'",
            &[&id, &now],
        )?;
        if flagged == 1 {
            return Ok((Some(CancelOutcome::Requested), false));
        }
        Ok((
            self.state_of(id)?.map(CancelOutcome::AlreadyFinished),
            false,
        ))
    }

    /// Puts a dependent that ended while it waited on its parents (its last error is of
    /// kind `chain`) back to `waiting`; its row, for the chain rules to settle it now.
    /// `None` for any other task.
    ///
    /// # Errors
    /// Fails if the statement fails.
    pub fn rewait(&mut self, id: Uuid) -> Result<Option<i64>, postgres::Error> {
        self.conn()
            .query_opt(
                "UPDATE castor_tasks SET state = 'waiting', finalized_at = NULL, \
                 cancel_requested_at = NULL \
                 WHERE id = $1 AND state IN ('discarded', 'cancelled') AND parents > 0 \
                 AND errors -> -1 ->> 'kind' = 'chain' RETURNING seq",
                &[&id],
            )?
            .map(|row| row.try_get(0))
            .transpose()
    }

    /// Puts a discarded or cancelled task back to `available` with one more attempt
    /// allowed; its errors are kept. `None` if no task has this id.
    ///
    /// # Errors
    /// Fails if a statement fails, e.g. when its unique key is now held by another task.
    pub fn retry(&mut self, id: Uuid, now: i64) -> Result<Option<RetryOutcome>, postgres::Error> {
        let retried = self.conn().execute(
            "UPDATE castor_tasks SET state = 'available', scheduled_at = $2, \
             finalized_at = NULL, result = NULL, cancel_requested_at = NULL, \
             lease_expires_at = NULL, max_attempts = greatest(max_attempts, attempt + 1) \
             WHERE id = $1 AND state IN ('discarded', 'cancelled')",
            &[&id, &now],
        )?;
        if retried == 1 {
            return Ok(Some(RetryOutcome::Retried));
        }
        Ok(self.state_of(id)?.map(RetryOutcome::NotRetryable))
    }

    pub(super) fn state_of(&mut self, id: Uuid) -> Result<Option<TaskState>, postgres::Error> {
        self.conn()
            .query_opt("SELECT state FROM castor_tasks WHERE id = $1", &[&id])?
            .map(|row| row.try_get::<_, StateColumn>(0).map(|s| s.0))
            .transpose()
    }

    /// Deletes tasks in `states` that finished (or, for unfinished states, were
    /// dispatched) before `before`, with their logs and links; returns how many, and the
    /// ids of those with dependents (to settle: they will never complete now). Running
    /// tasks are never purged.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn purge(
        &mut self,
        states: &[TaskState],
        before: i64,
    ) -> Result<(usize, Vec<Uuid>), postgres::Error> {
        let states: Vec<&str> = states
            .iter()
            .filter(|s| **s != TaskState::Running)
            .map(|s| s.as_str())
            .collect();
        if states.is_empty() {
            return Ok((0, Vec::new()));
        }
        let rows = self.conn().query(
            "DELETE FROM castor_tasks WHERE state = ANY($2) \
             AND coalesce(finalized_at, created_at) < $1 \
             RETURNING seq, id, has_dependents, parents",
            &[&before, &states],
        )?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut linked = Vec::new();
        let mut parents = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            seqs.push(seq);
            if row.try_get::<_, i64>(3)? > 0 {
                linked.push(seq);
            }
            if row.try_get::<_, bool>(2)? {
                parents.push(row.try_get(1)?);
            }
        }
        self.delete_logs(&seqs)?;
        self.delete_links(&linked)?;
        Ok((seqs.len(), parents))
    }

    /// The retention sweep: deletes up to `limit` finished tasks that finished before
    /// `before`, with their logs, and worker runs that stopped before it; returns how many
    /// tasks. A parent whose dependents still wait on it is kept (they need its result).
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn prune(&mut self, before: i64, limit: usize) -> Result<usize, postgres::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.conn().query(
            "DELETE FROM castor_tasks WHERE seq IN (SELECT seq FROM castor_tasks t \
             WHERE finalized_at < $1 AND (NOT has_dependents OR NOT EXISTS \
               (SELECT 1 FROM castor_dependencies d JOIN castor_tasks c \
                ON c.seq = d.child_seq WHERE d.parent_id = t.id AND c.state = 'waiting')) \
             LIMIT $2) RETURNING seq, parents",
            &[&before, &limit],
        )?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut linked = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            seqs.push(seq);
            if row.try_get::<_, i64>(1)? > 0 {
                linked.push(seq);
            }
        }
        self.delete_logs(&seqs)?;
        self.delete_links(&linked)?;
        self.conn().execute(
            "DELETE FROM castor_workers WHERE stopped_at < $1",
            &[&before],
        )?;
        Ok(seqs.len())
    }

    /// Deletes the links of dependents that are deleted.
    fn delete_links(&mut self, seqs: &[i64]) -> Result<(), postgres::Error> {
        if !seqs.is_empty() {
            self.conn().execute(
                "DELETE FROM castor_dependencies WHERE child_seq = ANY($1)",
                &[&seqs],
            )?;
        }
        Ok(())
    }

    fn delete_logs(&mut self, seqs: &[i64]) -> Result<(), postgres::Error> {
        if !seqs.is_empty() {
            self.conn()
                .execute("DELETE FROM castor_logs WHERE task_seq = ANY($1)", &[&seqs])?;
        }
        Ok(())
    }
}
