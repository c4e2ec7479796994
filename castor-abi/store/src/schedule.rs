//! Schedules as the engine keeps them: when they tick ([`Cadence`]), what happens to ticks
//! nobody ran ([`Missed`]), and [`run_due_schedules`], which turns every due tick into a
//! run through any driver. The run and the schedule's advance are one guarded write in
//! the caller's transaction, so with several workers on one database each tick runs once.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::cron::Cron;
use crate::driver::Tx;
use crate::duration_us;
use crate::error::StoreError;
use crate::model::{DueSchedule, NewTask, ScheduleFilter};

/// A tick handled more than this late counts as missed (see [`Missed::Skip`]).
pub const MISSED_AFTER: Duration = Duration::from_secs(1);

/// What a schedule does with ticks that passed while no worker ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Ticks more than [`MISSED_AFTER`] late are dropped; the schedule goes on from the
    /// next one. The default for periodic tasks, as in cron.
    Skip,
    /// All missed ticks together run once, then the schedule goes on. The default for
    /// schedules an app creates, so that work is not silently dropped.
    #[default]
    RunOnce,
}

impl Missed {
    /// `skip` or `run_once`, as stored.
    pub const fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run_once",
        }
    }
}

/// When a schedule ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Every this long, from its first run.
    Every(Duration),
    /// At the times a cron expression matches (UTC).
    Cron(Cron),
}

impl Cadence {
    /// The first tick strictly after `after_us` (microseconds since the epoch), counting
    /// interval ticks from `anchor_us`.
    pub fn next_after(&self, after_us: i64, anchor_us: i64) -> Option<i64> {
        match self {
            Cadence::Every(interval) => {
                let step = duration_us(*interval).max(1);
                if after_us < anchor_us {
                    return Some(anchor_us);
                }
                let ticks = (after_us - anchor_us) / step + 1;
                anchor_us.checked_add(ticks.checked_mul(step)?)
            }
            Cadence::Cron(cron) => cron.next_after(after_us),
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Every(d) => write!(f, "every {}", crate::format::format_duration(*d)),
            Cadence::Cron(c) => write!(f, "cron {c}"),
        }
    }
}

/// A schedule as stored: what `ScheduleHandle::info` and `castor schedules` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's id.
    pub id: i64,
    /// Its manager.
    pub manager: String,
    /// The task it runs.
    pub task: String,
    /// Its name, for periodic tasks.
    pub name: Option<String>,
    /// `every 1.0s` or `cron 0 9 * * 1-5`.
    pub cadence: String,
    /// The run limit.
    pub times: Option<u32>,
    /// No run after this time (microseconds since the epoch).
    pub until: Option<i64>,
    /// Runs created so far.
    pub runs: u32,
    /// The next run's time; `None` once the schedule is finished.
    pub next_run_at: Option<i64>,
    /// Whether it is paused.
    pub paused: bool,
    /// What happens to missed ticks.
    pub missed: Missed,
    /// The fingerprint of its arguments' type, which its runs carry; `None`: unknown.
    pub args_fingerprint: Option<String>,
}

impl Missed {
    /// The policy stored as `text`; anything unknown reads as [`Missed::RunOnce`] (no
    /// tick is dropped by a misread).
    pub fn from_stored(text: &str) -> Missed {
        if text == "skip" {
            Missed::Skip
        } else {
            Missed::RunOnce
        }
    }
}

impl Cadence {
    /// The cadence stored as an interval in milliseconds or a cron expression; `None` if
    /// neither reads (a row edited by hand).
    pub fn from_stored(every_ms: Option<i64>, cron: Option<&str>) -> Option<Cadence> {
        match (every_ms, cron) {
            (Some(ms), _) => Some(Cadence::Every(Duration::from_millis(
                u64::try_from(ms).unwrap_or(1),
            ))),
            (None, Some(expr)) => expr.parse().ok().map(Cadence::Cron),
            (None, None) => None,
        }
    }

    /// The cadence as stored: (interval in milliseconds, cron expression), one of them set.
    pub fn to_stored(&self) -> (Option<i64>, Option<String>) {
        match self {
            Cadence::Every(d) => (Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)), None),
            Cadence::Cron(c) => (None, Some(c.to_string())),
        }
    }
}

/// What to do with a schedule whose tick `tick` is due at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickPlan {
    /// Create a run now.
    pub run: bool,
    /// Runs created so far, this one included.
    pub runs: u32,
    /// The schedule's next tick; `None` once it is finished.
    pub next: Option<i64>,
}

/// The pure part of a tick: which tick is the latest due, whether it runs (the
/// [`Missed`] policy), and the next one (within the run limit and the end time).
pub fn plan_tick(s: &DueSchedule, cadence: &Cadence, now: i64) -> TickPlan {
    // The latest tick that is due, and the first one that is not.
    let (latest, mut next) = match cadence {
        Cadence::Every(interval) => {
            let step = duration_us(*interval).max(1);
            let latest = s.tick + ((now - s.tick) / step) * step;
            (latest, latest.checked_add(step))
        }
        Cadence::Cron(cron) => {
            let mut latest = s.tick;
            // Bounded: a minutely cron after a long downtime has many ticks.
            for _ in 0..100_000 {
                match cron.next_after(latest) {
                    Some(t) if t <= now => latest = t,
                    _ => break,
                }
            }
            (latest, cron.next_after(now))
        }
    };
    let run = match s.missed {
        Missed::RunOnce => true,
        Missed::Skip => now - latest <= duration_us(MISSED_AFTER),
    };
    let runs = s.runs + u32::from(run);
    if s.times.is_some_and(|times| runs >= times) {
        next = None;
    }
    if let (Some(n), Some(until)) = (next, s.until)
        && n > until
    {
        next = None;
    }
    TickPlan { run, runs, next }
}

/// Creates the runs of every due schedule `filter` selects (at most `limit`) and moves
/// each schedule to its next tick, in the caller's transaction. Returns the new tasks'
/// ids.
///
/// # Errors
/// A statement failed; the caller's transaction rolls back.
pub fn run_due_schedules(
    tx: &mut dyn Tx,
    filter: &ScheduleFilter,
    now: i64,
    limit: usize,
) -> Result<Vec<Uuid>, StoreError> {
    let mut created = Vec::new();
    for s in tx.due_schedules(filter, now, limit)? {
        let Some(cadence) = &s.cadence else {
            // An unreadable cadence (edited by hand): stop it rather than spin.
            tx.advance_schedule(s.id, s.tick, s.runs, None)?;
            continue;
        };
        let plan = plan_tick(&s, cadence, now);
        // Guarded by the tick: a second worker that read the same tick moves nothing.
        if tx.advance_schedule(s.id, s.tick, plan.runs, plan.next)? && plan.run {
            let task = NewTask {
                manager: &filter.manager,
                task: &s.task,
                args: &s.args,
                run_at_us: None,
                priority: s.priority,
                unique_key: None,
                max_attempts: s.max_attempts,
                backoff_base_ms: s.backoff_base_ms,
                backoff_cap_ms: s.backoff_cap_ms,
                timeout_ms: s.timeout_ms,
                schedule_id: Some(s.id),
                args_fingerprint: s.args_fingerprint.as_deref(),
                concurrency_key: None,
            };
            created.push(tx.enqueue(&task, now)?.id);
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_ticks_count_from_the_anchor() {
        let every = Cadence::Every(Duration::from_millis(100));
        let anchor = 1_000_000;
        assert_eq!(every.next_after(0, anchor), Some(anchor));
        assert_eq!(every.next_after(anchor, anchor), Some(anchor + 100_000));
        assert_eq!(
            every.next_after(anchor + 250_000, anchor),
            Some(anchor + 300_000)
        );
    }
}
