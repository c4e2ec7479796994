//! What the engine keeps and shows: retention, logs, progress, large payloads, and the
//! reads the worker, the CLI and the dashboard make.

use uuid::Uuid;

use super::leases::worker_row;
use super::{
    MANAGER, SECOND, T0, TestDatabase, add, claim_one, complete, enqueue, fail, filter, new_task,
    snapshot, state, task_in,
};
use crate::{
    Claimed, LOG_LINES_KEPT, LOG_LINES_SLACK, ListFilter, LogLevel, NewLog, NewTask, Progress,
    StateCount, Store, TaskState,
};

/// Appends `line` to `claimed`'s attempt's log at `at`.
pub fn log(store: &mut Store, claimed: &Claimed, at: i64, level: LogLevel, line: &str) {
    store
        .write(|tx| {
            tx.append_log(&NewLog {
                seq: claimed.seq,
                attempt: claimed.attempt,
                at,
                level,
                line,
            })
        })
        .expect("append a log line");
}

/// The retention sweep deletes tasks that finished (completed, discarded, cancelled)
/// before the cutoff, up to the limit, with their log lines, and worker runs that stopped
/// before it; nothing unfinished, nothing newer, no live worker.
pub fn prune_deletes_finished_tasks_with_their_logs_and_stopped_workers(db: &dyn TestDatabase) {
    let mut store = db.connect();
    // Unfinished tasks (dispatched long ago) and one that finishes after the cutoff.
    let mut kept = Vec::new();
    for target in [
        TaskState::Scheduled,
        TaskState::Available,
        TaskState::Running,
        TaskState::Retryable,
    ] {
        kept.push(task_in(&mut store, &format!("t-{target}"), target).0);
    }
    let recent = add(&mut store, "recent");
    let recent_claim = claim_one(&mut store, "recent");
    // Three tasks finished before the cutoff; the first one dispatched logs (a driver
    // that reuses row numbers gives its number to the next task dispatched).
    let completed = add(&mut store, "completed");
    let claimed = claim_one(&mut store, "completed");
    for n in 0..5 {
        log(
            &mut store,
            &claimed,
            T0,
            LogLevel::Info,
            &format!("line {n}"),
        );
    }
    assert!(complete(&mut store, &claimed, b"", T0 + 4));
    let cancelled = add(&mut store, "cancelled");
    store
        .write(|tx| tx.cancel(cancelled, T0 + 2))
        .expect("cancel");
    let discarded = add(&mut store, "discarded");
    let claimed = claim_one(&mut store, "discarded");
    assert!(fail(
        &mut store,
        &claimed,
        TaskState::Discarded,
        None,
        T0 + 3
    ));
    assert_eq!(store.logs(completed).expect("logs").len(), 5);
    assert!(complete(&mut store, &recent_claim, b"", T0 + 100 * SECOND));
    kept.push(recent);
    // Worker runs: stopped before the cutoff, stopped after, alive.
    store
        .write(|tx| {
            for (id, started) in [("old", T0 - 10 * SECOND), ("new", T0), ("live", T0)] {
                tx.register_worker(&worker_row(id, started))?;
            }
            tx.stop_worker("old", T0 + 5)?;
            tx.stop_worker("new", T0 + 100 * SECOND)
        })
        .expect("workers");

    let cutoff = T0 + 50 * SECOND;
    assert_eq!(
        store.write(|tx| tx.prune(cutoff, 1)).expect("prune"),
        1,
        "the limit"
    );
    assert_eq!(
        store.write(|tx| tx.prune(cutoff, 100)).expect("prune"),
        2,
        "the rest"
    );
    assert_eq!(store.write(|tx| tx.prune(cutoff, 100)).expect("prune"), 0);
    for id in [cancelled, discarded, completed] {
        assert!(store.snapshot(id).expect("read").is_none(), "{id} pruned");
    }
    for id in &kept {
        assert!(store.snapshot(*id).expect("read").is_some(), "{id} kept");
    }
    // A task dispatched now never sees the pruned tasks' log lines.
    let fresh = add(&mut store, "fresh");
    assert!(store.logs(fresh).expect("logs").is_empty());
    let workers: Vec<String> = store
        .workers(false)
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    let mut workers = workers;
    workers.sort();
    assert_eq!(workers, ["live", "new"]);
}

/// Log lines come back in the order appended, with their attempt, time and level; a task
/// that logs more than [`LOG_LINES_KEPT`] lines keeps its newest (within
/// [`LOG_LINES_SLACK`] while its attempt runs, exactly once it finishes).
pub fn logs_are_appended_in_order_and_kept_to_the_newest(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let first = claim_one(&mut store, "a");
    log(&mut store, &first, T0 + 1, LogLevel::Warn, "attempt one");
    assert!(fail(
        &mut store,
        &first,
        TaskState::Retryable,
        Some(T0),
        T0 + 2
    ));
    store.write(|tx| tx.stage_due(MANAGER, T0)).expect("stage");
    let second = claim_one(&mut store, "a");
    let levels = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];
    for (n, level) in levels.iter().enumerate() {
        log(
            &mut store,
            &second,
            T0 + 10 + n as i64,
            *level,
            &format!("{level} line"),
        );
    }
    let logs = store.logs(id).expect("logs");
    assert_eq!(logs.len(), 5);
    assert_eq!(
        (logs[0].attempt, logs[0].at, logs[0].level),
        (1, T0 + 1, LogLevel::Warn)
    );
    assert_eq!(logs[0].line, "attempt one");
    for (n, level) in levels.iter().enumerate() {
        let line = &logs[n + 1];
        assert_eq!(
            (line.attempt, line.at, line.level),
            (2, T0 + 10 + n as i64, *level)
        );
        assert_eq!(line.line, format!("{level} line"));
    }
    assert!(
        store.logs(Uuid::now_v7()).expect("logs").is_empty(),
        "an unknown task"
    );

    // Many more lines than are kept, a batch per transaction as a worker writes them.
    let kept = usize::try_from(LOG_LINES_KEPT).expect("small");
    let slack = usize::try_from(LOG_LINES_SLACK).expect("small");
    let total = kept * 2 + 37;
    let mut written = 0;
    while written < total {
        let batch = (total - written).min(100);
        store
            .write(|tx| {
                for n in written..written + batch {
                    let line = format!("line {n}");
                    tx.append_log(&NewLog {
                        seq: second.seq,
                        attempt: second.attempt,
                        at: T0 + 100,
                        level: LogLevel::Info,
                        line: &line,
                    })?;
                }
                Ok(())
            })
            .expect("append");
        written += batch;
        let lines = store.logs(id).expect("logs").len();
        assert!(
            lines <= kept + slack,
            "{lines} lines kept after {written} while the attempt runs"
        );
    }
    let newest = |logs: &[crate::TaskLog]| logs.last().map(|l| l.line.clone());
    assert_eq!(
        newest(&store.logs(id).expect("logs")),
        Some(format!("line {}", total - 1))
    );
    assert!(complete(&mut store, &second, b"", T0 + 200));
    let logs = store.logs(id).expect("logs");
    assert_eq!(
        logs.len(),
        kept,
        "exactly the newest once the attempt is over"
    );
    let expected: Vec<String> = (total - kept..total).map(|n| format!("line {n}")).collect();
    let lines: Vec<String> = logs.iter().map(|l| l.line.clone()).collect();
    assert_eq!(lines, expected);
}

/// A log is kept to its newest lines across attempts: a first attempt that wrote one
/// line more than is kept ends with exactly the limit, and the retry's few lines push the
/// oldest of those out (a driver that counted only the running attempt's lines would
/// keep them all).
pub fn a_retry_keeps_the_newest_lines_across_attempts(db: &dyn TestDatabase) {
    let kept = usize::try_from(LOG_LINES_KEPT).expect("small");
    let mut store = db.connect();
    let id = add(&mut store, "a");
    let append = |store: &mut Store, claimed: &Claimed, lines: std::ops::Range<usize>| {
        store
            .write(|tx| {
                for n in lines.clone() {
                    let line = format!("line {n}");
                    tx.append_log(&NewLog {
                        seq: claimed.seq,
                        attempt: claimed.attempt,
                        at: T0,
                        level: LogLevel::Info,
                        line: &line,
                    })?;
                }
                Ok(())
            })
            .expect("append");
    };
    let first = claim_one(&mut store, "a");
    append(&mut store, &first, 0..kept + 1);
    assert!(fail(
        &mut store,
        &first,
        TaskState::Retryable,
        Some(T0),
        T0 + 1
    ));
    let lines: Vec<String> = store
        .logs(id)
        .expect("logs")
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(
        lines.len(),
        kept,
        "the first attempt's log, once it is over"
    );
    assert_eq!(lines.first().map(String::as_str), Some("line 1"));
    store
        .write(|tx| tx.stage_due(MANAGER, T0 + 1))
        .expect("stage");
    let second = claim_one(&mut store, "a");
    append(&mut store, &second, kept + 1..kept + 6);
    assert!(complete(&mut store, &second, b"", T0 + 2));
    let lines: Vec<String> = store
        .logs(id)
        .expect("logs")
        .into_iter()
        .map(|l| l.line)
        .collect();
    let expected: Vec<String> = (6..kept + 6).map(|n| format!("line {n}")).collect();
    assert_eq!(lines, expected, "the newest lines of both attempts");
}

/// Tasks logging at the same time, their lines interleaved, each keep their own newest
/// lines: however the lines of several tasks alternate, none grows without bound.
pub fn interleaved_logs_are_kept_to_the_newest_too(db: &dyn TestDatabase) {
    const TASKS: usize = 4;
    let mut store = db.connect();
    let names: Vec<String> = (0..TASKS).map(|n| format!("t{n}")).collect();
    let mut claims = Vec::new();
    for name in &names {
        let id = add(&mut store, name);
        claims.push((id, claim_one(&mut store, name)));
    }
    let kept = usize::try_from(LOG_LINES_KEPT).expect("small");
    let slack = usize::try_from(LOG_LINES_SLACK).expect("small");
    let per_task = kept * 3;
    for round in 0..per_task / 50 {
        store
            .write(|tx| {
                for n in round * 50..(round + 1) * 50 {
                    for (_, claimed) in &claims {
                        let line = format!("line {n}");
                        tx.append_log(&NewLog {
                            seq: claimed.seq,
                            attempt: claimed.attempt,
                            at: T0,
                            level: LogLevel::Info,
                            line: &line,
                        })?;
                    }
                }
                Ok(())
            })
            .expect("append");
    }
    for (n, (id, _)) in claims.iter().enumerate() {
        let lines = store.logs(*id).expect("logs").len();
        assert!(
            lines <= kept + slack,
            "task {n} keeps {lines} lines while it runs"
        );
    }
    for (id, claimed) in &claims {
        assert!(complete(&mut store, claimed, b"", T0 + 1));
        let logs = store.logs(*id).expect("logs");
        assert_eq!(logs.len(), kept);
        assert_eq!(logs[0].line, format!("line {}", per_task - kept));
    }
}

/// Progress is recorded for the attempt that is running and only for it: a stale
/// attempt's report, or one after the attempt finished, changes nothing, and a new
/// attempt starts without the last one's progress.
pub fn progress_is_recorded_only_for_the_running_attempt(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let id = add(&mut store, "a");
    assert_eq!(snapshot(&store, id).progress, None);
    let first = claim_one(&mut store, "a");
    let report = |store: &mut Store, c: &Claimed, attempt: u32, done: u64, message: &str| {
        store
            .write(|tx| tx.set_progress(c.seq, attempt, done, 10, message))
            .expect("progress");
    };
    report(&mut store, &first, first.attempt, 3, "copying");
    assert_eq!(
        snapshot(&store, id).progress,
        Some(Progress {
            done: 3,
            total: 10,
            message: Some("copying".into())
        })
    );
    report(&mut store, &first, first.attempt + 1, 9, "stale");
    report(&mut store, &first, first.attempt, 4, "");
    assert_eq!(
        snapshot(&store, id).progress,
        Some(Progress {
            done: 4,
            total: 10,
            message: None
        }),
        "an empty message clears it"
    );
    assert!(fail(
        &mut store,
        &first,
        TaskState::Retryable,
        Some(T0),
        T0 + 1
    ));
    report(&mut store, &first, first.attempt, 8, "after the end");
    assert_eq!(snapshot(&store, id).progress.map(|p| p.done), Some(4));
    store.write(|tx| tx.stage_due(MANAGER, T0)).expect("stage");
    let second = claim_one(&mut store, "a");
    assert_eq!(
        snapshot(&store, id).progress,
        None,
        "attempt 2 has reported nothing yet"
    );
    report(&mut store, &second, first.attempt, 5, "attempt one, late");
    assert_eq!(snapshot(&store, id).progress, None);
    report(&mut store, &second, second.attempt, 1, "again");
    assert_eq!(snapshot(&store, id).progress.map(|p| p.done), Some(1));
    assert!(complete(&mut store, &second, b"", T0 + 2));
    report(&mut store, &second, second.attempt, 10, "done");
    assert_eq!(snapshot(&store, id).progress.map(|p| p.done), Some(1));
}

/// Multi-MiB arguments and results round-trip byte for byte, through every read.
pub fn large_payloads_round_trip_byte_for_byte(db: &dyn TestDatabase) {
    const SIZE: usize = 6 << 20;
    // Bytes of every value, in an order no run-length trick shortens.
    let bytes = |seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    let args = bytes(0x9e37_79b9_7f4a_7c15);
    let result = bytes(0x2545_f491_4f6c_dd1d);
    let mut store = db.connect();
    let id = enqueue(&mut store, &new_task("big", &args), T0).id;
    assert_eq!(store.args_of(id).expect("args").as_deref(), Some(&args[..]));
    let claimed = claim_one(&mut store, "big");
    assert!(claimed.args == args, "the claim's arguments");
    assert!(complete(&mut store, &claimed, &result, T0 + 1));
    let snap = snapshot(&store, id);
    assert_eq!(snap.result.as_ref().map(Vec::len), Some(SIZE));
    assert!(snap.result.as_deref() == Some(&result[..]), "the result");
    // Another connection reads the same bytes.
    let other = db.connect();
    assert!(other.args_of(id).expect("args").as_deref() == Some(&args[..]));
    assert!(snapshot(&other, id).result.as_deref() == Some(&result[..]));
}

/// `stage_due` moves `scheduled` and `retryable` tasks of its manager whose time has
/// come (at it, not before) to `available`, and nothing else.
pub fn stage_due_moves_due_tasks_of_its_manager_only(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let at = |n: i64| T0 + n * SECOND;
    let delayed = |name: &'static str, n: i64| NewTask {
        run_at_us: Some(at(n)),
        ..new_task(name, b"x")
    };
    let soon = enqueue(&mut store, &delayed("soon", 10), T0).id;
    let later = enqueue(&mut store, &delayed("later", 20), T0).id;
    let elsewhere = enqueue(
        &mut store,
        &NewTask {
            manager: "other",
            ..delayed("soon", 10)
        },
        T0,
    )
    .id;
    let now_or_past = enqueue(&mut store, &delayed("now", 0), T0).id;
    assert_eq!(
        state(&store, now_or_past),
        TaskState::Available,
        "due at dispatch"
    );
    let retrying = add(&mut store, "retrying");
    let c = claim_one(&mut store, "retrying");
    assert!(fail(&mut store, &c, TaskState::Retryable, Some(at(15)), T0));
    assert_eq!(state(&store, soon), TaskState::Scheduled);

    let stage =
        |store: &mut Store, now: i64| store.write(|tx| tx.stage_due(MANAGER, now)).expect("stage");
    assert_eq!(stage(&mut store, at(10) - 1), 0);
    assert_eq!(stage(&mut store, at(10)), 1);
    assert_eq!(state(&store, soon), TaskState::Available);
    assert_eq!(
        state(&store, elsewhere),
        TaskState::Scheduled,
        "another manager's"
    );
    assert_eq!(stage(&mut store, at(17)), 1);
    assert_eq!(state(&store, retrying), TaskState::Available);
    assert_eq!(state(&store, later), TaskState::Scheduled);
    assert_eq!(stage(&mut store, at(30)), 1);
    assert_eq!(stage(&mut store, at(30)), 0);
    assert_eq!(state(&store, later), TaskState::Available);
    let claimed: Vec<Uuid> = super::claim(&mut store, &filter(&["soon", "later", "retrying"]), 10)
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(claimed.len(), 3);
}

/// `next_due` is the earliest start among a manager's waiting (`scheduled`, `retryable`)
/// tasks; `waiting` lists them soonest first; `unfinished` counts everything not
/// finished.
pub fn next_due_unfinished_and_waiting_read_the_waiting_tasks(db: &dyn TestDatabase) {
    let mut store = db.connect();
    assert_eq!(store.next_due(MANAGER).expect("due"), None);
    assert_eq!(store.unfinished(MANAGER).expect("count"), 0);
    assert!(store.waiting(MANAGER, 10).expect("waiting").is_empty());
    let delayed = |name: &'static str, n: i64| NewTask {
        run_at_us: Some(T0 + n * SECOND),
        ..new_task(name, b"x")
    };
    let third = enqueue(&mut store, &delayed("c", 30), T0).id;
    let first = enqueue(&mut store, &delayed("a", 10), T0).id;
    enqueue(
        &mut store,
        &NewTask {
            manager: "other",
            ..delayed("a", 1)
        },
        T0,
    );
    let retrying = add(&mut store, "r");
    let c = claim_one(&mut store, "r");
    assert!(fail(
        &mut store,
        &c,
        TaskState::Retryable,
        Some(T0 + 20 * SECOND),
        T0
    ));
    for target in TaskState::ALL {
        if target != TaskState::Scheduled && target != TaskState::Retryable {
            task_in(&mut store, &format!("t-{target}"), target);
        }
    }
    assert_eq!(
        store.next_due(MANAGER).expect("due"),
        Some(T0 + 10 * SECOND)
    );
    assert_eq!(store.next_due("other").expect("due"), Some(T0 + SECOND));
    assert_eq!(store.next_due("nobody").expect("due"), None);
    let waiting = store.waiting(MANAGER, 10).expect("waiting");
    let order: Vec<(Uuid, &str, i64)> = waiting
        .iter()
        .map(|w| (w.id, w.task.as_str(), w.starts_at))
        .collect();
    assert_eq!(
        order,
        vec![
            (first, "a", T0 + 10 * SECOND),
            (retrying, "r", T0 + 20 * SECOND),
            (third, "c", T0 + 30 * SECOND),
        ]
    );
    assert_eq!(store.waiting(MANAGER, 2).expect("waiting").len(), 2);
    // Due later (3) + available + running + waiting on its parent, which is available.
    assert_eq!(store.unfinished(MANAGER).expect("count"), 7);
    assert_eq!(store.unfinished("other").expect("count"), 1);
}

/// `oldest_available` is the earliest due time among a manager's `available` tasks: not
/// running, waiting or other managers' tasks; `None` once none is available.
pub fn oldest_available_reads_the_available_tasks_only(db: &dyn TestDatabase) {
    let mut store = db.connect();
    assert_eq!(store.oldest_available(MANAGER).expect("oldest"), None);
    enqueue(&mut store, &new_task("a", b"x"), T0 + 5 * SECOND);
    enqueue(&mut store, &new_task("b", b"x"), T0 + 2 * SECOND);
    // Older, but running, waiting or another manager's.
    add(&mut store, "c");
    claim_one(&mut store, "c");
    let delayed = NewTask {
        run_at_us: Some(T0 + SECOND),
        ..new_task("d", b"x")
    };
    enqueue(&mut store, &delayed, T0);
    let other = NewTask {
        manager: "other",
        ..new_task("a", b"x")
    };
    enqueue(&mut store, &other, T0);
    assert_eq!(
        store.oldest_available(MANAGER).expect("oldest"),
        Some(T0 + 2 * SECOND)
    );
    assert_eq!(store.oldest_available("other").expect("oldest"), Some(T0));
    claim_one(&mut store, "b");
    assert_eq!(
        store.oldest_available(MANAGER).expect("oldest"),
        Some(T0 + 5 * SECOND)
    );
    claim_one(&mut store, "a");
    assert_eq!(store.oldest_available(MANAGER).expect("oldest"), None);
}

/// `list` filters by state, name and manager, newest first, with the last error;
/// `counts` groups every task by manager, name and state; `completed_since` counts the
/// tasks completed from a time on.
pub fn list_counts_and_completed_since_read_every_task(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let mut ids = Vec::new();
    for target in TaskState::ALL {
        let id = task_in(&mut store, &format!("t-{target}"), target).0;
        if target == TaskState::Waiting {
            // Its parent, dispatched just before it.
            ids.extend(
                store
                    .parents(id)
                    .expect("read parents")
                    .iter()
                    .map(|p| p.id),
            );
        }
        ids.push(id);
    }
    let other = enqueue(
        &mut store,
        &NewTask {
            manager: "other",
            ..new_task("u", b"x")
        },
        T0,
    )
    .id;
    let all = store
        .list(&ListFilter {
            limit: 100,
            ..ListFilter::default()
        })
        .expect("list");
    let listed: Vec<Uuid> = all.iter().map(|s| s.id).collect();
    let mut newest_first = ids.clone();
    newest_first.push(other);
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let discarded = all
        .iter()
        .find(|s| s.state == TaskState::Discarded)
        .expect("listed");
    assert_eq!(discarded.last_error.as_deref(), Some("failed"));
    assert_eq!(discarded.attempt, 1);
    assert_eq!(discarded.attempted_by.as_deref(), Some("w1"));
    assert!(discarded.finalized_at.is_some());
    let only = |filter: ListFilter| -> Vec<Uuid> {
        store
            .list(&ListFilter {
                limit: 100,
                ..filter
            })
            .expect("list")
            .iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(
        only(ListFilter {
            states: vec![TaskState::Completed, TaskState::Cancelled],
            ..ListFilter::default()
        }),
        // The waiting task's parent first, then one per state: cancelled, completed.
        vec![ids[8], ids[6]]
    );
    assert_eq!(
        only(ListFilter {
            manager: Some("other".into()),
            ..ListFilter::default()
        }),
        vec![other]
    );
    assert_eq!(
        only(ListFilter {
            task: Some("u".into()),
            ..ListFilter::default()
        }),
        vec![other]
    );
    assert_eq!(
        store
            .list(&ListFilter {
                limit: 2,
                ..ListFilter::default()
            })
            .expect("list")
            .len(),
        2
    );

    let counts = store.counts().expect("counts");
    let mut expected: Vec<StateCount> = TaskState::ALL
        .iter()
        .map(|s| StateCount {
            manager: MANAGER.into(),
            task: format!("t-{s}"),
            state: *s,
            count: 1,
        })
        .collect();
    expected.push(StateCount {
        manager: "other".into(),
        task: "u".into(),
        state: TaskState::Available,
        count: 1,
    });
    expected.push(StateCount {
        manager: MANAGER.into(),
        task: super::PARENT.into(),
        state: TaskState::Available,
        count: 1,
    });
    let key = |c: &StateCount| (c.manager.clone(), c.task.clone(), c.state);
    let mut counts = counts;
    counts.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(counts, expected);

    // The completed task finished at T0 + 1 s (see `task_in`); a discarded one is no
    // completion.
    assert_eq!(store.completed_since(T0).expect("count"), 1);
    assert_eq!(store.completed_since(T0 + SECOND).expect("count"), 1);
    assert_eq!(store.completed_since(T0 + SECOND + 1).expect("count"), 0);
}

/// `state_of` reads one task's state (`None` for an unknown id); `change_counter`, where
/// the engine has one, moves when another connection commits, which is how a worker tells
/// other writers' wake-ups from its own.
pub fn state_of_and_the_change_counter(db: &dyn TestDatabase) {
    let mut store = db.connect();
    for target in TaskState::ALL {
        let (id, _) = task_in(&mut store, &format!("t-{target}"), target);
        assert_eq!(store.state_of(id).expect("read"), Some(target));
    }
    assert_eq!(store.state_of(Uuid::now_v7()).expect("read"), None);
    let mut other = db.connect();
    let Some(before) = store.change_counter().expect("read the counter") else {
        // The engine cannot tell: every wake-up counts as a change, nothing to check.
        return;
    };
    add(&mut other, "elsewhere");
    let after = store
        .change_counter()
        .expect("read the counter")
        .expect("a counter that existed still does");
    assert_ne!(before, after, "another connection committed");
}

/// `append_logs` writes a turn's lines for many tasks at once: each task's log keeps its
/// lines in order, and a log past the limit keeps only its newest lines.
pub fn a_batch_of_log_lines_keeps_each_tasks_order_and_limit(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let (a, b) = (add(&mut store, "a"), add(&mut store, "b"));
    let (ca, cb) = (claim_one(&mut store, "a"), claim_one(&mut store, "b"));
    let over = usize::try_from(LOG_LINES_KEPT).expect("small") + 5;
    let lines: Vec<(i64, u32, String)> = (0..over)
        .flat_map(|n| {
            [
                (ca.seq, ca.attempt, format!("a{n}")),
                (cb.seq, cb.attempt, format!("b{n}")),
            ]
        })
        .take(over + 3)
        .collect();
    let logs: Vec<NewLog<'_>> = lines
        .iter()
        .enumerate()
        .map(|(n, (seq, attempt, line))| NewLog {
            seq: *seq,
            attempt: *attempt,
            at: T0 + i64::try_from(n).expect("small"),
            level: LogLevel::Info,
            line,
        })
        .collect();
    store.write(|tx| tx.append_logs(&logs)).expect("append");
    // `a` wrote (over + 3) / 2 rounded up lines, `b` the rest: neither past the limit yet.
    let a_lines = (over + 3).div_ceil(2);
    let b_lines = (over + 3) / 2;
    let read = |store: &Store, id: Uuid| -> Vec<String> {
        store
            .logs(id)
            .expect("logs")
            .into_iter()
            .map(|l| l.line)
            .collect()
    };
    let expected = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    };
    assert_eq!(read(&store, a), expected("a", a_lines));
    assert_eq!(read(&store, b), expected("b", b_lines));
    // One more batch takes `a` past the limit; its finish trims it to the newest.
    let more: Vec<String> = (a_lines..over).map(|i| format!("a{i}")).collect();
    let more_logs: Vec<NewLog<'_>> = more
        .iter()
        .map(|line| NewLog {
            seq: ca.seq,
            attempt: ca.attempt,
            at: T0 + 10 * SECOND,
            level: LogLevel::Warn,
            line,
        })
        .collect();
    store
        .write(|tx| tx.append_logs(&more_logs))
        .expect("append more");
    assert!(complete(&mut store, &ca, b"ok", T0 + 20 * SECOND));
    let kept = read(&store, a);
    let keep = usize::try_from(LOG_LINES_KEPT).expect("small");
    assert_eq!(kept.len(), keep, "trimmed to the newest lines");
    assert_eq!(kept, expected("a", over)[over - keep..].to_vec());
}
