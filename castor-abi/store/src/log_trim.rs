//! When a driver trims a task's log to its newest [`LOG_LINES_KEPT`] lines: finding the
//! oldest line to keep walks that many index entries, so a driver trims a log only when
//! it may hold more. A first attempt's log holds only the lines its connection appended
//! (only the worker running an attempt appends to it), so it is trimmed once past the
//! limit, every [`LOG_LINES_SLACK`] lines, and when the attempt finishes; a later
//! attempt's log also holds the earlier attempts' lines, so it is trimmed every
//! [`LOG_LINES_SLACK`] lines and when it finishes. A task that logs a few lines once
//! costs no trim at all (a trim at every finish cost 26-40% of the log-drain rate).

use std::collections::HashMap;

use crate::{LOG_LINES_KEPT, LOG_LINES_SLACK};

/// Past this many tasks counted, every one that may be over the limit is trimmed and the
/// counts start over (a task finished by another worker is never removed otherwise).
const COUNTED: usize = 10_000;

/// The lines a connection appended to each task's log, for its latest attempt.
#[derive(Debug, Default)]
pub struct LogTrim {
    counts: HashMap<i64, LogCount>,
}

#[derive(Debug, Default, Clone, Copy)]
struct LogCount {
    attempt: u32,
    lines: u32,
}

impl LogCount {
    /// Whether the task's log may hold more than [`LOG_LINES_KEPT`] lines.
    fn may_be_over_limit(self) -> bool {
        self.lines > 0 && (self.attempt > 1 || i64::from(self.lines) > LOG_LINES_KEPT)
    }
}

impl LogTrim {
    /// Counts a line appended to task `seq`'s log by `attempt`; returns the tasks whose
    /// logs to trim now: this one every [`LOG_LINES_SLACK`] lines once it may be over
    /// the limit, and every task that may be over it when the counts are full.
    pub fn appended(&mut self, seq: i64, attempt: u32) -> Vec<i64> {
        let count = self.counts.entry(seq).or_default();
        if count.attempt != attempt {
            *count = LogCount { attempt, lines: 0 };
        }
        count.lines += 1;
        let mut trim = Vec::new();
        if count.may_be_over_limit() && i64::from(count.lines) % LOG_LINES_SLACK == 0 {
            trim.push(seq);
        }
        if self.counts.len() > COUNTED {
            trim.extend(
                std::mem::take(&mut self.counts)
                    .into_iter()
                    .filter(|(task, count)| *task != seq && count.may_be_over_limit())
                    .map(|(task, _)| task),
            );
        }
        trim
    }

    /// Forgets task `seq`, whose attempt finished; returns whether to trim its log now.
    pub fn finished(&mut self, seq: i64) -> bool {
        self.counts
            .remove(&seq)
            .is_some_and(LogCount::may_be_over_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_attempt_under_the_limit_is_never_trimmed() {
        let mut trim = LogTrim::default();
        for _ in 0..LOG_LINES_KEPT {
            assert!(trim.appended(7, 1).is_empty());
        }
        assert!(!trim.finished(7));
    }

    #[test]
    fn a_first_attempt_past_the_limit_is_trimmed_in_steps_and_at_its_end() {
        let mut trim = LogTrim::default();
        let trims = (0..LOG_LINES_KEPT * 2)
            .filter(|_| !trim.appended(7, 1).is_empty())
            .count();
        // Once at each multiple of the slack past the limit.
        let expected = LOG_LINES_KEPT * 2 / LOG_LINES_SLACK - LOG_LINES_KEPT / LOG_LINES_SLACK;
        assert_eq!(i64::try_from(trims).expect("small"), expected);
        assert!(trim.finished(7));
        assert!(!trim.finished(7), "forgotten once finished");
    }

    #[test]
    fn a_retry_is_trimmed_however_few_lines_it_writes() {
        let mut trim = LogTrim::default();
        assert!(trim.appended(7, 2).is_empty());
        assert!(trim.finished(7));
    }
}
