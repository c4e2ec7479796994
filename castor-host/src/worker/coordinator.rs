//! The coordinator: the worker's one thread that talks to the database. It sleeps until
//! something happens, then runs one turn: expire thread-task timeouts, commit every
//! pending outcome together with new claims, and hand the claimed tasks to the pools.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use castor_abi::Uuid;
use castor_abi::abi::TaskMode;
use castor_store::{
    AttemptError, AttemptOutcome, Backoff, Claimed, ErrorKind, Finish, LogLevel, NewLog,
    ScheduleFilter, StoreError, TaskState, Transition, duration_us, next_state, now_us,
    run_due_schedules,
};
use crossbeam_channel::Receiver;

use super::child::{Job, ProcessPool};
use super::recovery::Failure;
use super::rescuer::{self, Rescue};
use super::{
    AttemptStart, Done, Event, Finished, Flags, Reporter, Summary, Worker, WorkerError,
    WorkerEvent, executor,
};

/// How often leases are renewed, as a fraction of the lease.
const RENEW_EVERY: u32 = 3;

/// Target time each claim batch should keep a pool busy for; the claim window grows for
/// short tasks (to share commits) and shrinks to the pool size for long ones (to leave
/// tasks for other workers).
const BATCH_TARGET: Duration = Duration::from_millis(5);

/// The most tasks one pool holds at once, whatever their speed.
const MAX_WINDOW: usize = 1024;

/// How often finished tasks past the retention period are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How many finished tasks one turn prunes.
const PRUNE_BATCH: usize = 1000;

/// A worker idle this long (nothing running, nothing written) truncates its WAL if it is
/// larger than [`IDLE_WAL_BYTES`], giving the space back to the file system.
const IDLE_CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// The WAL size an idle worker leaves alone.
const IDLE_WAL_BYTES: u64 = 1 << 20;

/// A task this worker claimed and has not finished.
struct Inflight {
    id: Uuid,
    task: String,
    mode: TaskMode,
    attempt: u32,
    max_attempts: u32,
    backoff: Backoff,
    timeout: Option<Duration>,
    started_at: Option<Instant>,
    flags: Arc<Flags>,
}

impl Inflight {
    /// When a started thread task times out. (A process task's slot enforces its own.)
    fn thread_deadline(&self) -> Option<Instant> {
        match (self.mode, self.timeout, self.started_at) {
            (TaskMode::Thread, Some(timeout), Some(started)) => Some(started + timeout),
            _ => None,
        }
    }

    /// This attempt's outcome, ready to be written.
    fn into_outcome(
        self,
        seq: i64,
        outcome: AttemptOutcome,
        result: Option<Vec<u8>>,
        elapsed: Duration,
    ) -> Outcome {
        Outcome {
            seq,
            id: self.id,
            task: self.task,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            outcome,
            result,
            elapsed,
        }
    }
}

/// An outcome waiting to be written.
struct Outcome {
    seq: i64,
    id: Uuid,
    task: String,
    attempt: u32,
    max_attempts: u32,
    backoff: Backoff,
    outcome: AttemptOutcome,
    result: Option<Vec<u8>>,
    elapsed: Duration,
}

struct LogLine {
    seq: i64,
    attempt: u32,
    at: i64,
    level: LogLevel,
    line: String,
}

struct Stop {
    deadline: Instant,
    forced: bool,
}

/// Per mode: its pool's size, whether a claim may find more, and how long attempts take
/// (a moving average, for the claim window).
struct Lane {
    /// Pool slots for this mode; 0 when the library declares no task of the mode, and
    /// then the lane never claims (nor keeps the coordinator awake wanting to).
    slots: usize,
    /// The last claim filled its window, or the database changed since: a claim may find
    /// more.
    want: bool,
    mean: Duration,
}

impl Lane {
    fn new(slots: usize) -> Lane {
        Lane {
            slots,
            want: slots > 0,
            mean: Duration::from_millis(1),
        }
    }

    fn window(&self) -> usize {
        let slots = self.slots;
        let per_slot = BATCH_TARGET.as_secs_f64() / self.mean.as_secs_f64().max(1e-7);
        let extra = (slots as f64 * per_slot) as usize;
        (slots + extra).clamp(slots, MAX_WINDOW.max(slots))
    }

    fn observe(&mut self, elapsed: Duration) {
        self.mean = self.mean.mul_f64(0.9) + elapsed.mul_f64(0.1);
    }
}

/// The coordinator's state between turns.
pub(super) struct Coordinator {
    threads: rayon::ThreadPool,
    processes: Option<ProcessPool>,
    stopping: Arc<AtomicBool>,
    inflight: HashMap<i64, Inflight>,
    by_id: HashMap<Uuid, i64>,
    /// Thread attempts recorded as timed out that still hold a pool thread, by
    /// (seq, attempt): their late answers are dropped.
    zombies: HashSet<(i64, u32)>,
    outcomes: Vec<Outcome>,
    releases: Vec<(i64, u32)>,
    logs: Vec<LogLine>,
    progress: HashMap<i64, (u32, u64, u64, String)>,
    thread_lane: Lane,
    process_lane: Lane,
    /// The database's change counter as of this worker's last look (`None`: not read
    /// yet, or the driver cannot tell).
    change_counter: Option<i64>,
    next_due: Option<i64>,
    check_due: bool,
    /// The next tick of a schedule this worker runs.
    next_tick: Option<i64>,
    /// This worker's task and periodic names, as the schedule queries take them.
    schedule_filter: ScheduleFilter,
    next_renewal: Instant,
    next_rescue: Instant,
    next_prune: Instant,
    /// Someone may have asked to cancel one of our running tasks.
    check_cancels: bool,
    stop: Option<Stop>,
    /// An error the services' connection met that stops the worker (a damaged file).
    fatal_error: Option<StoreError>,
    /// Writes are failing, or what was kept while they failed is still being written.
    failure: Option<Failure>,
    /// The worker's row is written (the first write; claims wait for it).
    registered: bool,
    /// When to look at the WAL's size, if the worker is idle by then.
    wal_check_at: Option<Instant>,
    summary: Summary,
}

impl Coordinator {
    pub(super) fn new(
        worker: &Worker,
        threads: rayon::ThreadPool,
        processes: Option<ProcessPool>,
        stopping: Arc<AtomicBool>,
    ) -> Coordinator {
        Coordinator {
            threads,
            processes,
            stopping,
            inflight: HashMap::new(),
            by_id: HashMap::new(),
            zombies: HashSet::new(),
            outcomes: Vec::new(),
            releases: Vec::new(),
            logs: Vec::new(),
            progress: HashMap::new(),
            thread_lane: Lane::new(if worker.thread_claim.is_some() {
                worker.config.threads
            } else {
                0
            }),
            process_lane: Lane::new(worker.processes()),
            change_counter: None,
            next_due: None,
            check_due: true,
            next_tick: None,
            schedule_filter: worker.schedule_filter(),
            next_renewal: Instant::now() + worker.config.lease / RENEW_EVERY,
            // Rescue at once: a worker restarted after a crash picks up its old tasks.
            next_rescue: Instant::now(),
            next_prune: Instant::now() + Duration::from_secs(1),
            check_cancels: false,
            stop: None,
            fatal_error: None,
            failure: None,
            registered: false,
            wal_check_at: None,
            summary: Summary::default(),
        }
    }

    /// Pool slots of `mode` in use, counting timed-out threads that still run.
    fn active(&self, mode: TaskMode) -> usize {
        let zombies = match mode {
            TaskMode::Thread => self.zombies.len(),
            TaskMode::Process => 0,
        };
        self.inflight.values().filter(|t| t.mode == mode).count() + zombies
    }

    fn running(&self) -> usize {
        self.inflight.len()
    }

    pub(super) fn finished(&self) -> bool {
        match &self.stop {
            Some(stop) => {
                (self.running() == 0 && self.outcomes.is_empty())
                    || stop.forced
                    || Instant::now() >= stop.deadline
            }
            None => false,
        }
    }

    /// True if a turn now would claim: a lane wants more and has room for it. (Wanting
    /// without room, or a lane without slots, must not keep the loop awake.)
    fn wants_claim(&self) -> bool {
        self.room(TaskMode::Thread) > 0 || self.room(TaskMode::Process) > 0
    }

    /// Sleeps until the next event or timer, then takes every queued event.
    pub(super) fn wait(
        &mut self,
        events: &Receiver<Event>,
        pending: &AtomicBool,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
    ) {
        let has_work = match &self.failure {
            // Sleep until the next try: nothing can be written before.
            Some(failure) if failure.waiting() => false,
            _ => {
                !self.registered
                    || !self.outcomes.is_empty()
                    || !self.releases.is_empty()
                    || (self.failure.is_some() && !self.logs.is_empty())
                    || self.wants_claim()
            }
        };
        let timeout = if has_work {
            Duration::ZERO
        } else {
            self.next_timer().saturating_duration_since(Instant::now())
        };
        let first = events.recv_timeout(timeout).ok();
        for event in first.into_iter().chain(events.try_iter()) {
            match event {
                Event::Done(done) => self.on_done(done),
                Event::Started { seq, at } => {
                    if let Some(task) = self.inflight.get_mut(&seq) {
                        task.started_at = Some(at);
                    }
                }
                Event::DbChanged => {
                    pending.store(false, Ordering::Release);
                    match worker.store.change_counter() {
                        // Only this connection committed: nothing new to claim.
                        Ok(Some(counter)) if Some(counter) == self.change_counter => {}
                        Ok(counter) => {
                            self.change_counter = counter;
                            self.wake_claims();
                        }
                        Err(_) => self.wake_claims(),
                    }
                }
                Event::Log {
                    id,
                    level,
                    line,
                    at,
                } => {
                    if id.is_nil() {
                        // A library's record made outside any task.
                        reporter.event(WorkerEvent::LibraryLog { level, line: &line });
                    } else if let Some(&seq) = self.by_id.get(&id) {
                        let attempt = self.inflight.get(&seq).map_or(0, |t| t.attempt);
                        if let Some(task) = self.inflight.get(&seq) {
                            reporter.event(WorkerEvent::TaskLog {
                                id,
                                task: &task.task,
                                level,
                                line: &line,
                            });
                        }
                        self.logs.push(LogLine {
                            seq,
                            attempt,
                            at,
                            level,
                            line,
                        });
                    }
                }
                Event::Progress {
                    id,
                    done,
                    total,
                    message,
                } => {
                    if let Some(&seq) = self.by_id.get(&id) {
                        let attempt = self.inflight.get(&seq).map_or(0, |t| t.attempt);
                        reporter.event(WorkerEvent::Progress {
                            id,
                            done,
                            total,
                            message: &message,
                        });
                        self.progress.insert(seq, (attempt, done, total, message));
                    }
                }
                Event::Fatal(error) => self.fatal_error = Some(error),
                Event::ChildOutput { pid, line } => {
                    reporter.event(WorkerEvent::ChildOutput { pid, line: &line });
                }
                Event::Shutdown => {
                    if self.stop.is_some() {
                        self.force(reporter);
                    } else {
                        self.stopping.store(true, Ordering::SeqCst);
                        self.stop = Some(Stop {
                            deadline: Instant::now() + worker.config.grace,
                            forced: false,
                        });
                        reporter.event(WorkerEvent::Stopping {
                            running: self.running(),
                            grace: worker.config.grace,
                        });
                    }
                }
            }
        }
    }

    fn wake_claims(&mut self) {
        self.thread_lane.want = self.thread_lane.slots > 0;
        self.process_lane.want = self.process_lane.slots > 0;
        self.check_due = true;
        self.check_cancels = true;
    }

    fn force(&mut self, reporter: &mut dyn Reporter) {
        self.stop = Some(Stop {
            deadline: Instant::now(),
            forced: true,
        });
        reporter.event(WorkerEvent::Forced {
            running: self.running(),
        });
    }

    fn next_timer(&self) -> Instant {
        let now = Instant::now();
        let mut next = match self.failure.as_ref().and_then(Failure::wake_at) {
            // Renewals, rescues, prunes and due tasks all need a write: they wait for the
            // next try (their deadlines, already past, would otherwise wake the loop at once).
            Some(at) => at,
            None => {
                let mut next = self.next_renewal.min(self.next_rescue).min(self.next_prune);
                if let Some(at) = self.wal_check_at {
                    next = next.min(at);
                }
                // A stopping worker runs no schedule tick: waking for one would find
                // nothing to do.
                let tick = self.next_tick.filter(|_| self.stop.is_none());
                for due in [self.next_due, tick].into_iter().flatten() {
                    let wait = Duration::from_micros(u64::try_from(due - now_us()).unwrap_or(0));
                    next = next.min(now + wait);
                }
                next
            }
        };
        if let Some(stop) = &self.stop {
            next = next.min(stop.deadline);
        }
        for at in self.inflight.values().filter_map(Inflight::thread_deadline) {
            next = next.min(at);
        }
        next
    }

    fn on_done(&mut self, done: Done) {
        if self.zombies.remove(&(done.seq, done.attempt)) {
            // A timed-out attempt's late answer: already recorded, maybe retried since.
            return;
        }
        let Some(task) = self.inflight.remove(&done.seq) else {
            return;
        };
        self.by_id.remove(&task.id);
        let Some(attempt) = done.outcome else {
            // Never started: the worker is stopping. Give the claim back.
            self.releases.push((done.seq, task.attempt));
            return;
        };
        let elapsed = attempt.elapsed;
        match task.mode {
            TaskMode::Thread => self.thread_lane.observe(elapsed),
            TaskMode::Process => self.process_lane.observe(elapsed),
        }
        self.outcomes
            .push(task.into_outcome(done.seq, attempt.outcome, attempt.result, elapsed));
    }

    /// Thread tasks past their timeout: signal cooperative cancellation and record the
    /// attempt as timed out now. The thread cannot be killed; its late answer is ignored.
    /// (Process tasks are killed by their slot.)
    fn expire_timeouts(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, task)| task.thread_deadline().is_some_and(|at| now >= at))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            let Some(task) = self.inflight.remove(&seq) else {
                continue;
            };
            self.by_id.remove(&task.id);
            task.flags.cancelled.store(true, Ordering::SeqCst);
            self.zombies.insert((seq, task.attempt));
            let timeout = task.timeout.unwrap_or_default();
            let elapsed = task.started_at.map_or(timeout, |at| now - at);
            let outcome = AttemptOutcome::TimedOut { after: timeout };
            self.outcomes
                .push(task.into_outcome(seq, outcome, None, elapsed));
        }
    }

    /// Expires timeouts, commits, and starts what was claimed.
    pub(super) fn turn(
        &mut self,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
    ) -> Result<(), StoreError> {
        if let Some(error) = self.fatal_error.take() {
            return Err(error);
        }
        self.expire_timeouts();
        if let Some(failure) = &mut self.failure
            && !failure.due(Instant::now(), || worker.store.free_bytes())
        {
            return Ok(());
        }
        let written = if self.registered {
            self.commit(worker, reporter)
        } else {
            worker.register().map(|()| Vec::new())
        };
        match written {
            Ok(claimed) => {
                self.registered = true;
                self.wrote(worker, reporter);
                for task in claimed {
                    self.start(worker, task, reporter);
                }
                self.truncate_wal_if_idle(worker);
                Ok(())
            }
            Err(e) => {
                if !Self::fatal(&e) {
                    self.write_failed(worker, &e, reporter);
                }
                Err(e)
            }
        }
    }

    /// A write failed and will be tried again: sleep until then, claim nothing, keep every
    /// outcome. Reported when the failure starts, not at every try.
    fn write_failed(&mut self, worker: &Worker, error: &StoreError, reporter: &mut dyn Reporter) {
        let now = Instant::now();
        let free = match error {
            StoreError::DiskFull { .. } => worker.store.free_bytes(),
            _ => None,
        };
        match &mut self.failure {
            Some(failure) => {
                let tried = self
                    .outcomes
                    .len()
                    .max(self.logs.len())
                    .min(failure.chunk());
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
    fn wrote(&mut self, worker: &mut Worker, reporter: &mut dyn Reporter) {
        let Some(failure) = &mut self.failure else {
            return;
        };
        failure.succeeded();
        if !self.outcomes.is_empty() || !self.releases.is_empty() || !self.logs.is_empty() {
            return;
        }
        reporter.event(WorkerEvent::WriteRecovered {
            failed_for: failure.since.elapsed(),
            tries: failure.tries,
        });
        self.failure = None;
        // The WAL may have grown while writes failed (and other processes' with it): give
        // its space back now, so the next burst has room.
        let _ = worker.store.reclaim_space();
        self.wal_check_at = None;
        self.wake_claims();
    }

    /// After a second of idleness, truncates a WAL grown past [`IDLE_WAL_BYTES`] (it stays
    /// at its largest size otherwise, holding disk space an idle worker does not need).
    fn truncate_wal_if_idle(&mut self, worker: &mut Worker) {
        let Some(at) = self.wal_check_at else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        // Cleared either way (an overdue check would wake the loop at once); the next
        // write arms it again.
        self.wal_check_at = None;
        if self.inflight.is_empty()
            && self.outcomes.is_empty()
            && worker.store.reclaimable_bytes() > IDLE_WAL_BYTES
        {
            // Busy (another process is reading or writing) or failed: nothing is lost, the
            // next idle moment tries again.
            let _ = worker.store.reclaim_space();
        }
    }

    /// How many tasks of `mode` to claim now.
    fn room(&self, mode: TaskMode) -> usize {
        if self.stop.is_some() || self.failure.is_some() || !self.registered {
            return 0;
        }
        let lane = match mode {
            TaskMode::Thread => &self.thread_lane,
            TaskMode::Process => &self.process_lane,
        };
        if !lane.want || lane.slots == 0 {
            return 0;
        }
        lane.window().saturating_sub(self.active(mode))
    }

    /// One transaction: outcomes, releases, logs, progress, staging, lease renewal,
    /// claims. Returns the claimed tasks.
    fn commit(
        &mut self,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = now_us();
        // After a failure, a transaction writes only what was kept, in pieces that fit: no
        // claims (no room), nothing that can wait. The heartbeat makes every try a write,
        // so its success really means that writes work again.
        let recovering = self.failure.is_some();
        let piece = self.failure.as_ref().map_or(usize::MAX, Failure::chunk);
        let (n_outcomes, n_logs) = (self.outcomes.len().min(piece), self.logs.len().min(piece));
        let renew = recovering || Instant::now() >= self.next_renewal;
        let rescue = !recovering && Instant::now() >= self.next_rescue;
        let prune = !recovering && Instant::now() >= self.next_prune;
        let cancels = self.check_cancels && !self.inflight.is_empty();
        let stage = !recovering && self.next_due.is_some_and(|due| due <= now);
        let tick =
            !recovering && self.stop.is_none() && self.next_tick.is_some_and(|due| due <= now);
        let thread_limit = self.room(TaskMode::Thread);
        let process_limit = self.room(TaskMode::Process);
        if self.outcomes.is_empty()
            && self.releases.is_empty()
            && self.logs.is_empty()
            && self.progress.is_empty()
            && !stage
            && !tick
            && !renew
            && !rescue
            && !prune
            && !cancels
            && thread_limit == 0
            && process_limit == 0
        {
            self.refresh_due(worker)?;
            return Ok(Vec::new());
        }
        let retention_cutoff = now - duration_us(worker.config.retention);
        let hostname = worker.hostname.clone();
        let lease = worker.config.lease;
        let lease_until = now + duration_us(worker.config.lease);
        let worker_id = worker.id.clone();
        let manager = worker.config.manager.name.to_string();
        let jitter = jitter_source();
        let transitions: Vec<Option<Transition>> = self.outcomes[..n_outcomes]
            .iter()
            .map(|o| match o.outcome {
                AttemptOutcome::Succeeded => None,
                _ => Some(next_state(
                    &o.outcome,
                    o.attempt,
                    o.max_attempts,
                    o.backoff,
                    now,
                    jitter(o.seq),
                )),
            })
            .collect();
        let claims = [
            (worker.thread_claim.as_ref(), thread_limit),
            (worker.process_claim.as_ref(), process_limit),
        ];
        let written = worker.store.write(|tx| {
            // Logs and progress first: progress is only recorded while the attempt runs.
            for log in &self.logs[..n_logs] {
                tx.append_log(&NewLog {
                    seq: log.seq,
                    attempt: log.attempt,
                    at: log.at,
                    level: log.level,
                    line: &log.line,
                })?;
            }
            for (&seq, (attempt, done, total, message)) in &self.progress {
                tx.set_progress(seq, *attempt, *done, *total, message)?;
            }
            let mut applied = Vec::with_capacity(self.outcomes.len());
            for (o, transition) in self.outcomes[..n_outcomes].iter().zip(&transitions) {
                applied.push(tx.finish_if_running(
                    o.seq,
                    o.attempt,
                    &finish_of(o, transition.as_ref(), &worker_id, now),
                    now,
                )?);
            }
            for &(seq, attempt) in &self.releases {
                tx.release_if_running(seq, attempt)?;
            }
            let staged = if stage {
                tx.stage_due(&manager, now)?
            } else {
                0
            };
            let ticked = if tick {
                run_due_schedules(tx, &self.schedule_filter, now, 100)?.len()
            } else {
                0
            };
            if renew {
                tx.renew_leases(&worker_id, lease_until)?;
                tx.heartbeat(&worker_id, now, self.summary.completed, self.summary.failed)?;
            }
            let rescued = if rescue {
                rescuer::rescue(tx, &worker_id, &hostname, lease, now, &jitter)?
            } else {
                Rescue::default()
            };
            let pruned = if prune {
                tx.prune(retention_cutoff, PRUNE_BATCH)?
            } else {
                0
            };
            let cancel_requests = if cancels {
                tx.cancel_requests(&worker_id)?
            } else {
                Vec::new()
            };
            let mut claimed = [Vec::new(), Vec::new()];
            for (i, (query, limit)) in claims.iter().enumerate() {
                if let (Some(query), true) = (query, *limit > 0) {
                    claimed[i] = tx.claim(query, &worker_id, *limit, now, lease_until)?;
                }
            }
            Ok((
                applied,
                staged + ticked,
                claimed,
                rescued,
                pruned,
                cancel_requests,
            ))
        });
        let ticked = tick;
        // On an error everything stays pending for the next try (see `turn`).
        let (applied, staged, [threads, processes], rescued, pruned, cancel_requests) = written?;
        self.wal_check_at = Some(Instant::now() + IDLE_CHECKPOINT_AFTER);
        for ((outcome, transition), applied) in self
            .outcomes
            .drain(..n_outcomes)
            .zip(transitions)
            .zip(applied)
        {
            let state = transition.map_or(TaskState::Completed, |t| t.state);
            if state == TaskState::Retryable {
                self.check_due = true;
            }
            match outcome.outcome {
                AttemptOutcome::Succeeded => self.summary.completed += 1,
                AttemptOutcome::Abandoned { .. } => self.summary.abandoned += 1,
                _ => self.summary.failed += 1,
            }
            reporter.event(WorkerEvent::Finished(&Finished {
                id: outcome.id,
                task: &outcome.task,
                attempt: outcome.attempt,
                max_attempts: outcome.max_attempts,
                outcome: &outcome.outcome,
                state,
                retry_at: transition.and_then(|t| t.scheduled_at),
                elapsed: outcome.elapsed,
                lost_lease: !applied,
            }));
        }
        self.releases.clear();
        self.logs.drain(..n_logs);
        self.progress.clear();
        if renew {
            self.next_renewal = Instant::now() + worker.config.lease / RENEW_EVERY;
        }
        if rescue {
            self.next_rescue = Instant::now() + worker.config.lease / RENEW_EVERY;
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
                self.check_due = true;
            }
        }
        if prune {
            // A full batch means more are waiting: prune again next turn.
            self.next_prune = if pruned == PRUNE_BATCH {
                Instant::now()
            } else {
                Instant::now() + PRUNE_EVERY
            };
            if pruned > 0 {
                reporter.event(WorkerEvent::Pruned { count: pruned });
            }
        }
        if cancels {
            self.check_cancels = false;
            for seq in cancel_requests {
                if let Some(task) = self.inflight.get(&seq) {
                    task.flags.cancelled.store(true, Ordering::SeqCst);
                }
            }
        }
        if staged > 0 {
            self.wake_claims();
        }
        if stage {
            // Whatever this staged (maybe nothing: another worker got there first), the
            // next due time moved on; a stale one would wake the loop again at once.
            self.check_due = true;
        }
        if ticked {
            // The schedules moved on: find their next tick.
            self.check_due = true;
        }
        if thread_limit > 0 {
            self.thread_lane.want = threads.len() == thread_limit;
        }
        if process_limit > 0 {
            self.process_lane.want = processes.len() == process_limit;
        }
        let mut claimed = threads;
        claimed.extend(processes);
        // After the claim, not before: a new scheduled task is never due at once, and the
        // claim is what a waiting app is waiting for.
        self.refresh_due(worker)?;
        Ok(claimed)
    }

    /// Rereads when the next scheduled task and the next schedule tick are due, if
    /// something may have changed them.
    fn refresh_due(&mut self, worker: &Worker) -> Result<(), StoreError> {
        if self.check_due {
            let manager = &worker.config.manager.name;
            self.next_due = worker.store.next_due(manager)?;
            self.next_tick = worker.store.next_schedule_due(&self.schedule_filter)?;
            self.check_due = false;
        }
        Ok(())
    }

    /// Hands a claimed task to its pool.
    fn start(&mut self, worker: &Worker, task: Claimed, reporter: &mut dyn Reporter) {
        let Some(info) = worker.tasks.get(&task.task).copied() else {
            // The claim only selects known names; this is unreachable but harmless.
            self.releases.push((task.seq, task.attempt));
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
        let (seq, attempt) = (task.seq, task.attempt);
        self.by_id.insert(task.id, seq);
        self.inflight.insert(
            seq,
            Inflight {
                id: task.id,
                task: task.task.clone(),
                mode: info.mode,
                attempt: task.attempt,
                max_attempts: task.max_attempts,
                backoff: task.backoff,
                timeout: task.timeout,
                started_at: None,
                flags: Arc::clone(&flags),
            },
        );
        match (info.mode, &self.processes) {
            (TaskMode::Process, Some(processes)) => processes.submit(Job { task, flags }),
            _ => {
                let events = worker.events.0.clone();
                let host = worker.host;
                let stopping = Arc::clone(&self.stopping);
                self.threads.spawn(move || {
                    if stopping.load(Ordering::SeqCst) {
                        let _ = events.send(Event::Done(Done {
                            seq,
                            attempt,
                            outcome: None,
                        }));
                        return;
                    }
                    flags.start();
                    if task.timeout.is_some() {
                        let _ = events.send(Event::Started {
                            seq,
                            at: Instant::now(),
                        });
                    }
                    let outcome = executor::run_attempt(info.run, host, &task, &flags.cancelled);
                    let _ = events.send(Event::Done(Done {
                        seq,
                        attempt,
                        outcome: Some(outcome),
                    }));
                });
            }
        }
    }

    /// After an error that waiting cannot fix: stops at once and writes nothing more (on a
    /// damaged file every write risks more damage). Running tasks are told to stop and
    /// children are killed and reaped; the rows of the tasks this worker claimed stay
    /// `running` under its id, for the next worker's rescuer, as after a crash. Returns
    /// how many.
    pub(super) fn abort(&mut self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        for task in self.inflight.values() {
            task.flags.cancelled.store(true, Ordering::SeqCst);
        }
        if let Some(processes) = self.processes.take() {
            processes.shutdown(true);
        }
        self.inflight.len()
    }

    /// True for errors that waiting cannot fix.
    pub(super) fn fatal(e: &StoreError) -> bool {
        matches!(
            e,
            StoreError::Corrupt { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::MissingDirectory { .. }
                | StoreError::NotADirectory { .. }
                | StoreError::NotAFile { .. }
                | StoreError::InvalidRow { .. }
        )
    }

    /// After the loop: tasks still running are recorded as abandoned (and retried under
    /// their policy by whichever worker runs next); claims never started are given back;
    /// children are stopped and reaped.
    ///
    /// # Errors
    /// [`WorkerError::Stopped`] if the database fails in a way no retry fixes meanwhile.
    pub(super) fn finish(
        &mut self,
        worker: &mut Worker,
        reporter: &mut dyn Reporter,
    ) -> Result<Summary, WorkerError> {
        self.stopping.store(true, Ordering::SeqCst);
        let grace = worker.config.grace;
        let mut kill_children = false;
        for (seq, task) in std::mem::take(&mut self.inflight) {
            if !task.flags.started.load(Ordering::SeqCst) {
                self.releases.push((seq, task.attempt));
                continue;
            }
            task.flags.cancelled.store(true, Ordering::SeqCst);
            kill_children |= task.mode == TaskMode::Process;
            reporter.event(WorkerEvent::Abandoned {
                id: task.id,
                task: &task.task,
            });
            let outcome = AttemptOutcome::Abandoned {
                message: format!(
                    "the worker stopped before the task finished (grace period {})",
                    castor_store::format::format_duration(grace)
                ),
            };
            let elapsed = task.started_at.map_or(Duration::ZERO, |t| t.elapsed());
            self.outcomes
                .push(task.into_outcome(seq, outcome, None, elapsed));
        }
        self.thread_lane.want = false;
        self.process_lane.want = false;
        // Everything left, in pieces after a failure; a few failed tries at most (then the
        // tasks stay `running` under this worker, and the next worker rescues and retries
        // them: nothing acknowledged is lost). Damage stops at once.
        let mut fatal = None;
        let mut failed_tries = 0;
        while failed_tries < 3
            && !(self.outcomes.is_empty() && self.releases.is_empty() && self.logs.is_empty())
        {
            match self.commit(worker, reporter) {
                Ok(_) => self.wrote(worker, reporter),
                Err(e) if Self::fatal(&e) => {
                    fatal = Some(e);
                    break;
                }
                Err(e) => {
                    failed_tries += 1;
                    self.write_failed(worker, &e, reporter);
                }
            }
        }
        if let Some(processes) = self.processes.take() {
            processes.shutdown(kill_children || fatal.is_some());
        }
        if let Some(error) = fatal {
            return Err(WorkerError::Stopped {
                error,
                claimed: self.outcomes.len() + self.releases.len(),
            });
        }
        if !self.registered {
            return Ok(self.summary.clone());
        }
        let (id, summary) = (worker.id.clone(), self.summary.clone());
        let stopped = worker.store.write(|tx| {
            tx.heartbeat(&id, now_us(), summary.completed, summary.failed)?;
            tx.stop_worker(&id, now_us())
        });
        match stopped {
            Ok(()) => {}
            Err(error) if Self::fatal(&error) => {
                return Err(WorkerError::Stopped { error, claimed: 0 });
            }
            Err(error) => reporter.event(WorkerEvent::StopNotRecorded { error: &error }),
        }
        Ok(self.summary.clone())
    }
}

fn finish_of<'a>(
    o: &'a Outcome,
    transition: Option<&Transition>,
    worker: &str,
    now: i64,
) -> Finish<'a> {
    match transition {
        None => Finish::Completed {
            result: o.result.as_deref().unwrap_or_default(),
        },
        Some(transition) => Finish::Failed {
            transition: *transition,
            error: o
                .outcome
                .to_error(o.attempt, now, Some(worker.to_owned()))
                .unwrap_or_else(|| AttemptError {
                    attempt: o.attempt,
                    at: now,
                    kind: ErrorKind::Other,
                    error: String::new(),
                    worker: Some(worker.to_owned()),
                }),
        },
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
