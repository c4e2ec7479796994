//! The rescuer: finds attempts whose worker is gone and hands them back to the retry
//! policy. Any worker rescues any task of the file, so a crashed worker's tasks run again
//! whether or not it comes back.
//!
//! A worker run is gone when its heartbeat is older than a lease, or, where this
//! worker sees its processes (the same host id: one kernel boot and pid namespace, not
//! merely the same hostname, which containers and cloned machines share), when its
//! process no longer exists (found at once instead of a lease later). Its
//! leases are ended; then every running attempt whose lease ran out is recorded as
//! abandoned and moves on like any failed attempt: `retryable` while attempts remain,
//! `discarded` after the last. Semantics are at-least-once: an abandoned attempt may have
//! done some or all of its work, and every attempt is in the task's `errors`.
//!
//! Never "reset everything running" at startup: other live workers share the file.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use castor_store::{AttemptOutcome, Finish, LiveWorker, StoreError, Tx, duration_us, next_state};

/// How many expired attempts one turn rescues (the rest wait for the next turn).
const BATCH: usize = 500;

/// What the rescuer did in one pass.
#[derive(Debug, Default)]
pub struct Rescue {
    /// Worker runs declared dead: (id, why).
    pub buried: Vec<(String, String)>,
    /// Attempts recorded as abandoned: (task id, task name, next state).
    pub rescued: Vec<(castor_abi::Uuid, String, castor_abi::TaskState)>,
}

/// When the rescuer's next pass is due: at once when the worker starts (a worker
/// restarted after a crash picks up its old tasks), then every third of a lease.
#[derive(Debug)]
pub(super) struct Rescuer {
    every: Duration,
    next: Instant,
}

impl Rescuer {
    /// The rescuer of a worker with this `lease`, started at `now`.
    pub(super) fn new(lease: Duration, now: Instant) -> Rescuer {
        Rescuer {
            every: lease / super::producer::RENEW_EVERY,
            next: now,
        }
    }

    /// True if a turn at `now` rescues (never while writes fail: it can wait). A turn
    /// that renews the leases (`renewing`) also rescues when the pass is due within half
    /// a period: the two then share a transaction, and stay in step (both come every third
    /// of a lease), so an idle worker's only write is one turn per period.
    pub(super) fn due(&self, now: Instant, renewing: bool, recovering: bool) -> bool {
        let ahead = if renewing {
            self.every / 2
        } else {
            Duration::ZERO
        };
        !recovering && now + ahead >= self.next
    }

    /// The next pass's time.
    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// A pass ran at `now`.
    pub(super) fn ran(&mut self, now: Instant) {
        self.next = now + self.every;
    }
}

/// One pass: bury dead workers, rescue expired attempts. `here`: this worker's hostname
/// and host id.
///
/// # Errors
/// A statement failed (the transaction is rolled back and retried by the caller).
pub fn rescue(
    tx: &mut dyn Tx,
    me: &str,
    here: (&str, &str),
    lease: Duration,
    now: i64,
    jitter: &dyn Fn(i64) -> f64,
) -> Result<Rescue, StoreError> {
    let mut pass = Rescue::default();
    let mut reasons: HashMap<String, String> = HashMap::new();
    for worker in tx.live_workers()? {
        if worker.id == me {
            continue;
        }
        if let Some(why) = why_dead(&worker, here, lease, now) {
            tx.bury_worker(&worker.id, now)?;
            reasons.insert(worker.id.clone(), why.clone());
            pass.buried.push((worker.id, why));
        }
    }
    for expired in tx.expired_leases(now, BATCH)? {
        let message = match expired.attempted_by.as_deref().and_then(|w| reasons.get(w)) {
            Some(why) => format!("abandoned: its worker {why}"),
            None => format!(
                "abandoned: its worker ({}) stopped renewing the lease",
                expired.attempted_by.as_deref().unwrap_or("unknown")
            ),
        };
        let outcome = AttemptOutcome::Abandoned { message };
        let transition = next_state(
            &outcome,
            expired.attempt,
            expired.max_attempts,
            expired.backoff,
            now,
            jitter(expired.seq),
        );
        let Some(error) = outcome.to_error(expired.attempt, now, expired.attempted_by.clone())
        else {
            continue;
        };
        let finish = Finish::Failed { transition, error };
        if tx.finish_if_running(expired.seq, expired.attempt, &finish, now)? {
            pass.rescued
                .push((expired.id, expired.task, transition.state));
        }
    }
    Ok(pass)
}

/// Why `worker` is dead, if it is, as seen from `here` (this worker's hostname and host
/// id). Its pid is looked up only if it ran where this worker sees its processes: the
/// same host id, or, for a row an older castor wrote without one, the same hostname.
fn why_dead(
    worker: &LiveWorker,
    (hostname, host_id): (&str, &str),
    lease: Duration,
    now: i64,
) -> Option<String> {
    let sees_its_processes = match &worker.host_id {
        Some(id) => id == host_id,
        None => worker.hostname == hostname,
    };
    if sees_its_processes && !process_exists(worker.pid) {
        return Some(format!(
            "{} (pid {} on {}) is gone",
            worker.id, worker.pid, worker.hostname
        ));
    }
    let silent = now - worker.heartbeat_at;
    (silent > duration_us(lease)).then(|| {
        format!(
            "{} (pid {} on {}) sent no heartbeat for {}",
            worker.id,
            worker.pid,
            worker.hostname,
            castor_store::format::format_duration(Duration::from_micros(
                u64::try_from(silent).unwrap_or(0)
            ))
        )
    })
}

/// True if a process with this pid exists on this machine. (A reused pid makes a dead
/// worker look alive; its lease still expires, so the rescue is only later, not lost.)
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker on the machine `host` whose host id is `host`'s own.
    fn worker(pid: u32, host: &str, heartbeat_at: i64) -> LiveWorker {
        LiveWorker {
            id: "w".into(),
            hostname: host.into(),
            host_id: Some(format!("{host}-id")),
            pid,
            heartbeat_at,
        }
    }

    const HERE: (&str, &str) = ("here", "here-id");

    #[test]
    fn a_pid_is_checked_only_under_the_same_host_id() {
        let lease = Duration::from_secs(30);
        let now = 1_000_000_000_000;
        let dead_pid = u32::MAX - 1;
        // The same hostname, another host id (another container): its pid means nothing
        // here; only its heartbeat counts.
        let twin = LiveWorker {
            host_id: Some("another-boot/pid:[1]".into()),
            ..worker(dead_pid, "here", now - 1_000_000)
        };
        assert_eq!(why_dead(&twin, HERE, lease, now), None);
        let silent_twin = LiveWorker {
            heartbeat_at: now - 31_000_000,
            ..twin.clone()
        };
        assert!(
            why_dead(&silent_twin, HERE, lease, now)
                .is_some_and(|w| w.contains("no heartbeat for 31.0s"))
        );
        // Another hostname but this host id (a renamed machine): the pid tells.
        let renamed = LiveWorker {
            host_id: Some("here-id".into()),
            ..worker(dead_pid, "renamed", now)
        };
        assert!(why_dead(&renamed, HERE, lease, now).is_some_and(|w| w.contains("is gone")));
        // A row without a host id (an older castor): the hostname decides, as before.
        let older = LiveWorker {
            host_id: None,
            ..worker(dead_pid, "here", now)
        };
        assert!(why_dead(&older, HERE, lease, now).is_some_and(|w| w.contains("is gone")));
        let older_elsewhere = LiveWorker {
            host_id: None,
            ..worker(dead_pid, "there", now)
        };
        assert_eq!(why_dead(&older_elsewhere, HERE, lease, now), None);
    }

    #[test]
    fn the_rescuer_runs_at_start_then_every_third_of_a_lease() {
        let t0 = Instant::now();
        let mut rescuer = Rescuer::new(Duration::from_secs(30), t0);
        assert!(rescuer.due(t0, false, false));
        assert!(!rescuer.due(t0, false, true), "not while writes fail");
        rescuer.ran(t0);
        assert_eq!(rescuer.next(), t0 + Duration::from_secs(10));
        assert!(!rescuer.due(t0 + Duration::from_secs(9), false, false));
        assert!(
            rescuer.due(t0 + Duration::from_secs(6), true, false),
            "a renewal within half a period takes the pass along"
        );
        assert!(!rescuer.due(t0 + Duration::from_secs(4), true, false));
    }

    #[test]
    fn dead_workers_are_found_by_pid_here_and_by_heartbeat_anywhere() {
        let lease = Duration::from_secs(30);
        let now = 1_000_000_000_000;
        let me = std::process::id();
        // Alive here, recent heartbeat.
        assert_eq!(why_dead(&worker(me, "here", now), HERE, lease, now), None);
        // A pid that cannot exist, on this machine: dead at once.
        let gone = why_dead(&worker(u32::MAX - 1, "here", now), HERE, lease, now);
        assert!(gone.is_some_and(|w| w.contains("is gone")));
        // Another machine: only the heartbeat tells.
        assert_eq!(
            why_dead(
                &worker(u32::MAX - 1, "there", now - 1_000_000),
                HERE,
                lease,
                now
            ),
            None
        );
        let silent = why_dead(&worker(me, "there", now - 31_000_000), HERE, lease, now);
        assert!(silent.is_some_and(|w| w.contains("no heartbeat for 31.0s")));
    }
}
