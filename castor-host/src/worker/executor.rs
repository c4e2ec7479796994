//! Runs one attempt of a thread task through the library's `run` function and turns what
//! it returns into an [`AttemptOutcome`].

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RStr};
use castor_abi::abi::{FailureKind, HostCtx, HostServices, RunFn, TaskFailure};
use castor_abi::codec;
use castor_store::AttemptOutcome;
use castor_store::Claimed;

/// What one attempt produced: its outcome and, on success, the encoded result.
#[derive(Debug)]
pub struct Attempt {
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The encoded result, if it succeeded.
    pub result: Option<Vec<u8>>,
    /// How long the task ran.
    pub elapsed: Duration,
}

/// Calls the task's `run` function. The library's glue catches panics, so this returns
/// for every task that returns at all.
pub fn run_attempt(
    run: RunFn,
    services: &HostServices,
    task: &Claimed,
    cancelled: &AtomicBool,
) -> Attempt {
    let ctx = HostCtx {
        services,
        task_id: task.id.into_bytes(),
        task_name: RStr::from(task.task.as_str()),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        cancelled,
    };
    let start = Instant::now();
    let returned = run(&ctx, RSlice::from(task.args.as_slice()));
    let elapsed = start.elapsed();
    match returned {
        // The library's glue refuses such a result; one built against an older castor-abi
        // may not, and nothing past the limit is stored.
        RResult::ROk(bytes) if bytes.len() > codec::MAX_PAYLOAD => Attempt {
            outcome: AttemptOutcome::Errored {
                message: codec::result_too_large(&task.task, bytes.len()),
                retry: true,
            },
            result: None,
            elapsed,
        },
        RResult::ROk(bytes) => Attempt {
            outcome: AttemptOutcome::Succeeded,
            result: Some(bytes.into_vec()),
            elapsed,
        },
        RResult::RErr(failure) => Attempt {
            outcome: outcome_of(failure),
            result: None,
            elapsed,
        },
    }
}

/// Maps a library-reported failure to an outcome. Failures that no retry can fix (bad
/// arguments, an unencodable result, an explicit discard) are not retried.
pub fn outcome_of(failure: TaskFailure) -> AttemptOutcome {
    let message = failure.message.into_string();
    match failure.kind {
        FailureKind::Error => AttemptOutcome::Errored {
            message,
            retry: true,
        },
        FailureKind::Discard | FailureKind::DecodeArgs | FailureKind::EncodeResult => {
            AttemptOutcome::Errored {
                message,
                retry: false,
            }
        }
        FailureKind::Panic => AttemptOutcome::Panicked { message },
        FailureKind::Cancelled => AttemptOutcome::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_that_retrying_cannot_fix_are_not_retried() {
        let f = |kind| TaskFailure {
            kind,
            message: "m".into(),
        };
        assert_eq!(
            outcome_of(f(FailureKind::Error)),
            AttemptOutcome::Errored {
                message: "m".into(),
                retry: true
            }
        );
        for kind in [
            FailureKind::Discard,
            FailureKind::DecodeArgs,
            FailureKind::EncodeResult,
        ] {
            assert_eq!(
                outcome_of(f(kind)),
                AttemptOutcome::Errored {
                    message: "m".into(),
                    retry: false
                }
            );
        }
        assert_eq!(
            outcome_of(f(FailureKind::Panic)),
            AttemptOutcome::Panicked {
                message: "m".into()
            }
        );
        assert_eq!(
            outcome_of(f(FailureKind::Cancelled)),
            AttemptOutcome::Cancelled
        );
    }
}
