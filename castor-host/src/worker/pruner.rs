//! The pruner: deletes finished tasks past the retention period, a batch per turn, once
//! a minute (at once again while batches come back full).

use std::time::{Duration, Instant};

use castor_store::{StoreError, Tx, duration_us};

/// How often finished tasks past the retention period are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How many finished tasks one turn prunes.
const PRUNE_BATCH: usize = 1000;

/// The first prune comes this long after the worker starts.
const FIRST_PRUNE: Duration = Duration::from_secs(1);

/// When the next prune is due, and what it deletes.
#[derive(Debug)]
pub(super) struct Pruner {
    retention: Duration,
    next: Instant,
}

impl Pruner {
    /// A pruner that keeps finished tasks for `retention`, started at `now`.
    pub(super) fn new(retention: Duration, now: Instant) -> Pruner {
        Pruner {
            retention,
            next: now + FIRST_PRUNE,
        }
    }

    /// True if a turn at `now` prunes (never while writes fail: it can wait).
    pub(super) fn due(&self, now: Instant, recovering: bool) -> bool {
        !recovering && now >= self.next
    }

    /// The next prune's time.
    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// Tasks that finished before this are past the retention period at `now`.
    fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(duration_us(self.retention))
    }

    /// Deletes one batch in the turn's transaction; returns how many tasks.
    ///
    /// # Errors
    /// The statement failed; the caller's transaction rolls back.
    pub(super) fn write(&self, tx: &mut dyn Tx, now: i64) -> Result<usize, StoreError> {
        tx.prune(self.cutoff(now), PRUNE_BATCH)
    }

    /// A turn at `now` pruned `count` tasks: a full batch means more are waiting, pruned
    /// next turn.
    pub(super) fn pruned(&mut self, now: Instant, count: usize) {
        self.next = if count == PRUNE_BATCH {
            now
        } else {
            now + PRUNE_EVERY
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_runs_a_second_after_start_then_each_minute_while_batches_are_short() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut pruner = Pruner::new(Duration::from_secs(3600), t0);
        assert!(!pruner.due(t0, false));
        assert!(pruner.due(t0 + s, false));
        assert!(!pruner.due(t0 + s, true), "not while writes fail");
        // (count pruned) -> next prune after the turn
        for (count, next) in [
            (0, PRUNE_EVERY),
            (999, PRUNE_EVERY),
            (PRUNE_BATCH, Duration::ZERO),
        ] {
            pruner.pruned(t0, count);
            assert_eq!(pruner.next(), t0 + next, "{count} pruned");
        }
    }

    #[test]
    fn the_cutoff_is_the_retention_period_before_now() {
        let pruner = Pruner::new(Duration::from_secs(2), Instant::now());
        assert_eq!(pruner.cutoff(10_000_000), 8_000_000);
        let forever = Pruner::new(Duration::MAX, Instant::now());
        assert_eq!(forever.cutoff(10_000_000), 10_000_000 - i64::MAX);
    }
}
