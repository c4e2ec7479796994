//! Writes that fail: a full disk, an I/O error, a database locked past every retry. While
//! they fail, the coordinator sleeps between tries (1 s, doubling up to 30 s, and at once
//! when the database's file system gains free space), claims nothing new, and keeps the
//! outcomes of the tasks still running. Once a try succeeds it writes what it kept in
//! pieces small enough to fit, then claims again. [`Failure`] is that state: the
//! coordinator asks it when to try and how much to write, and tells it how each try went.

use std::time::{Duration, Instant};

/// The wait after the first failed try; it doubles with every further one.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two tries.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);

/// While writes fail for lack of space, how often the free space is looked at: a try
/// follows at once when it grew (so freeing space is noticed within a second, whatever the
/// backoff has reached).
pub(super) const SPACE_CHECK: Duration = Duration::from_secs(1);

/// Free space must grow by this much to count as freed (a little comes and goes as other
/// processes write).
const SPACE_FREED: u64 = 256 * 1024;

/// The state of a write failure, from the first failed try until everything kept is
/// written.
#[derive(Debug)]
pub(super) struct Failure {
    /// When the first try failed.
    pub(super) since: Instant,
    /// Failed tries so far.
    pub(super) tries: u32,
    /// The last wait between tries: [`FIRST_RETRY`], doubling up to [`MAX_RETRY`].
    backoff: Duration,
    /// When to try next; `None` once a try succeeded and what was kept is being written.
    retry_at: Option<Instant>,
    /// The most outcomes (and log lines) one transaction writes: unlimited at first (at
    /// once, everything kept may fit where pieces would not: each piece is checkpointed
    /// into the database, so for a moment its pages need room twice); half of a try that
    /// was refused for lack of space; doubled after a try that succeeded.
    chunk: usize,
    /// Free bytes on the database's file system after the last try refused for lack of
    /// space (`None` for other failures, or when the file system cannot be asked).
    free: Option<u64>,
    /// When to look at the free space again.
    next_space_check: Instant,
}

impl Failure {
    /// The first failed try. `free`: the free bytes after a write refused for lack of
    /// space.
    pub(super) fn new(now: Instant, free: Option<u64>) -> Failure {
        Failure {
            since: now,
            tries: 1,
            backoff: FIRST_RETRY,
            retry_at: Some(now + FIRST_RETRY),
            // The next try holds everything kept, but no claims.
            chunk: usize::MAX,
            free,
            next_space_check: now + SPACE_CHECK,
        }
    }

    /// Another try failed; it held `tried` outcomes (or log lines, whichever were more).
    /// One refused for lack of space while it held several is tried again at once with
    /// half as many; otherwise the next try waits, twice as long as the last wait (up to
    /// [`MAX_RETRY`]).
    pub(super) fn failed_again(&mut self, now: Instant, tried: usize, free: Option<u64>) {
        self.tries += 1;
        self.free = free;
        self.next_space_check = now + SPACE_CHECK;
        if free.is_some() && tried > 1 {
            self.chunk = tried / 2;
            self.retry_at = Some(now);
            return;
        }
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
        self.retry_at = Some(now + self.backoff);
    }

    /// Something says the cause may be gone (the database's server answers again): the
    /// next try comes at once, if one is waited for. Its backoff stands: should it fail
    /// too, the wait after it is as long as it would have been.
    pub(super) fn try_now(&mut self, now: Instant) {
        if let Some(at) = &mut self.retry_at {
            *at = (*at).min(now);
        }
    }

    /// A try succeeded: write the rest without waiting, in larger pieces.
    pub(super) fn succeeded(&mut self) {
        self.retry_at = None;
        self.free = None;
        self.chunk = self.chunk.saturating_mul(2);
    }

    /// True while the coordinator must wait for the next try.
    pub(super) fn waiting(&self) -> bool {
        self.retry_at.is_some()
    }

    /// The most outcomes (and log lines) the next transaction may write.
    pub(super) fn chunk(&self) -> usize {
        self.chunk
    }

    /// When the coordinator must wake up: the next try, or the next look at the free space.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        let at = self.retry_at?;
        Some(match self.free {
            Some(_) => at.min(self.next_space_check),
            None => at,
        })
    }

    /// True if a try is due now: its time has come, or space was freed since the last
    /// refusal (`free_now` is asked at most every [`SPACE_CHECK`]). After space was freed,
    /// the try holds everything kept again: pieces were sized for a full disk.
    pub(super) fn due(&mut self, now: Instant, free_now: impl FnOnce() -> Option<u64>) -> bool {
        let Some(at) = self.retry_at else {
            return true;
        };
        if now >= at {
            return true;
        }
        let Some(free) = self.free else {
            return false;
        };
        if now < self.next_space_check {
            return false;
        }
        self.next_space_check = now + SPACE_CHECK;
        let freed = free_now().is_some_and(|now_free| now_free >= free.saturating_add(SPACE_FREED));
        if freed {
            self.chunk = usize::MAX;
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn tries_back_off_from_one_second_to_thirty() {
        let t0 = Instant::now();
        let mut failure = Failure::new(t0, None);
        let mut waits = vec![failure.wake_at().expect("waiting") - t0];
        let mut now = t0;
        for _ in 0..7 {
            now = failure.wake_at().expect("waiting");
            assert!(failure.due(now, || None));
            failure.failed_again(now, 5, None);
            waits.push(failure.wake_at().expect("waiting") - now);
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 30, 30, 30].map(|s| s * S).to_vec(),
            "after {:?}",
            now - t0
        );
        assert_eq!(failure.tries, 8);
        assert_eq!(
            failure.chunk(),
            usize::MAX,
            "only a lack of space splits the writes"
        );
    }

    #[test]
    fn nothing_is_due_before_the_retry_time() {
        let t0 = Instant::now();
        let mut failure = Failure::new(t0, None);
        assert!(failure.waiting());
        assert!(!failure.due(t0 + S / 2, || Some(u64::MAX)));
        assert!(failure.due(t0 + S, || None));
    }

    #[test]
    fn a_lack_of_space_halves_the_pieces_and_tries_again_at_once() {
        let t0 = Instant::now();
        let mut failure = Failure::new(t0, Some(0));
        assert_eq!(
            failure.chunk(),
            usize::MAX,
            "first, everything kept at once"
        );
        assert_eq!(failure.wake_at(), Some(t0 + FIRST_RETRY));
        failure.failed_again(t0, 64, Some(0));
        assert_eq!(failure.chunk(), 32);
        assert_eq!(
            failure.wake_at(),
            Some(t0),
            "a smaller piece is tried at once"
        );
        let mut tried = 32;
        while tried > 1 {
            failure.failed_again(t0, tried, Some(0));
            tried = failure.chunk();
        }
        assert_eq!(failure.chunk(), 1);
        failure.failed_again(t0, 1, Some(0));
        assert_eq!(failure.chunk(), 1);
        assert_eq!(
            failure.retry_at,
            Some(t0 + 2 * S),
            "one outcome: wait, longer"
        );
        failure.succeeded();
        assert!(!failure.waiting());
        assert_eq!(failure.chunk(), 2, "pieces grow back after a success");
        assert!(failure.due(t0, || None), "the rest is written at once");
    }

    #[test]
    fn freed_space_brings_the_next_try_forward() {
        let t0 = Instant::now();
        let mut failure = Failure::new(t0, Some(1000));
        for _ in 0..5 {
            failure.failed_again(t0, 1, Some(1000));
        }
        let late = failure.wake_at().expect("waiting");
        assert_eq!(late, t0 + SPACE_CHECK, "wakes to look at the free space");
        let mut asked = 0;
        assert!(!failure.due(t0 + S / 2, || {
            asked += 1;
            Some(u64::MAX)
        }));
        assert_eq!(asked, 0, "the free space is looked at once a second");
        assert!(!failure.due(t0 + S, || Some(1000 + SPACE_FREED - 1)));
        assert!(!failure.due(t0 + S + S / 2, || Some(u64::MAX)));
        failure.chunk = 4;
        assert!(failure.due(t0 + 2 * S, || Some(1000 + SPACE_FREED)));
        assert_eq!(
            failure.chunk(),
            usize::MAX,
            "after freeing, everything at once"
        );
    }
}
