//! Flow control: a task's global concurrency limit and rate limit, as declared by its
//! library and overridden at run time, and what holds an available task back. The rules
//! live here, pure; the drivers apply them in the claim's transaction
//! ([`crate::Tx::claim_limited`]) and read them for people ([`crate::Driver::limit_status`]).
//!
//! - **Concurrency** `N`: at most `N` attempts of the task `running` at once across every
//!   worker on the database; with a partition key (`concurrency_key = arg`), at most `N`
//!   per distinct value of that argument (the key is computed by the dispatching side
//!   and stored on the row).
//! - **Rate** `N/window`: at most `N` attempts started (claimed) in any window of that
//!   length, counted from a ledger of starts (`castor_starts`), not from `attempted_at`,
//!   which a retry overwrites.
//!
//! A limit row (`castor_limits`, one per manager and task) holds the declaration, written
//! by each worker at start, and the override set by `castor limit`; the override wins
//! field by field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::model::Claimed;

/// A rate: at most `count` starts in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Starts allowed per window (at least 1).
    pub count: u32,
    /// The window's length: a second, a minute or an hour.
    #[serde(serialize_with = "serialize_ms")]
    pub per: Duration,
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a rate's text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Not `N/unit`.
    #[error(
        "invalid rate {given:?}: write a count and a unit, e.g. \"10/s\", \"600/m\", \"1000/h\""
    )]
    Syntax {
        /// The text as given.
        given: String,
    },
    /// A count of zero.
    #[error("invalid rate {given:?}: the count must be at least 1")]
    Zero {
        /// The text as given.
        given: String,
    },
}

impl Rate {
    /// The window's unit as written (`s`, `m`, `h`).
    fn unit(&self) -> &'static str {
        match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        }
    }

    /// The window in microseconds.
    pub fn per_us(&self) -> i64 {
        i64::try_from(self.per.as_micros()).unwrap_or(i64::MAX)
    }

    /// A rate from its stored columns (count, window in milliseconds); `None` if either
    /// is missing or out of range.
    pub fn from_columns(count: Option<i64>, per_ms: Option<i64>) -> Option<Rate> {
        let count = u32::try_from(count?).ok().filter(|&c| c > 0)?;
        let per_ms = u64::try_from(per_ms?).ok().filter(|&ms| ms > 0)?;
        Some(Rate {
            count,
            per: Duration::from_millis(per_ms),
        })
    }

    /// The window in milliseconds, as stored.
    pub fn per_ms(&self) -> i64 {
        i64::try_from(self.per.as_millis()).unwrap_or(i64::MAX)
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// `N/s`, `N/m`, `N/h` (also `sec`, `min`, `hour`).
    fn from_str(text: &str) -> Result<Rate, RateError> {
        let syntax = || RateError::Syntax {
            given: text.to_owned(),
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| syntax())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(syntax()),
        };
        if count == 0 {
            return Err(RateError::Zero {
                given: text.to_owned(),
            });
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit())
    }
}

/// A task's limits; `None` fields are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// At most this many attempts running at once (per partition key, if the task has one).
    pub concurrency: Option<u32>,
    /// At most this many starts per window.
    pub rate: Option<Rate>,
}

impl Limits {
    /// True when neither limit is set.
    pub fn is_none(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.concurrency, self.rate) {
            (None, None) => f.write_str("none"),
            (Some(c), None) => write!(f, "concurrency {c}"),
            (None, Some(r)) => write!(f, "rate {r}"),
            (Some(c), Some(r)) => write!(f, "concurrency {c}, rate {r}"),
        }
    }
}

/// A task's limits as its library declares them, written by each worker at start
/// ([`crate::Tx::declare_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredLimits<'a> {
    /// The task's name.
    pub task: &'a str,
    /// What the declaration says (none: the task's declared limits are cleared).
    pub limits: Limits,
    /// The argument whose value partitions the concurrency limit; `None`: one partition.
    pub key: Option<&'a str>,
}

/// A task's limit row: the declaration and the run-time override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitRow {
    /// The manager.
    pub manager: String,
    /// The task's name.
    pub task: String,
    /// What the newest worker to start declared.
    pub declared: Limits,
    /// The argument partitioning the concurrency limit, as declared; `None`: none.
    pub key: Option<String>,
    /// What `castor limit` set; each field set wins over the declaration's.
    pub overridden: Limits,
    /// When the row last changed (microseconds since the epoch).
    pub updated_at: i64,
}

impl LimitRow {
    /// The limits in force: the override's fields where set, else the declaration's.
    pub fn effective(&self) -> Limits {
        Limits {
            concurrency: self.overridden.concurrency.or(self.declared.concurrency),
            rate: self.overridden.rate.or(self.declared.rate),
        }
    }

    /// True if an override is set.
    pub fn is_overridden(&self) -> bool {
        !self.overridden.is_none()
    }
}

/// A limited task's state now: its limits, what runs and what started, for telling which
/// available tasks are held back and why ([`LimitStatus::held`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitStatus {
    /// The limit row.
    pub row: LimitRow,
    /// Attempts of the task running now that count against its concurrency limit.
    pub running: u64,
    /// The same per partition key (only keys with attempts running).
    pub running_by_key: BTreeMap<String, u64>,
    /// Attempts started within the rate's window before the reading (0 without a rate).
    pub started: u64,
    /// When the rate allows the next start, if it allows none at the reading's time
    /// (microseconds since the epoch).
    pub next_slot_at: Option<i64>,
    /// Available tasks of the task.
    pub available: u64,
    /// The time of the reading (microseconds since the epoch).
    pub read_at: i64,
}

/// Why an available task is not claimed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Held {
    /// Its task (or its partition) has as many attempts running as allowed.
    Concurrency {
        /// Attempts running.
        running: u64,
        /// The limit.
        limit: u32,
        /// The partition, for a keyed limit: (argument name, value).
        key: Option<(String, String)>,
    },
    /// The rate's window is full.
    Rate {
        /// The rate.
        rate: Rate,
        /// Until the next start is allowed.
        #[serde(serialize_with = "serialize_secs")]
        next_slot_in: Duration,
    },
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::Concurrency {
                running,
                limit,
                key: None,
            } => write!(f, "held: concurrency {running}/{limit} running"),
            Held::Concurrency {
                running,
                limit,
                key: Some((name, value)),
            } => write!(
                f,
                "held: concurrency {running}/{limit} running for {name}={value}"
            ),
            Held::Rate { rate, next_slot_in } => write!(
                f,
                "held: rate {rate}, next slot in {:.1} s",
                next_slot_in.as_secs_f64()
            ),
        }
    }
}

impl LimitStatus {
    /// Why an available task of this task with partition `key` is held back now; `None`
    /// if the limits let it start.
    pub fn held(&self, key: Option<&str>) -> Option<Held> {
        let limits = self.row.effective();
        if let Some(limit) = limits.concurrency {
            let (running, shown) = match &self.row.key {
                Some(name) => {
                    let value = key.unwrap_or("");
                    (
                        self.running_by_key.get(value).copied().unwrap_or(0),
                        Some((name.clone(), value.to_owned())),
                    )
                }
                None => (self.running, None),
            };
            if running >= u64::from(limit) {
                return Some(Held::Concurrency {
                    running,
                    limit,
                    key: shown,
                });
            }
        }
        if let (Some(rate), Some(at)) = (limits.rate, self.next_slot_at) {
            let wait = u64::try_from(at - self.read_at).unwrap_or(0);
            return Some(Held::Rate {
                rate,
                next_slot_in: Duration::from_micros(wait),
            });
        }
        None
    }

    /// Why the task's available tasks are held back, said once for the task (for a keyed
    /// limit: only the rate, since each partition differs); `None` if nothing holds
    /// them, or none is available.
    pub fn held_task(&self) -> Option<Held> {
        if self.available == 0 {
            return None;
        }
        if self.row.key.is_some() {
            let limits = self.row.effective();
            return match (limits.rate, self.next_slot_at) {
                (Some(rate), Some(at)) => Some(Held::Rate {
                    rate,
                    next_slot_in: Duration::from_micros(
                        u64::try_from(at - self.read_at).unwrap_or(0),
                    ),
                }),
                _ => None,
            };
        }
        self.held(None)
    }
}

/// What a claim under limits did ([`crate::Tx::claim_limited`]).
#[derive(Debug, Clone, Default)]
pub struct LimitedClaim {
    /// The tasks claimed, in claim order.
    pub claimed: Vec<Claimed>,
    /// A concurrency limit held tasks back: a slot opens when an attempt of the task
    /// ends (anyone's; this worker's own too, which no change notification reports).
    pub held: bool,
    /// A rate held tasks back: the next start is allowed at this time (microseconds since
    /// the epoch). The worker sleeps until then rather than polling.
    pub next_slot_at: Option<i64>,
}

/// How many starts a rate allows now, given `started` in the current window (the ledger
/// pruned of starts at or before `now - per`).
pub fn rate_allowance(rate: Rate, started: u64) -> u64 {
    u64::from(rate.count).saturating_sub(started)
}

/// The offset, in a window's starts sorted oldest first, of the start whose expiry lets
/// the next one in, once `total` starts are in the window; `None` while fewer than the
/// rate's count are: a slot is open now. The next slot opens at that start's time plus
/// the window.
pub fn next_slot_offset(rate: Rate, total: u64) -> Option<u64> {
    let count = u64::from(rate.count);
    (total >= count).then(|| total - count)
}

/// Takes, from candidates in claim order given as (partition key, attempts of that key
/// running), those a per-key concurrency limit `limit` allows, up to `want`: the indexes
/// of the candidates taken.
pub fn take_per_key(candidates: &[(String, u64)], limit: u32, want: usize) -> Vec<usize> {
    let mut taken_per_key: BTreeMap<&str, u64> = BTreeMap::new();
    let mut taken = Vec::new();
    for (i, (key, running)) in candidates.iter().enumerate() {
        if taken.len() >= want {
            break;
        }
        let n = taken_per_key.entry(key.as_str()).or_insert(0);
        if running + *n < u64::from(limit) {
            *n += 1;
            taken.push(i);
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let cases = [
            ("10/s", 10, 1),
            ("600/m", 600, 60),
            (" 5 / h ", 5, 3600),
            ("1/sec", 1, 1),
            ("20/min", 20, 60),
        ];
        for (text, count, secs) in cases {
            let rate: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rate.count, count, "{text}");
            assert_eq!(rate.per, Duration::from_secs(secs), "{text}");
        }
        assert_eq!(
            "600/m".parse::<Rate>().map(|r| r.to_string()),
            Ok("600/m".into())
        );
        for bad in ["ten", "10", "10/d", "/s", "-1/s", "1.5/s", ""] {
            assert!(
                matches!(bad.parse::<Rate>(), Err(RateError::Syntax { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!("0/s".parse::<Rate>(), Err(RateError::Zero { .. })));
    }

    fn row(declared: Limits, overridden: Limits, key: Option<&str>) -> LimitRow {
        LimitRow {
            manager: "m".into(),
            task: "t".into(),
            declared,
            key: key.map(str::to_owned),
            overridden,
            updated_at: 0,
        }
    }

    #[test]
    fn the_override_wins_field_by_field() {
        let rate = Rate {
            count: 10,
            per: Duration::from_secs(1),
        };
        let declared = Limits {
            concurrency: Some(4),
            rate: Some(rate),
        };
        let over = Limits {
            concurrency: Some(2),
            rate: None,
        };
        assert_eq!(
            row(declared, over, None).effective(),
            Limits {
                concurrency: Some(2),
                rate: Some(rate)
            }
        );
        assert_eq!(row(declared, Limits::default(), None).effective(), declared);
    }

    #[test]
    fn held_says_which_limit_and_how_full() {
        let rate = Rate {
            count: 20,
            per: Duration::from_secs(1),
        };
        let mut status = LimitStatus {
            row: row(
                Limits {
                    concurrency: Some(2),
                    rate: Some(rate),
                },
                Limits::default(),
                None,
            ),
            running: 2,
            running_by_key: BTreeMap::new(),
            started: 20,
            next_slot_at: Some(1_300_000),
            available: 5,
            read_at: 1_000_000,
        };
        assert_eq!(
            status.held(None).map(|h| h.to_string()).as_deref(),
            Some("held: concurrency 2/2 running")
        );
        status.running = 1;
        assert_eq!(
            status.held_task().map(|h| h.to_string()).as_deref(),
            Some("held: rate 20/s, next slot in 0.3 s")
        );
        status.next_slot_at = None;
        assert_eq!(status.held(None), None);
        status.available = 0;
        status.running = 2;
        assert_eq!(status.held_task(), None, "nothing waits");

        let mut keyed = status.clone();
        keyed.row.key = Some("customer".into());
        keyed.row.declared.concurrency = Some(1);
        keyed.running_by_key.insert("42".into(), 1);
        assert_eq!(
            keyed.held(Some("42")).map(|h| h.to_string()).as_deref(),
            Some("held: concurrency 1/1 running for customer=42")
        );
        assert_eq!(keyed.held(Some("7")), None);
    }

    #[test]
    fn the_next_slot_is_the_oldest_start_that_must_leave() {
        let rate = Rate {
            count: 3,
            per: Duration::from_secs(1),
        };
        assert_eq!(rate_allowance(rate, 1), 2);
        assert_eq!(rate_allowance(rate, 5), 0);
        assert_eq!(next_slot_offset(rate, 2), None);
        assert_eq!(next_slot_offset(rate, 3), Some(0));
        assert_eq!(next_slot_offset(rate, 5), Some(2));
    }

    #[test]
    fn per_key_takes_only_what_each_partition_has_room_for() {
        let c = |k: &str, r: u64| (k.to_owned(), r);
        let candidates = [
            c("a", 0),
            c("a", 0),
            c("a", 0),
            c("b", 1),
            c("b", 1),
            c("c", 0),
        ];
        assert_eq!(take_per_key(&candidates, 2, 10), vec![0, 1, 3, 5]);
        assert_eq!(take_per_key(&candidates, 1, 10), vec![0, 5]);
        assert_eq!(take_per_key(&candidates, 2, 2), vec![0, 1]);
    }
}

/// An available task a limited claim may take: its row, its partition key (`''` for
/// none) and, under a keyed limit, how many attempts of that key run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The task's row.
    pub seq: i64,
    /// Its partition key; `''` when it has none.
    pub key: String,
    /// Attempts of the same task and key running (0 unless the limit is keyed).
    pub running: u64,
}

/// [`crate::Tx::claim_limited`], written once over the driver's primitives: every
/// driver's `claim_limited` is this function.
///
/// 1. The limit rows of the filter's tasks are read, on PostgreSQL locked (`FOR
///    UPDATE`): claimers of a limited task are serialized, each seeing the others'
///    committed claims (SQLite's `BEGIN IMMEDIATE` serializes every writer already).
/// 2. The tasks without limits in force are claimed as by [`crate::Tx::claim`].
/// 3. Each limited task gets the room its limits leave: its rate's window (the ledger
///    pruned, then counted), its running attempts (the whole task, or per key), and is
///    claimed within it; its starts are recorded in the ledger.
///
/// # Errors
/// A statement failed.
pub(crate) fn claim_limited(
    tx: &mut dyn crate::Tx,
    filter: &crate::TaskFilter,
    worker: &str,
    limit: usize,
    now: i64,
    lease_until: i64,
) -> Result<LimitedClaim, crate::StoreError> {
    let mut out = LimitedClaim::default();
    if filter.tasks.is_empty() || limit == 0 {
        return Ok(out);
    }
    let rows = tx.lock_limits(&filter.manager, &filter.tasks)?;
    let limited: Vec<(usize, Limits, bool)> = filter
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let row = rows.iter().find(|r| &r.task == name)?;
            let limits = row.effective();
            (!limits.is_none()).then_some((i, limits, row.key.is_some()))
        })
        .collect();
    let free = crate::TaskFilter {
        manager: filter.manager.clone(),
        tasks: filter
            .tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| !limited.iter().any(|(l, _, _)| l == i))
            .map(|(_, t)| t.clone())
            .collect(),
        args_fingerprints: filter
            .args_fingerprints
            .iter()
            .enumerate()
            .filter(|(i, _)| !limited.iter().any(|(l, _, _)| l == i))
            .map(|(_, f)| f.clone())
            .collect(),
    };
    if !free.tasks.is_empty() {
        out.claimed = tx.claim(&free, worker, limit, now, lease_until)?;
    }
    for (i, limits, keyed) in limited {
        let room = limit.saturating_sub(out.claimed.len());
        if room == 0 {
            break;
        }
        let task = filter.tasks[i].as_str();
        let prints: Vec<&str> = match filter.args_fingerprints.get(i) {
            Some(Some(fp)) if !fp.is_empty() => vec!["", fp.as_str()],
            _ => vec![""],
        };
        let mut room = room as u64;
        let per_key = limits.concurrency.filter(|_| keyed);
        // The first page before any count: a limited task with nothing to claim costs one
        // statement. (Under a keyed limit an empty page may mean every key is full.)
        let first = tx.limited_candidates(
            &filter.manager,
            task,
            &prints,
            per_key,
            usize::try_from(room).unwrap_or(usize::MAX),
        )?;
        if first.is_empty() {
            out.held |= per_key.is_some();
            continue;
        }
        let mut started = 0;
        if let Some(rate) = limits.rate {
            started = tx.starts_in_window(&filter.manager, task, now - rate.per_us())?;
            room = room.min(rate_allowance(rate, started));
        }
        if let (Some(c), false) = (limits.concurrency, keyed) {
            let running = tx.running_limited(&filter.manager, task)?;
            let left = u64::from(c).saturating_sub(running);
            if left < first.len() as u64 {
                out.held = true;
            }
            room = room.min(left);
        }
        let mut got = Vec::new();
        let mut page = Some(first);
        while (got.len() as u64) < room {
            let want = usize::try_from(room).unwrap_or(usize::MAX) - got.len();
            let candidates = match page.take() {
                Some(first) => first,
                None => tx.limited_candidates(&filter.manager, task, &prints, per_key, want)?,
            };
            let take = match per_key {
                Some(c) => {
                    let keys: Vec<(String, u64)> = candidates
                        .iter()
                        .map(|c| (c.key.clone(), c.running))
                        .collect();
                    take_per_key(&keys, c, want)
                }
                None => (0..candidates.len().min(want)).collect(),
            };
            let seqs: Vec<i64> = take.iter().map(|&i| candidates[i].seq).collect();
            if seqs.is_empty() {
                break;
            }
            got.extend(tx.claim_candidates(&seqs, worker, now, lease_until)?);
            if per_key.is_none() || candidates.len() < want || take.len() == candidates.len() {
                // Unkeyed, or the candidates ran out, or none was refused: no more to find.
                break;
            }
            // Some were refused only because this claim filled their key: the next page,
            // read after these claims, skips the full keys.
        }
        if per_key.is_some() && (got.len() as u64) < room {
            out.held = true;
        }
        if let Some(rate) = limits.rate {
            if !got.is_empty() {
                tx.record_starts(&filter.manager, task, got.len(), now)?;
            }
            let total = started + got.len() as u64;
            if let Some(offset) = next_slot_offset(rate, total)
                && tx.has_available(&filter.manager, task, &prints)?
                && let Some(at) = tx.start_at(&filter.manager, task, offset)?
            {
                let next = at + rate.per_us();
                out.next_slot_at = Some(out.next_slot_at.map_or(next, |n| n.min(next)));
            }
        }
        out.claimed.extend(got);
    }
    out.claimed
        .sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
    Ok(out)
}
