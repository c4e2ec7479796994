//! The coordinator: the worker's one thread that talks to the database. It sleeps until
//! something happens, then runs one turn: expire thread-task timeouts, plan what to write
//! and claim ([`TurnPlan::new`], pure), write it in one transaction through the seam
//! ([`TurnPlan::apply`]), absorb what the database answered into the roles' state, and
//! hand the claimed tasks to the pools.
//!
//! The roles are River's: the [`completer`](super::completer) (outcomes, releases, logs,
//! progress), the [`producer`](super::producer) (claims, the claim window, the claims
//! held and their leases), the [`stager`](super::stager) (due tasks, schedule ticks), the
//! [`rescuer`](super::rescuer) (dead workers, expired leases) and the
//! [`pruner`](super::pruner) (retention). Unlike River's, they share one transaction per
//! turn: on SQLite there is one writer at a time anyway, and sharing the commit is what
//! makes the drain fast.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use castor_abi::Uuid;
use castor_abi::abi::TaskMode;
use castor_store::{
    AttemptOutcome, Claimed, LogLevel, Store, StoreError, TaskFilter, TaskState, now_us,
};
use crossbeam_channel::Receiver;

use super::child::{Job, ProcessPool};
use super::clock::{ClockNews, ClockWatch};
use super::completer::{Completer, Ended, LogLine, ProgressUpdate, Recorded};
use super::context::Context;
use super::executor::{self, Attempt};
use super::producer::{Claim, Inflight, MODES, Producer, Running};
use super::pruner::Pruner;
use super::recovery::Failure;
use super::rescuer::{Rescue, Rescuer};
use super::stager::Stager;
use super::turn::{Now, PlanInput, TurnPlan, Written};
use super::{
    AttemptStart, Begin, Done, Event, Finished, Flags, Registration, Reporter, Summary, TaskInfo,
    WorkerError, WorkerEvent,
};

/// A worker idle this long (nothing running, nothing written) truncates its WAL if it is
/// larger than [`IDLE_WAL_BYTES`], giving the space back to the file system.
const IDLE_CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// The WAL size an idle worker leaves alone.
const IDLE_WAL_BYTES: u64 = 1 << 20;

/// The pools the claims run on.
pub(super) struct Pools {
    pub(super) threads: rayon::ThreadPool,
    pub(super) processes: Option<ProcessPool>,
    /// Set once the worker stops: claims not begun by then are given back.
    pub(super) stopping: Arc<AtomicBool>,
}

struct Stop {
    deadline: Instant,
    forced: bool,
    /// The stop is for a reload (no stop request came since).
    reload: bool,
}

/// The coordinator's state between turns.
pub(super) struct Coordinator {
    ctx: Context,
    store: Store,
    pools: Pools,
    /// The worker's first write, until it is written (claims wait for it).
    registration: Option<Registration>,
    running: Running,
    completer: Completer,
    producer: Producer,
    stager: Stager,
    rescuer: Rescuer,
    pruner: Pruner,
    /// The database's change counter as of this worker's last look (`None`: not read
    /// yet, or the driver cannot tell).
    change_counter: Option<i64>,
    /// The watcher's [`Notifier::changes`] as of this worker's last look (for a complete
    /// source, which replaces the change counter).
    changes_seen: u64,
    /// The watcher's [`Notifier::reconnects`] as of this worker's last look.
    reconnects_seen: u64,
    stop: Option<Stop>,
    /// An error the services' connection met that stops the worker (a damaged file).
    fatal_error: Option<StoreError>,
    /// Writes are failing, or what was kept while they failed is still being written.
    failure: Option<Failure>,
    /// When to look at the WAL's size, if the worker is idle by then.
    wal_check_at: Option<Instant>,
    /// This host's clock against the database server's: what was said, when to look.
    clock: ClockWatch,
    /// When to count the tasks left for another version of the library next.
    mismatch_check_at: Instant,
    /// Worth counting them: a claim came back short of its room (no more tasks of this
    /// library's signatures) after the database changed. A worker draining its own
    /// tasks, or idle with nothing new, never counts.
    mismatch_due: bool,
    /// The database changed since the last count.
    mismatch_stale: bool,
    /// The counts said so far, by (task, fingerprint).
    mismatch_said: HashMap<(String, String), u64>,
    summary: Summary,
}

impl Coordinator {
    pub(super) fn new(
        ctx: Context,
        store: Store,
        registration: Registration,
        pools: Pools,
    ) -> Coordinator {
        let now = Instant::now();
        Coordinator {
            producer: Producer::new(ctx.slots, ctx.lease, now),
            rescuer: Rescuer::new(ctx.lease, now),
            pruner: Pruner::new(ctx.retention, now),
            ctx,
            store,
            pools,
            registration: Some(registration),
            running: Running::default(),
            completer: Completer::default(),
            stager: Stager::default(),
            change_counter: None,
            changes_seen: 0,
            reconnects_seen: 0,
            stop: None,
            fatal_error: None,
            failure: None,
            wal_check_at: None,
            clock: ClockWatch::new(now),
            mismatch_check_at: now,
            mismatch_due: false,
            mismatch_stale: true,
            mismatch_said: HashMap::new(),
            summary: Summary::default(),
        }
    }

    fn registered(&self) -> bool {
        self.registration.is_none()
    }

    /// What a turn's plan reads.
    fn plan_input(&self) -> PlanInput<'_> {
        PlanInput {
            completer: &self.completer,
            producer: &self.producer,
            running: &self.running,
            stager: &self.stager,
            rescuer: &self.rescuer,
            pruner: &self.pruner,
            recovering: self.failure.as_ref().map(Failure::chunk),
            stopping: self.stop.is_some(),
            registered: self.registered(),
        }
    }

    pub(super) fn finished(&self) -> bool {
        match &self.stop {
            Some(stop) => {
                (self.running.is_empty() && !self.completer.has_outcomes())
                    || stop.forced
                    || Instant::now() >= stop.deadline
            }
            None => false,
        }
    }

    /// True if a turn now would make progress, so the wait must not sleep: outcomes or
    /// releases to write, or a lane that wants more *and* has room (wanting without room,
    /// or a lane without slots, must not keep the loop awake).
    fn has_work(&self) -> bool {
        match &self.failure {
            // Sleep until the next try: nothing can be written before.
            Some(failure) if failure.waiting() => false,
            _ => {
                let input = self.plan_input();
                !self.registered()
                    || self.completer.has_urgent()
                    || (self.failure.is_some() && self.completer.has_logs())
                    || MODES.into_iter().any(|mode| input.room(mode) > 0)
            }
        }
    }

    /// Sleeps until the next event or timer, then takes every queued event.
    pub(super) fn wait(
        &mut self,
        events: &Receiver<Event>,
        pending: &AtomicBool,
        reporter: &mut dyn Reporter,
    ) {
        let timeout = if self.has_work() {
            Duration::ZERO
        } else {
            self.next_timer().saturating_duration_since(Instant::now())
        };
        let first = events.recv_timeout(timeout).ok();
        for event in first.into_iter().chain(events.try_iter()) {
            self.on_event(event, pending, reporter);
        }
        self.producer.slot_due(Instant::now());
    }

    fn on_event(&mut self, event: Event, pending: &AtomicBool, reporter: &mut dyn Reporter) {
        match event {
            Event::Done(done) => self.on_done(done),
            Event::Started { seq, at } => {
                if let Some(task) = self.running.get_mut(seq) {
                    task.started_at = Some(at);
                }
            }
            Event::DbChanged => {
                pending.store(false, Ordering::Release);
                self.on_db_changed();
            }
            Event::Log {
                id,
                level,
                line,
                at,
            } => self.on_log(id, level, line, at, reporter),
            Event::Progress {
                id,
                done,
                total,
                message,
            } => self.on_progress(id, done, total, message, reporter),
            Event::Fatal(error) => self.fatal_error = Some(error),
            Event::ChildOutput { pid, line } => {
                reporter.event(WorkerEvent::ChildOutput { pid, line: &line });
            }
            Event::Shutdown => self.on_shutdown(reporter),
            Event::Reload { build } => self.on_reload(&build, reporter),
        }
    }

    /// The file changed: someone else's commit may have made work for this worker.
    fn on_db_changed(&mut self) {
        if self.ctx.watcher.complete() {
            // The source reports every commit (LISTEN): a wake-up that brought no report is
            // the fallback tick, and looks at nothing.
            let changes = self.ctx.watcher.changes();
            if changes != self.changes_seen {
                self.changes_seen = changes;
                self.wake_claims();
            }
            // The watcher's connection came back: the server answers again, so writes that
            // failed for want of it are tried now, not at the end of their backoff.
            let reconnects = self.ctx.watcher.reconnects();
            if reconnects != self.reconnects_seen {
                self.reconnects_seen = reconnects;
                if let Some(failure) = &mut self.failure {
                    failure.try_now(Instant::now());
                }
            }
            return;
        }
        match self.store.change_counter() {
            // Only this connection committed: nothing new to claim.
            Ok(Some(counter)) if Some(counter) == self.change_counter => {}
            Ok(counter) => {
                self.change_counter = counter;
                self.wake_claims();
            }
            Err(_) => self.wake_claims(),
        }
    }

    /// A log record: a task's is kept for the next turn; a library's made outside any
    /// task (nil id) is only reported.
    fn on_log(
        &mut self,
        id: Uuid,
        level: LogLevel,
        line: String,
        at: i64,
        reporter: &mut dyn Reporter,
    ) {
        if id.is_nil() {
            reporter.event(WorkerEvent::LibraryLog { level, line: &line });
        } else if let Some(task) = self.running.get_by_id(id) {
            reporter.event(WorkerEvent::TaskLog {
                id,
                task: &task.claim.task,
                level,
                line: &line,
            });
            self.completer.log(LogLine {
                seq: task.claim.seq,
                attempt: task.claim.attempt,
                at,
                level,
                line,
            });
        }
    }

    /// A running task's progress: reported, and its latest kept for the next turn.
    fn on_progress(
        &mut self,
        id: Uuid,
        done: u64,
        total: u64,
        message: String,
        reporter: &mut dyn Reporter,
    ) {
        let Some(task) = self.running.get_by_id(id) else {
            return;
        };
        reporter.event(WorkerEvent::Progress {
            id,
            done,
            total,
            message: &message,
        });
        let seq = task.claim.seq;
        let update = ProgressUpdate {
            attempt: task.claim.attempt,
            done,
            total,
            message,
        };
        self.completer.progress(seq, update);
    }

    /// A stop request: the first starts the grace period, a second forces the stop. One
    /// during a reload's grace period turns it into an ordinary stop (same deadline).
    fn on_shutdown(&mut self, reporter: &mut dyn Reporter) {
        if let Some(stop) = &mut self.stop {
            if stop.reload {
                stop.reload = false;
                reporter.event(WorkerEvent::Stopping {
                    running: self.running.len(),
                    grace: stop.deadline.saturating_duration_since(Instant::now()),
                });
                return;
            }
            self.force(reporter);
            return;
        }
        self.begin_stop(false);
        reporter.event(WorkerEvent::Stopping {
            running: self.running.len(),
            grace: self.ctx.grace,
        });
    }

    /// A checked new build is waiting: the graceful stop, marked as a reload. Ignored
    /// once a stop is under way (an operator's stop wins over a reload).
    fn on_reload(&mut self, build: &str, reporter: &mut dyn Reporter) {
        if self.stop.is_some() {
            return;
        }
        self.begin_stop(true);
        reporter.event(WorkerEvent::Reloading {
            build,
            running: self.running.len(),
            grace: self.ctx.grace,
        });
    }

    /// No claims from now on; running tasks have the grace period.
    fn begin_stop(&mut self, reload: bool) {
        self.pools.stopping.store(true, Ordering::SeqCst);
        self.stop = Some(Stop {
            deadline: Instant::now() + self.ctx.grace,
            forced: false,
            reload,
        });
    }

    /// The database changed (or may have): claims may find more, due times and cancel
    /// requests may have moved.
    fn wake_claims(&mut self) {
        self.mismatch_stale = true;
        self.producer.wake();
        self.stager.mark_stale();
        self.running.check_cancels();
    }

    fn force(&mut self, reporter: &mut dyn Reporter) {
        self.stop = Some(Stop {
            deadline: Instant::now(),
            forced: true,
            reload: false,
        });
        reporter.event(WorkerEvent::Forced {
            running: self.running.len(),
        });
    }

    /// Whether some task of the worker has a limit in force, from the limit rows its
    /// registration and each heartbeat read: an override set by `castor limits` on a
    /// task declared without limits takes effect within a third of a lease; one on a
    /// limited task, at the next claim.
    fn limits_read(&mut self, rows: &[castor_store::LimitRow]) {
        let limited = rows
            .iter()
            .any(|r| !r.effective().is_none() && self.ctx.tasks.contains_key(&r.task));
        self.producer.set_limited(limited);
    }

    /// When the wait ends at the latest: the next timer the next turn moves forward.
    fn next_timer(&self) -> Instant {
        let now = Instant::now();
        let mut next = match self.failure.as_ref().and_then(Failure::wake_at) {
            // Renewals, rescues, prunes and due tasks all need a write: they wait for the
            // next try (their deadlines, already past, would otherwise wake the loop at once).
            Some(at) => at,
            None => {
                let mut next = self
                    .producer
                    .next_renewal()
                    .min(self.rescuer.next())
                    .min(self.pruner.next());
                if let Some(at) = self.wal_check_at {
                    next = next.min(at);
                }
                if let Some(due) = self.stager.wake_at(self.stop.is_some()) {
                    let wait = Duration::from_micros(u64::try_from(due - now_us()).unwrap_or(0));
                    next = next.min(now + wait);
                }
                next
            }
        };
        if let Some(stop) = &self.stop {
            next = next.min(stop.deadline);
        }
        if let Some(at) = self.running.next_deadline() {
            next = next.min(at);
        }
        if let Some(at) = self.producer.next_slot() {
            next = next.min(at);
        }
        next
    }

    fn on_done(&mut self, done: Done) {
        let Some(task) = self.running.answered(done.seq, done.attempt) else {
            return;
        };
        self.producer.attempt_ended(task.mode);
        let Some(attempt) = done.outcome else {
            // Never started: the worker is stopping. Give the claim back.
            self.completer.release(task.claim.seq, task.claim.attempt);
            return;
        };
        // An attempt that has an outcome but never started was cancelled while it waited.
        let ran = task.started();
        if ran {
            self.producer.observe(task.mode, attempt.elapsed);
        }
        self.completer.ended(Ended {
            claim: task.claim,
            attempt,
            ran,
        });
    }

    /// Thread tasks past their timeout: signal cooperative cancellation and record the
    /// attempt as timed out now. The thread cannot be killed; its late answer is ignored.
    /// (Process tasks are killed by their slot.)
    fn expire_timeouts(&mut self) {
        let now = Instant::now();
        for task in self.running.expire(now) {
            let timeout = task.timeout.unwrap_or_default();
            let elapsed = task.started_at.map_or(timeout, |at| now - at);
            self.completer.ended(Ended {
                claim: task.claim,
                attempt: Attempt {
                    outcome: AttemptOutcome::TimedOut { after: timeout },
                    result: None,
                    elapsed,
                },
                ran: true,
            });
        }
    }

    /// Expires timeouts, writes (the registration first, then turns), and starts what was
    /// claimed.
    pub(super) fn turn(&mut self, reporter: &mut dyn Reporter) -> Result<(), StoreError> {
        if let Some(error) = self.fatal_error.take() {
            return Err(error);
        }
        self.expire_timeouts();
        if let Some(failure) = &mut self.failure
            && !failure.due(Instant::now(), || self.store.free_bytes())
        {
            return Ok(());
        }
        let written = match &self.registration {
            Some(registration) => registration.write(&mut self.store).map(|limits| {
                self.limits_read(&limits);
                Vec::new()
            }),
            None => self.commit(reporter),
        };
        let registering = self.registration.is_some();
        let turned = written.and_then(|claimed| {
            self.registration = None;
            if registering {
                // The worker's start: its registration read the server's clock.
                self.check_clock(reporter);
            }
            // This connection's own commits need no wake-up (after a reconnection,
            // the new session's).
            self.ctx.watcher.ignore_session(self.store.session());
            self.wrote(reporter);
            for task in claimed {
                self.start(task, reporter);
            }
            self.truncate_wal_if_idle();
            self.say_mismatched(reporter);
            // After the tasks start, not before: the claim is what a waiting app waits
            // for, and a new scheduled task is never due at once.
            self.refresh_due()
        });
        match turned {
            Ok(()) => Ok(()),
            Err(e) => {
                if !e.is_fatal() {
                    self.write_failed(&e, reporter);
                }
                Err(e)
            }
        }
    }

    /// At most every few seconds, when a claim came back short after the database changed:
    /// counts the available tasks of the library's names dispatched with another argument
    /// fingerprint, and says so once per name and fingerprint (and again when the count
    /// halves or doubles). A failed read is not worth a message: the next look tries again.
    fn say_mismatched(&mut self, reporter: &mut dyn Reporter) {
        /// How often to look at most.
        const EVERY: Duration = Duration::from_secs(5);
        let now = Instant::now();
        if !self.mismatch_due || now < self.mismatch_check_at {
            return;
        }
        self.mismatch_check_at = now + EVERY;
        self.mismatch_due = false;
        self.mismatch_stale = false;
        let filters: Vec<TaskFilter> = [&self.ctx.claims.thread, &self.ctx.claims.process]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for filter in &filters {
            let Ok(found) = self.store.mismatched(filter) else {
                continue;
            };
            for m in found {
                let key = (m.task.clone(), m.args_fingerprint.clone());
                let said = self.mismatch_said.get(&key).copied();
                let material = match said {
                    None => true,
                    Some(before) => m.count >= before.saturating_mul(2) || m.count * 2 <= before,
                };
                if !material {
                    continue;
                }
                self.mismatch_said.insert(key, m.count);
                let own = self
                    .ctx
                    .tasks
                    .get(&m.task)
                    .map_or("", |info| info.args_fingerprint);
                reporter.event(WorkerEvent::Mismatched {
                    task: &m.task,
                    count: m.count,
                    found: &m.args_fingerprint,
                    own,
                });
            }
        }
    }

    /// A write failed and will be tried again: sleep until then, claim nothing, keep every
    /// outcome. Reported when the failure starts, not at every try.
    fn write_failed(&mut self, error: &StoreError, reporter: &mut dyn Reporter) {
        let now = Instant::now();
        let free = match error {
            StoreError::DiskFull { .. } => self.store.free_bytes(),
            _ => None,
        };
        match &mut self.failure {
            Some(failure) => {
                let tried = self.completer.backlog().min(failure.chunk());
                failure.failed_again(now, tried, free);
            }
            None => {
                let failure = Failure::new(now, free);
                reporter.event(WorkerEvent::WriteFailing {
                    error,
                    retry_in: failure.wake_at().map_or(Duration::ZERO, |at| at - now),
                });
                self.failure = Some(failure);
            }
        }
    }

    /// A write succeeded. After a failure: once everything kept is written, say so, give
    /// the WAL's space back and claim again.
    fn wrote(&mut self, reporter: &mut dyn Reporter) {
        let Some(failure) = &mut self.failure else {
            return;
        };
        failure.succeeded();
        if self.completer.has_kept() {
            return;
        }
        reporter.event(WorkerEvent::WriteRecovered {
            failed_for: failure.since.elapsed(),
            tries: failure.tries,
        });
        self.failure = None;
        // The WAL may have grown while writes failed (and other processes' with it): give
        // its space back now, so the next burst has room.
        let _ = self.store.reclaim_space();
        self.wal_check_at = None;
        self.wake_claims();
    }

    /// After a second of idleness, truncates a WAL grown past [`IDLE_WAL_BYTES`] (it stays
    /// at its largest size otherwise, holding disk space an idle worker does not need).
    fn truncate_wal_if_idle(&mut self) {
        let Some(at) = self.wal_check_at else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        // Cleared either way (an overdue check would wake the loop at once); the next
        // write arms it again.
        self.wal_check_at = None;
        if self.running.is_empty()
            && !self.completer.has_outcomes()
            && self.store.reclaimable_bytes() > IDLE_WAL_BYTES
        {
            // Busy (another process is reading or writing) or failed: nothing is lost, the
            // next idle moment tries again.
            let _ = self.store.reclaim_space();
        }
    }

    /// One turn's write: plans it, applies it in one transaction, absorbs the answer.
    /// Returns the claimed tasks. On an error everything stays pending for the next try
    /// (see [`Coordinator::turn`]).
    fn commit(&mut self, reporter: &mut dyn Reporter) -> Result<Vec<Claimed>, StoreError> {
        let jitter = jitter_source();
        let plan = TurnPlan::new(&self.plan_input(), Now::read(), &jitter);
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let written = self.store.write(|tx| {
            plan.apply(
                tx,
                &self.ctx,
                &self.completer,
                &self.pruner,
                &self.summary,
                &jitter,
            )
        })?;
        Ok(self.absorb(plan, written, reporter))
    }

    /// Takes what a committed turn wrote into the roles' state and reports it.
    fn absorb(
        &mut self,
        plan: TurnPlan,
        written: Written,
        reporter: &mut dyn Reporter,
    ) -> Vec<Claimed> {
        let Written {
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
        } = written;
        reporter.event(WorkerEvent::Committed);
        let now = Instant::now();
        self.wal_check_at = Some(now + IDLE_CHECKPOINT_AFTER);
        let mut ended = 0;
        for recorded in self.completer.written(plan.completion, applied) {
            self.report(&recorded, reporter);
            ended += 1;
        }
        if ended > 0 && self.ctx.watcher.complete() {
            // The watcher skips this connection's own notifications: wake this process's
            // waiters (a task joining a subtask this worker just finished) directly.
            self.ctx.watcher.notify();
        }
        if plan.renew {
            self.producer.renewed(now);
            if self.clock.due(now) {
                // The heartbeat just written read the server's clock.
                self.check_clock(reporter);
            }
        }
        if plan.rescue {
            self.rescuer.ran(now);
            self.rescued(&rescued, reporter);
        }
        if plan.prune {
            self.pruner.pruned(now, pruned);
            if pruned > 0 {
                reporter.event(WorkerEvent::Pruned { count: pruned });
            }
        }
        if plan.cancels {
            self.running.cancel(&cancel_requests);
        }
        if let Some(rows) = limits {
            self.limits_read(&rows);
        }
        // Its own commit wakes no claim of its own (the change counter says the write was
        // its own): dependents it released, like tasks it staged, wake the claims here.
        if staged.tasks + staged.runs + released > 0 {
            self.wake_claims();
        }
        self.stager.staged(plan.stage);
        for mode in MODES {
            let got = claimed.get(mode).len();
            let asked = *plan.claims.get(mode);
            if got < asked && self.mismatch_stale {
                self.mismatch_due = true;
            }
            self.producer.claimed(mode, asked, got);
            if plan.limited && asked > 0 {
                let next_slot = next_slot_at.map(|at| {
                    // A millisecond late rather than early: an early claim finds the
                    // window still full.
                    now + Duration::from_micros(u64::try_from(at - now_us()).unwrap_or(0))
                        + Duration::from_millis(1)
                });
                self.producer.limits_held(mode, *held.get(mode), next_slot);
            }
        }
        let mut claimed_all = claimed.thread;
        claimed_all.extend(claimed.process);
        claimed_all
    }

    /// Compares this host's clock with the database server's (the reading the last
    /// registration or heartbeat took, else one statement), and says what changed.
    fn check_clock(&mut self, reporter: &mut dyn Reporter) {
        let now = Instant::now();
        match self.store.clock_offset() {
            Ok(Some(offset)) => match self.clock.observe(&offset, now) {
                Some(ClockNews::Skewed) => {
                    reporter.event(WorkerEvent::ClockSkewed { offset: &offset });
                }
                Some(ClockNews::InLine) => {
                    reporter.event(WorkerEvent::ClockInLine { offset: &offset });
                }
                None => {}
            },
            Ok(None) => self.clock.not_comparable(),
            // The server did not answer: the writes' own failures say so.
            Err(_) => self.clock.unread(now),
        }
    }

    /// Reports a rescuer pass's work.
    fn rescued(&mut self, rescued: &Rescue, reporter: &mut dyn Reporter) {
        for (worker, why) in &rescued.buried {
            reporter.event(WorkerEvent::Buried { worker, why });
        }
        for (id, task, state) in &rescued.rescued {
            reporter.event(WorkerEvent::Rescued {
                id: *id,
                task,
                state: *state,
            });
        }
        if !rescued.rescued.is_empty() {
            // Rescued tasks are retryable (or available again soon).
            self.stager.mark_stale();
            // Their attempts no longer count against a concurrency limit: a lane it held
            // back may claim (this worker's own commit wakes nobody).
            for mode in MODES {
                self.producer.attempt_ended(mode);
            }
        }
    }

    /// Counts and reports one written outcome.
    fn report(&mut self, recorded: &Recorded, reporter: &mut dyn Reporter) {
        let state = recorded.state();
        if state == TaskState::Retryable {
            self.stager.mark_stale();
        }
        let ended = &recorded.ended;
        match ended.attempt.outcome {
            AttemptOutcome::Succeeded => self.summary.completed += 1,
            AttemptOutcome::Abandoned { .. } => self.summary.abandoned += 1,
            _ => self.summary.failed += 1,
        }
        let error = ended.error();
        reporter.event(WorkerEvent::Finished(&Finished {
            id: ended.claim.id,
            task: &ended.claim.task,
            attempt: ended.claim.attempt,
            max_attempts: ended.claim.max_attempts,
            outcome: &ended.attempt.outcome,
            error: error.as_deref(),
            state,
            retry_at: recorded.transition.and_then(|t| t.scheduled_at),
            elapsed: ended.attempt.elapsed,
            lost_lease: !recorded.applied,
        }));
    }

    /// Rereads when the next scheduled task and the next schedule tick are due, if
    /// something may have changed them.
    fn refresh_due(&mut self) -> Result<(), StoreError> {
        self.stager
            .refresh(&*self.store, &self.ctx.manager, &self.ctx.schedules)
    }

    /// Hands a claimed task to its pool.
    fn start(&mut self, task: Claimed, reporter: &mut dyn Reporter) {
        let Some(info) = self.ctx.tasks.get(&task.task).copied() else {
            // The claim only selects known names; this is unreachable but harmless.
            self.completer.release(task.seq, task.attempt);
            return;
        };
        let flags = Arc::new(Flags::default());
        reporter.event(WorkerEvent::Started {
            id: task.id,
            task: &task.task,
            mode: info.mode,
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            start: AttemptStart(Arc::clone(&flags)),
        });
        self.running.insert(Inflight {
            claim: Claim::of(&task),
            mode: info.mode,
            timeout: task.timeout,
            started_at: None,
            flags: Arc::clone(&flags),
        });
        match (info.mode, &self.pools.processes) {
            (TaskMode::Process, Some(processes)) => processes.submit(Job { task, flags }),
            _ => self.spawn_thread(task, info, flags),
        }
    }

    /// Queues a claim on the thread pool. When a thread takes it, it runs unless it was
    /// cancelled meanwhile or the worker is stopping ([`Flags::begin`]).
    fn spawn_thread(&self, task: Claimed, info: TaskInfo, flags: Arc<Flags>) {
        let events = self.ctx.events.clone();
        let host = self.ctx.host;
        let stopping = Arc::clone(&self.pools.stopping);
        let (seq, attempt) = (task.seq, task.attempt);
        self.pools.threads.spawn(move || {
            let outcome = match flags.begin(&stopping) {
                Begin::Skip(outcome) => outcome,
                Begin::Run => {
                    if task.timeout.is_some() {
                        let _ = events.send(Event::Started {
                            seq,
                            at: Instant::now(),
                        });
                    }
                    Some(executor::run_attempt(
                        info.run,
                        host,
                        &task,
                        &flags.cancelled,
                    ))
                }
            };
            let _ = events.send(Event::Done(Done {
                seq,
                attempt,
                outcome,
            }));
        });
    }

    /// After an error that waiting cannot fix: stops at once and writes nothing more (on a
    /// damaged file every write risks more damage). Running tasks are told to stop and
    /// children are killed and reaped; the rows of the tasks this worker claimed stay
    /// `running` under its id, for the next worker's rescuer, as after a crash. Returns
    /// how many.
    pub(super) fn abort(&mut self) -> usize {
        self.pools.stopping.store(true, Ordering::SeqCst);
        self.running.cancel_all();
        if let Some(processes) = self.pools.processes.take() {
            processes.shutdown(true);
        }
        self.running.len()
    }

    /// After the loop: tasks still running are recorded as abandoned (and retried under
    /// their policy by whichever worker runs next); claims never started are given back,
    /// or recorded cancelled if they were; children are stopped and reaped.
    ///
    /// # Errors
    /// [`WorkerError::Stopped`] if the database fails in a way no retry fixes meanwhile.
    pub(super) fn finish(&mut self, reporter: &mut dyn Reporter) -> Result<Summary, WorkerError> {
        self.pools.stopping.store(true, Ordering::SeqCst);
        let kill_children = self.abandon_running(reporter);
        self.producer.pause();
        let fatal = self.write_what_is_left(reporter);
        if let Some(processes) = self.pools.processes.take() {
            processes.shutdown(kill_children || fatal.is_some());
        }
        if let Some(error) = fatal {
            return Err(WorkerError::Stopped {
                error,
                claimed: self.completer.claims_kept(),
            });
        }
        if self.registered() {
            self.record_stop(reporter)?;
        }
        Ok(Summary {
            reload: self.stop.as_ref().is_some_and(|stop| stop.reload),
            ..self.summary.clone()
        })
    }

    /// Ends every claim still held: those running are abandoned (told to stop), those
    /// never begun are given back, or recorded cancelled if someone cancelled them.
    /// Returns true if a child runs one of them (the pool must kill it).
    fn abandon_running(&mut self, reporter: &mut dyn Reporter) -> bool {
        let grace = self.ctx.grace;
        let mut kill_children = false;
        for task in self.running.drain() {
            if !task.started() {
                if task.cancelled() {
                    // Given back, it would run later: a cancelled claim never runs.
                    self.completer.ended(Ended {
                        claim: task.claim,
                        attempt: super::cancelled_before_start(),
                        ran: false,
                    });
                } else {
                    self.completer.release(task.claim.seq, task.claim.attempt);
                }
                continue;
            }
            task.cancel();
            kill_children |= task.mode == TaskMode::Process;
            reporter.event(WorkerEvent::Abandoned {
                id: task.claim.id,
                task: &task.claim.task,
            });
            let outcome = AttemptOutcome::Abandoned {
                message: format!(
                    "the worker stopped before the task finished (grace period {})",
                    castor_store::format::format_duration(grace)
                ),
            };
            let elapsed = task.started_at.map_or(Duration::ZERO, |t| t.elapsed());
            self.completer.ended(Ended {
                claim: task.claim,
                attempt: Attempt {
                    outcome,
                    result: None,
                    elapsed,
                },
                ran: true,
            });
        }
        kill_children
    }

    /// Writes everything left, in pieces after a failure; a few failed tries at most (then
    /// the tasks stay `running` under this worker, and the next worker rescues and retries
    /// them: nothing acknowledged is lost). Damage stops at once: returns its error.
    fn write_what_is_left(&mut self, reporter: &mut dyn Reporter) -> Option<StoreError> {
        let mut failed_tries = 0;
        while failed_tries < 3 && self.completer.has_kept() {
            match self.commit(reporter) {
                Ok(_) => self.wrote(reporter),
                Err(e) if e.is_fatal() => return Some(e),
                Err(e) => {
                    failed_tries += 1;
                    self.write_failed(&e, reporter);
                }
            }
        }
        None
    }

    /// Records the worker's last heartbeat and its stop. A stop that cannot be recorded
    /// is reported (nothing else is lost: other workers see this one gone by its process
    /// or its heartbeat).
    ///
    /// # Errors
    /// [`WorkerError::Stopped`] if the database is damaged.
    fn record_stop(&mut self, reporter: &mut dyn Reporter) -> Result<(), WorkerError> {
        let (id, summary) = (&self.ctx.id, &self.summary);
        let stopped = self.store.write(|tx| {
            tx.heartbeat(id, now_us(), summary.completed, summary.failed)?;
            tx.stop_worker(id, now_us())
        });
        match stopped {
            Ok(()) => Ok(()),
            Err(error) if error.is_fatal() => Err(WorkerError::Stopped { error, claimed: 0 }),
            Err(error) => {
                reporter.event(WorkerEvent::StopNotRecorded { error: &error });
                Ok(())
            }
        }
    }
}

/// A cheap, per-call source of jitter in `[0, 1)` for backoff (no RNG dependency: the
/// row number and the clock's low bits are random enough to spread retries).
fn jitter_source() -> impl Fn(i64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    move |seq: i64| {
        let mut x = (seq as u64) ^ (u64::from(nanos) << 17) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
