//! Conformance cases for flow control: concurrency limits (whole task and per key),
//! rate limits in a sliding window, overrides, and concurrent claimers that never
//! over-claim.

use std::sync::Barrier;
use std::time::Duration;

use super::{MANAGER, SECOND, T0, TestDatabase, complete, enqueue, filter, new_task};
use crate::limits::{DeclaredLimits, Held, LimitedClaim, Limits, Rate};
use crate::{Store, TaskFilter};

fn declare(store: &mut Store, task: &str, limits: Limits, key: Option<&str>) {
    store
        .write(|tx| tx.declare_limits(MANAGER, &[DeclaredLimits { task, limits, key }], T0))
        .expect("declare limits");
}

fn claim_limited(
    store: &mut Store,
    q: &TaskFilter,
    worker: &str,
    limit: usize,
    now: i64,
) -> LimitedClaim {
    store
        .write(|tx| tx.claim_limited(q, worker, limit, now, now + 60 * SECOND))
        .expect("claim under limits")
}

fn concurrency(n: u32) -> Limits {
    Limits {
        concurrency: Some(n),
        rate: None,
    }
}

fn add_n(store: &mut Store, task: &str, n: usize) {
    for _ in 0..n {
        enqueue(store, &new_task(task, b"x"), T0);
    }
}

/// At most N running across claimers; a finished attempt frees its slot; a task
/// without limits in the same filter is claimed as usual.
pub fn a_concurrency_limit_holds_across_claimers(db: &dyn TestDatabase) {
    let mut store = db.connect();
    declare(&mut store, "limited", concurrency(2), None);
    add_n(&mut store, "limited", 5);
    add_n(&mut store, "free", 3);
    let q = filter(&["limited", "free"]);
    let first = claim_limited(&mut store, &q, "w1", 10, T0);
    let names: Vec<&str> = first.claimed.iter().map(|c| c.task.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "limited").count(),
        2,
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| **n == "free").count(), 3);
    assert!(first.held, "the limit held three back");
    let second = claim_limited(&mut store, &q, "w2", 10, T0);
    assert!(second.claimed.is_empty(), "{:?}", second.claimed);
    assert!(second.held);
    let status = store.limit_status(Some(MANAGER), T0).expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].running, 2);
    assert_eq!(status[0].available, 3);
    assert_eq!(
        status[0].held_task().map(|h| h.to_string()).as_deref(),
        Some("held: concurrency 2/2 running")
    );
    let done = first
        .claimed
        .iter()
        .find(|c| c.task == "limited")
        .expect("a limited claim");
    assert!(complete(&mut store, done, b"", T0 + 1));
    let third = claim_limited(&mut store, &q, "w2", 10, T0 + 2);
    assert_eq!(third.claimed.len(), 1, "one slot freed");
    // A released claim (a worker giving back what it never began) frees its slot too.
    let given_back = &third.claimed[0];
    assert!(
        store
            .write(|tx| tx.release_if_running(given_back.seq, given_back.attempt))
            .expect("release")
    );
    assert_eq!(
        claim_limited(&mut store, &q, "w3", 10, T0 + 3)
            .claimed
            .len(),
        1
    );
}

/// With a partition key, N per key.
pub fn a_keyed_concurrency_limit_holds_per_key(db: &dyn TestDatabase) {
    let mut store = db.connect();
    declare(&mut store, "t", concurrency(1), Some("customer"));
    for key in ["a", "a", "a", "b", "b", "c"] {
        let mut task = new_task("t", b"x");
        task.concurrency_key = Some(key);
        enqueue(&mut store, &task, T0);
    }
    let q = filter(&["t"]);
    let first = claim_limited(&mut store, &q, "w1", 2, T0);
    assert_eq!(first.claimed.len(), 2, "a, then b (the second a is held)");
    let second = claim_limited(&mut store, &q, "w2", 10, T0);
    assert_eq!(second.claimed.len(), 1, "c only: a and b are running");
    assert!(second.held);
    let status = store.limit_status(Some(MANAGER), T0).expect("status");
    assert_eq!(status[0].running_by_key.get("a"), Some(&1));
    assert_eq!(
        status[0].held(Some("a")).map(|h| h.to_string()).as_deref(),
        Some("held: concurrency 1/1 running for customer=a")
    );
    assert!(complete(&mut store, &first.claimed[0], b"", T0 + 1));
    let third = claim_limited(&mut store, &q, "w1", 10, T0 + 2);
    assert_eq!(third.claimed.len(), 1, "the next a");
}

/// At most N starts in any window; the claim says when the next slot opens; the window
/// slides.
pub fn a_rate_limit_holds_in_a_sliding_window(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let rate = Rate {
        count: 3,
        per: Duration::from_secs(1),
    };
    declare(
        &mut store,
        "r",
        Limits {
            concurrency: None,
            rate: Some(rate),
        },
        None,
    );
    add_n(&mut store, "r", 10);
    let q = filter(&["r"]);
    let first = claim_limited(&mut store, &q, "w1", 2, T0);
    assert_eq!(first.claimed.len(), 2);
    assert_eq!(first.next_slot_at, None, "one start is left in the window");
    let second = claim_limited(&mut store, &q, "w2", 10, T0 + SECOND / 2);
    assert_eq!(second.claimed.len(), 1);
    assert_eq!(
        second.next_slot_at,
        Some(T0 + SECOND),
        "the oldest start leaves"
    );
    let held = claim_limited(&mut store, &q, "w1", 10, T0 + SECOND - 1);
    assert!(held.claimed.is_empty());
    let status = store
        .limit_status(Some(MANAGER), T0 + SECOND - 1)
        .expect("status");
    assert!(
        matches!(status[0].held_task(), Some(Held::Rate { .. })),
        "{:?}",
        status[0].held_task()
    );
    let slid = claim_limited(&mut store, &q, "w1", 10, T0 + SECOND);
    assert_eq!(
        slid.claimed.len(),
        2,
        "the two starts at T0 left the window"
    );
    assert_eq!(slid.next_slot_at, Some(T0 + SECOND / 2 + SECOND));
    // Completions do not free a rate's slot; time does.
    for c in &slid.claimed {
        assert!(complete(&mut store, c, b"", T0 + SECOND + 1));
    }
    assert!(
        claim_limited(&mut store, &q, "w1", 10, T0 + SECOND + 2)
            .claimed
            .is_empty()
    );
}

/// The override wins over the declaration, field by field, and clears; a new
/// declaration keeps it.
pub fn a_limit_override_wins_until_cleared(db: &dyn TestDatabase) {
    let mut store = db.connect();
    declare(&mut store, "t", concurrency(3), None);
    add_n(&mut store, "t", 6);
    let row = store
        .write(|tx| tx.set_limit_override(MANAGER, "t", &concurrency(1), T0))
        .expect("override");
    assert_eq!(row.effective(), concurrency(1));
    assert_eq!(row.declared, concurrency(3));
    declare(&mut store, "t", concurrency(4), None);
    let rows = store.limits(Some(MANAGER)).expect("limits");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].effective(),
        concurrency(1),
        "a restart keeps the override"
    );
    let q = filter(&["t"]);
    assert_eq!(claim_limited(&mut store, &q, "w1", 10, T0).claimed.len(), 1);
    store
        .write(|tx| tx.set_limit_override(MANAGER, "t", &Limits::default(), T0))
        .expect("clear");
    assert_eq!(claim_limited(&mut store, &q, "w1", 10, T0).claimed.len(), 3);
    // A declaration without limits clears the declared ones: nothing limits the task.
    declare(&mut store, "t", Limits::default(), None);
    assert!(
        store
            .limit_status(Some(MANAGER), T0)
            .expect("status")
            .is_empty()
    );
    assert_eq!(claim_limited(&mut store, &q, "w1", 10, T0).claimed.len(), 2);
}

/// Four claimers, each on its own connection, claiming and finishing in a loop: never
/// more running than the limit.
pub fn concurrent_limited_claimers_never_over_claim(db: &dyn TestDatabase) {
    const TASKS: usize = 120;
    const LIMIT: u32 = 3;
    let mut store = db.connect();
    declare(&mut store, "c", concurrency(LIMIT), None);
    add_n(&mut store, "c", TASKS);
    let start = Barrier::new(4);
    let done: usize = std::thread::scope(|scope| {
        let claimers: Vec<_> = (0..4)
            .map(|n| {
                let start = &start;
                scope.spawn(move || {
                    let mut store = db.connect();
                    let worker = format!("w{n}");
                    let q = filter(&["c"]);
                    let mut mine = 0;
                    let mut idle = 0;
                    start.wait();
                    while idle < 100_000 {
                        let claim = claim_limited(&mut store, &q, &worker, 2, T0);
                        let running = store
                            .limit_status(Some(MANAGER), T0)
                            .expect("status")
                            .first()
                            .map_or(0, |s| s.running);
                        assert!(running <= u64::from(LIMIT), "{running} running");
                        if claim.claimed.is_empty() {
                            if store.unfinished(MANAGER).expect("unfinished") == 0 {
                                break;
                            }
                            idle += 1;
                            std::thread::yield_now();
                            continue;
                        }
                        for c in &claim.claimed {
                            assert!(complete(&mut store, c, b"", T0 + 1));
                        }
                        mine += claim.claimed.len();
                        idle = 0;
                    }
                    mine
                })
            })
            .collect();
        claimers
            .into_iter()
            .map(|c| c.join().expect("claimer"))
            .sum()
    });
    assert_eq!(done, TASKS, "every task ran once");
}
