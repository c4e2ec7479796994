//! The conformance suite every driver must pass (River's `riverdrivertest`): the state
//! machine's guarded writes, claim order, concurrent claimers, leases and rescue, unique
//! keys, schedules, cancellation, retention, logs and progress, large payloads. Written
//! once against [`Store`]; a driver instantiates it with [`conformance_tests!`], giving a
//! function that opens a fresh, empty database for each case.
//!
//! Each case takes the database it is given and may assume nothing else uses it.

use std::time::Duration;

use uuid::Uuid;

use crate::{
    AttemptError, Backoff, Cadence, Claimed, ErrorKind, Finish, Missed, NewSchedule, NewTask,
    ScheduleFilter, Store, TaskFilter, TaskState, Transition, now_us, run_due_schedules,
};

/// Declares one `#[test]` per conformance case, each on a fresh database from `$open`
/// (an expression of type `fn() -> Store`).
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@cases $open;
            claim_takes_priority_then_age_and_only_known_tasks,
            finishing_is_guarded_by_attempt,
            failures_append_errors_and_retry_when_due,
            unique_keys_return_the_unfinished_task,
            missed_ticks_are_skipped_or_run_once,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let open: fn() -> $crate::Store = $open;
                let mut store = open();
                $crate::conformance::$case(&mut store);
            }
        )*
    };
}

/// A task of manager `manager` with 3 attempts and a 1 s to 60 s backoff.
pub fn new_task<'a>(task: &'a str, args: &'a [u8]) -> NewTask<'a> {
    NewTask {
        manager: "manager",
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
    }
}

/// Manager `manager`'s tasks of these names.
pub fn filter(tasks: &[&str]) -> TaskFilter {
    TaskFilter {
        manager: "manager".into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// Manager `manager`'s schedules of these task names.
pub fn schedules(tasks: &[&str]) -> ScheduleFilter {
    ScheduleFilter {
        manager: "manager".into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        periodic: Vec::new(),
    }
}

/// Claims up to `limit` tasks as worker `w1`, with a 30 s lease.
pub fn claim(store: &mut Store, filter: &TaskFilter, limit: usize) -> Vec<Claimed> {
    store
        .write(|tx| tx.claim(filter, "w1", limit, now_us(), now_us() + 30_000_000))
        .expect("claim")
}

/// Claims take the highest priority first, then the oldest, and only the names asked for.
pub fn claim_takes_priority_then_age_and_only_known_tasks(store: &mut Store) {
    let low = store.enqueue(&new_task("a", b"1")).expect("enqueue").id;
    let unknown = store
        .enqueue(&new_task("mystery", b"2"))
        .expect("enqueue")
        .id;
    let mut urgent = new_task("b", b"3");
    urgent.priority = 5;
    let high = store.enqueue(&urgent).expect("enqueue").id;
    let q = filter(&["a", "b"]);
    let claimed = claim(store, &q, 10);
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![high, low]);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    assert!(claim(store, &q, 10).is_empty(), "nothing left to claim");
    let left = store.snapshot(unknown).expect("read").expect("exists");
    assert_eq!(left.state, TaskState::Available);
}

/// A released claim is no attempt; a stale attempt cannot finish the row; finishing twice
/// does nothing.
pub fn finishing_is_guarded_by_attempt(store: &mut Store) {
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").id;
    let q = filter(&["a"]);
    let first = claim(store, &q, 1).remove(0);
    // The first attempt is given back (as a rescuer would), and claimed again.
    assert!(
        store
            .write(|tx| tx.release_if_running(first.seq, first.attempt))
            .expect("release")
    );
    let second = claim(store, &q, 1).remove(0);
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
                &Finish::Completed { result: b"no" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(!stale);
    let done = store
        .write(|tx| {
            tx.finish_if_running(
                second.seq,
                second.attempt,
                &Finish::Completed { result: b"ok" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(done);
    let snap = store.snapshot(id).expect("read").expect("exists");
    assert_eq!(snap.state, TaskState::Completed);
    assert_eq!(snap.result.as_deref(), Some(&b"ok"[..]));
    assert!(snap.finalized_at.is_some());
    // Finishing twice does nothing.
    let again = store
        .write(|tx| {
            tx.finish_if_running(
                second.seq,
                second.attempt,
                &Finish::Completed { result: b"2" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(!again);
}

/// A failed attempt appends its error and waits as `retryable` until due; staging then
/// makes it available for attempt 2 with its backoff.
pub fn failures_append_errors_and_retry_when_due(store: &mut Store) {
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").id;
    let q = filter(&["a"]);
    let now = now_us();
    let c = claim(store, &q, 1).remove(0);
    let error = AttemptError {
        attempt: 1,
        at: now,
        kind: ErrorKind::Error,
        error: "first".into(),
        worker: Some("w1".into()),
    };
    let retry_at = now + 60_000_000;
    store
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
                now,
            )
        })
        .expect("fail");
    let snap = store.snapshot(id).expect("read").expect("exists");
    assert_eq!(snap.state, TaskState::Retryable);
    assert_eq!(snap.errors, vec![error]);
    assert_eq!(snap.finalized_at, None);
    assert_eq!(store.next_due("manager").expect("due"), Some(retry_at));
    // Not yet due: nothing to stage or claim.
    assert_eq!(
        store
            .write(|tx| tx.stage_due("manager", now))
            .expect("stage"),
        0
    );
    assert!(claim(store, &q, 1).is_empty());
    // Due: staged and claimed as attempt 2.
    assert_eq!(
        store
            .write(|tx| tx.stage_due("manager", retry_at))
            .expect("stage"),
        1
    );
    let c2 = claim(store, &q, 1).remove(0);
    assert_eq!(c2.attempt, 2);
    assert_eq!(
        c2.backoff,
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60)
        }
    );
}

/// A unique key held by an unfinished task returns that task; once it finishes, the key
/// is free.
pub fn unique_keys_return_the_unfinished_task(store: &mut Store) {
    let mut t = new_task("a", b"x");
    t.unique_key = Some("report-42");
    let first = store.enqueue(&t).expect("enqueue");
    assert!(!first.existing);
    let second = store.enqueue(&t).expect("enqueue");
    assert!(second.existing);
    assert_eq!(first.id, second.id);
    // Once finished, the key is free again.
    let c = claim(store, &filter(&["a"]), 1).remove(0);
    store
        .write(|tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Completed { result: b"" },
                now_us(),
            )
        })
        .expect("finish");
    let third = store.enqueue(&t).expect("enqueue");
    assert!(!third.existing);
    assert_ne!(third.id, first.id);
}

fn schedule_at(cadence: &Cadence, first_run_at: i64, missed: Missed) -> NewSchedule<'_> {
    NewSchedule {
        manager: "manager",
        task: "a",
        name: None,
        args: b"",
        cadence,
        times: None,
        until: None,
        first_run_at,
        missed,
        priority: 0,
        max_attempts: 1,
        backoff_base_ms: 1000,
        backoff_cap_ms: 1000,
        timeout_ms: None,
    }
}

/// Missed ticks are skipped or run once by policy; each tick runs once however many
/// workers look; a worker that does not know the task leaves the schedule alone.
pub fn missed_ticks_are_skipped_or_run_once(store: &mut Store) {
    let every = Cadence::Every(Duration::from_secs(10));
    let now = now_us();
    // Ticks at -25 s, -15 s and -5 s: all missed.
    let ten_ago = now - 25_000_000;
    let (skip, once, on_time) = store
        .write(|tx| {
            Ok((
                tx.create_schedule(&schedule_at(&every, ten_ago, Missed::Skip), now)?,
                tx.create_schedule(&schedule_at(&every, ten_ago, Missed::RunOnce), now)?,
                tx.create_schedule(&schedule_at(&every, now - 100_000, Missed::Skip), now)?,
            ))
        })
        .expect("create");
    let created = store
        .write(|tx| run_due_schedules(tx, &schedules(&["a"]), now, 10))
        .expect("tick");
    assert_eq!(
        created.len(),
        2,
        "one catch-up run, one on-time run, no skipped run"
    );
    assert!(store.schedule_runs(skip).expect("runs").is_empty());
    assert_eq!(store.schedule_runs(once).expect("runs").len(), 1);
    assert_eq!(store.schedule_runs(on_time).expect("runs").len(), 1);
    for id in [skip, once, on_time] {
        let info = store.schedule(id).expect("read").expect("exists");
        let next = info.next_run_at.expect("not finished");
        assert!(
            next > now && next <= now + 10_000_000,
            "the next tick is ahead"
        );
    }
    // Nothing is due any more: a second pass (another worker) creates nothing.
    let again = store
        .write(|tx| run_due_schedules(tx, &schedules(&["a"]), now, 10))
        .expect("tick");
    assert!(again.is_empty());
    // A worker that does not know the task leaves the schedule alone.
    let later = now + 5_000_000;
    let other = store
        .write(|tx| run_due_schedules(tx, &schedules(&["b"]), later, 10))
        .expect("tick");
    assert!(other.is_empty());
}
