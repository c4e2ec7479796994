//! Flow control on PostgreSQL: the limit rows, the rate ledger and the limited claim's
//! statements ([`crate::limits`] has the rules). Claimers of a limited task are
//! serialized by its limit row, locked `FOR UPDATE` (in task order) for the rest of the
//! claim's transaction: under `READ COMMITTED` each later statement sees what the
//! previous holder committed, so two hosts never count the same free slot.

use postgres::Row;

use super::PostgresDriver;
use super::rows::{self, u32_from};
use super::tx::PostgresTx;
use crate::driver::LimitUsage;
use crate::limits::{Candidate, DeclaredLimits, LimitRow, Limits, Rate, next_slot_offset};
use crate::model::Claimed;

fn limit_row(row: &Row) -> Result<LimitRow, postgres::Error> {
    let concurrency = |v: Option<i64>| v.filter(|&c| c > 0).map(u32_from);
    Ok(LimitRow {
        manager: row.try_get(0)?,
        task: row.try_get(1)?,
        declared: Limits {
            concurrency: concurrency(row.try_get(2)?),
            rate: Rate::from_columns(row.try_get(3)?, row.try_get(4)?),
        },
        key: row.try_get(5)?,
        overridden: Limits {
            concurrency: concurrency(row.try_get(6)?),
            rate: Rate::from_columns(row.try_get(7)?, row.try_get(8)?),
        },
        updated_at: row.try_get(9)?,
    })
}

fn rate_columns(rate: Option<Rate>) -> (Option<i64>, Option<i64>) {
    (rate.map(|r| i64::from(r.count)), rate.map(|r| r.per_ms()))
}

fn count(row: &Row) -> Result<u64, postgres::Error> {
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

const UPSERT_DECLARED_SQL: &str = "INSERT INTO castor_limits (manager, task, \
     declared_concurrency, declared_rate_count, declared_rate_per_ms, key_arg, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (manager, task) DO UPDATE SET \
     declared_concurrency = excluded.declared_concurrency, \
     declared_rate_count = excluded.declared_rate_count, \
     declared_rate_per_ms = excluded.declared_rate_per_ms, key_arg = excluded.key_arg, \
     updated_at = excluded.updated_at \
     WHERE castor_limits.declared_concurrency IS DISTINCT FROM excluded.declared_concurrency \
     OR castor_limits.declared_rate_count IS DISTINCT FROM excluded.declared_rate_count \
     OR castor_limits.declared_rate_per_ms IS DISTINCT FROM excluded.declared_rate_per_ms \
     OR castor_limits.key_arg IS DISTINCT FROM excluded.key_arg";

const CLEAR_DECLARED_SQL: &str = "UPDATE castor_limits SET declared_concurrency = NULL, \
     declared_rate_count = NULL, declared_rate_per_ms = NULL, key_arg = NULL, updated_at = $3 \
     WHERE manager = $1 AND task = $2 AND (declared_concurrency IS NOT NULL \
     OR declared_rate_count IS NOT NULL OR key_arg IS NOT NULL)";

const SET_OVERRIDE_SQL: &str = "INSERT INTO castor_limits (manager, task, \
     override_concurrency, override_rate_count, override_rate_per_ms, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (manager, task) DO UPDATE SET \
     override_concurrency = excluded.override_concurrency, \
     override_rate_count = excluded.override_rate_count, \
     override_rate_per_ms = excluded.override_rate_per_ms, updated_at = excluded.updated_at \
     RETURNING manager, task, declared_concurrency, declared_rate_count, \
     declared_rate_per_ms, key_arg, override_concurrency, override_rate_count, \
     override_rate_per_ms, updated_at";

const LOCK_SQL: &str = "SELECT manager, task, declared_concurrency, declared_rate_count, \
     declared_rate_per_ms, key_arg, override_concurrency, override_rate_count, \
     override_rate_per_ms, updated_at FROM castor_limits \
     WHERE manager = $1 AND task = ANY($2) ORDER BY task FOR UPDATE";

const READ_SQL: &str = "SELECT manager, task, declared_concurrency, declared_rate_count, \
     declared_rate_per_ms, key_arg, override_concurrency, override_rate_count, \
     override_rate_per_ms, updated_at FROM castor_limits \
     WHERE $1::text IS NULL OR manager = $1 ORDER BY manager, task";

const RUNNING_SQL: &str = "SELECT count(*) FROM castor_tasks WHERE state = 'running' \
     AND concurrency_key IS NOT NULL AND manager = $1 AND task = $2";

const PRUNE_STARTS_SQL: &str =
    "DELETE FROM castor_starts WHERE manager = $1 AND task = $2 AND at <= $3";

const COUNT_STARTS_SQL: &str =
    "SELECT count(*) FROM castor_starts WHERE manager = $1 AND task = $2 AND at > $3";

/// Available tasks of one task, per fingerprint `$3` an index scan in claim order,
/// skipping (with `$5` set) the keys with `$5` attempts running.
const CANDIDATES_SQL: &str = "SELECT c.seq, c.key, c.busy FROM unnest($3::text[]) AS n(fp) \
     CROSS JOIN LATERAL ( \
       SELECT t.seq, t.priority, coalesce(t.concurrency_key, '') AS key, b.busy \
       FROM castor_tasks t \
       CROSS JOIN LATERAL (SELECT CASE WHEN $5::bigint IS NULL THEN 0::bigint ELSE \
         (SELECT count(*) FROM castor_tasks r WHERE r.state = 'running' \
          AND r.concurrency_key IS NOT NULL AND r.manager = $1 AND r.task = $2 \
          AND r.concurrency_key = coalesce(t.concurrency_key, '')) END AS busy) b \
       WHERE t.state = 'available' AND t.manager = $1 AND t.task = $2 \
         AND t.args_fingerprint = n.fp AND ($5::bigint IS NULL OR b.busy < $5) \
       ORDER BY t.priority DESC, t.seq LIMIT $4 \
       FOR UPDATE OF t SKIP LOCKED) c \
     ORDER BY c.priority DESC, c.seq LIMIT $4";

const CLAIM_ROWS_SQL: &str = "UPDATE castor_tasks t SET state = 'running', \
     attempt = t.attempt + 1, attempted_at = $2, attempted_by = $3, lease_expires_at = $4, \
     progress_done = NULL, progress_total = NULL, progress_message = NULL, \
     concurrency_key = coalesce(t.concurrency_key, '') \
     WHERE t.seq = ANY($1) AND t.state = 'available' \
     RETURNING t.seq, t.id, t.task, t.args, t.attempt, t.max_attempts, t.backoff_base_ms, \
       t.backoff_cap_ms, t.timeout_ms, t.priority";

const RECORD_STARTS_SQL: &str = "INSERT INTO castor_starts (manager, task, at) \
     SELECT $1, $2, $3 FROM generate_series(1, $4::bigint)";

const START_AT_SQL: &str = "SELECT at FROM castor_starts WHERE manager = $1 AND task = $2 \
     ORDER BY at OFFSET $3 LIMIT 1";

const START_AT_SINCE_SQL: &str = "SELECT at FROM castor_starts WHERE manager = $1 \
     AND task = $2 AND at > $3 ORDER BY at OFFSET $4 LIMIT 1";

const ANY_AVAILABLE_SQL: &str = "SELECT EXISTS (SELECT 1 FROM castor_tasks \
     WHERE state = 'available' AND manager = $1 AND task = $2 AND args_fingerprint = ANY($3))";

const RUNNING_BY_KEY_SQL: &str = "SELECT concurrency_key, count(*) FROM castor_tasks \
     WHERE state = 'running' AND concurrency_key IS NOT NULL AND manager = $1 AND task = $2 \
     GROUP BY concurrency_key";

const AVAILABLE_SQL: &str = "SELECT count(*) FROM castor_tasks WHERE state = 'available' \
     AND manager = $1 AND task = $2";

impl PostgresTx<'_> {
    pub(super) fn declare_limits_rows(
        &mut self,
        manager: &str,
        declared: &[DeclaredLimits<'_>],
        now: i64,
    ) -> Result<(), postgres::Error> {
        for d in declared {
            if d.limits.is_none() && d.key.is_none() {
                self.conn()
                    .execute(CLEAR_DECLARED_SQL, &[&manager, &d.task, &now])?;
            } else {
                let (count, per) = rate_columns(d.limits.rate);
                let concurrency = d.limits.concurrency.map(i64::from);
                self.conn().execute(
                    UPSERT_DECLARED_SQL,
                    &[&manager, &d.task, &concurrency, &count, &per, &d.key, &now],
                )?;
            }
        }
        Ok(())
    }

    pub(super) fn set_override(
        &mut self,
        manager: &str,
        task: &str,
        overridden: &Limits,
        now: i64,
    ) -> Result<LimitRow, postgres::Error> {
        let (count, per) = rate_columns(overridden.rate);
        let concurrency = overridden.concurrency.map(i64::from);
        let row = self.conn().query_one(
            SET_OVERRIDE_SQL,
            &[&manager, &task, &concurrency, &count, &per, &now],
        )?;
        limit_row(&row)
    }

    pub(super) fn lock_limit_rows(
        &mut self,
        manager: &str,
        tasks: &[String],
    ) -> Result<Vec<LimitRow>, postgres::Error> {
        self.unflushed()
            .query(LOCK_SQL, &[&manager, &tasks])?
            .iter()
            .map(limit_row)
            .collect()
    }

    pub(super) fn read_limit_rows(
        &mut self,
        manager: &str,
    ) -> Result<Vec<LimitRow>, postgres::Error> {
        let manager = Some(manager);
        self.unflushed()
            .query(READ_SQL, &[&manager])?
            .iter()
            .map(limit_row)
            .collect()
    }

    pub(super) fn count_running_limited(
        &mut self,
        manager: &str,
        task: &str,
    ) -> Result<u64, postgres::Error> {
        count(
            &self
                .unflushed()
                .query_one(RUNNING_SQL, &[&manager, &task])?,
        )
    }

    pub(super) fn prune_starts(
        &mut self,
        manager: &str,
        task: &str,
        since: i64,
    ) -> Result<u64, postgres::Error> {
        self.unflushed()
            .execute(PRUNE_STARTS_SQL, &[&manager, &task, &since])?;
        count(
            &self
                .unflushed()
                .query_one(COUNT_STARTS_SQL, &[&manager, &task, &since])?,
        )
    }

    pub(super) fn candidates(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
        per_key: Option<u32>,
        limit: usize,
    ) -> Result<Vec<Candidate>, postgres::Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let per_key = per_key.map(i64::from);
        let prints: Vec<&str> = prints.to_vec();
        self.unflushed()
            .query(
                CANDIDATES_SQL,
                &[&manager, &task, &prints, &limit, &per_key],
            )?
            .iter()
            .map(|row| {
                Ok(Candidate {
                    seq: row.try_get(0)?,
                    key: row.try_get(1)?,
                    running: u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
                })
            })
            .collect()
    }

    pub(super) fn claim_rows(
        &mut self,
        seqs: &[i64],
        worker: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, postgres::Error> {
        let seqs: Vec<i64> = seqs.to_vec();
        self.unflushed()
            .query(CLAIM_ROWS_SQL, &[&seqs, &now, &worker, &lease_until])?
            .iter()
            .map(rows::claimed_from)
            .collect()
    }

    pub(super) fn insert_starts(
        &mut self,
        manager: &str,
        task: &str,
        n: usize,
        now: i64,
    ) -> Result<(), postgres::Error> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.unflushed()
            .execute(RECORD_STARTS_SQL, &[&manager, &task, &now, &n])?;
        Ok(())
    }

    pub(super) fn nth_start(
        &mut self,
        manager: &str,
        task: &str,
        offset: u64,
    ) -> Result<Option<i64>, postgres::Error> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.unflushed()
            .query_opt(START_AT_SQL, &[&manager, &task, &offset])?
            .map(|row| row.try_get(0))
            .transpose()
    }

    pub(super) fn any_available(
        &mut self,
        manager: &str,
        task: &str,
        prints: &[&str],
    ) -> Result<bool, postgres::Error> {
        let prints: Vec<&str> = prints.to_vec();
        self.unflushed()
            .query_one(ANY_AVAILABLE_SQL, &[&manager, &task, &prints])?
            .try_get(0)
    }
}

impl PostgresDriver {
    pub(super) fn read_limits(
        &self,
        manager: Option<&str>,
    ) -> Result<Vec<LimitRow>, crate::StoreError> {
        self.read("read tasks' limits", |conn| {
            conn.query(READ_SQL, &[&manager])?
                .iter()
                .map(limit_row)
                .collect()
        })
    }

    pub(super) fn read_limit_usage(
        &self,
        manager: &str,
        task: &str,
        rate: Option<Rate>,
        now: i64,
    ) -> Result<LimitUsage, crate::StoreError> {
        self.read("read a task's limit usage", |conn| {
            let mut usage = LimitUsage::default();
            for row in conn.query(RUNNING_BY_KEY_SQL, &[&manager, &task])? {
                let key: String = row.try_get(0)?;
                let n: i64 = row.try_get(1)?;
                usage
                    .running_by_key
                    .insert(key, u64::try_from(n).unwrap_or(0));
            }
            usage.available = count(&conn.query_one(AVAILABLE_SQL, &[&manager, &task])?)?;
            if let Some(rate) = rate {
                let since = now - rate.per_us();
                usage.started =
                    count(&conn.query_one(COUNT_STARTS_SQL, &[&manager, &task, &since])?)?;
                if let Some(offset) = next_slot_offset(rate, usage.started) {
                    let offset = i64::try_from(offset).unwrap_or(0);
                    let at: Option<i64> = conn
                        .query_opt(START_AT_SINCE_SQL, &[&manager, &task, &since, &offset])?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    usage.next_slot_at = at.map(|at| at + rate.per_us());
                }
            }
            Ok(usage)
        })
    }
}
