//! Leases, worker rows and the rescuer's reads and writes.

use super::{
    MANAGER, SECOND, T0, TestDatabase, add, attempt_error, claim_as, claim_one, complete, filter,
    snapshot,
};
use crate::{ErrorKind, Finish, SignatureCount, TaskState, Transition, WorkerRow};

/// The argument fingerprint [`worker_row`] declares for task `a` (it declares none for `b`).
pub const FP_A: &str = "00000000000000aa";

/// A worker run as registered at `started_at`.
pub fn worker_row(id: &str, started_at: i64) -> WorkerRow {
    WorkerRow {
        id: id.to_owned(),
        manager: MANAGER.to_owned(),
        library: "/lib/libtasks.so".to_owned(),
        hostname: "host-1".to_owned(),
        host_id: Some("boot-1/pid:[4026531836]".to_owned()),
        pid: 4242,
        threads: 4,
        processes: 2,
        tasks: vec!["a".to_owned(), "b".to_owned()],
        args_fingerprints: [("a".to_owned(), FP_A.to_owned())].into(),
        started_at,
        heartbeat_at: started_at,
        stopped_at: None,
        completed: 0,
        failed: 0,
    }
}

/// A lease expires once its time has passed (not before, not at it); renewing extends
/// only the renewing worker's running tasks; expired leases come oldest first, up to the
/// limit, with what the rescuer needs.
pub fn leases_expire_and_renew(db: &dyn TestDatabase) {
    let mut store = db.connect();
    for name in ["a", "b", "c"] {
        add(&mut store, name);
    }
    let lease = |n: i64| T0 + n * SECOND;
    let a = claim_as(&mut store, &filter(&["a"]), "w1", 1, T0, lease(20)).remove(0);
    let b = claim_as(&mut store, &filter(&["b"]), "w1", 1, T0, lease(10)).remove(0);
    let c = claim_as(&mut store, &filter(&["c"]), "w2", 1, T0, lease(15)).remove(0);
    let expired = |store: &mut crate::Store, now: i64, limit: usize| -> Vec<i64> {
        store
            .write(|tx| tx.expired_leases(now, limit))
            .expect("expired leases")
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert!(
        expired(&mut store, lease(10), 10).is_empty(),
        "not before the lease ends"
    );
    assert_eq!(expired(&mut store, lease(10) + 1, 10), vec![b.seq]);
    assert_eq!(
        expired(&mut store, lease(30), 10),
        vec![b.seq, c.seq, a.seq]
    );
    assert_eq!(
        expired(&mut store, lease(30), 2),
        vec![b.seq, c.seq],
        "the limit"
    );
    let all = store
        .write(|tx| tx.expired_leases(lease(30), 1))
        .expect("expired leases");
    let first = &all[0];
    assert_eq!(first.id, b.id);
    assert_eq!(first.task, "b");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.max_attempts, 3);
    assert_eq!(first.backoff, b.backoff);
    assert_eq!(first.attempted_by.as_deref(), Some("w1"));

    // w1 renews what it holds: both of its leases move, w2's does not, even when w1
    // names it, nor does an attempt that is not the running one.
    let held = [(a.seq, a.attempt), (b.seq, b.attempt), (c.seq, c.attempt)];
    let renewed = store
        .write(|tx| tx.renew_leases("w1", &held, lease(60)))
        .expect("renew");
    assert_eq!(renewed, 2);
    assert_eq!(
        store
            .write(|tx| tx.renew_leases("w1", &[(a.seq, a.attempt + 1)], lease(99)))
            .expect("renew"),
        0,
        "another attempt of a's row"
    );
    // A row naming w1 that w1 does not hold (its claim committed while w1 saw an error)
    // is not renewed: it expires, to be rescued.
    assert_eq!(
        store
            .write(|tx| tx.renew_leases("w1", &[(b.seq, b.attempt)], lease(70)))
            .expect("renew"),
        1
    );
    assert_eq!(expired(&mut store, lease(65), 10), vec![c.seq, a.seq]);
    assert_eq!(expired(&mut store, lease(30), 10), vec![c.seq]);
    // A finished task has no lease to renew or expire.
    assert!(complete(&mut store, &a, b"", lease(31)));
    assert_eq!(
        store
            .write(|tx| tx.renew_leases("w1", &held, lease(90)))
            .expect("renew"),
        1
    );
    assert_eq!(expired(&mut store, lease(89), 10), vec![c.seq]);
    assert_eq!(expired(&mut store, lease(91), 10), vec![c.seq, b.seq]);
    assert_eq!(
        store
            .write(|tx| tx.renew_leases("nobody", &held, lease(90)))
            .expect("renew"),
        0
    );
}

/// A worker run is registered, beats (its totals recorded), and stops; `live_workers`
/// and `workers(true)` list only runs that have not stopped, `workers(false)` all of
/// them, newest first.
pub fn workers_register_beat_and_stop(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let old = worker_row("w-old", T0);
    // A row as an older castor wrote it: no host identity, no signatures.
    let new = WorkerRow {
        host_id: None,
        args_fingerprints: Default::default(),
        ..worker_row("w-new", T0 + SECOND)
    };
    store
        .write(|tx| {
            tx.register_worker(&old)?;
            tx.register_worker(&new)
        })
        .expect("register");
    assert_eq!(
        store.workers(false).expect("workers"),
        vec![new.clone(), old.clone()]
    );
    store
        .write(|tx| tx.heartbeat("w-old", T0 + 5 * SECOND, 12, 3))
        .expect("heartbeat");
    let live = store.write(|tx| tx.live_workers()).expect("live");
    let beat = live
        .iter()
        .find(|w| w.id == "w-old")
        .expect("w-old is live");
    assert_eq!(beat.heartbeat_at, T0 + 5 * SECOND);
    assert_eq!(beat.hostname, "host-1");
    assert_eq!(beat.pid, 4242);
    assert_eq!(beat.host_id.as_deref(), Some("boot-1/pid:[4026531836]"));
    let older = live
        .iter()
        .find(|w| w.id == "w-new")
        .expect("w-new is live");
    assert_eq!(older.host_id, None);
    assert_eq!(live.len(), 2);
    let row = store.workers(false).expect("workers");
    let row = row.iter().find(|w| w.id == "w-old").expect("w-old");
    assert_eq!((row.completed, row.failed), (12, 3));
    assert_eq!(row.heartbeat_at, T0 + 5 * SECOND);

    store
        .write(|tx| tx.stop_worker("w-old", T0 + 6 * SECOND))
        .expect("stop");
    let live = store.write(|tx| tx.live_workers()).expect("live");
    assert_eq!(
        live.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["w-new"]
    );
    let live_rows = store.workers(true).expect("workers");
    assert_eq!(live_rows, vec![new]);
    let all = store.workers(false).expect("workers");
    assert_eq!(all.len(), 2);
    let stopped = all.iter().find(|w| w.id == "w-old").expect("w-old");
    assert_eq!(stopped.stopped_at, Some(T0 + 6 * SECOND));
    assert_eq!(stopped.tasks, ["a", "b"]);
}

/// Burying a dead worker ends its running tasks' leases now, so the next rescue takes
/// them, and marks its run stopped; another worker's tasks are untouched.
pub fn burying_a_worker_ends_its_leases(db: &dyn TestDatabase) {
    let mut store = db.connect();
    store
        .write(|tx| {
            tx.register_worker(&worker_row("dead", T0))?;
            tx.register_worker(&worker_row("alive", T0))
        })
        .expect("register");
    for name in ["a", "b", "c"] {
        add(&mut store, name);
    }
    let far = T0 + 3600 * SECOND;
    let mine = claim_as(&mut store, &filter(&["a", "b"]), "dead", 2, T0, far);
    let theirs = claim_as(&mut store, &filter(&["c"]), "alive", 1, T0, far);
    let now = T0 + 10 * SECOND;
    assert!(
        store
            .write(|tx| tx.expired_leases(now, 10))
            .expect("expired")
            .is_empty()
    );
    let held = store.write(|tx| tx.bury_worker("dead", now)).expect("bury");
    assert_eq!(held, 2);
    let expired: Vec<i64> = store
        .write(|tx| tx.expired_leases(now, 10))
        .expect("expired")
        .iter()
        .map(|e| e.seq)
        .collect();
    let mut expected: Vec<i64> = mine.iter().map(|c| c.seq).collect();
    expected.sort_unstable();
    let mut found = expired.clone();
    found.sort_unstable();
    assert_eq!(found, expected, "only the dead worker's tasks");
    assert!(!expired.contains(&theirs[0].seq));
    let live = store.write(|tx| tx.live_workers()).expect("live");
    assert_eq!(
        live.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["alive"]
    );
    let dead = store.workers(false).expect("workers");
    let dead = dead.iter().find(|w| w.id == "dead").expect("dead");
    assert_eq!(dead.stopped_at, Some(now));
    for c in &mine {
        assert_eq!(
            snapshot(&store, c.id).state,
            TaskState::Running,
            "until rescued"
        );
    }
    // Its tasks are its own until rescued: burying it again finds them still.
    assert_eq!(
        store
            .write(|tx| tx.bury_worker("dead", now + 1))
            .expect("bury"),
        2
    );
}

/// The rescuer records an expired attempt as abandoned (retried under its policy); the
/// attempt's own late outcome then changes nothing, and the next claim is attempt 2.
pub fn a_rescued_attempt_cannot_finish(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let lost = claim_one(&mut store, "a");
    let now = T0 + 60 * SECOND;
    let expired = store
        .write(|tx| tx.expired_leases(now, 10))
        .expect("expired");
    assert_eq!(expired.len(), 1);
    let e = &expired[0];
    let rescued = store
        .write(|tx| {
            tx.finish_if_running(
                e.seq,
                e.attempt,
                &Finish::Failed {
                    transition: Transition {
                        state: TaskState::Retryable,
                        scheduled_at: Some(now),
                    },
                    error: attempt_error(&lost, ErrorKind::Abandoned, "worker died", now),
                },
                now,
            )
        })
        .expect("rescue");
    assert!(rescued);
    assert!(
        !complete(&mut store, &lost, b"late", now + 1),
        "the late outcome is dropped"
    );
    let snap = snapshot(&store, id);
    assert_eq!(snap.state, TaskState::Retryable);
    assert_eq!(snap.result, None);
    assert_eq!(snap.errors[0].kind, ErrorKind::Abandoned);
    store.write(|tx| tx.stage_due(MANAGER, now)).expect("stage");
    let next = claim_one(&mut store, "a");
    assert_eq!(next.attempt, 2);
    assert!(
        !complete(&mut store, &lost, b"late", now + 2),
        "attempt 1 still cannot"
    );
    assert!(complete(&mut store, &next, b"ok", now + 3));
    assert_eq!(snapshot(&store, id).result.as_deref(), Some(&b"ok"[..]));
}

/// The signatures live workers declare tell the available tasks no live worker claims:
/// those of a name live workers declare, dispatched with a known fingerprint none of them
/// has. Unknown fingerprints (the task's, or a worker's) never count; nor do stopped
/// workers, or workers whose heartbeat is older than asked.
pub fn signatures_tell_tasks_waiting_for_a_worker_of_theirs(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let other = "00000000000000bb";
    let dispatch = |store: &mut crate::Store, name: &str, fp: Option<&str>| {
        super::enqueue(
            store,
            &crate::NewTask {
                args_fingerprint: fp,
                ..super::new_task(name, b"x")
            },
            T0,
        )
        .id
    };
    let theirs = dispatch(&mut store, "a", Some(other));
    dispatch(&mut store, "a", Some(other));
    dispatch(&mut store, "a", Some(FP_A));
    dispatch(&mut store, "a", None);
    dispatch(&mut store, "b", Some(other));
    dispatch(&mut store, "c", Some(other));
    assert_eq!(
        store.available_signatures().expect("count"),
        [
            ("a", FP_A, 1),
            ("a", other, 2),
            ("b", other, 1),
            ("c", other, 1)
        ]
        .map(|(task, fp, count)| SignatureCount {
            manager: MANAGER.to_owned(),
            task: task.to_owned(),
            args_fingerprint: fp.to_owned(),
            count,
        })
        .to_vec()
    );
    // No worker: nothing waits for a signature (everything waits for a worker).
    let none = store.signatures(T0).expect("signatures");
    assert!(store.waiting_for_signature(&none).expect("read").is_empty());

    store
        .write(|tx| tx.register_worker(&worker_row("w1", T0)))
        .expect("register");
    let live = store.signatures(T0).expect("signatures");
    assert!(live.waits(MANAGER, "a", TaskState::Available, Some(other)));
    assert!(!live.waits(MANAGER, "a", TaskState::Available, Some(FP_A)));
    assert!(!live.waits(MANAGER, "a", TaskState::Available, None));
    assert!(!live.waits(MANAGER, "a", TaskState::Scheduled, Some(other)));
    assert!(!live.waits("other", "a", TaskState::Available, Some(other)));
    assert!(
        !live.waits(MANAGER, "b", TaskState::Available, Some(other)),
        "the worker's fingerprint of `b` is unknown"
    );
    assert_eq!(
        store.waiting_for_signature(&live).expect("read"),
        vec![SignatureCount {
            manager: MANAGER.to_owned(),
            task: "a".to_owned(),
            args_fingerprint: other.to_owned(),
            count: 2,
        }]
    );
    let listed = store
        .list(&crate::ListFilter {
            limit: 10,
            ..Default::default()
        })
        .expect("list");
    let row = listed.iter().find(|t| t.id == theirs).expect("listed");
    assert_eq!(row.args_fingerprint.as_deref(), Some(other));

    // A worker of the other signature: nothing of `a` waits.
    let second = WorkerRow {
        args_fingerprints: [("a".to_owned(), other.to_owned())].into(),
        ..worker_row("w2", T0 + SECOND)
    };
    store
        .write(|tx| tx.register_worker(&second))
        .expect("register");
    let both = store.signatures(T0).expect("signatures");
    assert!(!both.waits(MANAGER, "a", TaskState::Available, Some(other)));
    // Its heartbeat too old, or stopped, it no longer counts.
    let recent = store.signatures(T0 + 2 * SECOND).expect("signatures");
    assert!(!recent.waits(MANAGER, "a", TaskState::Available, Some(other)));
    store
        .write(|tx| tx.heartbeat("w1", T0 + 2 * SECOND, 0, 0))
        .expect("heartbeat");
    let recent = store.signatures(T0 + 2 * SECOND).expect("signatures");
    assert!(recent.waits(MANAGER, "a", TaskState::Available, Some(other)));
    store
        .write(|tx| tx.stop_worker("w2", T0 + 3 * SECOND))
        .expect("stop");
    let stopped = store.signatures(T0).expect("signatures");
    assert!(stopped.waits(MANAGER, "a", TaskState::Available, Some(other)));
}
