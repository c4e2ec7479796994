//! The state machine's guarded writes: finishing, releasing, failing, cancelling,
//! retrying, purging, and unique keys.

use std::time::Duration;

use super::{
    SECOND, T0, TestDatabase, add, attempt_error, claim, claim_one, complete, enqueue, fail,
    filter, new_task, snapshot, state, task_in, task_in_with,
};
use crate::{
    AttemptEnd, Backoff, CancelOutcome, ErrorKind, Finish, RetryOutcome, TaskState, Transition,
    uuid::Uuid,
};

/// A released claim is no attempt; a stale attempt cannot finish the row; finishing twice
/// does nothing.
pub fn finishing_is_guarded_by_attempt(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let first = claim_one(&mut store, "a");
    // The first attempt is given back (as a worker that never started it does), and
    // claimed again.
    assert!(
        store
            .write(|tx| tx.release_if_running(first.seq, first.attempt))
            .expect("release")
    );
    let second = claim_one(&mut store, "a");
    assert_eq!(
        second.attempt, 1,
        "a released claim does not count as an attempt"
    );
    // A stale attempt number cannot finish the row.
    let stale = store
        .write(|tx| {
            tx.finish_if_running(
                second.seq,
                7,
                &Finish::Completed {
                    result: b"no",
                    result_fingerprint: None,
                },
                T0,
            )
        })
        .expect("finish");
    assert!(!stale);
    assert!(complete(&mut store, &second, b"ok", T0 + SECOND));
    let snap = snapshot(&store, id);
    assert_eq!(snap.state, TaskState::Completed);
    assert_eq!(snap.result.as_deref(), Some(&b"ok"[..]));
    assert_eq!(snap.finalized_at, Some(T0 + SECOND));
    // Finishing twice does nothing.
    assert!(!complete(&mut store, &second, b"2", T0 + 2 * SECOND));
    assert_eq!(snapshot(&store, id).result.as_deref(), Some(&b"ok"[..]));
}

/// `finish_if_running` and `release_if_running` change a task only while it runs the
/// attempt named: in every other state, or for another attempt, they change nothing.
pub fn finish_and_release_need_the_running_attempt(db: &dyn TestDatabase) {
    let mut store = db.connect();
    for target in TaskState::ALL {
        let name = format!("t-{target}");
        let (id, claimed) = task_in(&mut store, &name, target);
        let before = snapshot(&store, id);
        let (seq, attempt) = claimed
            .as_ref()
            .map_or((before.seq, 0), |c| (c.seq, c.attempt));
        // Attempts the task is not running: for a running task the ones before and after
        // its own; otherwise its last one (none, if it was never claimed) and the next.
        let attempts = if target == TaskState::Running {
            [attempt - 1, attempt + 1]
        } else {
            [attempt, attempt + 1]
        };
        for attempt in attempts {
            let failed = Finish::Failed {
                transition: Transition {
                    state: TaskState::Discarded,
                    scheduled_at: None,
                },
                error: crate::AttemptError {
                    attempt,
                    at: T0,
                    kind: ErrorKind::Error,
                    error: "stale".into(),
                    worker: None,
                },
            };
            let changed = store
                .write(|tx| {
                    Ok([
                        tx.finish_if_running(
                            seq,
                            attempt,
                            &Finish::Completed {
                                result: b"no",
                                result_fingerprint: None,
                            },
                            T0,
                        )?,
                        tx.finish_if_running(seq, attempt, &failed, T0)?,
                        tx.release_if_running(seq, attempt)?,
                    ])
                })
                .expect("guarded writes");
            assert_eq!(changed, [false; 3], "{target} task, attempt {attempt}");
        }
        let after = snapshot(&store, id);
        assert_eq!(after.state, before.state, "{target}");
        assert_eq!(after.attempt, before.attempt, "{target}");
        assert_eq!(after.result, before.result, "{target}");
        assert_eq!(after.errors, before.errors, "{target}");
        assert_eq!(after.finalized_at, before.finalized_at, "{target}");
    }
    // A released attempt is over: it can neither finish nor be released again.
    let id = add(&mut store, "released");
    let claimed = claim_one(&mut store, "released");
    assert!(
        store
            .write(|tx| tx.release_if_running(claimed.seq, claimed.attempt))
            .expect("release")
    );
    let released = snapshot(&store, id);
    assert_eq!(released.state, TaskState::Available);
    assert_eq!(released.attempt, 0);
    assert_eq!(released.attempted_by, None);
    assert!(!complete(&mut store, &claimed, b"late", T0));
    assert!(
        !store
            .write(|tx| tx.release_if_running(claimed.seq, claimed.attempt))
            .expect("release")
    );
    assert_eq!(state(&store, id), TaskState::Available);
}

/// A failed attempt appends its error and waits as `retryable` until due; staging then
/// makes it available for attempt 2 with its backoff.
pub fn failures_append_errors_and_retry_when_due(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let c = claim_one(&mut store, "a");
    let error = attempt_error(&c, ErrorKind::Panic, "first", T0);
    let retry_at = T0 + 60 * SECOND;
    let failed = store
        .write(|tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Failed {
                    transition: Transition {
                        state: TaskState::Retryable,
                        scheduled_at: Some(retry_at),
                    },
                    error: error.clone(),
                },
                T0,
            )
        })
        .expect("fail");
    assert!(failed);
    let snap = snapshot(&store, id);
    assert_eq!(snap.state, TaskState::Retryable);
    assert_eq!(snap.errors, vec![error]);
    assert_eq!(snap.finalized_at, None);
    assert_eq!(snap.scheduled_at, retry_at);
    assert_eq!(store.next_due(super::MANAGER).expect("due"), Some(retry_at));
    // Not yet due: nothing to stage or claim.
    let q = filter(&["a"]);
    assert_eq!(
        store
            .write(|tx| tx.stage_due(super::MANAGER, retry_at - 1))
            .expect("stage"),
        0
    );
    assert!(claim(&mut store, &q, 1).is_empty());
    // Due: staged and claimed as attempt 2.
    assert_eq!(
        store
            .write(|tx| tx.stage_due(super::MANAGER, retry_at))
            .expect("stage"),
        1
    );
    let c2 = claim_one(&mut store, "a");
    assert_eq!(c2.attempt, 2);
    assert_eq!(
        c2.backoff,
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60)
        }
    );
}

/// The last attempt's failure discards the task: finalized, with every attempt's error
/// in order.
pub fn the_last_failure_discards(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let first = claim_one(&mut store, "a");
    assert!(fail(&mut store, &first, TaskState::Retryable, Some(T0), T0));
    store
        .write(|tx| tx.stage_due(super::MANAGER, T0))
        .expect("stage");
    let second = claim_one(&mut store, "a");
    let error = attempt_error(&second, ErrorKind::Timeout, "timed out after 1.0s", T0 + 5);
    let discarded = store
        .write(|tx| {
            tx.finish_if_running(
                second.seq,
                second.attempt,
                &Finish::Failed {
                    transition: Transition {
                        state: TaskState::Discarded,
                        scheduled_at: None,
                    },
                    error: error.clone(),
                },
                T0 + 5,
            )
        })
        .expect("fail");
    assert!(discarded);
    let snap = snapshot(&store, id);
    assert_eq!(snap.state, TaskState::Discarded);
    assert_eq!(snap.finalized_at, Some(T0 + 5));
    assert_eq!(snap.attempt, 2);
    assert_eq!(snap.errors.len(), 2);
    assert_eq!(snap.errors[0].attempt, 1);
    assert_eq!(snap.errors[1], error);
    assert_eq!(snap.result, None);
}

/// Cancelling a task that has not started (`scheduled`, `available`, `retryable`) makes
/// it `cancelled` for good; a running one is flagged for its worker; a finished one is
/// left as it is; an unknown id is `None`.
pub fn cancel_in_each_state(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let later = T0 + 10 * SECOND;
    for target in TaskState::ALL {
        let name = format!("t-{target}");
        let (id, claimed) = task_in(&mut store, &name, target);
        let before = snapshot(&store, id);
        let outcome = store.write(|tx| tx.cancel(id, later)).expect("cancel");
        let after = snapshot(&store, id);
        match target {
            TaskState::Waiting
            | TaskState::Scheduled
            | TaskState::Available
            | TaskState::Retryable => {
                assert_eq!(outcome, Some(CancelOutcome::Cancelled), "{target}");
                // A waiting task says why it never ran (a retry then waits again).
                let chain = after.errors.last().map(|e| e.kind) == Some(crate::ErrorKind::Chain);
                assert_eq!(chain, target == TaskState::Waiting, "{target}");
                assert_eq!(after.state, TaskState::Cancelled, "{target}");
                assert_eq!(after.finalized_at, Some(later), "{target}");
                // It never runs: not staged, not claimed, whenever.
                let far = T0 + 1_000_000 * SECOND;
                store
                    .write(|tx| tx.stage_due(super::MANAGER, far))
                    .expect("stage");
                assert!(
                    claim(&mut store, &filter(&[&name]), 1).is_empty(),
                    "{target}"
                );
                assert_eq!(state(&store, id), TaskState::Cancelled, "{target}");
            }
            TaskState::Running => {
                assert_eq!(outcome, Some(CancelOutcome::Requested));
                assert_eq!(after.state, TaskState::Running);
                assert_eq!(after.finalized_at, None);
                let seq = claimed.as_ref().expect("claimed").seq;
                let requests = store.write(|tx| tx.cancel_requests("w1")).expect("read");
                assert_eq!(requests, vec![seq]);
                assert!(
                    store
                        .write(|tx| tx.cancel_requests("w2"))
                        .expect("read")
                        .is_empty(),
                    "another worker's requests"
                );
                // Asking again changes nothing.
                let again = store.write(|tx| tx.cancel(id, later + 1)).expect("cancel");
                assert_eq!(again, Some(CancelOutcome::Requested));
            }
            TaskState::Completed | TaskState::Discarded | TaskState::Cancelled => {
                assert_eq!(outcome, Some(CancelOutcome::AlreadyFinished(target)));
                assert_eq!(after.state, target);
                assert_eq!(after.finalized_at, before.finalized_at, "{target}");
            }
        }
    }
    let nobody = Uuid::now_v7();
    assert_eq!(
        store.write(|tx| tx.cancel(nobody, later)).expect("cancel"),
        None
    );
}

/// A running task asked to cancel ends `cancelled` when its attempt fails (instead of
/// being retried), and `completed` when it completes first; either way the request is
/// gone from its worker's list.
pub fn a_cancel_request_ends_a_failing_attempt_cancelled_unless_it_completes(
    db: &dyn TestDatabase,
) {
    let mut store = db.connect();
    let (failing, failing_claim) = task_in(&mut store, "failing", TaskState::Running);
    let (finishing, finishing_claim) = task_in(&mut store, "finishing", TaskState::Running);
    for id in [failing, finishing] {
        let outcome = store.write(|tx| tx.cancel(id, T0 + 1)).expect("cancel");
        assert_eq!(outcome, Some(CancelOutcome::Requested));
    }
    let failing_claim = failing_claim.expect("claimed");
    let retry_at = T0 + 60 * SECOND;
    assert!(fail(
        &mut store,
        &failing_claim,
        TaskState::Retryable,
        Some(retry_at),
        T0 + 2
    ));
    let snap = snapshot(&store, failing);
    assert_eq!(snap.state, TaskState::Cancelled, "not retried");
    assert_eq!(snap.finalized_at, Some(T0 + 2));
    assert_eq!(snap.errors.len(), 1, "the attempt's error is kept");
    assert_eq!(store.next_due(super::MANAGER).expect("due"), None);

    assert!(complete(
        &mut store,
        &finishing_claim.expect("claimed"),
        b"r",
        T0 + 3
    ));
    let snap = snapshot(&store, finishing);
    assert_eq!(snap.state, TaskState::Completed);
    assert_eq!(snap.result.as_deref(), Some(&b"r"[..]));
    assert!(
        store
            .write(|tx| tx.cancel_requests("w1"))
            .expect("read")
            .is_empty()
    );
}

/// `retry` puts a discarded or cancelled task back to `available` with one more attempt
/// allowed and its errors kept; any other state is left alone; an unknown id is `None`;
/// a task whose unique key another task holds now cannot be retried.
pub fn retry_takes_only_discarded_or_cancelled_tasks(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let later = T0 + 10 * SECOND;
    for target in TaskState::ALL {
        let name = format!("t-{target}");
        let (id, _) = task_in(&mut store, &name, target);
        let before = snapshot(&store, id);
        let outcome = store.write(|tx| tx.retry(id, later)).expect("retry");
        let after = snapshot(&store, id);
        if matches!(target, TaskState::Discarded | TaskState::Cancelled) {
            assert_eq!(outcome, Some(RetryOutcome::Retried), "{target}");
            assert_eq!(after.state, TaskState::Available, "{target}");
            assert_eq!(after.finalized_at, None, "{target}");
            assert_eq!(after.scheduled_at, later, "{target}");
            assert_eq!(after.errors, before.errors, "{target}: errors are kept");
            assert!(
                after.max_attempts > after.attempt,
                "{target}: one more attempt allowed ({} of {})",
                after.attempt,
                after.max_attempts
            );
            let claimed = claim_one(&mut store, &name);
            assert_eq!(claimed.id, id);
            assert_eq!(claimed.attempt, before.attempt + 1, "{target}");
        } else {
            assert_eq!(outcome, Some(RetryOutcome::NotRetryable(target)));
            assert_eq!(after.state, before.state, "{target}");
            assert_eq!(after.finalized_at, before.finalized_at, "{target}");
        }
    }
    // A discarded task that used its last attempt gets one more.
    let last = crate::NewTask {
        max_attempts: 1,
        ..new_task("last", b"x")
    };
    let (id, _) = task_in_with(&mut store, &last, TaskState::Discarded);
    store.write(|tx| tx.retry(id, later)).expect("retry");
    assert_eq!(snapshot(&store, id).max_attempts, 2);
    assert_eq!(
        store
            .write(|tx| tx.retry(Uuid::now_v7(), later))
            .expect("retry"),
        None
    );
    // Its unique key taken by a task dispatched since: refused, nothing changed.
    let keyed = crate::NewTask {
        unique_key: Some("k"),
        ..new_task("keyed", b"x")
    };
    let (old, _) = task_in_with(&mut store, &keyed, TaskState::Cancelled);
    let holder = enqueue(&mut store, &keyed, T0);
    assert!(!holder.existing);
    assert!(store.write(|tx| tx.retry(old, later)).is_err());
    assert_eq!(state(&store, old), TaskState::Cancelled);
    assert_eq!(state(&store, holder.id), TaskState::Available);
}

/// `purge` deletes tasks in the states given that finished (or, unfinished, were
/// dispatched) before the cutoff, with their logs; never a running task.
pub fn purge_never_deletes_running_tasks(db: &dyn TestDatabase) {
    let mut store = db.connect();
    // The running task first, then the completed one, which logs: a task dispatched
    // after the purge takes the completed one's row number on a driver that reuses them.
    let order = [
        TaskState::Running,
        TaskState::Completed,
        TaskState::Scheduled,
        TaskState::Available,
        TaskState::Retryable,
        TaskState::Discarded,
        TaskState::Cancelled,
    ];
    let mut tasks = Vec::new();
    for target in order {
        let name = format!("t-{target}");
        let (id, claimed) = task_in(&mut store, &name, target);
        tasks.push((target, id, claimed));
    }
    let (_, completed, Some(claim)) = &tasks[1] else {
        panic!("the completed task was claimed");
    };
    assert_eq!(state(&store, *completed), TaskState::Completed);
    store
        .write(|tx| {
            tx.append_log(&crate::NewLog {
                seq: claim.seq,
                attempt: claim.attempt,
                at: T0,
                level: crate::LogLevel::Info,
                line: "a line",
            })
        })
        .expect("log");
    // Before everything: nothing is old enough.
    assert_eq!(
        store
            .write(|tx| tx.purge(&TaskState::ALL, T0))
            .expect("purge"),
        0
    );
    // Only the states asked for.
    assert_eq!(
        store
            .write(|tx| tx.purge(&[TaskState::Discarded], T0 + 100 * SECOND))
            .expect("purge"),
        1
    );
    let deleted = store
        .write(|tx| tx.purge(&TaskState::ALL, T0 + 100 * SECOND))
        .expect("purge");
    assert_eq!(deleted, order.len() - 2, "all but the running one");
    for (target, id, _) in &tasks {
        let left = store.snapshot(*id).expect("read");
        if *target == TaskState::Running {
            assert_eq!(left.map(|s| s.state), Some(TaskState::Running));
        } else {
            assert!(left.is_none(), "{target} purged");
        }
    }
    assert!(store.logs(*completed).expect("logs").is_empty());
    // A task dispatched now never sees the purged tasks' log lines.
    let fresh = add(&mut store, "fresh");
    assert!(store.logs(fresh).expect("logs").is_empty());
}

/// A unique key held by an unfinished task returns that task; once it finishes, the key
/// is free.
pub fn unique_keys_return_the_unfinished_task(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let t = crate::NewTask {
        unique_key: Some("report-42"),
        ..new_task("a", b"x")
    };
    let first = enqueue(&mut store, &t, T0);
    assert!(!first.existing);
    let second = enqueue(&mut store, &t, T0 + 1);
    assert!(second.existing);
    assert_eq!(first.id, second.id);
    // Once finished, the key is free again.
    let c = claim_one(&mut store, "a");
    assert!(complete(&mut store, &c, b"", T0 + 2));
    let third = enqueue(&mut store, &t, T0 + 3);
    assert!(!third.existing);
    assert_ne!(third.id, first.id);
}

/// A unique key is held in every unfinished state (`scheduled`, `available`, `running`,
/// `retryable`) and free in every finished one; keys are per manager and task name.
pub fn unique_keys_are_held_while_unfinished_and_free_after(db: &dyn TestDatabase) {
    let mut store = db.connect();
    for target in TaskState::ALL {
        let name = format!("t-{target}");
        let keyed = crate::NewTask {
            unique_key: Some("key"),
            ..new_task(&name, b"x")
        };
        let (id, _) = task_in_with(&mut store, &keyed, target);
        let again = enqueue(&mut store, &keyed, T0 + 1);
        if target.is_terminal() {
            assert!(!again.existing, "{target}: the key is free");
            assert_ne!(again.id, id);
        } else {
            assert!(again.existing, "{target}: the key is held");
            assert_eq!(again.id, id);
            assert_eq!(state(&store, id), target, "{target}: untouched");
        }
    }
    // The same key under another name or another manager is another key.
    let a = crate::NewTask {
        unique_key: Some("shared"),
        ..new_task("a", b"x")
    };
    let b = crate::NewTask {
        task: "b",
        ..a.clone()
    };
    let elsewhere = crate::NewTask {
        manager: "other",
        ..a.clone()
    };
    let ids: Vec<_> = [&a, &b, &elsewhere]
        .iter()
        .map(|t| enqueue(&mut store, t, T0))
        .collect();
    assert!(ids.iter().all(|e| !e.existing), "{ids:?}");
    assert_ne!(ids[0].id, ids[1].id);
    assert_ne!(ids[0].id, ids[2].id);
}

/// A write whose closure fails is rolled back whole: a task it inserted and a task it
/// cancelled before the failing statement are as they were, and the connection writes
/// again afterwards.
pub fn a_failed_write_changes_nothing(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let keyed = crate::NewTask {
        unique_key: Some("k"),
        ..new_task("keyed", b"x")
    };
    let (old, _) = task_in_with(&mut store, &keyed, TaskState::Cancelled);
    let holder = enqueue(&mut store, &keyed, T0).id;
    let waiting = add(&mut store, "waiting");
    let mut inserted = None;
    let result = store.write(|tx| {
        inserted = Some(tx.enqueue(&new_task("inserted", b"x"), T0)?.id);
        assert_eq!(tx.cancel(waiting, T0)?, Some(CancelOutcome::Cancelled));
        // Refused: another task holds its unique key.
        tx.retry(old, T0)
    });
    assert!(result.is_err(), "{result:?}");
    let inserted = inserted.expect("the insert ran");
    assert!(
        store.snapshot(inserted).expect("read").is_none(),
        "the insert is rolled back"
    );
    assert_eq!(
        state(&store, waiting),
        TaskState::Available,
        "the cancel too"
    );
    assert_eq!(state(&store, old), TaskState::Cancelled);
    assert_eq!(state(&store, holder), TaskState::Available);
    let after = enqueue(&mut store, &new_task("after", b"x"), T0 + 1);
    assert!(!after.existing);
    assert_eq!(state(&store, after.id), TaskState::Available);
}

/// `finish_many` records a turn's outcomes as `finish_if_running` would, one answer per
/// end; written again (a commit retried after its reply was lost), the worker's own
/// outcomes count as recorded and change nothing; another worker's, or a stale
/// attempt's, do not count.
pub fn finish_many_records_a_batch_and_knows_its_own_outcomes(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let (a, b, c) = (
        add(&mut store, "a"),
        add(&mut store, "b"),
        add(&mut store, "c"),
    );
    let claimed = claim(&mut store, &filter(&["a", "b", "c"]), 3);
    assert_eq!(claimed.len(), 3);
    let of = |id: Uuid| {
        claimed
            .iter()
            .find(|c| c.id == id)
            .expect("claimed")
            .clone()
    };
    let (ca, cb, cc) = (of(a), of(b), of(c));
    // Each worker's error names it, as the worker's own do.
    let ends = |worker: &str, at: i64| {
        let mut error = attempt_error(&cb, ErrorKind::Panic, "boom", at);
        error.worker = Some(worker.to_owned());
        vec![
            AttemptEnd {
                seq: ca.seq,
                attempt: ca.attempt,
                finish: Finish::Completed {
                    result: b"done",
                    result_fingerprint: None,
                },
            },
            AttemptEnd {
                seq: cb.seq,
                attempt: cb.attempt,
                finish: Finish::Failed {
                    transition: Transition {
                        state: TaskState::Discarded,
                        scheduled_at: None,
                    },
                    error,
                },
            },
            // A stale attempt of a running task.
            AttemptEnd {
                seq: cc.seq,
                attempt: cc.attempt + 1,
                finish: Finish::Completed {
                    result: b"stale",
                    result_fingerprint: None,
                },
            },
        ]
    };
    let first = store
        .write(|tx| tx.finish_many("w1", &ends("w1", T0 + SECOND), T0 + SECOND))
        .expect("finish");
    assert_eq!(first, [true, true, false]);
    // The same outcomes again, planned a moment later (the error's time differs).
    let again = store
        .write(|tx| tx.finish_many("w1", &ends("w1", T0 + 2 * SECOND), T0 + 2 * SECOND))
        .expect("finish again");
    assert_eq!(
        again,
        [true, true, false],
        "the worker's own outcomes, already written"
    );
    let by_another = store
        .write(|tx| tx.finish_many("w2", &ends("w2", T0 + 3 * SECOND), T0 + 3 * SECOND))
        .expect("finish as another worker");
    assert_eq!(by_another, [false, false, false], "not w2's attempts");
    let sa = snapshot(&store, a);
    assert_eq!(sa.state, TaskState::Completed);
    assert_eq!(sa.result.as_deref(), Some(&b"done"[..]));
    assert_eq!(sa.finalized_at, Some(T0 + SECOND), "written once");
    let sb = snapshot(&store, b);
    assert_eq!(sb.state, TaskState::Discarded);
    assert_eq!(sb.errors.len(), 1, "the error is recorded once");
    assert_eq!(sb.errors[0].error, "boom");
    assert_eq!(state(&store, c), TaskState::Running);
}
