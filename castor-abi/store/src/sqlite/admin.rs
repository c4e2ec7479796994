//! What people do to tasks from outside a worker: list, count, cancel, retry, purge, and
//! the retention sweep.

use rusqlite::{OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::rows::{id_from, state_from};
use super::{SqliteDriver, SqliteTx};
use crate::error::StoreError;
use crate::model::{
    AfterParents, CancelOutcome, ListFilter, ParentInfo, RetryOutcome, StateCount, TaskSummary,
    Waiting, WorkerRow,
};
use crate::state::TaskState;

impl SqliteDriver {
    /// Tasks matching `filter`, newest first.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<TaskSummary>, StoreError> {
        let mut sql = String::from(
            "SELECT id, manager, task, state, attempt, max_attempts, created_at, scheduled_at, \
             finalized_at, attempted_by, json_extract(errors, '$[#-1].error'), \
             args_fingerprint, concurrency_key FROM castor_tasks WHERE 1 = 1",
        );
        let mut values: Vec<String> = Vec::new();
        if !filter.states.is_empty() {
            let marks = vec!["?"; filter.states.len()].join(", ");
            sql.push_str(&format!(" AND state IN ({marks})"));
            values.extend(filter.states.iter().map(|s| s.as_str().to_owned()));
        }
        if let Some(task) = &filter.task {
            sql.push_str(" AND task = ?");
            values.push(task.clone());
        }
        if let Some(manager) = &filter.manager {
            sql.push_str(" AND manager = ?");
            values.push(manager.clone());
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", filter.limit.max(1)));
        self.conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(params_from_iter(values.iter()), |row| {
                    Ok(TaskSummary {
                        id: id_from(row.get(0)?, 0)?,
                        manager: row.get(1)?,
                        task: row.get(2)?,
                        state: state_from(row.get(3)?, 3)?,
                        attempt: row.get(4)?,
                        max_attempts: row.get(5)?,
                        created_at: row.get(6)?,
                        scheduled_at: row.get(7)?,
                        finalized_at: row.get(8)?,
                        attempted_by: row.get(9)?,
                        last_error: row.get(10)?,
                        args_fingerprint: Some(row.get::<_, String>(11)?)
                            .filter(|fp| !fp.is_empty()),
                        concurrency_key: row.get(12)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("list tasks", e))
    }

    /// Task counts by manager, name and state (a full scan: for the CLI, not hot paths).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn counts(&self) -> Result<Vec<StateCount>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT manager, task, state, count(*) FROM castor_tasks \
                 GROUP BY manager, task, state ORDER BY manager, task, state",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok(StateCount {
                        manager: row.get(0)?,
                        task: row.get(1)?,
                        state: state_from(row.get(2)?, 2)?,
                        count: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("count tasks", e))
    }

    /// When the longest-waiting available task of `manager` became available.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn oldest_available(&self, manager: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT min(scheduled_at) FROM castor_tasks \
                 WHERE state = 'available' AND manager = ?1",
            )
            .and_then(|mut stmt| stmt.query_row([manager], |row| row.get::<_, Option<i64>>(0)))
            .map_err(|e| self.error("read the oldest available task", e))
    }

    /// How many tasks completed since `since` (microseconds since the epoch).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn completed_since(&self, since: i64) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM castor_tasks \
                 WHERE finalized_at >= ?1 AND state = 'completed'",
            )
            .and_then(|mut stmt| stmt.query_row([since], |row| row.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.error("count completed tasks", e))
    }

    /// Every worker run recorded, newest first; with `live_only`, those not stopped.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn workers(&self, live_only: bool) -> Result<Vec<WorkerRow>, StoreError> {
        let sql = if live_only {
            "SELECT id, manager, library, hostname, pid, threads, processes, tasks, started_at, \
             heartbeat_at, stopped_at, completed, failed, host_id, args_fingerprints \
             FROM castor_workers WHERE stopped_at IS NULL ORDER BY started_at DESC"
        } else {
            "SELECT id, manager, library, hostname, pid, threads, processes, tasks, started_at, \
             heartbeat_at, stopped_at, completed, failed, host_id, args_fingerprints \
             FROM castor_workers ORDER BY started_at DESC"
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    let tasks: String = row.get(7)?;
                    let prints: String = row.get(14)?;
                    Ok(WorkerRow {
                        id: row.get(0)?,
                        manager: row.get(1)?,
                        library: row.get(2)?,
                        hostname: row.get(3)?,
                        host_id: row.get(13)?,
                        pid: row.get(4)?,
                        threads: row.get(5)?,
                        processes: row.get(6)?,
                        tasks: serde_json::from_str(&tasks).unwrap_or_default(),
                        args_fingerprints: serde_json::from_str(&prints).unwrap_or_default(),
                        started_at: row.get(8)?,
                        heartbeat_at: row.get(9)?,
                        stopped_at: row.get(10)?,
                        completed: row.get(11)?,
                        failed: row.get(12)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("list workers", e))
    }

    /// The next `limit` tasks of `manager` waiting for a start time (scheduled, or
    /// retryable after a backoff), soonest first: (id, task, starts at).
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn waiting(&self, manager: &str, limit: usize) -> Result<Vec<Waiting>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, task, scheduled_at FROM castor_tasks \
                 WHERE manager = ?1 AND (state = 'scheduled' OR state = 'retryable') \
                 ORDER BY scheduled_at LIMIT ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![manager, limit as i64], |row| {
                    Ok(Waiting {
                        id: id_from(row.get(0)?, 0)?,
                        task: row.get(1)?,
                        starts_at: row.get(2)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("list waiting tasks", e))
    }

    /// The parents of the task `id`, in order, each with its state now.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn parents(&self, id: Uuid) -> Result<Vec<ParentInfo>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT d.position, d.parent_id, d.parent_task, p.state \
                 FROM castor_tasks c JOIN castor_dependencies d ON d.child_seq = c.seq \
                 LEFT JOIN castor_tasks p ON p.id = d.parent_id \
                 WHERE c.id = ?1 ORDER BY d.position",
            )
            .and_then(|mut stmt| {
                stmt.query_map([id.as_bytes().as_slice()], parent_info)?
                    .collect()
            })
            .map_err(|e| self.error("read a task's parents", e))
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
        let read = || -> Result<Vec<AfterParents>, rusqlite::Error> {
            let tasks: Vec<(i64, Uuid, String)> = self
                .conn
                .prepare_cached(
                    "SELECT seq, id, task FROM castor_tasks \
                     WHERE manager = ?1 AND state = 'waiting' ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![manager, limit as i64], |row| {
                    Ok((row.get(0)?, id_from(row.get(1)?, 1)?, row.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut parents = self.conn.prepare_cached(
                "SELECT d.position, d.parent_id, d.parent_task, p.state \
                 FROM castor_dependencies d LEFT JOIN castor_tasks p ON p.id = d.parent_id \
                 WHERE d.child_seq = ?1 ORDER BY d.position",
            )?;
            tasks
                .into_iter()
                .map(|(seq, id, task)| {
                    Ok(AfterParents {
                        id,
                        task,
                        parents: parents
                            .query_map([seq], parent_info)?
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect()
        };
        read().map_err(|e| self.error("list tasks waiting on their parents", e))
    }

    /// See [`crate::Driver::mismatched`]: one index range per task name.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn mismatched(
        &self,
        filter: &crate::TaskFilter,
    ) -> Result<Vec<crate::Mismatched>, StoreError> {
        let mut out = Vec::new();
        for (i, task) in filter.tasks.iter().enumerate() {
            let own = filter
                .args_fingerprints
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_default();
            self.conn
                .prepare_cached(
                    "SELECT args_fingerprint, count(*) FROM castor_tasks \
                     WHERE state = 'available' AND manager = ?1 AND task = ?2 \
                     AND args_fingerprint > '' AND args_fingerprint <> ?3 \
                     GROUP BY args_fingerprint ORDER BY args_fingerprint",
                )
                .and_then(|mut stmt| {
                    let rows = stmt.query_map(params![filter.manager, task, own], |row| {
                        Ok(crate::Mismatched {
                            task: task.clone(),
                            args_fingerprint: row.get(0)?,
                            count: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        })
                    })?;
                    for row in rows {
                        out.push(row?);
                    }
                    Ok(())
                })
                .map_err(|e| self.error("count tasks of another signature", e))?;
        }
        Ok(out)
    }

    /// The available tasks dispatched with a known argument fingerprint, counted by
    /// manager, name and fingerprint.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn available_signatures(&self) -> Result<Vec<crate::SignatureCount>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT manager, task, args_fingerprint, count(*) FROM castor_tasks \
                 WHERE state = 'available' AND args_fingerprint > '' \
                 GROUP BY manager, task, args_fingerprint \
                 ORDER BY manager, task, args_fingerprint",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok(crate::SignatureCount {
                        manager: row.get(0)?,
                        task: row.get(1)?,
                        args_fingerprint: row.get(2)?,
                        count: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error("count available tasks by signature", e))
    }

    /// The stored (encoded) arguments of the task with this id.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn args_of(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .prepare_cached("SELECT args FROM castor_tasks WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id.as_bytes().as_slice()], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.error("read a task's arguments", e))
    }
}

/// A parent as `parents` reads it: (position, id, name, state or NULL).
fn parent_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<ParentInfo> {
    let state: Option<String> = row.get(3)?;
    Ok(ParentInfo {
        position: row.get(0)?,
        id: id_from(row.get(1)?, 1)?,
        task: row.get(2)?,
        state: state.map(|s| state_from(s, 3)).transpose()?,
    })
}

impl SqliteTx<'_> {
    /// Cancels a task: one that has not started never will; a running one is flagged for
    /// its worker. `None` if no task has this id. With it, whether the task ended now and
    /// has dependents to settle.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn cancel(
        &self,
        id: Uuid,
        now: i64,
    ) -> Result<(Option<CancelOutcome>, bool), rusqlite::Error> {
        let key = id.as_bytes().as_slice();
        // A waiting task records why it never ran, so that a retry knows to wait again.
        let waited = serde_json::to_string(&crate::AttemptError {
            attempt: 0,
            at: now,
            kind: crate::ErrorKind::Chain,
            error: "cancelled while it waited on its parents".into(),
            worker: None,
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let stopped: Option<bool> = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'cancelled', finalized_at = ?2, \
                 errors = CASE WHEN state = 'waiting' \
                          THEN json_insert(coalesce(errors, '[]'), '$[#]', json(?3)) \
                          ELSE errors END \
                 WHERE id = ?1 AND state IN ('waiting', 'scheduled', 'available', 'retryable') \
                 RETURNING has_dependents",
            )?
            .query_row(params![key, now, waited], |row| row.get(0))
            .optional()?;
        if let Some(has_dependents) = stopped {
            return Ok((Some(CancelOutcome::Cancelled), has_dependents));
        }
        let flagged = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET cancel_requested_at = coalesce(cancel_requested_at, ?2) \
                 WHERE id = ?1 AND state = 'running'",
            )?
            .execute(params![key, now])?;
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
    pub fn rewait(&self, id: Uuid) -> Result<Option<i64>, rusqlite::Error> {
        self.driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'waiting', finalized_at = NULL, \
                 cancel_requested_at = NULL \
                 WHERE id = ?1 AND state IN ('discarded', 'cancelled') AND parents > 0 \
                 AND errors ->> '$[#-1].kind' = 'chain' RETURNING seq",
            )?
            .query_row([id.as_bytes().as_slice()], |row| row.get(0))
            .optional()
    }

    /// Puts a discarded or cancelled task back to `available` with one more attempt
    /// allowed; its errors are kept. `None` if no task has this id.
    ///
    /// # Errors
    /// Fails if a statement fails, e.g. when its unique key is now held by another task.
    pub fn retry(&self, id: Uuid, now: i64) -> Result<Option<RetryOutcome>, rusqlite::Error> {
        let key = id.as_bytes().as_slice();
        let retried = self
            .driver
            .conn
            .prepare_cached(
                "UPDATE castor_tasks SET state = 'available', scheduled_at = ?2, \
                 finalized_at = NULL, result = NULL, cancel_requested_at = NULL, \
                 lease_expires_at = NULL, max_attempts = max(max_attempts, attempt + 1) \
                 WHERE id = ?1 AND state IN ('discarded', 'cancelled')",
            )?
            .execute(params![key, now])?;
        if retried == 1 {
            return Ok(Some(RetryOutcome::Retried));
        }
        Ok(self.state_of(id)?.map(RetryOutcome::NotRetryable))
    }

    pub(super) fn state_of(&self, id: Uuid) -> Result<Option<TaskState>, rusqlite::Error> {
        let state: Option<String> = self
            .driver
            .conn
            .prepare_cached("SELECT state FROM castor_tasks WHERE id = ?1")?
            .query_row([id.as_bytes().as_slice()], |row| row.get(0))
            .optional()?;
        state.map(|s| state_from(s, 0)).transpose()
    }

    /// Deletes tasks in `states` that finished (or, for unfinished states, were
    /// dispatched) before `before`, with their logs and links; returns how many, and the
    /// ids of those with dependents (to settle: they will never complete now). Running
    /// tasks are never purged.
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn purge(
        &self,
        states: &[TaskState],
        before: i64,
    ) -> Result<(usize, Vec<Uuid>), rusqlite::Error> {
        let states: Vec<&str> = states
            .iter()
            .filter(|s| **s != TaskState::Running)
            .map(|s| s.as_str())
            .collect();
        if states.is_empty() {
            return Ok((0, Vec::new()));
        }
        let marks = (0..states.len())
            .map(|i| format!("?{}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "DELETE FROM castor_tasks WHERE state IN ({marks}) \
             AND coalesce(finalized_at, created_at) < ?1 \
             RETURNING seq, id, has_dependents, parents"
        );
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&before];
        values.extend(states.iter().map(|s| s as &dyn rusqlite::ToSql));
        let deleted: Vec<(i64, Vec<u8>, bool, i64)> = self
            .driver
            .conn
            .prepare(&sql)?
            .query_map(values.as_slice(), |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let seqs: Vec<i64> = deleted.iter().map(|d| d.0).collect();
        self.delete_logs(&seqs)?;
        self.delete_links(deleted.iter().filter(|d| d.3 > 0).map(|d| d.0))?;
        let parents = deleted
            .into_iter()
            .filter(|d| d.2)
            .map(|d| id_from(d.1, 1))
            .collect::<Result<_, _>>()?;
        Ok((seqs.len(), parents))
    }

    /// The retention sweep: deletes up to `limit` finished tasks (completed, discarded,
    /// cancelled) that finished before `before`, with their logs; returns how many. A
    /// parent whose dependents still wait on it is kept (they need its result).
    ///
    /// # Errors
    /// Fails if a statement fails.
    pub fn prune(&self, before: i64, limit: usize) -> Result<usize, rusqlite::Error> {
        let deleted: Vec<(i64, i64)> = self
            .driver
            .conn
            .prepare_cached(
                "DELETE FROM castor_tasks WHERE seq IN (SELECT seq FROM castor_tasks t \
                 WHERE finalized_at < ?1 AND (has_dependents = 0 OR NOT EXISTS \
                   (SELECT 1 FROM castor_dependencies d JOIN castor_tasks c \
                    ON c.seq = d.child_seq WHERE d.parent_id = t.id AND c.state = 'waiting')) \
                 LIMIT ?2) RETURNING seq, parents",
            )?
            .query_map(params![before, limit as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let seqs: Vec<i64> = deleted.iter().map(|d| d.0).collect();
        self.delete_logs(&seqs)?;
        self.delete_links(deleted.iter().filter(|d| d.1 > 0).map(|d| d.0))?;
        self.driver
            .conn
            .prepare_cached("DELETE FROM castor_workers WHERE stopped_at < ?1")?
            .execute([before])?;
        Ok(seqs.len())
    }

    /// Deletes the links of dependents that are deleted.
    fn delete_links(&self, seqs: impl Iterator<Item = i64>) -> Result<(), rusqlite::Error> {
        let mut stmt = self
            .driver
            .conn
            .prepare_cached("DELETE FROM castor_dependencies WHERE child_seq = ?1")?;
        for seq in seqs {
            stmt.execute([seq])?;
        }
        Ok(())
    }

    fn delete_logs(&self, seqs: &[i64]) -> Result<(), rusqlite::Error> {
        let mut stmt = self
            .driver
            .conn
            .prepare_cached("DELETE FROM castor_logs WHERE task_seq = ?1")?;
        for seq in seqs {
            stmt.execute([seq])?;
        }
        Ok(())
    }
}
