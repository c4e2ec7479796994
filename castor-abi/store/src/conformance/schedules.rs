//! Schedules: ticks (missed, once per tick, guarded), periodic declarations, pausing,
//! limits and removal.

use std::sync::Barrier;
use std::time::Duration;

use uuid::Uuid;

use super::{MANAGER, SECOND, T0, TestDatabase, schedules, snapshot};
use crate::{Cadence, Missed, NewSchedule, ScheduleFilter, run_due_schedules};

/// An app's schedule of task `a` with this cadence, first tick and missed-tick policy.
pub fn schedule_at(cadence: &Cadence, first_run_at: i64, missed: Missed) -> NewSchedule<'_> {
    NewSchedule {
        manager: MANAGER,
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
        args_fingerprint: None,
    }
}

/// Creates the runs of every due schedule `filter` selects at `now`.
pub fn tick(store: &mut crate::Store, filter: &ScheduleFilter, now: i64) -> Vec<Uuid> {
    store
        .write(|tx| run_due_schedules(tx, filter, now, 100))
        .expect("tick")
}

/// Missed ticks are skipped or run once by policy; each tick runs once however many
/// times workers look; a worker that does not know the task leaves the schedule alone.
pub fn missed_ticks_are_skipped_or_run_once(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let every = Cadence::Every(Duration::from_secs(10));
    let now = T0;
    // Ticks at -25 s, -15 s and -5 s: all missed.
    let long_ago = now - 25 * SECOND;
    let (skip, once, on_time) = store
        .write(|tx| {
            Ok((
                tx.create_schedule(&schedule_at(&every, long_ago, Missed::Skip), now)?,
                tx.create_schedule(&schedule_at(&every, long_ago, Missed::RunOnce), now)?,
                tx.create_schedule(&schedule_at(&every, now - 100_000, Missed::Skip), now)?,
            ))
        })
        .expect("create");
    let created = tick(&mut store, &schedules(&["a"]), now);
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
            next > now && next <= now + 10 * SECOND,
            "the next tick is ahead"
        );
    }
    // Nothing is due any more: a second pass (another worker) creates nothing.
    assert!(tick(&mut store, &schedules(&["a"]), now).is_empty());
    // A worker that does not know the task leaves the schedule alone.
    assert!(tick(&mut store, &schedules(&["b"]), now + 5 * SECOND).is_empty());
    // The runs carry the schedule's link and policy.
    let run = store.schedule_runs(once).expect("runs")[0];
    let snap = snapshot(&store, run);
    assert_eq!(snap.task, "a");
    assert_eq!(snap.max_attempts, 1);
    assert_eq!(snap.state, crate::TaskState::Available);
}

/// Two workers, each on its own connection, tick the same due schedules at once: each
/// tick gets one run. A move from a tick another worker already moved does nothing.
pub fn a_tick_runs_once_with_two_workers_ticking(db: &dyn TestDatabase) {
    const SCHEDULES: usize = 30;
    let mut store = db.connect();
    let every = Cadence::Every(Duration::from_secs(10));
    let ids: Vec<i64> = store
        .write(|tx| {
            (0..SCHEDULES)
                .map(|_| tx.create_schedule(&schedule_at(&every, T0, Missed::RunOnce), T0))
                .collect()
        })
        .expect("create");
    let start = Barrier::new(2);
    let created: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let mut store = db.connect();
                    let filter = schedules(&["a"]);
                    let mut created = 0;
                    start.wait();
                    // Small steps, so that the two interleave.
                    loop {
                        let runs = store
                            .write(|tx| run_due_schedules(tx, &filter, T0, 3))
                            .expect("tick");
                        if runs.is_empty() {
                            return created;
                        }
                        created += runs.len();
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect()
    });
    assert_eq!(created.iter().sum::<usize>(), SCHEDULES, "{created:?}");
    for id in &ids {
        assert_eq!(
            store.schedule_runs(*id).expect("runs").len(),
            1,
            "schedule {id}"
        );
        let info = store.schedule(*id).expect("read").expect("exists");
        assert_eq!(info.runs, 1);
        assert_eq!(info.next_run_at, Some(T0 + 10 * SECOND));
    }
    // The guard itself: moving from a tick the schedule has left changes nothing.
    let id = ids[0];
    let moved = store
        .write(|tx| tx.advance_schedule(id, T0, 5, Some(T0 + 999 * SECOND)))
        .expect("advance");
    assert!(!moved);
    let info = store.schedule(id).expect("read").expect("exists");
    assert_eq!((info.runs, info.next_run_at), (1, Some(T0 + 10 * SECOND)));
    let moved = store
        .write(|tx| tx.advance_schedule(id, T0 + 10 * SECOND, 2, Some(T0 + 20 * SECOND)))
        .expect("advance");
    assert!(moved);
}

/// The periodic task `nightly` (of task `a`) as a library declares it.
pub fn declared(cadence: &Cadence, first_run_at: i64) -> NewSchedule<'_> {
    NewSchedule {
        name: Some("nightly"),
        args: b"args",
        ..schedule_at(cadence, first_run_at, Missed::Skip)
    }
}

/// Claims the one available run, which must be `run`, as a worker whose task `a` has
/// argument fingerprint `fp`.
fn claim_run(store: &mut crate::Store, run: Uuid, at: i64, fp: Option<&str>) -> crate::Claimed {
    let filter = crate::TaskFilter {
        args_fingerprints: vec![fp.map(str::to_owned)],
        ..super::filter(&["a"])
    };
    let claimed = store
        .write(|tx| tx.claim(&filter, "w1", 1, at, at + 30 * SECOND))
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, run);
    claimed.into_iter().next().expect("one claim")
}

/// A periodic task's declaration, seen again unchanged (by a restarted worker, or a
/// second one), keeps its schedule and its next tick; changed in anything its runs
/// carry, it keeps its id and restarts from the new declaration's first tick, and its
/// runs follow the change.
pub fn periodic_upsert_keeps_an_unchanged_schedule_and_restarts_a_changed_one(
    db: &dyn TestDatabase,
) {
    let mut store = db.connect();
    let every = Cadence::Every(Duration::from_secs(60));
    let filter = ScheduleFilter {
        manager: MANAGER.into(),
        tasks: Vec::new(),
        periodic: vec!["nightly".into()],
    };
    let id = store
        .write(|tx| tx.upsert_periodic(&declared(&every, T0 + 60 * SECOND), T0))
        .expect("declare");
    assert_eq!(
        store.next_schedule_due(&filter).expect("due"),
        Some(T0 + 60 * SECOND)
    );
    // Unchanged, seen later: the same schedule, its tick kept.
    let again = store
        .write(|tx| tx.upsert_periodic(&declared(&every, T0 + 90 * SECOND), T0 + 30 * SECOND))
        .expect("declare");
    assert_eq!(again, id);
    let info = store.schedule(id).expect("read").expect("exists");
    assert_eq!(
        info.next_run_at,
        Some(T0 + 60 * SECOND),
        "the next tick is kept"
    );
    assert_eq!(info.name.as_deref(), Some("nightly"));
    assert_eq!(store.schedules(Some(MANAGER)).expect("list").len(), 1);
    let runs = tick(&mut store, &filter, T0 + 60 * SECOND);
    assert_eq!(runs.len(), 1);
    claim_run(&mut store, runs[0], T0 + 60 * SECOND, None);

    // One change at a time, each kept in the next declaration.
    let hourly = Cadence::Every(Duration::from_secs(3600));
    let mut change = declared(&hourly, 0);
    type Change = fn(&mut NewSchedule<'_>);
    let steps: [(&str, Change); 8] = [
        ("cadence", |_| {}),
        ("arguments", |s| s.args = b"other"),
        ("priority", |s| s.priority = 9),
        ("attempts", |s| s.max_attempts = 4),
        ("backoff", |s| {
            s.backoff_base_ms = 50;
            s.backoff_cap_ms = 500;
        }),
        ("timeout", |s| s.timeout_ms = Some(2_000)),
        // A new version of the library declares it: its runs take the new signature.
        ("fingerprint", |s| {
            s.args_fingerprint = Some("00000000000000f1")
        }),
        ("fingerprint", |s| {
            s.args_fingerprint = Some("00000000000000f2")
        }),
    ];
    let mut at = T0 + 1000 * SECOND;
    for (what, step) in steps {
        step(&mut change);
        at += 10_000 * SECOND;
        change.first_run_at = at;
        let same = store
            .write(|tx| tx.upsert_periodic(&change, at - SECOND))
            .expect("declare");
        assert_eq!(same, id, "{what}: the same schedule");
        let info = store.schedule(id).expect("read").expect("exists");
        assert_eq!(info.next_run_at, Some(at), "{what}: restarted");
        let runs = tick(&mut store, &filter, at);
        assert_eq!(runs.len(), 1, "{what}");
        assert_eq!(
            store.args_of(runs[0]).expect("args").as_deref(),
            Some(change.args),
            "{what}: the run's arguments"
        );
        assert_eq!(
            store
                .schedule(id)
                .expect("read")
                .expect("exists")
                .args_fingerprint
                .as_deref(),
            change.args_fingerprint,
            "{what}: the schedule's fingerprint"
        );
        assert_eq!(
            snapshot(&store, runs[0]).args_fingerprint.as_deref(),
            change.args_fingerprint,
            "{what}: the run's fingerprint"
        );
        let run = claim_run(&mut store, runs[0], at, change.args_fingerprint);
        let ms = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        assert_eq!(run.priority, change.priority, "{what}: the run's priority");
        assert_eq!(
            run.max_attempts, change.max_attempts,
            "{what}: its attempts"
        );
        assert_eq!(
            run.backoff.base,
            ms(change.backoff_base_ms),
            "{what}: its backoff"
        );
        assert_eq!(
            run.backoff.cap,
            ms(change.backoff_cap_ms),
            "{what}: its backoff"
        );
        assert_eq!(
            run.timeout,
            change.timeout_ms.map(ms),
            "{what}: its timeout"
        );
    }
    // The same name under another manager is another schedule.
    let elsewhere = NewSchedule {
        manager: "other",
        ..declared(&every, T0)
    };
    let other = store
        .write(|tx| tx.upsert_periodic(&elsewhere, T0))
        .expect("declare");
    assert_ne!(other, id);
}

/// A schedule an app created with an argument fingerprint keeps it, and each run carries
/// it: a worker of another signature of the task does not claim the run, one of its
/// signature does. A schedule without one makes runs of unknown signature, as before.
pub fn a_run_carries_its_schedules_fingerprint(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let every = Cadence::Every(Duration::from_secs(10));
    let fp = "00000000000000f1";
    let typed = NewSchedule {
        args_fingerprint: Some(fp),
        ..schedule_at(&every, T0, Missed::RunOnce)
    };
    let id = store
        .write(|tx| tx.create_schedule(&typed, T0))
        .expect("create");
    let untyped = store
        .write(|tx| tx.create_schedule(&schedule_at(&every, T0, Missed::RunOnce), T0))
        .expect("create");
    let info = store.schedule(id).expect("read").expect("exists");
    assert_eq!(info.args_fingerprint.as_deref(), Some(fp));
    let runs = tick(&mut store, &schedules(&["a"]), T0);
    assert_eq!(runs.len(), 2);
    let by_schedule = |store: &crate::Store, schedule: i64| {
        let ids = store.schedule_runs(schedule).expect("runs");
        assert_eq!(ids.len(), 1);
        snapshot(store, ids[0])
    };
    let run = by_schedule(&store, id);
    assert_eq!(run.args_fingerprint.as_deref(), Some(fp));
    let plain = by_schedule(&store, untyped);
    assert_eq!(plain.args_fingerprint, None);
    // A worker of another signature of `a` takes only the run of unknown signature.
    let other = crate::TaskFilter {
        args_fingerprints: vec![Some("00000000000000f2".to_owned())],
        ..super::filter(&["a"])
    };
    let claimed = store
        .write(|tx| tx.claim(&other, "w1", 10, T0, T0 + 30 * SECOND))
        .expect("claim");
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [plain.id]);
    claim_run(&mut store, run.id, T0, Some(fp));
}

/// A paused schedule does not tick until resumed; one past its run limit or its end
/// time is finished (no next tick); a removed one is gone, its runs kept. The next tick
/// a worker waits for counts only schedules that will tick.
pub fn paused_finished_and_removed_schedules_do_not_tick(db: &dyn TestDatabase) {
    let mut store = db.connect();
    let every = Cadence::Every(Duration::from_secs(10));
    let filter = schedules(&["a"]);
    let paused = store
        .write(|tx| tx.create_schedule(&schedule_at(&every, T0, Missed::RunOnce), T0))
        .expect("create");
    assert!(
        store
            .write(|tx| tx.set_schedule_paused(paused, true))
            .expect("pause")
    );
    assert!(
        store
            .schedule(paused)
            .expect("read")
            .expect("exists")
            .paused
    );
    assert_eq!(store.next_schedule_due(&filter).expect("due"), None);
    assert!(tick(&mut store, &filter, T0).is_empty(), "paused");
    assert!(
        store
            .write(|tx| tx.set_schedule_paused(paused, false))
            .expect("resume")
    );
    assert_eq!(store.next_schedule_due(&filter).expect("due"), Some(T0));
    assert_eq!(tick(&mut store, &filter, T0).len(), 1, "resumed");
    assert!(
        !store
            .write(|tx| tx.set_schedule_paused(9_999, true))
            .expect("pause")
    );

    // Two runs allowed; an end time.
    let twice = NewSchedule {
        times: Some(2),
        ..schedule_at(&every, T0 + 100 * SECOND, Missed::RunOnce)
    };
    let until = NewSchedule {
        until: Some(T0 + 215 * SECOND),
        ..schedule_at(&every, T0 + 200 * SECOND, Missed::RunOnce)
    };
    let (twice, until) = store
        .write(|tx| {
            Ok((
                tx.create_schedule(&twice, T0)?,
                tx.create_schedule(&until, T0)?,
            ))
        })
        .expect("create");
    for n in 0..4 {
        tick(&mut store, &filter, T0 + (100 + 10 * n) * SECOND);
        tick(&mut store, &filter, T0 + (200 + 10 * n) * SECOND);
    }
    let info = store.schedule(twice).expect("read").expect("exists");
    assert_eq!((info.runs, info.next_run_at), (2, None), "the run limit");
    assert_eq!(store.schedule_runs(twice).expect("runs").len(), 2);
    let info = store.schedule(until).expect("read").expect("exists");
    assert_eq!((info.runs, info.next_run_at), (2, None), "the end time");

    // Removed: gone from every list, its runs kept.
    let runs = store.schedule_runs(paused).expect("runs");
    assert!(
        store
            .write(|tx| tx.remove_schedule(paused))
            .expect("remove")
    );
    assert!(
        !store
            .write(|tx| tx.remove_schedule(paused))
            .expect("remove")
    );
    assert_eq!(store.schedule(paused).expect("read"), None);
    let listed: Vec<i64> = store
        .schedules(None)
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![twice, until]);
    assert!(store.schedules(Some("other")).expect("list").is_empty());
    for run in runs {
        snapshot(&store, run);
    }
    assert_eq!(store.next_schedule_due(&filter).expect("due"), None);
    assert!(tick(&mut store, &filter, T0 + 10_000 * SECOND).is_empty());
}
