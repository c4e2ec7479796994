//! The clock check: leases, due times and heartbeats are written with this host's clock,
//! so on a database shared by hosts (a PostgreSQL server) a host whose clock is off
//! shortens or stretches every lease it writes, and makes others rescue its tasks or
//! miss its death, by as much. The worker compares its clock with the server's
//! ([`castor_store::Driver::clock_offset`]) when it starts and, after a heartbeat, every
//! [`CHECK_EVERY`] (at every heartbeat while it is off, to see it come back); it says
//! once that the clocks differ by more than [`SKEW_LIMIT`], and once that they are back
//! within half of it. A database with no clock of its own (SQLite) is never asked again.
//!
//! [`ClockWatch`] is the decision alone, pure and tested here; the coordinator reads the
//! clock and reports.

use std::time::{Duration, Instant};

use castor_store::{ClockOffset, duration_us};

/// Clocks further apart than this are said to be out of line: leases are tens of seconds,
/// NTP keeps hosts within milliseconds.
pub(super) const SKEW_LIMIT: Duration = Duration::from_secs(1);

/// Clocks said to be out of line are back in line once this close (half the limit, so that
/// a skew hovering at the limit is not said again at every check).
pub(super) const BACK_IN_LINE: Duration = Duration::from_millis(500);

/// How often a worker whose clock is in line checks it again, at a heartbeat.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5 * 60);

/// What a reading changed, to be said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClockNews {
    /// The clocks differ by more than [`SKEW_LIMIT`], and were not said to before.
    Skewed,
    /// They were said to differ, and are within [`BACK_IN_LINE`] again.
    InLine,
}

/// Whether the clocks were last said to be out of line, and when to look next.
#[derive(Debug)]
pub(super) struct ClockWatch {
    /// The database has a clock of its own to compare with (until it says it has none).
    comparable: bool,
    /// Said to be out of line, and not said back in line since.
    skewed: bool,
    /// The next check, at a heartbeat from then on (the first: at once).
    next_check: Instant,
}

impl ClockWatch {
    /// A watch whose first check is due at once (the worker's start).
    pub(super) fn new(now: Instant) -> ClockWatch {
        ClockWatch {
            comparable: true,
            skewed: false,
            next_check: now,
        }
    }

    /// True if the clock is to be read now: at least [`CHECK_EVERY`] since the last
    /// reading, or at every heartbeat while the clocks are out of line.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.comparable && (self.skewed || now >= self.next_check)
    }

    /// The database has no clock of its own: never check again.
    pub(super) fn not_comparable(&mut self) {
        self.comparable = false;
    }

    /// A reading that failed (the server did not answer): tried again at the next
    /// heartbeat after [`CHECK_EVERY`]; nothing is said.
    pub(super) fn unread(&mut self, now: Instant) {
        self.next_check = now + CHECK_EVERY;
    }

    /// Takes a reading; returns what is to be said, if anything. Only a difference the
    /// round trip cannot explain counts as out of line, and only one it cannot stretch
    /// past [`BACK_IN_LINE`] as back: a reading too coarse to tell changes nothing.
    pub(super) fn observe(&mut self, reading: &ClockOffset, now: Instant) -> Option<ClockNews> {
        self.next_check = now + CHECK_EVERY;
        if !self.skewed && reading.at_least_us() > duration_us(SKEW_LIMIT) {
            self.skewed = true;
            return Some(ClockNews::Skewed);
        }
        if self.skewed && reading.at_most_us() <= duration_us(BACK_IN_LINE) {
            self.skewed = false;
            return Some(ClockNews::InLine);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    /// A reading of `ahead_ms` with a round trip of `round_trip_ms`.
    fn reading(ahead_ms: i64, round_trip_ms: i64) -> ClockOffset {
        ClockOffset {
            ahead_us: ahead_ms * MS,
            round_trip_us: round_trip_ms * MS,
            server: "the test server",
        }
    }

    #[test]
    fn a_skew_past_the_limit_is_said_once_and_its_end_once() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(t0);
        assert!(watch.due(t0), "checked at the start");
        assert_eq!(watch.observe(&reading(20, 2), t0), None, "in line: nothing");
        assert_eq!(
            watch.observe(&reading(-900, 2), t0),
            None,
            "under the limit"
        );
        assert_eq!(
            watch.observe(&reading(3_200, 2), t0),
            Some(ClockNews::Skewed)
        );
        // Said once, ahead or behind, however far.
        assert_eq!(watch.observe(&reading(3_300, 2), t0), None);
        assert_eq!(watch.observe(&reading(-5_000, 2), t0), None);
        // Back under the limit but not within half of it: not back yet.
        assert_eq!(watch.observe(&reading(800, 2), t0), None);
        assert_eq!(watch.observe(&reading(10, 2), t0), Some(ClockNews::InLine));
        assert_eq!(watch.observe(&reading(10, 2), t0), None, "said once");
        // And out again: said again.
        assert_eq!(
            watch.observe(&reading(-1_500, 2), t0),
            Some(ClockNews::Skewed)
        );
    }

    #[test]
    fn a_round_trip_too_long_to_tell_changes_nothing() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(t0);
        // 1.2 s ahead, give or take 0.3 s: perhaps under the limit.
        assert_eq!(watch.observe(&reading(1_200, 600), t0), None);
        assert_eq!(
            watch.observe(&reading(1_200, 100), t0),
            Some(ClockNews::Skewed)
        );
        // 0.3 s, give or take 0.5 s: perhaps still past half the limit.
        assert_eq!(watch.observe(&reading(300, 1_000), t0), None);
        assert_eq!(
            watch.observe(&reading(300, 100), t0),
            Some(ClockNews::InLine)
        );
    }

    #[test]
    fn checks_come_rarely_in_line_and_at_every_heartbeat_out_of_line() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(t0);
        watch.observe(&reading(0, 1), t0);
        assert!(!watch.due(t0 + Duration::from_secs(10)));
        assert!(!watch.due(t0 + CHECK_EVERY - Duration::from_millis(1)));
        assert!(watch.due(t0 + CHECK_EVERY));
        watch.observe(&reading(2_000, 1), t0);
        assert!(watch.due(t0), "out of line: every heartbeat looks");
        watch.observe(&reading(0, 1), t0);
        assert!(!watch.due(t0 + Duration::from_secs(10)));
        // A failed reading waits for the next period; no clock: never again.
        watch.unread(t0);
        assert!(!watch.due(t0 + Duration::from_secs(10)));
        watch.not_comparable();
        assert!(!watch.due(t0 + CHECK_EVERY * 10));
    }
}
