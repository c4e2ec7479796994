//! The producer: what this worker claims and holds. Per mode (thread, process) a [`Lane`]
//! sizes the claim window; [`Running`] keeps every claim from its claim to its outcome
//! (waiting for a slot, or running), and the leases on them are renewed every third of
//! a lease.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use castor_abi::Uuid;
use castor_abi::abi::TaskMode;
use castor_store::{Backoff, Claimed};

use super::Flags;

/// How often leases are renewed, as a fraction of the lease.
pub(super) const RENEW_EVERY: u32 = 3;

/// Target time each claim batch should keep a pool busy for; the claim window grows for
/// short tasks (to share commits) and shrinks to the pool size for long ones (to leave
/// tasks for other workers).
const BATCH_TARGET: Duration = Duration::from_millis(5);

/// The most tasks one pool holds at once, whatever their speed.
const MAX_WINDOW: usize = 1024;

/// One value per mode.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PerMode<T> {
    pub(super) thread: T,
    pub(super) process: T,
}

impl<T> PerMode<T> {
    pub(super) fn get(&self, mode: TaskMode) -> &T {
        match mode {
            TaskMode::Thread => &self.thread,
            TaskMode::Process => &self.process,
        }
    }

    fn get_mut(&mut self, mode: TaskMode) -> &mut T {
        match mode {
            TaskMode::Thread => &mut self.thread,
            TaskMode::Process => &mut self.process,
        }
    }
}

/// Both modes, in the order the claims run.
pub(super) const MODES: [TaskMode; 2] = [TaskMode::Thread, TaskMode::Process];

/// A claim this worker holds: which task, which attempt, and the policy its outcome is
/// written under.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    /// The task's row.
    pub(super) seq: i64,
    pub(super) id: Uuid,
    pub(super) task: String,
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
}

impl Claim {
    pub(super) fn of(claimed: &Claimed) -> Claim {
        Claim {
            seq: claimed.seq,
            id: claimed.id,
            task: claimed.task.clone(),
            attempt: claimed.attempt,
            max_attempts: claimed.max_attempts,
            backoff: claimed.backoff,
        }
    }
}

/// A claim handed to a pool and not yet ended.
#[derive(Debug)]
pub(super) struct Inflight {
    pub(super) claim: Claim,
    pub(super) mode: TaskMode,
    pub(super) timeout: Option<Duration>,
    /// When a thread task with a timeout began running (its pool thread says so).
    pub(super) started_at: Option<Instant>,
    pub(super) flags: Arc<Flags>,
}

impl Inflight {
    /// When a started thread task times out. (A process task's slot enforces its own.)
    fn thread_deadline(&self) -> Option<Instant> {
        match (self.mode, self.timeout, self.started_at) {
            (TaskMode::Thread, Some(timeout), Some(started)) => Some(started + timeout),
            _ => None,
        }
    }

    /// True once a thread or a child slot began it.
    pub(super) fn started(&self) -> bool {
        self.flags.started.load(Ordering::SeqCst)
    }

    /// Sets its cancel flag: a task that runs sees it; a claim still waiting for its slot
    /// never runs.
    pub(super) fn cancel(&self) {
        self.flags.cancelled.store(true, Ordering::SeqCst);
    }

    /// True once its cancel flag is set.
    pub(super) fn cancelled(&self) -> bool {
        self.flags.cancelled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Inflight {
    /// Attempt 1 of 3 of row `seq`, claimed and waiting for a slot.
    pub(super) fn waiting(seq: i64, mode: TaskMode) -> Inflight {
        Inflight {
            claim: Claim {
                seq,
                id: Uuid::now_v7(),
                task: "t".into(),
                attempt: 1,
                max_attempts: 3,
                backoff: Backoff::DEFAULT,
            },
            mode,
            timeout: None,
            started_at: None,
            flags: Arc::default(),
        }
    }
}

/// Per mode: its pool's size, whether a claim may find more, and how long attempts take
/// (a moving average, for the claim window).
#[derive(Debug)]
pub(super) struct Lane {
    /// Pool slots for this mode; 0 when the library declares no task of the mode, and
    /// then the lane never claims (nor keeps the coordinator awake wanting to).
    slots: usize,
    /// The last claim filled its window, or the database changed since: a claim may find
    /// more.
    want: bool,
    mean: Duration,
}

impl Lane {
    pub(super) fn new(slots: usize) -> Lane {
        Lane {
            slots,
            want: slots > 0,
            mean: Duration::from_millis(1),
        }
    }

    /// The most claims the pool holds at once: its slots, plus as many as it runs in
    /// [`BATCH_TARGET`] at the current mean.
    fn window(&self) -> usize {
        let slots = self.slots;
        let per_slot = BATCH_TARGET.as_secs_f64() / self.mean.as_secs_f64().max(1e-7);
        let extra = (slots as f64 * per_slot) as usize;
        (slots + extra).clamp(slots, MAX_WINDOW.max(slots))
    }

    fn observe(&mut self, elapsed: Duration) {
        self.mean = self.mean.mul_f64(0.9) + elapsed.mul_f64(0.1);
    }

    /// How many to claim with `active` claims held.
    fn room(&self, active: usize) -> usize {
        if !self.want || self.slots == 0 {
            return 0;
        }
        self.window().saturating_sub(active)
    }
}

/// The producer's state: the lanes, the lease renewal's timer, and flow control.
#[derive(Debug)]
pub(super) struct Producer {
    lanes: PerMode<Lane>,
    renew_every: Duration,
    next_renewal: Instant,
    /// Some task of the worker has a limit in force (read at start and with each
    /// heartbeat): claims go through `Tx::claim_limited`. Otherwise the claim is the plain
    /// one, and limits cost nothing.
    limited: bool,
    /// Per mode: a concurrency limit held tasks back at the last claim. An attempt's end
    /// may free a slot, this worker's own too, which no change notification reports.
    held: PerMode<bool>,
    /// When a rate limit next allows a start: the worker sleeps until then, not polling.
    next_slot: Option<Instant>,
}

impl Producer {
    /// `slots` per mode (0 for a mode the library does not declare).
    pub(super) fn new(slots: PerMode<usize>, lease: Duration, now: Instant) -> Producer {
        let renew_every = lease / RENEW_EVERY;
        Producer {
            lanes: PerMode {
                thread: Lane::new(slots.thread),
                process: Lane::new(slots.process),
            },
            renew_every,
            next_renewal: now + renew_every,
            limited: false,
            held: PerMode::default(),
            next_slot: None,
        }
    }

    /// Whether some task of the worker has a limit in force.
    pub(super) fn limited(&self) -> bool {
        self.limited
    }

    /// Some task of the worker has a limit in force, or none has.
    pub(super) fn set_limited(&mut self, limited: bool) {
        self.limited = limited;
    }

    /// A limited claim of `mode` said whether a concurrency limit held tasks back, and
    /// when a rate next allows a start.
    pub(super) fn limits_held(&mut self, mode: TaskMode, held: bool, next_slot: Option<Instant>) {
        *self.held.get_mut(mode) = held;
        if let Some(at) = next_slot {
            self.next_slot = Some(self.next_slot.map_or(at, |n| n.min(at)));
        }
    }

    /// An attempt of `mode` ended: under a concurrency limit that held tasks back, a
    /// claim may find a free slot.
    pub(super) fn attempt_ended(&mut self, mode: TaskMode) {
        if *self.held.get(mode) {
            let lane = self.lanes.get_mut(mode);
            lane.want = lane.slots > 0;
        }
    }

    /// When a rate limit next allows a start, if one held tasks back.
    pub(super) fn next_slot(&self) -> Option<Instant> {
        self.next_slot
    }

    /// At `now`, past the rate's next slot: claims may find more.
    pub(super) fn slot_due(&mut self, now: Instant) {
        if self.next_slot.is_some_and(|at| now >= at) {
            self.next_slot = None;
            self.wake();
        }
    }

    /// How many tasks of `mode` to claim now, holding `running`'s claims; none unless
    /// `may_claim` (the worker is registered, not stopping, and its writes work).
    pub(super) fn room(&self, mode: TaskMode, running: &Running, may_claim: bool) -> usize {
        if !may_claim {
            return 0;
        }
        self.lanes.get(mode).room(running.active(mode))
    }

    /// The database changed: a claim may find more.
    pub(super) fn wake(&mut self) {
        for mode in MODES {
            let lane = self.lanes.get_mut(mode);
            lane.want = lane.slots > 0;
        }
    }

    /// Claims nothing more (the worker is stopping).
    pub(super) fn pause(&mut self) {
        for mode in MODES {
            self.lanes.get_mut(mode).want = false;
        }
    }

    /// An attempt of `mode` ran for `elapsed`.
    pub(super) fn observe(&mut self, mode: TaskMode, elapsed: Duration) {
        self.lanes.get_mut(mode).observe(elapsed);
    }

    /// A claim of up to `limit` found `got`: a full window means more may wait.
    pub(super) fn claimed(&mut self, mode: TaskMode, limit: usize, got: usize) {
        if limit > 0 {
            self.lanes.get_mut(mode).want = got == limit;
        }
    }

    /// True if the leases are due for renewal at `now`.
    pub(super) fn renewal_due(&self, now: Instant) -> bool {
        now >= self.next_renewal
    }

    /// The next renewal's time.
    pub(super) fn next_renewal(&self) -> Instant {
        self.next_renewal
    }

    /// The leases were renewed at `now`.
    pub(super) fn renewed(&mut self, now: Instant) {
        self.next_renewal = now + self.renew_every;
    }
}

/// The claims this worker holds, by row, until their outcome arrives.
#[derive(Debug, Default)]
pub(super) struct Running {
    inflight: HashMap<i64, Inflight>,
    by_id: HashMap<Uuid, i64>,
    /// Thread attempts recorded as timed out that still hold a pool thread, by
    /// (seq, attempt): their late answers are dropped.
    zombies: HashSet<(i64, u32)>,
    /// Someone may have asked to cancel one of these.
    check_cancels: bool,
}

impl Running {
    pub(super) fn insert(&mut self, task: Inflight) {
        self.by_id.insert(task.claim.id, task.claim.seq);
        self.inflight.insert(task.claim.seq, task);
    }

    pub(super) fn len(&self) -> usize {
        self.inflight.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Pool slots of `mode` in use, counting timed-out threads that still run.
    pub(super) fn active(&self, mode: TaskMode) -> usize {
        let zombies = match mode {
            TaskMode::Thread => self.zombies.len(),
            TaskMode::Process => 0,
        };
        self.inflight.values().filter(|t| t.mode == mode).count() + zombies
    }

    /// The attempts this worker holds, (row, attempt), in row order.
    pub(super) fn held(&self) -> Vec<(i64, u32)> {
        let mut held: Vec<(i64, u32)> = self
            .inflight
            .values()
            .map(|task| (task.claim.seq, task.claim.attempt))
            .collect();
        held.sort_unstable();
        held
    }

    /// The claim of task `id`, if this worker holds it.
    pub(super) fn get_by_id(&self, id: Uuid) -> Option<&Inflight> {
        self.by_id.get(&id).and_then(|seq| self.inflight.get(seq))
    }

    pub(super) fn get_mut(&mut self, seq: i64) -> Option<&mut Inflight> {
        self.inflight.get_mut(&seq)
    }

    /// Takes the claim whose attempt `attempt` of row `seq` answered; `None` for a
    /// timed-out attempt's late answer (already recorded, maybe retried since) or a row
    /// this worker no longer holds.
    pub(super) fn answered(&mut self, seq: i64, attempt: u32) -> Option<Inflight> {
        if self.zombies.remove(&(seq, attempt)) {
            return None;
        }
        let task = self.inflight.remove(&seq)?;
        self.by_id.remove(&task.claim.id);
        Some(task)
    }

    /// The earliest time a started thread task times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.inflight
            .values()
            .filter_map(Inflight::thread_deadline)
            .min()
    }

    /// Thread tasks past their timeout at `now`: their cancel flag is set, and their
    /// threads count as busy until they answer. Returns them, to be recorded as timed out.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Inflight> {
        let expired: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, task)| task.thread_deadline().is_some_and(|at| now >= at))
            .map(|(&seq, _)| seq)
            .collect();
        let mut tasks = Vec::with_capacity(expired.len());
        for seq in expired {
            let Some(task) = self.inflight.remove(&seq) else {
                continue;
            };
            self.by_id.remove(&task.claim.id);
            task.cancel();
            self.zombies.insert((seq, task.claim.attempt));
            tasks.push(task);
        }
        tasks
    }

    /// Asks whether someone cancelled one of these at the next turn.
    pub(super) fn check_cancels(&mut self) {
        self.check_cancels = true;
    }

    /// True if a turn should read the cancel requests.
    pub(super) fn cancels_due(&self) -> bool {
        self.check_cancels && !self.inflight.is_empty()
    }

    /// The rows someone asked to cancel: each one's flag is set, those still waiting for
    /// a slot first, so that a slot freed by a cancelled running task never begins a
    /// cancelled claim (which then never runs; see [`Flags::begin`]).
    pub(super) fn cancel(&mut self, requests: &[i64]) {
        self.check_cancels = false;
        let requested: Vec<&Inflight> = requests
            .iter()
            .filter_map(|seq| self.inflight.get(seq))
            .collect();
        for task in requested.iter().filter(|t| !t.started()) {
            task.cancel();
        }
        for task in requested {
            task.cancel();
        }
    }

    /// Sets every claim's cancel flag (the worker stops at once).
    pub(super) fn cancel_all(&self) {
        for task in self.inflight.values() {
            task.cancel();
        }
    }

    /// Takes every claim (the worker is stopping).
    pub(super) fn drain(&mut self) -> Vec<Inflight> {
        self.by_id.clear();
        self.inflight.drain().map(|(_, task)| task).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn lane(slots: usize, mean: Duration) -> Lane {
        Lane {
            slots,
            want: true,
            mean,
        }
    }

    fn inflight(seq: i64, mode: TaskMode) -> Inflight {
        Inflight::waiting(seq, mode)
    }

    #[test]
    fn the_window_holds_five_milliseconds_of_work_and_at_least_the_slots() {
        // (slots, mean attempt) -> window
        let table = [
            (4, MS, 4 + 20),
            (4, 5 * MS, 4 + 4),
            (4, Duration::from_secs(1), 4),
            (1, Duration::from_micros(100), 1 + 50),
            (8, Duration::from_nanos(1), MAX_WINDOW),
            (2000, Duration::from_nanos(1), 2000),
            (0, MS, 0),
        ];
        for (slots, mean, window) in table {
            assert_eq!(
                lane(slots, mean).window(),
                window,
                "{slots} slots, {mean:?}"
            );
        }
    }

    #[test]
    fn the_mean_follows_attempts_slowly() {
        let mut lane = lane(1, MS);
        lane.observe(11 * MS);
        assert!(
            lane.mean.abs_diff(2 * MS) < Duration::from_micros(1),
            "{:?}",
            lane.mean
        );
        for _ in 0..100 {
            lane.observe(Duration::from_secs(1));
        }
        assert_eq!(lane.window(), 1, "long tasks: the pool size");
    }

    #[test]
    fn room_is_the_window_less_what_is_held_and_none_unless_a_claim_may_find_more() {
        let now = Instant::now();
        let lease = Duration::from_secs(30);
        let mut running = Running::default();
        for seq in 0..3 {
            running.insert(inflight(seq, TaskMode::Thread));
        }
        running.insert(inflight(3, TaskMode::Process));
        let mut producer = Producer::new(
            PerMode {
                thread: 4,
                process: 0,
            },
            lease,
            now,
        );
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 24 - 3);
        assert_eq!(
            producer.room(TaskMode::Thread, &running, false),
            0,
            "stopping, failing or unregistered"
        );
        assert_eq!(
            producer.room(TaskMode::Process, &running, true),
            0,
            "a lane without slots never claims"
        );
        // A claim that came back short: nothing more until the database changes.
        producer.claimed(TaskMode::Thread, 21, 5);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 0);
        producer.wake();
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 21);
        assert_eq!(producer.room(TaskMode::Process, &running, true), 0);
        // A full window: more may wait.
        producer.claimed(TaskMode::Thread, 21, 21);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 21);
        // No claim made: the lane's wish stands.
        producer.claimed(TaskMode::Thread, 0, 0);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 21);
        producer.pause();
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 0);
    }

    #[test]
    fn limits_wake_a_lane_when_an_attempt_ends_or_a_rate_slot_opens() {
        let now = Instant::now();
        let running = Running::default();
        let mut producer = Producer::new(
            PerMode {
                thread: 4,
                process: 2,
            },
            Duration::from_secs(30),
            now,
        );
        assert!(!producer.limited(), "no limits until the worker reads some");
        // A claim that came back short because a concurrency limit held tasks back.
        producer.claimed(TaskMode::Thread, 24, 2);
        producer.limits_held(TaskMode::Thread, true, None);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 0);
        producer.attempt_ended(TaskMode::Process);
        assert_eq!(
            producer.room(TaskMode::Thread, &running, true),
            0,
            "another lane's end frees nothing here"
        );
        producer.attempt_ended(TaskMode::Thread);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 24);
        // Short for a rate: nothing until the next slot, however many attempts end.
        producer.claimed(TaskMode::Thread, 24, 0);
        let slot = now + Duration::from_millis(300);
        producer.limits_held(TaskMode::Thread, false, Some(slot));
        producer.attempt_ended(TaskMode::Thread);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 0);
        assert_eq!(
            producer.next_slot(),
            Some(slot),
            "the coordinator sleeps until then"
        );
        producer.slot_due(slot - Duration::from_millis(1));
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 0);
        producer.slot_due(slot);
        assert_eq!(producer.room(TaskMode::Thread, &running, true), 24);
        assert_eq!(producer.next_slot(), None);
    }

    #[test]
    fn leases_are_renewed_every_third_of_a_lease() {
        let t0 = Instant::now();
        let mut producer = Producer::new(PerMode::default(), Duration::from_secs(30), t0);
        assert!(!producer.renewal_due(t0));
        assert_eq!(producer.next_renewal(), t0 + Duration::from_secs(10));
        assert!(producer.renewal_due(t0 + Duration::from_secs(10)));
        producer.renewed(t0 + Duration::from_secs(11));
        assert_eq!(producer.next_renewal(), t0 + Duration::from_secs(21));
    }

    #[test]
    fn timed_out_threads_stay_busy_until_they_answer() {
        let t0 = Instant::now();
        let mut running = Running::default();
        let mut slow = inflight(1, TaskMode::Thread);
        slow.timeout = Some(100 * MS);
        slow.started_at = Some(t0);
        let flags = Arc::clone(&slow.flags);
        running.insert(slow);
        running.insert(inflight(2, TaskMode::Thread));
        assert_eq!(running.next_deadline(), Some(t0 + 100 * MS));
        assert!(running.expire(t0 + 99 * MS).is_empty());
        let expired = running.expire(t0 + 100 * MS);
        assert_eq!(expired.len(), 1);
        assert!(flags.cancelled.load(Ordering::SeqCst), "told to stop");
        assert_eq!(running.len(), 1);
        assert_eq!(
            running.active(TaskMode::Thread),
            2,
            "its thread is still busy"
        );
        assert!(
            running.answered(1, 1).is_none(),
            "its late answer is dropped"
        );
        assert_eq!(running.active(TaskMode::Thread), 1);
        assert!(running.answered(2, 1).is_some());
        assert!(running.answered(2, 1).is_none(), "answered once");
    }

    #[test]
    fn cancel_requests_set_the_flags_of_held_claims_only() {
        let mut running = Running::default();
        let waiting = inflight(1, TaskMode::Thread);
        let started = inflight(2, TaskMode::Thread);
        started.flags.started.store(true, Ordering::SeqCst);
        let (waiting_flags, started_flags) =
            (Arc::clone(&waiting.flags), Arc::clone(&started.flags));
        running.insert(waiting);
        running.insert(started);
        assert!(!running.cancels_due());
        running.check_cancels();
        assert!(running.cancels_due());
        running.cancel(&[2, 1, 99]);
        assert!(!running.cancels_due());
        assert!(waiting_flags.cancelled.load(Ordering::SeqCst));
        assert!(started_flags.cancelled.load(Ordering::SeqCst));
    }
}
