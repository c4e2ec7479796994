//! The stager: moves `scheduled` and `retryable` tasks whose time has come to
//! `available`, and turns due schedule ticks into runs. It remembers when the next of
//! each is due, reread after any write that may have moved it, so that the coordinator
//! sleeps until then.

use castor_store::{Driver, ScheduleFilter, StoreError, Tx, run_due_schedules};

/// How many due schedule ticks one turn runs (the rest wait for the next turn).
const TICK_BATCH: usize = 100;

/// What a turn at some time stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct StageDue {
    /// `scheduled`/`retryable` tasks are due.
    pub(super) stage: bool,
    /// A schedule's tick is due.
    pub(super) tick: bool,
}

/// What a turn's staging did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Staged {
    /// Tasks made available.
    pub(super) tasks: usize,
    /// Schedule ticks turned into runs.
    pub(super) runs: usize,
}

/// When the next staging and the next tick are due.
#[derive(Debug)]
pub(super) struct Stager {
    /// The earliest time a `scheduled` or `retryable` task becomes due (microseconds
    /// since the epoch).
    next_due: Option<i64>,
    /// The next tick of a schedule this worker runs.
    next_tick: Option<i64>,
    /// Something may have moved them: reread after the turn.
    stale: bool,
}

impl Default for Stager {
    fn default() -> Self {
        Stager {
            next_due: None,
            next_tick: None,
            stale: true,
        }
    }
}

impl Stager {
    /// What is due at `now`. A worker whose writes fail stages nothing (it waits for its
    /// next try); a stopping one runs no schedule tick.
    pub(super) fn due(&self, now: i64, recovering: bool, stopping: bool) -> StageDue {
        let due = |at: Option<i64>| at.is_some_and(|at| at <= now);
        StageDue {
            stage: !recovering && due(self.next_due),
            tick: !recovering && !stopping && due(self.next_tick),
        }
    }

    /// When the coordinator must wake up for the stager. A stopping worker runs no tick:
    /// waking for one would find nothing to do.
    pub(super) fn wake_at(&self, stopping: bool) -> Option<i64> {
        let tick = self.next_tick.filter(|_| !stopping);
        [self.next_due, tick].into_iter().flatten().min()
    }

    /// Something may have moved the next due time or tick: reread them after the turn.
    pub(super) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Stages what `due` says in the turn's transaction, for `manager`'s tasks and the
    /// schedules `filter` selects.
    ///
    /// # Errors
    /// A statement failed; the caller's transaction rolls back.
    pub(super) fn write(
        tx: &mut dyn Tx,
        due: StageDue,
        manager: &str,
        filter: &ScheduleFilter,
        now: i64,
    ) -> Result<Staged, StoreError> {
        Ok(Staged {
            tasks: if due.stage {
                tx.stage_due(manager, now)?
            } else {
                0
            },
            runs: if due.tick {
                run_due_schedules(tx, filter, now, TICK_BATCH)?.len()
            } else {
                0
            },
        })
    }

    /// A turn staged what `due` said: whatever it found (maybe nothing: another worker
    /// got there first), the next due time moved on; a stale one would wake the loop again
    /// at once.
    pub(super) fn staged(&mut self, due: StageDue) {
        if due.stage || due.tick {
            self.stale = true;
        }
    }

    /// Rereads when the next task and the next tick are due, if something may have moved
    /// them.
    ///
    /// # Errors
    /// The database cannot be read.
    pub(super) fn refresh(
        &mut self,
        store: &dyn Driver,
        manager: &str,
        filter: &ScheduleFilter,
    ) -> Result<(), StoreError> {
        if self.stale {
            self.next_due = store.next_due(manager)?;
            self.next_tick = store.next_schedule_due(filter)?;
            self.stale = false;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Stager {
    /// A stager that knows its next times.
    pub(super) fn at(next_due: Option<i64>, next_tick: Option<i64>) -> Stager {
        Stager {
            next_due,
            next_tick,
            stale: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_and_ticks_are_due_at_their_time_unless_the_worker_waits_or_stops() {
        let none = StageDue::default();
        let stage = StageDue {
            stage: true,
            tick: false,
        };
        let tick = StageDue {
            stage: false,
            tick: true,
        };
        let both = StageDue {
            stage: true,
            tick: true,
        };
        // (next due, next tick, now, recovering, stopping) -> due
        let table = [
            (None, None, 10, false, false, none),
            (Some(11), Some(11), 10, false, false, none),
            (Some(10), None, 10, false, false, stage),
            (None, Some(9), 10, false, false, tick),
            (Some(5), Some(5), 10, false, false, both),
            (Some(5), Some(5), 10, true, false, none),
            (Some(5), Some(5), 10, false, true, stage),
        ];
        for (next_due, next_tick, now, recovering, stopping, due) in table {
            assert_eq!(
                Stager::at(next_due, next_tick).due(now, recovering, stopping),
                due,
                "due {next_due:?}, tick {next_tick:?} at {now}, recovering {recovering}, \
                 stopping {stopping}"
            );
        }
    }

    #[test]
    fn a_stopping_worker_does_not_wake_for_a_tick() {
        let stager = Stager::at(Some(20), Some(10));
        assert_eq!(stager.wake_at(false), Some(10));
        assert_eq!(stager.wake_at(true), Some(20));
        assert_eq!(Stager::at(None, Some(10)).wake_at(true), None);
        assert_eq!(Stager::at(None, None).wake_at(false), None);
    }

    #[test]
    fn a_turn_that_staged_rereads_the_next_times() {
        let mut stager = Stager::at(Some(5), None);
        stager.staged(StageDue::default());
        assert!(!stager.stale);
        stager.staged(StageDue {
            stage: false,
            tick: true,
        });
        assert!(stager.stale);
        assert!(Stager::default().stale, "read at the first turn");
    }
}
