//! Claims: their order, what they return, and concurrent claimers.

use std::collections::HashSet;
use std::sync::Barrier;
use std::time::Duration;

use uuid::Uuid;

use super::{
    MANAGER, SECOND, T0, TestDatabase, add, claim, claim_as, enqueue, filter, new_task, snapshot,
};
use crate::{Backoff, Finish, NewTask, TaskFilter, TaskState};

/// Claims take the highest priority first, then the oldest, and only the names asked for.
pub fn claim_takes_priority_then_age_and_only_known_tasks(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let low = add(&mut store, "a");
    let unknown = add(&mut store, "mystery");
    let mut urgent = new_task("b", b"3");
    urgent.priority = 5;
    let high = enqueue(&mut store, &urgent, T0).id;
    let q = filter(&["a", "b"]);
    let claimed = claim(&mut store, &q, 10);
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![high, low]);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    assert!(
        claim(&mut store, &q, 10).is_empty(),
        "nothing left to claim"
    );
    assert_eq!(snapshot(&store, unknown).state, TaskState::Available);
}

/// Across task names and priorities, one claim at a time or many at once (a batch past
/// any row-by-row threshold), tasks come out by priority, then in dispatch order; another
/// manager's tasks of the same name are never claimed.
pub fn claims_follow_priority_then_dispatch_order(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let priorities = [0, 5, -1, 5, 0, 10, -1, 3, 0, 5, 10, 3];
    let mut dispatched = Vec::new();
    for (i, priority) in priorities.iter().enumerate() {
        let name = if i % 2 == 0 { "a" } else { "b" };
        let task = NewTask {
            priority: *priority,
            ..new_task(name, b"x")
        };
        // Dispatched a microsecond apart, in this order.
        let id = enqueue(&mut store, &task, T0 + i as i64).id;
        dispatched.push((*priority, i, id));
    }
    let elsewhere = NewTask {
        manager: "other",
        priority: 100,
        ..new_task("a", b"x")
    };
    let foreign = enqueue(&mut store, &elsewhere, T0).id;
    dispatched.sort_by_key(|&(priority, i, _)| (std::cmp::Reverse(priority), i));
    let expected: Vec<Uuid> = dispatched.iter().map(|&(_, _, id)| id).collect();

    let q = filter(&["a", "b"]);
    let first_three: Vec<Uuid> = claim(&mut store, &q, 3).iter().map(|c| c.id).collect();
    assert_eq!(
        first_three,
        expected[..3],
        "a claim of 3 takes the best 3, in order"
    );
    let mut one_by_one = first_three;
    loop {
        let claimed = claim(&mut store, &q, 1);
        let Some(c) = claimed.first() else { break };
        one_by_one.push(c.id);
    }
    assert_eq!(one_by_one, expected, "one at a time");
    assert_eq!(snapshot(&store, foreign).state, TaskState::Available);

    // A batch larger than any driver's row-by-row path.
    let mut batch = Vec::new();
    for i in 0..80 {
        let task = NewTask {
            priority: i % 4,
            ..new_task(if i % 3 == 0 { "a" } else { "b" }, b"x")
        };
        let id = enqueue(&mut store, &task, T0 + 100 + i64::from(i)).id;
        batch.push((i % 4, i, id));
    }
    batch.sort_by_key(|&(priority, i, _)| (std::cmp::Reverse(priority), i));
    let claimed: Vec<Uuid> = claim(&mut store, &q, 100).iter().map(|c| c.id).collect();
    let expected: Vec<Uuid> = batch.iter().map(|&(_, _, id)| id).collect();
    assert_eq!(claimed, expected, "a batch claim, in claim order");
}

/// A claim returns everything an attempt needs, and the row becomes `running`, its
/// attempt counted, owned by the claimer.
pub fn a_claim_returns_the_task_and_marks_it_running(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let timed = NewTask {
        priority: 7,
        max_attempts: 5,
        backoff_base_ms: 250,
        backoff_cap_ms: 9_000,
        timeout_ms: Some(1_500),
        ..new_task("timed", b"\x00\x01args\xff")
    };
    let id = enqueue(&mut store, &timed, T0).id;
    let untimed = enqueue(&mut store, &new_task("untimed", b""), T0).id;
    let now = T0 + 2 * SECOND;
    let claimed = claim_as(
        &mut store,
        &filter(&["timed", "untimed"]),
        "worker-7",
        10,
        now,
        now + 30 * SECOND,
    );
    assert_eq!(claimed.len(), 2);
    let c = &claimed[0];
    assert_eq!(c.id, id);
    assert_eq!(c.task, "timed");
    assert_eq!(c.args, b"\x00\x01args\xff");
    assert_eq!(c.attempt, 1);
    assert_eq!(c.max_attempts, 5);
    assert_eq!(
        c.backoff,
        Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_millis(9_000)
        }
    );
    assert_eq!(c.timeout, Some(Duration::from_millis(1_500)));
    assert_eq!(c.priority, 7);
    assert_eq!(claimed[1].id, untimed);
    assert_eq!(claimed[1].timeout, None);
    assert!(claimed[1].args.is_empty());
    let snap = snapshot(&store, id);
    assert_eq!(snap.state, TaskState::Running);
    assert_eq!(snap.attempt, 1);
    assert_eq!(snap.attempted_at, Some(now));
    assert_eq!(snap.attempted_by.as_deref(), Some("worker-7"));
    assert_eq!(snap.manager, MANAGER);
    assert_eq!(snap.created_at, T0);
    assert_eq!(snap.finalized_at, None);
}

/// Several claimers, each on its own connection, claim and complete in loops at once:
/// every task is claimed exactly once, by the claimer that completes it.
pub fn concurrent_claimers_never_claim_a_task_twice(db: &dyn TestDatabase) {
    const TASKS: usize = 600;
    // One claimer per batch size: one at a time, a few, and batches.
    const LIMITS: [usize; 4] = [1, 3, 8, 40];
    let mut store = db.connect();
    let args = [0u8; 16];
    let tasks: Vec<NewTask<'_>> = (0..TASKS).map(|_| new_task("a", &args)).collect();
    let ids: Vec<Uuid> = store
        .write(|tx| {
            tasks
                .iter()
                .map(|t| tx.enqueue(t, T0).map(|e| e.id))
                .collect()
        })
        .expect("enqueue");
    let start = Barrier::new(LIMITS.len());
    let per_claimer: Vec<Vec<Uuid>> = std::thread::scope(|scope| {
        let claimers: Vec<_> = LIMITS
            .iter()
            .enumerate()
            .map(|(n, &limit)| {
                let start = &start;
                scope.spawn(move || {
                    let mut store = db.connect();
                    let worker = format!("w{n}");
                    let q = filter(&["a"]);
                    let mut mine = Vec::new();
                    start.wait();
                    loop {
                        let claimed =
                            claim_as(&mut store, &q, &worker, limit, T0, T0 + 60 * SECOND);
                        if claimed.is_empty() {
                            return mine;
                        }
                        let completed = store
                            .write(|tx| {
                                claimed
                                    .iter()
                                    .map(|c| {
                                        let result = Finish::Completed {
                                            result: b"",
                                            result_fingerprint: None,
                                        };
                                        tx.finish_if_running(c.seq, c.attempt, &result, T0 + 1)
                                    })
                                    .collect::<Result<Vec<bool>, _>>()
                            })
                            .expect("complete");
                        assert!(completed.iter().all(|c| *c), "{worker} held its claims");
                        mine.extend(claimed.iter().map(|c| c.id));
                    }
                })
            })
            .collect();
        claimers
            .into_iter()
            .map(|c| c.join().expect("a claimer panicked"))
            .collect()
    });
    let total: usize = per_claimer.iter().map(Vec::len).sum();
    let distinct: HashSet<Uuid> = per_claimer.iter().flatten().copied().collect();
    assert_eq!(
        total,
        TASKS,
        "claims per claimer: {:?}",
        per_claimer.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(distinct.len(), TASKS, "no task claimed twice");
    for (n, mine) in per_claimer.iter().enumerate() {
        for id in mine {
            let snap = snapshot(&store, *id);
            assert_eq!(snap.state, TaskState::Completed);
            assert_eq!(snap.attempt, 1, "claimed once");
            assert_eq!(snap.attempted_by, Some(format!("w{n}")));
        }
    }
    assert!(ids.iter().all(|id| distinct.contains(id)));
}

/// A claim takes a name's tasks dispatched with the worker's argument fingerprint or with
/// none (an older app's), in claim order, many at once too; tasks dispatched with another
/// fingerprint stay `available` and are counted by `mismatched`; a completion records
/// the result fingerprint, read back with the task.
pub fn claims_match_argument_fingerprints(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let with = |fp: Option<&'static str>, priority: i32| NewTask {
        args_fingerprint: fp,
        priority,
        ..new_task("charge", b"x")
    };
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..40 {
        let (fp, list) = match i % 4 {
            0 => (Some("aaaa000000000001"), &mut mine),
            1 => (None, &mut mine),
            2 => (Some("bbbb000000000002"), &mut theirs),
            _ => (Some("cccc000000000003"), &mut theirs),
        };
        list.push(enqueue(&mut store, &with(fp, i % 3), T0 + i64::from(i)).id);
    }
    let other_name = enqueue(
        &mut store,
        &NewTask {
            args_fingerprint: Some("bbbb000000000002"),
            ..new_task("refund", b"x")
        },
        T0,
    )
    .id;
    let q = TaskFilter {
        args_fingerprints: vec![Some("aaaa000000000001".into()), None],
        ..filter(&["charge", "refund"])
    };
    let first = claim(&mut store, &q, 3);
    assert_eq!(first.len(), 3);
    let rest = claim(&mut store, &q, 100);
    let claimed: HashSet<Uuid> = first.iter().chain(&rest).map(|c| c.id).collect();
    assert_eq!(claimed, mine.iter().copied().collect::<HashSet<_>>());
    for id in theirs.iter().chain([&other_name]) {
        assert_eq!(snapshot(&store, *id).state, TaskState::Available);
    }
    let ordered: Vec<(i32, i64)> = rest.iter().map(|c| (-c.priority, c.seq)).collect();
    let mut sorted = ordered.clone();
    sorted.sort_unstable();
    assert_eq!(ordered, sorted, "claim order holds across fingerprints");

    let mut counts = store.mismatched(&q).expect("count");
    counts.sort_by(|a, b| (&a.task, &a.args_fingerprint).cmp(&(&b.task, &b.args_fingerprint)));
    let counts: Vec<(&str, &str, u64)> = counts
        .iter()
        .map(|m| (m.task.as_str(), m.args_fingerprint.as_str(), m.count))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("charge", "bbbb000000000002", 10),
            ("charge", "cccc000000000003", 10),
            ("refund", "bbbb000000000002", 1),
        ]
    );

    // The same filter with the other fingerprint takes the others.
    let q2 = TaskFilter {
        args_fingerprints: vec![Some("bbbb000000000002".into())],
        ..filter(&["charge"])
    };
    assert_eq!(claim(&mut store, &q2, 100).len(), 10);

    let done = &first[0];
    let recorded = store
        .write(|tx| {
            tx.finish_if_running(
                done.seq,
                done.attempt,
                &Finish::Completed {
                    result: b"ok",
                    result_fingerprint: Some("dddd000000000004"),
                },
                T0 + SECOND,
            )
        })
        .expect("finish");
    assert!(recorded);
    let read = snapshot(&store, done.id);
    assert_eq!(read.result_fingerprint.as_deref(), Some("dddd000000000004"));
    assert!(matches!(
        read.args_fingerprint.as_deref(),
        None | Some("aaaa000000000001")
    ));
    let unknown = snapshot(&store, mine[1]);
    assert_eq!(unknown.args_fingerprint, None);
    assert_eq!(unknown.result_fingerprint, None);
    assert_eq!(
        snapshot(&store, theirs[0]).args_fingerprint.as_deref(),
        Some("bbbb000000000002")
    );
}
