//! The completer: what running attempts produced, kept until a turn writes it. Each
//! outcome is written with `finish_if_running` under its next state ([`next_state`]);
//! claims that never started are given back; log lines and progress ride along. A turn
//! writes all of it, or after a failed write a piece ([`Completer::plan`]).

use std::collections::HashMap;

use castor_store::{
    AttemptEnd, AttemptError, AttemptOutcome, ErrorKind, Finish, LogLevel, NewLog, StoreError,
    TaskState, Transition, Tx, next_state,
};

use super::executor::Attempt;
use super::producer::Claim;

/// The error recorded for a claim cancelled while it waited for a slot.
pub(super) const CANCELLED_BEFORE_START: &str =
    "cancelled before it started (it was claimed and waiting for a free slot); it never ran";

/// An attempt's end, waiting to be written.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) claim: Claim,
    /// How it ended, its result, how long it ran.
    pub(super) attempt: Attempt,
    /// False for a claim cancelled before a slot began it: the task never ran.
    pub(super) ran: bool,
}

impl Ended {
    /// The error recorded for this attempt; `None` for success.
    pub(super) fn error(&self) -> Option<String> {
        match self.attempt.outcome {
            AttemptOutcome::Cancelled if !self.ran => Some(CANCELLED_BEFORE_START.to_owned()),
            ref outcome => outcome.message(),
        }
    }

    /// The next state under the task's policy; `None` for success (`completed`, with its
    /// result).
    fn transition(&self, now: i64, jitter: f64) -> Option<Transition> {
        let claim = &self.claim;
        match self.attempt.outcome {
            AttemptOutcome::Succeeded => None,
            ref outcome => Some(next_state(
                outcome,
                claim.attempt,
                claim.max_attempts,
                claim.backoff,
                now,
                jitter,
            )),
        }
    }

    /// What `finish_if_running` writes for it, by `worker` at `now`.
    fn finish<'a>(
        &'a self,
        transition: Option<Transition>,
        worker: &str,
        now: i64,
        result_fingerprint: Option<&'a str>,
    ) -> Finish<'a> {
        match transition {
            None => Finish::Completed {
                result: self.attempt.result.as_deref().unwrap_or_default(),
                result_fingerprint,
            },
            Some(transition) => Finish::Failed {
                transition,
                error: AttemptError {
                    attempt: self.claim.attempt,
                    at: now,
                    kind: self
                        .attempt
                        .outcome
                        .error_kind()
                        .unwrap_or(ErrorKind::Other),
                    error: self.error().unwrap_or_default(),
                    worker: Some(worker.to_owned()),
                },
            },
        }
    }
}

/// A log line a running task wrote, kept until a turn writes it (the owned form of
/// [`NewLog`]).
#[derive(Debug)]
pub(super) struct LogLine {
    pub(super) seq: i64,
    pub(super) attempt: u32,
    /// When (microseconds since the epoch).
    pub(super) at: i64,
    pub(super) level: LogLevel,
    pub(super) line: String,
}

impl LogLine {
    fn as_new(&self) -> NewLog<'_> {
        NewLog {
            seq: self.seq,
            attempt: self.attempt,
            at: self.at,
            level: self.level,
            line: &self.line,
        }
    }
}

/// A running attempt's latest progress, kept until a turn writes it.
#[derive(Debug)]
pub(super) struct ProgressUpdate {
    pub(super) attempt: u32,
    pub(super) done: u64,
    pub(super) total: u64,
    pub(super) message: String,
}

/// A claim to give back (`available` again): it never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Release {
    pub(super) seq: i64,
    pub(super) attempt: u32,
}

/// What the completer writes in one transaction.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Completion {
    /// The first pending outcomes, each with its next state (`None`: completed).
    pub(super) transitions: Vec<Option<Transition>>,
    /// How many of the first pending log lines.
    pub(super) logs: usize,
    /// How many releases (all of them).
    pub(super) releases: usize,
    /// How many progress updates (all of them).
    pub(super) progress: usize,
}

impl Completion {
    /// True if it writes nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.logs == 0 && self.releases == 0 && self.progress == 0
    }
}

/// An outcome as written.
#[derive(Debug)]
pub(super) struct Recorded {
    pub(super) ended: Ended,
    pub(super) transition: Option<Transition>,
    /// False if the row had moved on (the lease was lost): nothing was recorded.
    pub(super) applied: bool,
}

impl Recorded {
    /// The task's state now.
    pub(super) fn state(&self) -> TaskState {
        self.transition.map_or(TaskState::Completed, |t| t.state)
    }
}

/// What running attempts produced and no turn has written yet.
#[derive(Debug, Default)]
pub(super) struct Completer {
    outcomes: Vec<Ended>,
    releases: Vec<Release>,
    logs: Vec<LogLine>,
    /// The latest progress per row.
    progress: HashMap<i64, ProgressUpdate>,
}

impl Completer {
    pub(super) fn ended(&mut self, ended: Ended) {
        self.outcomes.push(ended);
    }

    pub(super) fn release(&mut self, seq: i64, attempt: u32) {
        self.releases.push(Release { seq, attempt });
    }

    pub(super) fn log(&mut self, line: LogLine) {
        self.logs.push(line);
    }

    /// Keeps row `seq`'s latest progress.
    pub(super) fn progress(&mut self, seq: i64, update: ProgressUpdate) {
        self.progress.insert(seq, update);
    }

    /// True while outcomes wait to be written.
    pub(super) fn has_outcomes(&self) -> bool {
        !self.outcomes.is_empty()
    }

    /// True if outcomes or releases wait: a turn now would make progress.
    pub(super) fn has_urgent(&self) -> bool {
        !self.outcomes.is_empty() || !self.releases.is_empty()
    }

    /// True while log lines wait.
    pub(super) fn has_logs(&self) -> bool {
        !self.logs.is_empty()
    }

    /// True if outcomes, releases or log lines wait (what a failed write kept).
    pub(super) fn has_kept(&self) -> bool {
        self.has_urgent() || self.has_logs()
    }

    /// Claims whose end is kept: outcomes and releases (their rows stay `running` if the
    /// worker stops before writing them).
    pub(super) fn claims_kept(&self) -> usize {
        self.outcomes.len() + self.releases.len()
    }

    /// How much a transaction holding everything kept holds: the larger of the outcomes
    /// and the log lines.
    pub(super) fn backlog(&self) -> usize {
        self.outcomes.len().max(self.logs.len())
    }

    /// What the next transaction writes at `now`: at most `piece` outcomes and `piece`
    /// log lines (after a failed write; `usize::MAX` otherwise), every release and
    /// progress update. `jitter` spreads retries by row.
    pub(super) fn plan(&self, piece: usize, now: i64, jitter: &dyn Fn(i64) -> f64) -> Completion {
        let outcomes = self.outcomes.len().min(piece);
        Completion {
            transitions: self.outcomes[..outcomes]
                .iter()
                .map(|ended| ended.transition(now, jitter(ended.claim.seq)))
                .collect(),
            logs: self.logs.len().min(piece),
            releases: self.releases.len(),
            progress: self.progress.len(),
        }
    }

    /// Writes `plan` as `worker` at `now`: logs and progress first (progress is only
    /// recorded while its attempt runs), then the outcomes and the releases. Returns,
    /// per outcome, whether it was recorded.
    ///
    /// # Errors
    /// A statement failed; the caller's transaction rolls back.
    pub(super) fn write(
        &self,
        tx: &mut dyn Tx,
        plan: &Completion,
        worker: &str,
        now: i64,
        tasks: &HashMap<String, super::TaskInfo>,
    ) -> Result<Vec<bool>, StoreError> {
        if plan.logs > 0 {
            let logs: Vec<NewLog<'_>> =
                self.logs[..plan.logs].iter().map(LogLine::as_new).collect();
            tx.append_logs(&logs)?;
        }
        for (&seq, p) in &self.progress {
            tx.set_progress(seq, p.attempt, p.done, p.total, &p.message)?;
        }
        let ends: Vec<AttemptEnd<'_>> = self
            .outcomes
            .iter()
            .zip(&plan.transitions)
            .map(|(ended, transition)| AttemptEnd {
                seq: ended.claim.seq,
                attempt: ended.claim.attempt,
                finish: ended.finish(
                    *transition,
                    worker,
                    now,
                    tasks
                        .get(&ended.claim.task)
                        .map(|info| info.result_fingerprint)
                        .filter(|fp| !fp.is_empty()),
                ),
            })
            .collect();
        let applied = if ends.is_empty() {
            Vec::new()
        } else {
            tx.finish_many(worker, &ends, now)?
        };
        for release in &self.releases {
            tx.release_if_running(release.seq, release.attempt)?;
        }
        Ok(applied)
    }

    /// `plan` was committed, with `applied` as [`Completer::write`] returned it: forgets
    /// what it wrote and returns the outcomes, to be reported.
    pub(super) fn written(&mut self, plan: Completion, applied: Vec<bool>) -> Vec<Recorded> {
        let n = plan.transitions.len();
        let recorded = self
            .outcomes
            .drain(..n)
            .zip(plan.transitions)
            .zip(applied)
            .map(|((ended, transition), applied)| Recorded {
                ended,
                transition,
                applied,
            })
            .collect();
        self.releases.clear();
        self.logs.drain(..plan.logs);
        self.progress.clear();
        recorded
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use castor_store::Backoff;
    use castor_store::uuid::Uuid;

    use super::*;

    const SEC: i64 = 1_000_000;
    const NOW: i64 = 1_000 * SEC;

    fn ended(seq: i64, attempt: u32, max_attempts: u32, outcome: AttemptOutcome) -> Ended {
        Ended {
            claim: Claim {
                seq,
                id: Uuid::now_v7(),
                task: "t".into(),
                attempt,
                max_attempts,
                backoff: Backoff {
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(10),
                },
            },
            attempt: Attempt {
                result: matches!(outcome, AttemptOutcome::Succeeded).then(|| vec![7]),
                outcome,
                elapsed: Duration::from_millis(3),
            },
            ran: true,
        }
    }

    fn errored(retry: bool) -> AttemptOutcome {
        AttemptOutcome::Errored {
            message: "boom".into(),
            retry,
        }
    }

    fn log(seq: i64) -> LogLine {
        LogLine {
            seq,
            attempt: 1,
            at: NOW,
            level: LogLevel::Info,
            line: "l".into(),
        }
    }

    /// An outcome, and its next state, retry offset, error kind and error.
    type Row = (
        Ended,
        TaskState,
        Option<i64>,
        Option<ErrorKind>,
        &'static str,
    );

    #[test]
    fn outcomes_are_finished_under_their_next_state() {
        let cancelled_waiting = Ended {
            ran: false,
            attempt: Attempt {
                outcome: AttemptOutcome::Cancelled,
                result: None,
                elapsed: Duration::ZERO,
            },
            ..ended(6, 1, 3, AttemptOutcome::Succeeded)
        };
        // (ended) -> (next state, retry offset in seconds at jitter 0.5, kind, error)
        let table: Vec<Row> = vec![
            (
                ended(1, 1, 3, AttemptOutcome::Succeeded),
                TaskState::Completed,
                None,
                None,
                "",
            ),
            (
                ended(2, 1, 3, errored(true)),
                TaskState::Retryable,
                Some(SEC),
                Some(ErrorKind::Error),
                "boom",
            ),
            (
                ended(3, 3, 3, errored(true)),
                TaskState::Discarded,
                None,
                Some(ErrorKind::Error),
                "boom",
            ),
            (
                ended(4, 1, 3, errored(false)),
                TaskState::Discarded,
                None,
                Some(ErrorKind::Error),
                "boom",
            ),
            (
                ended(5, 1, 3, AttemptOutcome::Cancelled),
                TaskState::Cancelled,
                None,
                Some(ErrorKind::Cancelled),
                "cancelled while running",
            ),
            (
                cancelled_waiting,
                TaskState::Cancelled,
                None,
                Some(ErrorKind::Cancelled),
                CANCELLED_BEFORE_START,
            ),
            (
                ended(
                    7,
                    2,
                    3,
                    AttemptOutcome::TimedOut {
                        after: Duration::from_secs(2),
                    },
                ),
                TaskState::Retryable,
                Some(2 * SEC),
                Some(ErrorKind::Timeout),
                "timed out after 2.0s",
            ),
        ];
        let mut completer = Completer::default();
        let expected: Vec<_> = table
            .into_iter()
            .map(|(ended, state, offset, kind, error)| {
                completer.ended(ended);
                (state, offset, kind, error)
            })
            .collect();
        let plan = completer.plan(usize::MAX, NOW, &|_| 0.5);
        assert_eq!(plan.transitions.len(), expected.len());
        for ((ended, transition), (state, offset, kind, error)) in completer
            .outcomes
            .iter()
            .zip(&plan.transitions)
            .zip(expected)
        {
            let what = format!("{:?} (ran: {})", ended.attempt.outcome, ended.ran);
            match ended.finish(*transition, "w", NOW, None) {
                Finish::Completed { result, .. } => {
                    assert_eq!(state, TaskState::Completed, "{what}");
                    assert_eq!(result, [7], "{what}");
                }
                Finish::Failed {
                    transition,
                    error: e,
                } => {
                    assert_eq!(transition.state, state, "{what}");
                    assert_eq!(transition.scheduled_at, offset.map(|o| NOW + o), "{what}");
                    assert_eq!(Some(e.kind), kind, "{what}");
                    assert_eq!(e.error, error, "{what}");
                    assert_eq!(e.attempt, ended.claim.attempt, "{what}");
                    assert_eq!(e.worker.as_deref(), Some("w"), "{what}");
                }
            }
        }
    }

    #[test]
    fn after_a_failed_write_a_piece_of_the_outcomes_and_logs_is_written() {
        let mut completer = Completer::default();
        for seq in 0..5 {
            completer.ended(ended(seq, 1, 1, AttemptOutcome::Succeeded));
        }
        for seq in 0..3 {
            completer.log(log(seq));
        }
        completer.release(9, 1);
        completer.progress(
            1,
            ProgressUpdate {
                attempt: 1,
                done: 1,
                total: 2,
                message: String::new(),
            },
        );
        assert_eq!(completer.backlog(), 5);
        let piece = completer.plan(2, NOW, &|_| 0.5);
        assert_eq!(
            piece,
            Completion {
                transitions: vec![None, None],
                logs: 2,
                releases: 1,
                progress: 1,
            }
        );
        let recorded = completer.written(piece, vec![true, false]);
        let seqs: Vec<i64> = recorded.iter().map(|r| r.ended.claim.seq).collect();
        assert_eq!(seqs, [0, 1], "the oldest first");
        assert!(recorded[0].applied && !recorded[1].applied);
        assert_eq!(recorded[0].state(), TaskState::Completed);
        assert_eq!(completer.backlog(), 3);
        assert!(completer.has_urgent(), "three outcomes left");
        let rest = completer.plan(usize::MAX, NOW, &|_| 0.5);
        assert_eq!((rest.transitions.len(), rest.logs), (3, 1));
        assert_eq!((rest.releases, rest.progress), (0, 0), "written once");
        completer.written(rest, vec![true; 3]);
        assert!(!completer.has_kept());
        assert!(completer.plan(usize::MAX, NOW, &|_| 0.5).is_empty());
    }

    #[test]
    fn logs_and_progress_alone_are_not_urgent() {
        let mut completer = Completer::default();
        completer.log(log(1));
        assert!(!completer.has_urgent());
        assert!(completer.has_kept());
        completer.release(1, 1);
        assert!(completer.has_urgent());
        assert!(!completer.has_outcomes());
    }
}
