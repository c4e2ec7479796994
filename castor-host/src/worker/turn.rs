//! One turn of the coordinator, in halves. [`TurnPlan::new`] decides, from the roles'
//! state at one time and without the database, what the turn writes and claims: which
//! outcomes (and their next states), logs, progress and releases, whether staging, a
//! schedule tick, the lease renewal, the rescuer, the pruner and the cancel check are due,
//! and how many tasks of each mode to claim. [`TurnPlan::apply`] writes all of it through
//! the seam in one transaction (the group commit that makes the drain fast) and returns
//! what the database answered, [`Written`], which the coordinator absorbs.

use std::time::Instant;

use castor_abi::abi::TaskMode;
use castor_store::{Claimed, StoreError, Tx, duration_us, now_us};

use super::Summary;
use super::completer::{Completer, Completion};
use super::context::Context;
use super::producer::{MODES, PerMode, Producer, Running};
use super::pruner::Pruner;
use super::rescuer::{self, Rescue, Rescuer};
use super::stager::{StageDue, Staged, Stager};

/// The time a turn plans at, read once on both clocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    /// For the worker's own timers.
    pub(super) instant: Instant,
    /// For the database (microseconds since the epoch).
    pub(super) us: i64,
}

impl Now {
    pub(super) fn read() -> Now {
        Now {
            instant: Instant::now(),
            us: now_us(),
        }
    }
}

/// What a plan reads: the roles' state, and the worker's condition.
#[derive(Debug)]
pub(super) struct PlanInput<'a> {
    pub(super) completer: &'a Completer,
    pub(super) producer: &'a Producer,
    pub(super) running: &'a Running,
    pub(super) stager: &'a Stager,
    pub(super) rescuer: &'a Rescuer,
    pub(super) pruner: &'a Pruner,
    /// After a failed write: the most outcomes (and log lines) one transaction writes.
    /// `None` while writes work.
    pub(super) recovering: Option<usize>,
    /// A stop was requested.
    pub(super) stopping: bool,
    /// The worker's row is written (claims wait for it).
    pub(super) registered: bool,
}

impl PlanInput<'_> {
    /// True if the worker may claim at all: registered, not stopping, its writes working.
    pub(super) fn may_claim(&self) -> bool {
        self.registered && !self.stopping && self.recovering.is_none()
    }

    /// How many tasks of `mode` a turn now claims.
    pub(super) fn room(&self, mode: TaskMode) -> usize {
        self.producer.room(mode, self.running, self.may_claim())
    }
}

/// What one turn writes and claims.
#[derive(Debug, PartialEq)]
pub(super) struct TurnPlan {
    /// The time it writes at (microseconds since the epoch).
    pub(super) now: i64,
    /// The completer's share: outcomes, logs, progress, releases.
    pub(super) completion: Completion,
    /// Due tasks to stage, due schedule ticks to run.
    pub(super) stage: StageDue,
    /// Renew this worker's leases and write its heartbeat. After a failed write every try
    /// does, so that its success means writes work again.
    pub(super) renew: bool,
    /// With `renew`: the attempts whose leases to renew, (row, attempt), the claims this
    /// worker holds. Only those: a claim whose commit went through while the worker saw
    /// an error (a server that went away at the commit) is not one it runs, and must
    /// expire to be rescued, not be kept alive by a renewal of every row it is named on.
    pub(super) held: Vec<(i64, u32)>,
    /// Run the rescuer.
    pub(super) rescue: bool,
    /// Run the pruner.
    pub(super) prune: bool,
    /// Read the cancel requests for this worker's claims.
    pub(super) cancels: bool,
    /// How many tasks to claim, per mode.
    pub(super) claims: PerMode<usize>,
    /// Claim within the limits in force (some task of the worker has one).
    pub(super) limited: bool,
}

impl TurnPlan {
    /// The plan for a turn at `now`. After a failed write a transaction writes only what
    /// was kept, in pieces that fit: no claims, nothing that can wait. `jitter` spreads
    /// retries by row.
    pub(super) fn new(input: &PlanInput<'_>, now: Now, jitter: &dyn Fn(i64) -> f64) -> TurnPlan {
        let recovering = input.recovering.is_some();
        let piece = input.recovering.unwrap_or(usize::MAX);
        let renew = recovering || input.producer.renewal_due(now.instant);
        TurnPlan {
            now: now.us,
            completion: input.completer.plan(piece, now.us, jitter),
            stage: input.stager.due(now.us, recovering, input.stopping),
            renew,
            held: if renew {
                input.running.held()
            } else {
                Vec::new()
            },
            rescue: input.rescuer.due(now.instant, renew, recovering),
            prune: input.pruner.due(now.instant, recovering),
            cancels: input.running.cancels_due(),
            claims: PerMode {
                thread: input.room(TaskMode::Thread),
                process: input.room(TaskMode::Process),
            },
            limited: input.producer.limited(),
        }
    }

    /// True if the turn writes nothing at all (then it opens no transaction).
    pub(super) fn is_empty(&self) -> bool {
        self.completion.is_empty()
            && self.stage == StageDue::default()
            && !self.renew
            && !self.rescue
            && !self.prune
            && !self.cancels
            && self.claims == PerMode::default()
    }

    /// Writes the plan in the transaction `tx`, as the worker `ctx` describes, and claims.
    /// `completer` holds what the plan's completion names; `summary` goes into the
    /// heartbeat.
    ///
    /// # Errors
    /// A statement failed; the transaction rolls back and everything stays pending.
    pub(super) fn apply(
        &self,
        tx: &mut dyn Tx,
        ctx: &Context,
        completer: &Completer,
        pruner: &Pruner,
        summary: &Summary,
        jitter: &dyn Fn(i64) -> f64,
    ) -> Result<Written, StoreError> {
        let now = self.now;
        let lease_until = now + duration_us(ctx.lease);
        let applied = completer.write(tx, &self.completion, &ctx.id, now, &ctx.tasks)?;
        // Dependents the completions made available (chains): this turn's claim may take
        // them; if it claims nothing, the next one does.
        let released = tx.released();
        let staged =
            super::stager::Stager::write(tx, self.stage, &ctx.manager, &ctx.schedules, now)?;
        let limits = if self.renew {
            tx.renew_leases(&ctx.id, &self.held, lease_until)?;
            tx.heartbeat(&ctx.id, now, summary.completed, summary.failed)?;
            Some(tx.limits_of(&ctx.manager)?)
        } else {
            None
        };
        let rescued = if self.rescue {
            rescuer::rescue(
                tx,
                &ctx.id,
                (&ctx.hostname, &ctx.host_id),
                ctx.lease,
                now,
                jitter,
            )?
        } else {
            Rescue::default()
        };
        let pruned = if self.prune {
            pruner.write(tx, now)?
        } else {
            0
        };
        let cancel_requests = if self.cancels {
            tx.cancel_requests(&ctx.id)?
        } else {
            Vec::new()
        };
        let mut claimed = PerMode::<Vec<Claimed>>::default();
        let mut held = PerMode::<bool>::default();
        let mut next_slot_at = None;
        for mode in MODES {
            let limit = *self.claims.get(mode);
            if let (Some(filter), true) = (ctx.claims.get(mode), limit > 0) {
                let (got, mode_held) = if self.limited {
                    let limited = tx.claim_limited(filter, &ctx.id, limit, now, lease_until)?;
                    next_slot_at = match (next_slot_at, limited.next_slot_at) {
                        (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                        (a, b) => a.or(b),
                    };
                    (limited.claimed, limited.held)
                } else {
                    (tx.claim(filter, &ctx.id, limit, now, lease_until)?, false)
                };
                match mode {
                    TaskMode::Thread => {
                        claimed.thread = got;
                        held.thread = mode_held;
                    }
                    TaskMode::Process => {
                        claimed.process = got;
                        held.process = mode_held;
                    }
                }
            }
        }
        Ok(Written {
            applied,
            released,
            staged,
            rescued,
            pruned,
            cancel_requests,
            claimed,
            held,
            next_slot_at,
            limits,
        })
    }
}

/// What a turn's transaction did.
#[derive(Debug)]
pub(super) struct Written {
    /// Per planned outcome: recorded (`false`: its lease was lost, nothing written).
    pub(super) applied: Vec<bool>,
    /// Waiting dependents the outcomes made available.
    pub(super) released: usize,
    pub(super) staged: Staged,
    pub(super) rescued: Rescue,
    /// Finished tasks deleted.
    pub(super) pruned: usize,
    /// This worker's claims that someone asked to cancel.
    pub(super) cancel_requests: Vec<i64>,
    /// The tasks claimed, per mode.
    pub(super) claimed: PerMode<Vec<Claimed>>,
    /// Per mode: a concurrency limit held tasks back.
    pub(super) held: PerMode<bool>,
    /// When a rate limit next allows a start (microseconds since the epoch).
    pub(super) next_slot_at: Option<i64>,
    /// With the heartbeat: the manager's limit rows, read in the same transaction.
    pub(super) limits: Option<Vec<castor_store::LimitRow>>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use castor_store::{AttemptOutcome, TaskState, Transition};

    use super::super::completer::{Ended, LogLine, ProgressUpdate};
    use super::super::executor::Attempt;
    use super::super::producer::{Claim, Inflight};
    use super::*;

    const SEC: i64 = 1_000_000;
    const LEASE: Duration = Duration::from_secs(30);

    /// The roles of a worker started at `t0`, with a pool of 4 threads and no processes.
    struct Roles {
        completer: Completer,
        producer: Producer,
        running: Running,
        stager: Stager,
        rescuer: Rescuer,
        pruner: Pruner,
    }

    impl Roles {
        fn new(t0: Instant) -> Roles {
            let mut rescuer = Rescuer::new(LEASE, t0);
            rescuer.ran(t0);
            Roles {
                completer: Completer::default(),
                producer: Producer::new(
                    PerMode {
                        thread: 4,
                        process: 0,
                    },
                    LEASE,
                    t0,
                ),
                running: Running::default(),
                stager: Stager::at(None, None),
                rescuer,
                pruner: Pruner::new(Duration::from_secs(3600), t0),
            }
        }

        fn input(&self, recovering: Option<usize>, stopping: bool) -> PlanInput<'_> {
            PlanInput {
                completer: &self.completer,
                producer: &self.producer,
                running: &self.running,
                stager: &self.stager,
                rescuer: &self.rescuer,
                pruner: &self.pruner,
                recovering,
                stopping,
                registered: true,
            }
        }

        /// Holds `n` claims of thread tasks, waiting for their threads.
        fn hold(&mut self, n: i64) {
            for seq in 100..100 + n {
                self.running
                    .insert(Inflight::waiting(seq, TaskMode::Thread));
            }
        }

        fn end(&mut self, seq: i64, outcome: AttemptOutcome) {
            self.completer.ended(Ended {
                claim: Claim {
                    seq,
                    ..Inflight::waiting(seq, TaskMode::Thread).claim
                },
                attempt: Attempt {
                    outcome,
                    result: Some(Vec::new()),
                    elapsed: Duration::from_millis(1),
                },
                ran: true,
            });
        }

        fn log(&mut self, seq: i64) {
            self.completer.log(LogLine {
                seq,
                attempt: 1,
                at: 0,
                level: castor_store::LogLevel::Info,
                line: String::new(),
            });
        }
    }

    fn now(t0: Instant, after: Duration, us: i64) -> Now {
        Now {
            instant: t0 + after,
            us,
        }
    }

    /// The plan of an idle turn: nothing but what a test sets.
    fn nothing(us: i64) -> TurnPlan {
        TurnPlan {
            now: us,
            completion: Completion::default(),
            stage: StageDue::default(),
            renew: false,
            held: Vec::new(),
            rescue: false,
            prune: false,
            cancels: false,
            claims: PerMode::default(),
            limited: false,
        }
    }

    #[test]
    fn an_idle_worker_with_nothing_due_plans_nothing() {
        let t0 = Instant::now();
        let mut roles = Roles::new(t0);
        roles.producer.claimed(TaskMode::Thread, 24, 0);
        let plan = TurnPlan::new(
            &roles.input(None, false),
            now(t0, Duration::from_millis(500), 50 * SEC),
            &|_| 0.5,
        );
        assert_eq!(plan, nothing(50 * SEC));
        assert!(plan.is_empty());
    }

    #[test]
    fn outcomes_and_claims_share_one_turn() {
        let t0 = Instant::now();
        let mut roles = Roles::new(t0);
        roles.hold(3);
        roles.end(1, AttemptOutcome::Succeeded);
        roles.end(
            2,
            AttemptOutcome::Errored {
                message: "boom".into(),
                retry: true,
            },
        );
        roles.log(1);
        roles.completer.release(7, 1);
        roles.completer.progress(
            100,
            ProgressUpdate {
                attempt: 1,
                done: 1,
                total: 2,
                message: String::new(),
            },
        );
        let plan = TurnPlan::new(
            &roles.input(None, false),
            now(t0, Duration::ZERO, 50 * SEC),
            &|_| 0.5,
        );
        assert_eq!(
            plan,
            TurnPlan {
                completion: Completion {
                    transitions: vec![
                        None,
                        Some(Transition {
                            state: TaskState::Retryable,
                            scheduled_at: Some(51 * SEC),
                        }),
                    ],
                    logs: 1,
                    releases: 1,
                    progress: 1,
                },
                // The window of 4 threads at 1 ms a task, less the three held.
                claims: PerMode {
                    thread: 24 - 3,
                    process: 0,
                },
                ..nothing(50 * SEC)
            }
        );
    }

    #[test]
    fn each_timer_is_due_at_its_time() {
        let t0 = Instant::now();
        let mut roles = Roles::new(t0);
        roles.producer.claimed(TaskMode::Thread, 24, 0);
        roles.stager = Stager::at(Some(40 * SEC), Some(45 * SEC));
        let input = roles.input(None, false);
        let at = |after: u64, us: i64| {
            TurnPlan::new(&input, now(t0, Duration::from_secs(after), us), &|_| 0.5)
        };
        // Staging and ticks at their times in the database's clock.
        assert_eq!(
            at(0, 40 * SEC).stage,
            StageDue {
                stage: true,
                tick: false
            }
        );
        assert_eq!(
            at(0, 45 * SEC).stage,
            StageDue {
                stage: true,
                tick: true
            }
        );
        // Pruning a second after the start; renewal and rescue every third of the lease.
        let plan = at(1, 0);
        assert!(plan.prune && !plan.renew && !plan.rescue, "{plan:?}");
        let plan = at(10, 0);
        assert!(plan.prune && plan.renew && plan.rescue, "{plan:?}");
        // The cancel check, when asked for and something is held.
        roles.running.check_cancels();
        assert!(
            !TurnPlan::new(
                &roles.input(None, false),
                now(t0, Duration::ZERO, 0),
                &|_| 0.5
            )
            .cancels
        );
        roles.hold(1);
        let plan = TurnPlan::new(
            &roles.input(None, false),
            now(t0, Duration::ZERO, 0),
            &|_| 0.5,
        );
        assert!(plan.cancels, "{plan:?}");
    }

    #[test]
    fn after_a_failed_write_a_turn_writes_a_piece_of_what_was_kept_and_nothing_else() {
        let t0 = Instant::now();
        let mut roles = Roles::new(t0);
        roles.stager = Stager::at(Some(0), Some(0));
        for seq in 0..5 {
            roles.end(seq, AttemptOutcome::Succeeded);
        }
        for seq in 0..3 {
            roles.log(seq);
        }
        // Long past every timer.
        let late = now(t0, Duration::from_secs(3600), 50 * SEC);
        let plan = TurnPlan::new(&roles.input(Some(2), false), late, &|_| 0.5);
        assert_eq!(
            plan,
            TurnPlan {
                completion: Completion {
                    transitions: vec![None, None],
                    logs: 2,
                    releases: 0,
                    progress: 0,
                },
                // The heartbeat makes every try a write.
                renew: true,
                ..nothing(50 * SEC)
            }
        );
        // Writes work again: everything due is done, and the lanes claim.
        let plan = TurnPlan::new(&roles.input(None, false), late, &|_| 0.5);
        assert_eq!(plan.completion.transitions.len(), 5);
        assert!(plan.stage.stage && plan.stage.tick && plan.rescue && plan.prune);
        assert_eq!(plan.claims.thread, 24);
    }

    #[test]
    fn a_stopping_or_unregistered_worker_claims_nothing_and_runs_no_tick() {
        let t0 = Instant::now();
        let mut roles = Roles::new(t0);
        roles.stager = Stager::at(Some(0), Some(0));
        let at = now(t0, Duration::ZERO, SEC);
        let stopping = TurnPlan::new(&roles.input(None, true), at, &|_| 0.5);
        assert_eq!(stopping.claims, PerMode::default());
        assert_eq!(
            stopping.stage,
            StageDue {
                stage: true,
                tick: false
            }
        );
        let unregistered = PlanInput {
            registered: false,
            ..roles.input(None, false)
        };
        assert_eq!(unregistered.room(TaskMode::Thread), 0);
        roles.producer.pause();
        let paused = TurnPlan::new(&roles.input(None, false), at, &|_| 0.5);
        assert_eq!(paused.claims, PerMode::default());
    }
}
