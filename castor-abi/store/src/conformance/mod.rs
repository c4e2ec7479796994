//! The conformance suite every driver must pass (River's `riverdrivertest`), written once
//! against [`Store`] and the [`Driver`](crate::Driver)/[`Tx`](crate::Tx) seam:
//!
//! - `claims`: claim order (priority, then dispatch order), what a claim returns, and no
//!   task claimed twice by concurrent claimers, each on its own connection;
//! - `states`: the state machine's guarded writes (finish and release only for the
//!   running attempt), failures and retries, cancellation in every state, `retry` of
//!   discarded and cancelled tasks only, `purge`, which never deletes running tasks,
//!   unique keys (held while unfinished, free after), and a failed write rolled back whole;
//! - `leases`: lease expiry and renewal, worker rows and heartbeats, a dead worker
//!   buried, a rescued attempt that can no longer finish;
//! - `limits`: concurrency limits (whole task, per key) and rate limits in a sliding
//!   window held in the claim, overrides, and four concurrent claimers under a limit;
//! - `schedules`: missed ticks, one run per tick with two workers ticking at once,
//!   periodic declarations (kept or restarted), pausing, limits and removal;
//! - `chains`: a dependent waits and is released with its parents' results (chains and
//!   fan-ins, two parents completed at once), ends naming a parent discarded, cancelled
//!   or purged, or a result of another type, is settled at dispatch after finished
//!   parents, waits again when retried, and keeps its parents from retention;
//! - `records`: retention (`prune`), logs, progress, multi-MiB payloads, and the reads
//!   (`stage_due`, `next_due`, `unfinished`, `waiting`, `oldest_available`, `list`, `counts`,
//!   `completed_since`, `state_of`, `change_counter`).
//!
//! **The contract.** A driver instantiates the suite in its tests with
//! [`conformance_tests!`]`(fresh)`, where `fresh` is a `fn() -> D` that creates an empty,
//! migrated database for one case and `D` is a [`TestDatabase`]: its
//! [`connect`](TestDatabase::connect) opens a *new* connection to that same database each
//! time it is called (the concurrency cases call it from several threads, one connection
//! each, as several workers would), and dropping `D` removes the database. Each case may
//! assume nothing else uses its database. Times are passed to every operation (from
//! [`T0`]), never read from a clock, so the cases do not depend on how fast they run.

mod chains;
mod claims;
mod leases;
mod limits;
mod records;
mod schedules;
mod states;

pub use self::chains::*;
pub use self::claims::*;
pub use self::leases::*;
pub use self::limits::*;
pub use self::records::*;
pub use self::schedules::*;
pub use self::states::*;

use uuid::Uuid;

use crate::{
    AttemptError, Claimed, Enqueued, ErrorKind, Finish, NewTask, ScheduleFilter, Store, TaskFilter,
    TaskSnapshot, TaskState, Transition,
};

/// One empty database for one conformance case, as a driver's tests provide it.
pub trait TestDatabase: Sync {
    /// Opens a new connection to this database (each call its own, as another worker or
    /// app would open one).
    fn connect(&self) -> Store;
}

/// Declares one `#[test]` per conformance case, each on a database from `$fresh` (an
/// expression of type `fn() -> D`, `D` a [`TestDatabase`]; see the module docs).
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        $crate::conformance_tests!(@cases $fresh;
            // claims
            claim_takes_priority_then_age_and_only_known_tasks,
            claims_match_argument_fingerprints,
            claims_follow_priority_then_dispatch_order,
            a_claim_returns_the_task_and_marks_it_running,
            concurrent_claimers_never_claim_a_task_twice,
            // states
            finishing_is_guarded_by_attempt,
            finish_and_release_need_the_running_attempt,
            failures_append_errors_and_retry_when_due,
            the_last_failure_discards,
            cancel_in_each_state,
            a_cancel_request_ends_a_failing_attempt_cancelled_unless_it_completes,
            retry_takes_only_discarded_or_cancelled_tasks,
            purge_never_deletes_running_tasks,
            unique_keys_return_the_unfinished_task,
            unique_keys_are_held_while_unfinished_and_free_after,
            a_failed_write_changes_nothing,
            finish_many_records_a_batch_and_knows_its_own_outcomes,
            // leases
            leases_expire_and_renew,
            workers_register_beat_and_stop,
            signatures_tell_tasks_waiting_for_a_worker_of_theirs,
            burying_a_worker_ends_its_leases,
            a_rescued_attempt_cannot_finish,
            // limits
            a_concurrency_limit_holds_across_claimers,
            a_keyed_concurrency_limit_holds_per_key,
            a_rate_limit_holds_in_a_sliding_window,
            a_limit_override_wins_until_cleared,
            concurrent_limited_claimers_never_over_claim,
            // schedules
            missed_ticks_are_skipped_or_run_once,
            a_tick_runs_once_with_two_workers_ticking,
            periodic_upsert_keeps_an_unchanged_schedule_and_restarts_a_changed_one,
            a_run_carries_its_schedules_fingerprint,
            paused_finished_and_removed_schedules_do_not_tick,
            // chains
            a_chain_waits_then_runs_with_its_parents_result,
            a_fan_in_gets_every_result_in_order,
            a_parent_that_cannot_complete_cancels_its_dependents,
            a_dependent_of_a_finished_parent_is_settled_at_dispatch,
            a_result_of_another_type_discards_the_dependent,
            a_retried_dependent_waits_on_its_parents_again,
            prune_keeps_a_parent_its_dependents_wait_on,
            parents_completed_at_once_release_their_fan_in,
            // records
            prune_deletes_finished_tasks_with_their_logs_and_stopped_workers,
            logs_are_appended_in_order_and_kept_to_the_newest,
            interleaved_logs_are_kept_to_the_newest_too,
            a_batch_of_log_lines_keeps_each_tasks_order_and_limit,
            a_retry_keeps_the_newest_lines_across_attempts,
            progress_is_recorded_only_for_the_running_attempt,
            large_payloads_round_trip_byte_for_byte,
            stage_due_moves_due_tasks_of_its_manager_only,
            next_due_unfinished_and_waiting_read_the_waiting_tasks,
            oldest_available_reads_the_available_tasks_only,
            list_counts_and_completed_since_read_every_task,
            state_of_and_the_change_counter,
        );
    };
    (@cases $fresh:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let database = ($fresh)();
                $crate::conformance::$case(&database);
            }
        )*
    };
}

/// The time every case starts at (microseconds since the Unix epoch: 2025-06-15).
pub const T0: i64 = 1_750_000_000_000_000;

/// One second, in microseconds.
pub const SECOND: i64 = 1_000_000;

/// The manager every case's tasks belong to.
pub const MANAGER: &str = "manager";

/// A task of [`MANAGER`] with 3 attempts and a 1 s to 60 s backoff.
pub fn new_task<'a>(task: &'a str, args: &'a [u8]) -> NewTask<'a> {
    NewTask {
        manager: MANAGER,
        task,
        args,
        run_at_us: None,
        priority: 0,
        unique_key: None,
        max_attempts: 3,
        backoff_base_ms: 1000,
        backoff_cap_ms: 60_000,
        timeout_ms: None,
        schedule_id: None,
        args_fingerprint: None,
        concurrency_key: None,
    }
}

/// The name of the parent [`task_in`] gives a `waiting` task (left available).
pub const PARENT: &str = "conformance-parent";

/// [`MANAGER`]'s tasks of these names.
pub fn filter(tasks: &[&str]) -> TaskFilter {
    TaskFilter {
        manager: MANAGER.into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        args_fingerprints: Vec::new(),
    }
}

/// [`MANAGER`]'s schedules of these task names.
pub fn schedules(tasks: &[&str]) -> ScheduleFilter {
    ScheduleFilter {
        manager: MANAGER.into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        periodic: Vec::new(),
    }
}

/// Inserts `task` at `now`.
pub fn enqueue(store: &mut Store, task: &NewTask<'_>, now: i64) -> Enqueued {
    store.write(|tx| tx.enqueue(task, now)).expect("enqueue")
}

/// Inserts a task named `name` at [`T0`]; returns its id.
pub fn add(store: &mut Store, name: &str) -> Uuid {
    enqueue(store, &new_task(name, b"x"), T0).id
}

/// Claims up to `limit` tasks as worker `w1` at [`T0`], with a 30 s lease.
pub fn claim(store: &mut Store, filter: &TaskFilter, limit: usize) -> Vec<Claimed> {
    claim_as(store, filter, "w1", limit, T0, T0 + 30 * SECOND)
}

/// Claims up to `limit` tasks as `worker` at `now`, leased until `lease_until`.
pub fn claim_as(
    store: &mut Store,
    filter: &TaskFilter,
    worker: &str,
    limit: usize,
    now: i64,
    lease_until: i64,
) -> Vec<Claimed> {
    store
        .write(|tx| tx.claim(filter, worker, limit, now, lease_until))
        .expect("claim")
}

/// Claims the one available task named `name` as `w1` at [`T0`].
pub fn claim_one(store: &mut Store, name: &str) -> Claimed {
    let mut claimed = claim(store, &filter(&[name]), 1);
    assert_eq!(claimed.len(), 1, "one task named {name} to claim");
    claimed.remove(0)
}

/// Records that `claimed`'s attempt returned `result` at `now`; whether it was running.
pub fn complete(store: &mut Store, claimed: &Claimed, result: &[u8], now: i64) -> bool {
    store
        .write(|tx| {
            tx.finish_if_running(
                claimed.seq,
                claimed.attempt,
                &Finish::Completed {
                    result,
                    result_fingerprint: None,
                },
                now,
            )
        })
        .expect("finish")
}

/// The error a failed attempt records.
pub fn attempt_error(claimed: &Claimed, kind: ErrorKind, message: &str, at: i64) -> AttemptError {
    AttemptError {
        attempt: claimed.attempt,
        at,
        kind,
        error: message.to_owned(),
        worker: Some("w1".into()),
    }
}

/// Records that `claimed`'s attempt failed at `now`, moving the task to `state` (and,
/// for `retryable`, back to `available` at `retry_at`); whether it was running.
pub fn fail(
    store: &mut Store,
    claimed: &Claimed,
    state: TaskState,
    retry_at: Option<i64>,
    now: i64,
) -> bool {
    let finish = Finish::Failed {
        transition: Transition {
            state,
            scheduled_at: retry_at,
        },
        error: attempt_error(claimed, ErrorKind::Error, "failed", now),
    };
    store
        .write(|tx| tx.finish_if_running(claimed.seq, claimed.attempt, &finish, now))
        .expect("finish")
}

/// Everything stored about the task `id`, which must exist.
pub fn snapshot(store: &Store, id: Uuid) -> TaskSnapshot {
    store
        .snapshot(id)
        .expect("read a task")
        .unwrap_or_else(|| panic!("task {id} exists"))
}

/// The state of the task `id`, which must exist.
pub fn state(store: &Store, id: Uuid) -> TaskState {
    snapshot(store, id).state
}

/// A task named `name`, dispatched at [`T0`] and brought to `state` by the operations
/// that lead there (`scheduled`: due in an hour; `retryable`: its one failure retried in
/// an hour). Returns its id and, if it was claimed, the claim.
pub fn task_in(store: &mut Store, name: &str, state: TaskState) -> (Uuid, Option<Claimed>) {
    task_in_with(store, &new_task(name, b"x"), state)
}

/// [`task_in`] for a task given in full (its name must be one no other available task
/// has: it is claimed by name).
pub fn task_in_with(
    store: &mut Store,
    task: &NewTask<'_>,
    state: TaskState,
) -> (Uuid, Option<Claimed>) {
    let hour = 3600 * SECOND;
    if state == TaskState::Scheduled {
        let later = NewTask {
            run_at_us: Some(T0 + hour),
            ..task.clone()
        };
        return (enqueue(store, &later, T0).id, None);
    }
    if state == TaskState::Waiting {
        // After a parent that stays available (named so no case claims it by mistake).
        let parent = add(store, PARENT);
        let after = crate::After {
            parents: &[crate::ParentRef {
                id: parent,
                result_fingerprint: None,
            }],
            fan_in: false,
        };
        let id = store
            .write(|tx| tx.enqueue_after(task, &after, T0))
            .expect("enqueue after a parent")
            .id;
        return (id, None);
    }
    let id = enqueue(store, task, T0).id;
    match state {
        TaskState::Available => (id, None),
        TaskState::Cancelled => {
            let outcome = store.write(|tx| tx.cancel(id, T0)).expect("cancel");
            assert_eq!(outcome, Some(crate::CancelOutcome::Cancelled));
            (id, None)
        }
        _ => {
            let claimed = claim_one(store, task.task);
            assert_eq!(claimed.id, id, "the task just dispatched is claimed");
            let finished = match state {
                TaskState::Running => true,
                TaskState::Completed => complete(store, &claimed, b"done", T0 + SECOND),
                TaskState::Retryable => fail(
                    store,
                    &claimed,
                    TaskState::Retryable,
                    Some(T0 + hour),
                    T0 + SECOND,
                ),
                TaskState::Discarded => {
                    fail(store, &claimed, TaskState::Discarded, None, T0 + SECOND)
                }
                TaskState::Waiting
                | TaskState::Scheduled
                | TaskState::Available
                | TaskState::Cancelled => {
                    unreachable!("handled above")
                }
            };
            assert!(finished, "the claimed attempt was running");
            (id, Some(claimed))
        }
    }
}
