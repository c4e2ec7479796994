//! Chains and fan-ins: a dependent waits, is released with its parents' results composed
//! into its arguments, or ends (naming the parent) when one cannot complete, on every
//! path that ends a parent; settled at dispatch when its parents are already finished.

use std::sync::Arc;

use uuid::Uuid;

use super::{
    MANAGER, SECOND, T0, TestDatabase, add, claim, claim_one, complete, enqueue, fail, filter,
    new_task, snapshot, state,
};
use crate::chain::varint;
use crate::{
    After, ErrorKind, Finish, NewTask, ParentRef, RetryOutcome, Store, StoreError, TaskState,
};

fn parents(ids: &[Uuid]) -> Vec<ParentRef<'static>> {
    ids.iter()
        .map(|&id| ParentRef {
            id,
            result_fingerprint: None,
        })
        .collect()
}

/// Dispatches `task` after `ids` (a chain for one id unless `fan_in`) at `now`.
fn after(
    store: &mut Store,
    task: &NewTask<'_>,
    ids: &[Uuid],
    fan_in: bool,
    now: i64,
) -> Result<Uuid, StoreError> {
    let parents = parents(ids);
    let after = After {
        parents: &parents,
        fan_in,
    };
    store
        .write(|tx| tx.enqueue_after(task, &after, now))
        .map(|e| e.id)
}

/// Claims and completes the one available task named `name` with `result` at `now`.
fn run(store: &mut Store, name: &str, result: &[u8], now: i64) {
    let claimed = claim_one(store, name);
    assert!(complete(store, &claimed, result, now));
}

fn args(store: &Store, id: Uuid) -> Vec<u8> {
    store
        .args_of(id)
        .expect("read arguments")
        .expect("the task exists")
}

/// The last error of a task that ended while it waited, which must be of kind `chain`.
fn chain_error(store: &Store, id: Uuid) -> String {
    let snap = snapshot(store, id);
    let last = snap.errors.last().expect("an error is recorded");
    assert_eq!(last.kind, ErrorKind::Chain);
    assert_eq!(last.attempt, 0, "it never ran");
    last.error.clone()
}

/// A dependent waits (never claimed) until its parent completes, then is available with
/// the parent's result followed by its own arguments; `parents` names its parent.
pub fn a_chain_waits_then_runs_with_its_parents_result(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let render = add(&mut store, "render");
    let send = after(
        &mut store,
        &new_task("send", b"EXTRA"),
        &[render],
        false,
        T0,
    )
    .expect("dispatch after");
    assert_eq!(state(&store, send), TaskState::Waiting);
    assert!(
        claim(&mut store, &filter(&["send"]), 10).is_empty(),
        "waits"
    );
    let read = store.parents(send).expect("read parents");
    assert_eq!(read.len(), 1);
    assert_eq!(
        (read[0].position, read[0].id, read[0].task.as_str()),
        (0, render, "render")
    );
    assert_eq!(read[0].state, Some(TaskState::Available));
    let waiting = store.waiting_on_parents(MANAGER, 10).expect("read waiting");
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].id, waiting[0].parents.len()), (send, 1));
    assert!(
        store.parents(render).expect("read").is_empty(),
        "no parents"
    );

    run(&mut store, "render", b"RESULT", T0 + SECOND);
    assert_eq!(state(&store, send), TaskState::Available);
    assert_eq!(args(&store, send), b"RESULTEXTRA");
    assert_eq!(
        snapshot(&store, send).scheduled_at,
        T0 + SECOND,
        "available since"
    );
    assert_eq!(
        store.parents(send).expect("read")[0].state,
        Some(TaskState::Completed)
    );
    let claimed = claim_one(&mut store, "send");
    assert_eq!(
        (claimed.id, claimed.args.as_slice()),
        (send, &b"RESULTEXTRA"[..])
    );
    // A chain of three: each link released by the one before.
    let a = add(&mut store, "a");
    let b = after(&mut store, &new_task("b", b"-b"), &[a], false, T0).expect("b");
    let c = after(&mut store, &new_task("c", b"-c"), &[b], false, T0).expect("c");
    run(&mut store, "a", b"A", T0 + SECOND);
    assert_eq!(state(&store, b), TaskState::Available);
    assert_eq!(state(&store, c), TaskState::Waiting);
    run(&mut store, "b", b"B", T0 + 2 * SECOND);
    assert_eq!(args(&store, c), b"B-c");
}

/// A fan-in waits for every parent, whatever order they complete in, then gets their
/// results in the order given, as a sequence (its length first), then its own arguments.
pub fn a_fan_in_gets_every_result_in_order(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let ids = [
        add(&mut store, "p1"),
        add(&mut store, "p2"),
        add(&mut store, "p3"),
    ];
    let sum = after(&mut store, &new_task("sum", b"!"), &ids, true, T0).expect("fan-in");
    run(&mut store, "p3", b"C", T0 + SECOND);
    run(&mut store, "p1", b"A", T0 + SECOND);
    assert_eq!(state(&store, sum), TaskState::Waiting, "one parent left");
    run(&mut store, "p2", b"B", T0 + 2 * SECOND);
    assert_eq!(state(&store, sum), TaskState::Available);
    let mut expected = varint(3);
    expected.extend_from_slice(b"ABC!");
    assert_eq!(args(&store, sum), expected);
    // A fan-in of one is still a sequence.
    let one = add(&mut store, "one");
    let single = after(&mut store, &new_task("single", b""), &[one], true, T0).expect("fan-in");
    run(&mut store, "one", b"X", T0 + SECOND);
    assert_eq!(args(&store, single), [1, b'X']);
}

/// A parent discarded, cancelled or purged ends its dependents `cancelled` with an error
/// naming it (id and name), and theirs down the chain; a dependent's dependents of a
/// parent that completes are left waiting.
pub fn a_parent_that_cannot_complete_cancels_its_dependents(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let later = T0 + 5 * SECOND;
    // Discarded by its last attempt: B cancelled naming A, C naming B.
    let a = add(&mut store, "a");
    let b = after(&mut store, &new_task("b", b""), &[a], false, T0).expect("b");
    let c = after(&mut store, &new_task("c", b""), &[b], false, T0).expect("c");
    let claimed = claim_one(&mut store, "a");
    assert!(fail(
        &mut store,
        &claimed,
        TaskState::Discarded,
        None,
        later
    ));
    assert_eq!(state(&store, b), TaskState::Cancelled);
    assert_eq!(state(&store, c), TaskState::Cancelled);
    let why = chain_error(&store, b);
    assert!(why.contains(&a.to_string()) && why.contains("`a`"), "{why}");
    assert!(why.contains("was discarded"), "{why}");
    let why = chain_error(&store, c);
    assert!(
        why.contains(&b.to_string()) && why.contains("was cancelled"),
        "{why}"
    );
    assert_eq!(snapshot(&store, b).finalized_at, Some(later));
    // A retryable failure is not the end: the dependent still waits.
    let r = add(&mut store, "r");
    let after_r = after(&mut store, &new_task("after-r", b""), &[r], false, T0).expect("d");
    let claimed = claim_one(&mut store, "r");
    assert!(fail(
        &mut store,
        &claimed,
        TaskState::Retryable,
        Some(later),
        later
    ));
    assert_eq!(state(&store, after_r), TaskState::Waiting);

    // Cancelled by a user before it ran: a fan-in on it ends, although another parent
    // is still running.
    let running = add(&mut store, "running");
    let _held = claim_one(&mut store, "running");
    let x = add(&mut store, "x");
    let fan = after(&mut store, &new_task("fan", b""), &[running, x], true, T0).expect("fan");
    store.write(|tx| tx.cancel(x, later)).expect("cancel");
    assert_eq!(state(&store, fan), TaskState::Cancelled);
    let why = chain_error(&store, fan);
    assert!(
        why.contains(&x.to_string()) && why.contains("was cancelled"),
        "{why}"
    );

    // A running parent asked to cancel, whose attempt then fails: cancelled, and so is
    // the dependent.
    let slow = add(&mut store, "slow");
    let attempt = claim_one(&mut store, "slow");
    let after_slow =
        after(&mut store, &new_task("after-slow", b""), &[slow], false, T0).expect("dependent");
    store.write(|tx| tx.cancel(slow, later)).expect("cancel");
    assert_eq!(
        state(&store, after_slow),
        TaskState::Waiting,
        "still running"
    );
    let finish = Finish::Failed {
        transition: crate::Transition {
            state: TaskState::Retryable,
            scheduled_at: Some(later),
        },
        error: super::attempt_error(&attempt, ErrorKind::Cancelled, "stopped", later),
    };
    store
        .write(|tx| tx.finish_if_running(attempt.seq, attempt.attempt, &finish, later))
        .expect("finish");
    assert_eq!(state(&store, slow), TaskState::Cancelled);
    assert_eq!(state(&store, after_slow), TaskState::Cancelled);

    // Purged before it completed.
    let gone = add(&mut store, "gone");
    let orphan = after(&mut store, &new_task("orphan", b""), &[gone], false, T0).expect("d");
    let purged = store
        .write(|tx| tx.purge(&[TaskState::Available], T0 + SECOND))
        .expect("purge");
    assert!(purged >= 1);
    assert_eq!(state(&store, orphan), TaskState::Cancelled);
    let why = chain_error(&store, orphan);
    assert!(
        why.contains(&gone.to_string()) && why.contains("purged"),
        "{why}"
    );
    // The purged parent still has a name where the dependent shows it.
    let read = store.parents(orphan).expect("read");
    assert_eq!((read[0].task.as_str(), read[0].state), ("gone", None));
}

/// A dependent of a parent finished at dispatch is settled at once: available after a
/// completed one, cancelled after a discarded one; a parent not in the database refuses
/// the dispatch, and nothing is written.
pub fn a_dependent_of_a_finished_parent_is_settled_at_dispatch(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let done = add(&mut store, "done");
    run(&mut store, "done", b"D", T0 + SECOND);
    let next = after(
        &mut store,
        &new_task("next", b"+"),
        &[done],
        false,
        T0 + 2 * SECOND,
    )
    .expect("dispatch");
    assert_eq!(state(&store, next), TaskState::Available);
    assert_eq!(args(&store, next), b"D+");
    let failed = add(&mut store, "failed");
    let claimed = claim_one(&mut store, "failed");
    assert!(fail(
        &mut store,
        &claimed,
        TaskState::Discarded,
        None,
        T0 + SECOND
    ));
    let never = after(
        &mut store,
        &new_task("never", b""),
        &[failed],
        false,
        T0 + 2 * SECOND,
    )
    .expect("dispatch");
    assert_eq!(state(&store, never), TaskState::Cancelled);
    assert!(chain_error(&store, never).contains("was discarded"));
    let before = store.counts().expect("count");
    let unknown = Uuid::now_v7();
    let refused = after(
        &mut store,
        &new_task("lost", b""),
        &[done, unknown],
        true,
        T0,
    )
    .expect_err("an unknown parent");
    match &refused {
        StoreError::UnknownParent { parent, task, .. } => {
            assert_eq!((*parent, task.as_str()), (unknown, "lost"));
        }
        other => panic!("expected UnknownParent, got {other}"),
    }
    assert!(
        refused.to_string().contains(&unknown.to_string()),
        "{refused}"
    );
    assert_eq!(store.counts().expect("count"), before, "nothing written");
    // A unique key held by a waiting dependent returns it.
    let keyed = NewTask {
        unique_key: Some("k"),
        ..new_task("keyed", b"")
    };
    let open = add(&mut store, "open");
    let first = after(&mut store, &keyed, &[open], false, T0).expect("first");
    let again = store
        .write(|tx| {
            tx.enqueue_after(
                &keyed,
                &After {
                    parents: &parents(&[open]),
                    fan_in: false,
                },
                T0,
            )
        })
        .expect("again");
    assert_eq!((again.id, again.existing), (first, true));
    assert!(
        enqueue(&mut store, &keyed, T0).existing,
        "held while waiting"
    );
}

/// A parent's result recorded with another fingerprint than the dependent's app expected
/// is never passed on: the dependent ends `discarded`, naming both fingerprints; an
/// unknown one on either side is not checked.
pub fn a_result_of_another_type_discards_the_dependent(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let parent = add(&mut store, "v1");
    let expecting = [ParentRef {
        id: parent,
        result_fingerprint: Some("bbbbbbbbbbbbbbbb"),
    }];
    let child = store
        .write(|tx| {
            tx.enqueue_after(
                &new_task("v2-child", b""),
                &After {
                    parents: &expecting,
                    fan_in: false,
                },
                T0,
            )
        })
        .expect("dispatch")
        .id;
    let claimed = claim_one(&mut store, "v1");
    store
        .write(|tx| {
            tx.finish_if_running(
                claimed.seq,
                claimed.attempt,
                &Finish::Completed {
                    result: b"R",
                    result_fingerprint: Some("aaaaaaaaaaaaaaaa"),
                },
                T0 + SECOND,
            )
        })
        .expect("finish");
    assert_eq!(state(&store, child), TaskState::Discarded);
    let why = chain_error(&store, child);
    assert!(
        why.contains("aaaaaaaaaaaaaaaa") && why.contains("bbbbbbbbbbbbbbbb"),
        "{why}"
    );
    assert_eq!(args(&store, child), b"", "nothing composed");
}

/// `retry` of a dependent that ended while it waited puts it back to waiting on its
/// parents: after the failed parent is retried and completes, it runs.
pub fn a_retried_dependent_waits_on_its_parents_again(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let later = T0 + 5 * SECOND;
    let a = add(&mut store, "a");
    let b = after(&mut store, &new_task("b", b"+"), &[a], false, T0).expect("b");
    let claimed = claim_one(&mut store, "a");
    assert!(fail(
        &mut store,
        &claimed,
        TaskState::Discarded,
        None,
        later
    ));
    assert_eq!(state(&store, b), TaskState::Cancelled);
    // Its parent still discarded: it ends again at once.
    let outcome = store.write(|tx| tx.retry(b, later)).expect("retry");
    assert_eq!(outcome, Some(RetryOutcome::Rewaited(TaskState::Cancelled)));
    assert_eq!(
        store.write(|tx| tx.retry(a, later)).expect("retry"),
        Some(RetryOutcome::Retried)
    );
    let outcome = store.write(|tx| tx.retry(b, later)).expect("retry");
    assert_eq!(outcome, Some(RetryOutcome::Rewaited(TaskState::Waiting)));
    run(&mut store, "a", b"A", later + SECOND);
    assert_eq!(state(&store, b), TaskState::Available);
    assert_eq!(args(&store, b), b"A+");
    // Cancelled by a user while it waited: the same.
    let p = add(&mut store, "p");
    let q = after(&mut store, &new_task("q", b"+"), &[p], false, T0).expect("q");
    store.write(|tx| tx.cancel(q, later)).expect("cancel");
    assert_eq!(
        chain_error(&store, q),
        "cancelled while it waited on its parents"
    );
    let outcome = store.write(|tx| tx.retry(q, later)).expect("retry");
    assert_eq!(outcome, Some(RetryOutcome::Rewaited(TaskState::Waiting)));
}

/// Retention never deletes a parent whose dependents still wait on it (a fan-in whose
/// other parent is still running needs its result), and deletes it once they ran.
pub fn prune_keeps_a_parent_its_dependents_wait_on(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let early = add(&mut store, "early");
    let late = add(&mut store, "late");
    let fan = after(&mut store, &new_task("fan", b""), &[early, late], true, T0).expect("fan");
    run(&mut store, "early", b"E", T0 + SECOND);
    let pruned = store
        .write(|tx| tx.prune(T0 + 100 * SECOND, 100))
        .expect("prune");
    assert_eq!(pruned, 0, "its dependent waits on it");
    run(&mut store, "late", b"L", T0 + 2 * SECOND);
    assert_eq!(state(&store, fan), TaskState::Available);
    let pruned = store
        .write(|tx| tx.prune(T0 + 100 * SECOND, 100))
        .expect("prune");
    assert_eq!(pruned, 2, "both parents");
}

/// Two parents of one fan-in completed at once by two connections (two workers) release
/// it exactly once, with both results.
pub fn parents_completed_at_once_release_their_fan_in(db: &dyn TestDatabase) {
    const FANS: usize = 12;
    let mut store = db.connect();
    let mut fans = Vec::new();
    for _ in 0..FANS {
        let left = add(&mut store, "left");
        let right = add(&mut store, "right");
        fans.push(after(&mut store, &new_task("fan", b""), &[left, right], true, T0).expect("fan"));
    }
    let barrier = Arc::new(std::sync::Barrier::new(2));
    std::thread::scope(|scope| {
        for side in ["left", "right"] {
            let barrier = Arc::clone(&barrier);
            scope.spawn(move || {
                let mut store = db.connect();
                let claimed = claim(&mut store, &filter(&[side]), FANS);
                assert_eq!(claimed.len(), FANS);
                barrier.wait();
                for c in &claimed {
                    assert!(complete(&mut store, c, side.as_bytes(), T0 + SECOND));
                }
            });
        }
    });
    for fan in fans {
        assert_eq!(state(&store, fan), TaskState::Available);
        let mut expected = varint(2);
        expected.extend_from_slice(b"leftright");
        assert_eq!(args(&store, fan), expected);
    }
}
