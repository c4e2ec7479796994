//! Flow control on SQLite: the limit rows, the rate ledger and the limited claim's
//! statements ([`crate::limits`] has the rules). Every writer holds the write lock from
//! `BEGIN IMMEDIATE`, so claimers are serialized and `lock_limits` is a plain read.

use rusqlite::{OptionalExtension, params};

use super::SqliteDriver;
use super::rows;
use super::tx::SqliteTx;
use crate::driver::LimitUsage;
use crate::limits::{Candidate, DeclaredLimits, LimitRow, Limits, Rate, next_slot_offset};
use crate::model::Claimed;

const ROW_COLUMNS: &str = "manager, task, declared_concurrency, declared_rate_count, \
     declared_rate_per_ms, key_arg, override_concurrency, override_rate_count, \
     override_rate_per_ms, updated_at";

fn limit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LimitRow> {
    let concurrency = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).filter(|&c| c > 0);
    Ok(LimitRow {
        manager: row.get(0)?,
        task: row.get(1)?,
        declared: Limits {
            concurrency: concurrency(row.get(2)?),
            rate: Rate::from_columns(row.get(3)?, row.get(4)?),
        },
        key: row.get(5)?,
        overridden: Limits {
            concurrency: concurrency(row.get(6)?),
            rate: Rate::from_columns(row.get(7)?, row.get(8)?),
        },
        updated_at: row.get(9)?,
    })
}

fn rate_columns(rate: Option<Rate>) -> (Option<i64>, Option<i64>) {
    (rate.map(|r| i64::from(r.count)), rate.map(|r| r.per_ms()))
}

/// The fingerprint list as two parameters (a task has one or two).
fn two(prints: &[&str]) -> (String, String) {
    let first = prints.first().copied().unwrap_or("");
    let second = prints.get(1).copied().unwrap_or(first);
    (first.to_owned(), second.to_owned())
}

/// Available tasks of one task and fingerprint, in claim order, skipping (`?6` set) the
/// keys with `?6` attempts running: one index walk per fingerprint, merged.
const CANDIDATES_SQL: &str = "SELECT seq, key, busy FROM ( \
       SELECT * FROM (SELECT t.seq, t.priority, coalesce(t.concurrency_key, '') AS key, \
         CASE WHEN ?6 IS NULL THEN 0 ELSE (SELECT count(*) FROM castor_tasks r \
           WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL AND r.manager = ?1 \
           AND r.task = ?2 AND r.concurrency_key = coalesce(t.concurrency_key, '')) END AS busy \
         FROM castor_tasks t WHERE t.state = 'available' AND t.manager = ?1 AND t.task = ?2 \
         AND t.args_fingerprint = ?3 AND (?6 IS NULL OR busy < ?6) \
         ORDER BY t.priority DESC, t.seq LIMIT ?5) \
       UNION ALL \
       SELECT * FROM (SELECT t.seq, t.priority, coalesce(t.concurrency_key, '') AS key, \
         CASE WHEN ?6 IS NULL THEN 0 ELSE (SELECT count(*) FROM castor_tasks r \
           WHERE r.state = 'running' AND r.concurrency_key IS NOT NULL AND r.manager = ?1 \
           AND r.task = ?2 AND r.concurrency_key = coalesce(t.concurrency_key, '')) END AS busy \
         FROM castor_tasks t WHERE t.state = 'available' AND t.manager = ?1 AND t.task = ?2 \
         AND t.args_fingerprint = ?4 AND ?4 <> ?3 AND (?6 IS NULL OR busy < ?6) \
         ORDER BY t.priority DESC, t.seq LIMIT ?5)) \
     ORDER BY priority DESC, seq LIMIT ?5";

impl SqliteTx<'_> {
    pub(super) fn declare_limits_rows(
        &self,
        manager: &str,
        declared: &[DeclaredLimits<'_>],
        now: i64,
    ) -> rusqlite::Result<()> {
        let conn = &self.driver.conn;
        let mut upsert = conn.prepare_cached(
            "INSERT INTO castor_limits (manager, task, declared_concurrency, \
             declared_rate_count, declared_rate_per_ms, key_arg, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (manager, task) DO UPDATE SET \
             declared_concurrency = excluded.declared_concurrency, \
             declared_rate_count = excluded.declared_rate_count, \
             declared_rate_per_ms = excluded.declared_rate_per_ms, key_arg = excluded.key_arg, \
             updated_at = excluded.updated_at \
             WHERE declared_concurrency IS NOT excluded.declared_concurrency \
             OR declared_rate_count IS NOT excluded.declared_rate_count \
             OR declared_rate_per_ms IS NOT excluded.declared_rate_per_ms \
             OR key_arg IS NOT excluded.key_arg",
        )?;
        let mut clear = conn.prepare_cached(
            "UPDATE castor_limits SET declared_concurrency = NULL, declared_rate_count = NULL, \
             declared_rate_per_ms = NULL, key_arg = NULL, updated_at = ?3 \
             WHERE manager = ?1 AND task = ?2 AND (declared_concurrency IS NOT NULL \
             OR declared_rate_count IS NOT NULL OR key_arg IS NOT NULL)",
        )?;
        for d in declared {
            if d.limits.is_none() && d.key.is_none() {
                clear.execute(params![manager, d.task, now])?;
            } else {
                let (count, per) = rate_columns(d.limits.rate);
                upsert.execute(params![
                    manager,
                    d.task,
                    d.limits.concurrency,
                    count,
                    per,
                    d.key,
                    now
                ])?;
            }
        }
        Ok(())
    }

    pub(super) fn set_override(
        &self,
        manager: &str,
        task: &str,
        overridden: &Limits,
        now: i64,
    ) -> rusqlite::Result<LimitRow> {
        let (count, per) = rate_columns(overridden.rate);
        self.driver
            .conn
            .prepare_cached(&format!(
                "INSERT INTO castor_limits (manager, task, override_concurrency, \
                 override_rate_count, override_rate_per_ms, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (manager, task) DO UPDATE SET \
                 override_concurrency = excluded.override_concurrency, \
                 override_rate_count = excluded.override_rate_count, \
                 override_rate_per_ms = excluded.override_rate_per_ms, \
                 updated_at = excluded.updated_at RETURNING {ROW_COLUMNS}"
            ))?
            .query_row(
                params![manager, task, overridden.concurrency, count, per, now],
                limit_row,
            )
    }

    pub(super) fn limit_rows(
        &self,
        manager: &str,
        tasks: &[String],
    ) -> rusqlite::Result<Vec<LimitRow>> {
        let mut stmt = self.driver.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM castor_limits WHERE manager = ?1 ORDER BY task"
        ))?;
        let rows = stmt
            .query_map(params![manager], limit_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .filter(|r| tasks.contains(&r.task))
            .collect())
    }

    pub(super) fn count_running_limited(&self, manager: &str, task: &str) -> rusqlite::Result<u64> {
        self.driver
            .conn
            .prepare_cached(
                "SELECT count(*) FROM castor_tasks WHERE state = 'running' \
                 AND concurrency_key IS NOT NULL AND manager = ?1 AND task = ?2",
            )?
            .query_row(params![manager, task], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    pub(super) fn prune_starts(
        &self,
        manager: &str,
        task: &str,
        since: i64,
    ) -> rusqlite::Result<u64> {
        let conn = &self.driver.conn;
        conn.prepare_cached(
            "DELETE FROM castor_starts WHERE manager = ?1 AND task = ?2 AND at <= ?3",
        )?
        .execute(params![manager, task, since])?;
        conn.prepare_cached("SELECT count(*) FROM castor_starts WHERE manager = ?1 AND task = ?2")?
            .query_row(params![manager, task], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    pub(super) fn candidates(
        &self,
        manager: &str,
        task: &str,
        prints: &[&str],
        per_key: Option<u32>,
        limit: usize,
    ) -> rusqlite::Result<Vec<Candidate>> {
        let (first, second) = two(prints);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.driver.conn.prepare_cached(CANDIDATES_SQL)?;
        stmt.query_map(
            params![manager, task, first, second, limit, per_key],
            |row| {
                Ok(Candidate {
                    seq: row.get(0)?,
                    key: row.get(1)?,
                    running: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                })
            },
        )?
        .collect()
    }

    pub(super) fn claim_rows(
        &self,
        seqs: &[i64],
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> rusqlite::Result<Vec<Claimed>> {
        let mut one = self.driver.conn.prepare_cached(
            "UPDATE castor_tasks SET state = 'running', attempt = attempt + 1, \
             attempted_at = ?2, attempted_by = ?3, lease_expires_at = ?4, \
             progress_done = NULL, progress_total = NULL, progress_message = NULL, \
             concurrency_key = coalesce(concurrency_key, '') \
             WHERE seq = ?1 AND state = 'available' \
             RETURNING seq, id, task, args, attempt, max_attempts, backoff_base_ms, \
             backoff_cap_ms, timeout_ms, priority",
        )?;
        let mut claimed = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            claimed.extend(
                one.query_row(params![seq, now, worker, lease_until], rows::claimed_from)
                    .optional()?,
            );
        }
        Ok(claimed)
    }

    pub(super) fn insert_starts(
        &self,
        manager: &str,
        task: &str,
        count: usize,
        now: i64,
    ) -> rusqlite::Result<()> {
        let mut insert = self
            .driver
            .conn
            .prepare_cached("INSERT INTO castor_starts (manager, task, at) VALUES (?1, ?2, ?3)")?;
        for _ in 0..count {
            insert.execute(params![manager, task, now])?;
        }
        Ok(())
    }

    pub(super) fn nth_start(
        &self,
        manager: &str,
        task: &str,
        offset: u64,
    ) -> rusqlite::Result<Option<i64>> {
        nth_start(&self.driver.conn, manager, task, offset)
    }

    pub(super) fn any_available(
        &self,
        manager: &str,
        task: &str,
        prints: &[&str],
    ) -> rusqlite::Result<bool> {
        any_available(&self.driver.conn, manager, task, prints)
    }
}

fn nth_start(
    conn: &rusqlite::Connection,
    manager: &str,
    task: &str,
    offset: u64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT at FROM castor_starts WHERE manager = ?1 AND task = ?2 ORDER BY at LIMIT 1 OFFSET ?3",
    )?
    .query_row(
        params![manager, task, i64::try_from(offset).unwrap_or(i64::MAX)],
        |row| row.get(0),
    )
    .optional()
}

fn any_available(
    conn: &rusqlite::Connection,
    manager: &str,
    task: &str,
    prints: &[&str],
) -> rusqlite::Result<bool> {
    let (first, second) = two(prints);
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM castor_tasks WHERE state = 'available' AND manager = ?1 \
         AND task = ?2 AND args_fingerprint IN (?3, ?4))",
    )?
    .query_row(params![manager, task, first, second], |row| row.get(0))
}

impl SqliteDriver {
    pub(super) fn read_limits(&self, manager: Option<&str>) -> rusqlite::Result<Vec<LimitRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM castor_limits WHERE ?1 IS NULL OR manager = ?1 \
             ORDER BY manager, task"
        ))?;
        stmt.query_map(params![manager], limit_row)?.collect()
    }

    pub(super) fn read_limit_usage(
        &self,
        manager: &str,
        task: &str,
        rate: Option<Rate>,
        now: i64,
    ) -> rusqlite::Result<LimitUsage> {
        let mut usage = LimitUsage::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT concurrency_key, count(*) FROM castor_tasks WHERE state = 'running' \
             AND concurrency_key IS NOT NULL AND manager = ?1 AND task = ?2 \
             GROUP BY concurrency_key",
        )?;
        for row in stmt.query_map(params![manager, task], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })? {
            let (key, n) = row?;
            usage
                .running_by_key
                .insert(key, u64::try_from(n).unwrap_or(0));
        }
        usage.available = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM castor_tasks WHERE state = 'available' AND manager = ?1 \
                 AND task = ?2",
            )?
            .query_row(params![manager, task], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))?;
        if let Some(rate) = rate {
            let since = now - rate.per_us();
            usage.started = self
                .conn
                .prepare_cached(
                    "SELECT count(*) FROM castor_starts WHERE manager = ?1 AND task = ?2 \
                     AND at > ?3",
                )?
                .query_row(params![manager, task, since], |row| row.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))?;
            if let Some(offset) = next_slot_offset(rate, usage.started) {
                let at: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT at FROM castor_starts WHERE manager = ?1 AND task = ?2 \
                         AND at > ?3 ORDER BY at LIMIT 1 OFFSET ?4",
                    )?
                    .query_row(
                        params![manager, task, since, i64::try_from(offset).unwrap_or(0)],
                        |row| row.get(0),
                    )
                    .optional()?;
                usage.next_slot_at = at.map(|at| at + rate.per_us());
            }
        }
        Ok(usage)
    }
}
