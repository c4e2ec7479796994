//! Task states, attempt outcomes, and the one pure function that maps an outcome to the
//! next state. This is the only place states are defined; the schema's `CHECK` constraint
//! and the CLI spell them exactly as [`TaskState::as_str`] does.
//!
//! ```text
//!             delay(at = later)              claim                  outcome
//!  (new) ──► scheduled ──time──► available ───────► running ──┬──► completed
//!      ├──────────────────────────►  ▲                        ├──► retryable ──backoff──► available
//!      │                             │                        ├──► discarded
//!      │                             └── rescue (worker died) ┘──► cancelled
//!      │ delay_after(parents)        │ every parent completed
//!      └──► waiting ─────────────────┘ (or scheduled, if its start time is later)
//!              └── a parent discarded, cancelled or purged ──► cancelled
//!              └── a parent's result of another fingerprint ──► discarded
//! ```
//!
//! A *state* describes the row now; an [`AttemptOutcome`] describes how one run ended.
//! [`next_state`] joins the two with the retry policy, so every transition rule is in one
//! table-tested function.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{AttemptError, ErrorKind};

/// Where a task is in its life. Terminal states are past participles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waits for its parent tasks to complete (a chain's or a fan-in's dependent): then
    /// it becomes `available` with their results as its first argument.
    Waiting,
    /// Waits for its `scheduled_at` time (a delayed task).
    Scheduled,
    /// May be claimed by a worker now.
    Available,
    /// A worker holds it under a lease; `attempt` counts this run.
    Running,
    /// The last attempt failed and attempts remain; becomes `available` after its backoff.
    Retryable,
    /// Terminal: the task returned a result, which is stored.
    Completed,
    /// Terminal: the last allowed attempt failed; every attempt's error is stored.
    Discarded,
    /// Terminal: cancelled by a user before or while it ran.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Waiting,
        TaskState::Scheduled,
        TaskState::Available,
        TaskState::Running,
        TaskState::Retryable,
        TaskState::Completed,
        TaskState::Discarded,
        TaskState::Cancelled,
    ];

    /// The name stored in the database and shown by the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Scheduled => "scheduled",
            TaskState::Available => "available",
            TaskState::Running => "running",
            TaskState::Retryable => "retryable",
            TaskState::Completed => "completed",
            TaskState::Discarded => "discarded",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// True for states a task never leaves on its own (`completed`, `discarded`,
    /// `cancelled`); `join` returns once a task reaches one of them.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Discarded | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`TaskState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task state `{name}` (expected one of: waiting, scheduled, available, running, retryable, completed, discarded, cancelled)"
)]
pub struct UnknownState {
    /// The name that was given.
    pub name: String,
}

impl FromStr for TaskState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState { name: s.to_owned() })
    }
}

/// How one attempt of a task ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The task returned a value.
    Succeeded,
    /// The task returned an error. `retry: false` when retrying cannot help (the task said
    /// so with [`TaskError::discard`](crate::TaskError::discard), or its arguments do not decode).
    Errored {
        /// The error's message.
        message: String,
        /// Whether a later attempt may succeed.
        retry: bool,
    },
    /// The task panicked; the message includes the panic location.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The process running the task died ("killed by SIGSEGV", "exited with code 3").
    Crashed {
        /// What happened to the process.
        message: String,
    },
    /// The task ran past its timeout.
    TimedOut {
        /// The timeout that was exceeded.
        after: Duration,
    },
    /// The worker running the attempt went away (its lease expired or it shut down before
    /// the task finished), so nobody will report this attempt's outcome.
    Abandoned {
        /// Why the attempt was given up.
        message: String,
    },
    /// The task was cancelled while it ran.
    Cancelled,
}

impl AttemptOutcome {
    /// The short kind recorded with an attempt's error (`error`, `panic`, ...).
    pub const fn kind(&self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Errored { .. } => "error",
            AttemptOutcome::Panicked { .. } => "panic",
            AttemptOutcome::Crashed { .. } => "crash",
            AttemptOutcome::TimedOut { .. } => "timeout",
            AttemptOutcome::Abandoned { .. } => "abandoned",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// The kind recorded with a failed attempt's error; `None` for success.
    pub const fn error_kind(&self) -> Option<ErrorKind> {
        Some(match self {
            AttemptOutcome::Succeeded => return None,
            AttemptOutcome::Errored { .. } => ErrorKind::Error,
            AttemptOutcome::Panicked { .. } => ErrorKind::Panic,
            AttemptOutcome::Crashed { .. } => ErrorKind::Crash,
            AttemptOutcome::TimedOut { .. } => ErrorKind::Timeout,
            AttemptOutcome::Abandoned { .. } => ErrorKind::Abandoned,
            AttemptOutcome::Cancelled => ErrorKind::Cancelled,
        })
    }

    /// The error recorded for this attempt (`attempt`, ended at `at` on `worker`); `None`
    /// for success.
    pub fn to_error(&self, attempt: u32, at: i64, worker: Option<String>) -> Option<AttemptError> {
        Some(AttemptError {
            attempt,
            at,
            kind: self.error_kind()?,
            error: self.message()?,
            worker,
        })
    }

    /// The message recorded for a failed attempt, or `None` for success.
    pub fn message(&self) -> Option<String> {
        match self {
            AttemptOutcome::Succeeded => None,
            AttemptOutcome::Errored { message, .. }
            | AttemptOutcome::Panicked { message }
            | AttemptOutcome::Crashed { message }
            | AttemptOutcome::Abandoned { message } => Some(message.clone()),
            AttemptOutcome::TimedOut { after } => Some(format!(
                "timed out after {}",
                crate::format::format_duration(*after)
            )),
            AttemptOutcome::Cancelled => Some("cancelled while running".to_owned()),
        }
    }
}

/// Exponential backoff between attempts: `base * 2^(attempt - 1)`, capped, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub base: Duration,
    /// The longest wait, however many attempts failed.
    pub cap: Duration,
}

impl Backoff {
    /// One second, doubling per attempt, at most one hour.
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(3600),
    };

    /// The wait after failed attempt number `attempt` (1-based). `jitter` in `[0, 1)`
    /// spreads the wait over 75%..125% of the nominal value so that tasks failing together
    /// do not retry together; the result never exceeds the cap.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let nominal = self
            .base
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.cap)
            .min(self.cap);
        let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
        nominal.mul_f64(factor).min(self.cap)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// What happens to a task after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The task's next state.
    pub state: TaskState,
    /// For `retryable`: when it becomes available again (microseconds since the epoch).
    pub scheduled_at: Option<i64>,
}

/// The state-transition function: outcome + attempt number + policy -> next state and time.
///
/// `attempt` is the 1-based number of the attempt that just ended, `now_us` the current time
/// in microseconds since the Unix epoch, and `jitter` a random number in `[0, 1)`.
pub fn next_state(
    outcome: &AttemptOutcome,
    attempt: u32,
    max_attempts: u32,
    backoff: Backoff,
    now_us: i64,
    jitter: f64,
) -> Transition {
    let terminal = |state| Transition {
        state,
        scheduled_at: None,
    };
    match outcome {
        AttemptOutcome::Succeeded => terminal(TaskState::Completed),
        AttemptOutcome::Cancelled => terminal(TaskState::Cancelled),
        AttemptOutcome::Errored { retry: false, .. } => terminal(TaskState::Discarded),
        AttemptOutcome::Errored { retry: true, .. }
        | AttemptOutcome::Panicked { .. }
        | AttemptOutcome::Crashed { .. }
        | AttemptOutcome::TimedOut { .. }
        | AttemptOutcome::Abandoned { .. } => {
            if attempt >= max_attempts {
                terminal(TaskState::Discarded)
            } else {
                let wait = backoff.delay(attempt, jitter);
                let wait_us = i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
                Transition {
                    state: TaskState::Retryable,
                    scheduled_at: Some(now_us.saturating_add(wait_us)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn err(retry: bool) -> AttemptOutcome {
        AttemptOutcome::Errored {
            message: "boom".into(),
            retry,
        }
    }

    #[test]
    fn transitions_follow_the_table() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        let crash = AttemptOutcome::Crashed {
            message: "killed by SIGSEGV".into(),
        };
        let timeout = AttemptOutcome::TimedOut {
            after: Duration::from_secs(1),
        };
        let lost = AttemptOutcome::Abandoned {
            message: "worker gone".into(),
        };
        let panic = AttemptOutcome::Panicked {
            message: "oops".into(),
        };
        // (outcome, attempt, max_attempts) -> (state, scheduled_at offset in seconds at jitter 0.5)
        let table: Vec<(AttemptOutcome, u32, u32, TaskState, Option<i64>)> = vec![
            (AttemptOutcome::Succeeded, 1, 1, TaskState::Completed, None),
            (AttemptOutcome::Succeeded, 3, 5, TaskState::Completed, None),
            (AttemptOutcome::Cancelled, 1, 5, TaskState::Cancelled, None),
            (err(true), 1, 1, TaskState::Discarded, None),
            (err(true), 1, 3, TaskState::Retryable, Some(SEC)),
            (err(true), 2, 3, TaskState::Retryable, Some(2 * SEC)),
            (err(true), 3, 3, TaskState::Discarded, None),
            (err(false), 1, 3, TaskState::Discarded, None),
            (panic.clone(), 1, 2, TaskState::Retryable, Some(SEC)),
            (panic, 2, 2, TaskState::Discarded, None),
            (crash.clone(), 4, 9, TaskState::Retryable, Some(8 * SEC)),
            (crash, 9, 9, TaskState::Discarded, None),
            (timeout.clone(), 5, 9, TaskState::Retryable, Some(10 * SEC)),
            (timeout, 1, 1, TaskState::Discarded, None),
            (lost.clone(), 1, 2, TaskState::Retryable, Some(SEC)),
            (lost, 2, 2, TaskState::Discarded, None),
        ];
        let now = 1_000 * SEC;
        for (outcome, attempt, max, state, offset) in table {
            let got = next_state(&outcome, attempt, max, backoff, now, 0.5);
            assert_eq!(
                got,
                Transition {
                    state,
                    scheduled_at: offset.map(|o| now + o)
                },
                "{outcome:?} attempt {attempt}/{max}"
            );
        }
    }

    #[test]
    fn backoff_grows_jitters_and_stays_under_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(75));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_millis(125));
        assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(400));
        for attempt in 1..100 {
            for jitter in [0.0, 0.3, 0.999, 1.0] {
                assert!(backoff.delay(attempt, jitter) <= backoff.cap);
            }
        }
        assert_eq!(backoff.delay(40, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn state_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert_eq!(
            "failed".parse::<TaskState>(),
            Err(UnknownState {
                name: "failed".into()
            })
        );
        assert!(TaskState::Discarded.is_terminal());
        assert!(!TaskState::Retryable.is_terminal());
    }
}
