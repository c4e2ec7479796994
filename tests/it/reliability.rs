//! Reliability: nothing lost when workers die, many workers and apps on one file,
//! cancellation in every state, retention, rescue, and a database that goes bad.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use castor_abi::{DelayOptions, JoinError, StatusError};
use castor_fixture_tasks as fx;
use castor_store::{Backoff, CancelOutcome, TaskState};
use castor_store::{OpenOptions, Store};

use crate::support::{
    PATIENCE, TestDir, Worker, fixture_app, recorded, run_castor, tasks_target, wait_for_state,
    wait_until, wait_until_begun,
};

fn wait_drained(db: &Path) {
    let store = Store::open(db, OpenOptions::app()).expect("open");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if store.unfinished("manager").expect("count") == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "tasks still unfinished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pseudo-random sequence (no RNG dependency; different every run).
fn randoms() -> impl FnMut(u64) -> u64 {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    move |bound| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound
    }
}

#[test]
fn nothing_is_lost_when_workers_are_killed_at_random_points() {
    let dir = TestDir::new();
    let client = dir.client();
    let file = dir.path().join("runs.txt").display().to_string();
    let n = 2_000;
    let handles =
        fx::record::delay_many(&client, (0..n).map(|i| (file.clone(), format!("k{i}"), 1)))
            .expect("dispatch");
    let mut random = randoms();
    for _ in 0..5 {
        let worker = Worker::start(
            &dir,
            &tasks_target("manager"),
            &["--quiet", "--threads", "4"],
        );
        // Killing at a random moment is the point of this test, not waiting for a state.
        std::thread::sleep(Duration::from_millis(50 + random(250)));
        worker.signal(libc::SIGKILL);
        let _ = worker.wait();
    }
    let worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--quiet", "--threads", "4"],
    );
    for handle in &handles {
        handle.join(PATIENCE).expect("every task completes");
    }
    let runs = recorded(Path::new(&file));
    assert_eq!(runs.len(), n, "every task ran at least once");
    let mut reruns = 0;
    for (i, handle) in handles.iter().enumerate() {
        let info = handle.info().expect("info");
        assert_eq!(info.state, TaskState::Completed);
        let executions = runs[&format!("k{i}")];
        // At-least-once: a task that ran again is accounted for by recorded attempts.
        assert!(
            info.attempt as usize >= executions,
            "k{i} ran {executions} times in {} attempts",
            info.attempt
        );
        assert_eq!(info.errors.len() as u32, info.attempt - 1, "{info:?}");
        if info.attempt > 1 {
            reruns += 1;
            assert!(
                info.errors
                    .iter()
                    .all(|e| e.kind == castor_store::ErrorKind::Abandoned),
                "{:?}",
                info.errors
            );
        }
    }
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(reruns > 0, "the kills should have interrupted some tasks");
}

#[test]
fn three_workers_and_three_apps_share_one_file() {
    let dir = TestDir::new();
    // Create the schema once before everyone starts.
    drop(dir.client());
    let file = dir.path().join("runs.txt");
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            Worker::start(
                &dir,
                &tasks_target("manager"),
                &["--quiet", "--threads", "2"],
            )
        })
        .collect();
    let per_app = 7_000;
    let app = fixture_app();
    // All three at once: spawn them all before waiting for any.
    let apps: Vec<_> = (0..3)
        .map(|a| {
            Command::new(&app)
                .arg(dir.db())
                .arg(&file)
                .arg(format!("app{a}"))
                .arg(per_app.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn fixture-app")
        })
        .collect();
    for app in apps {
        let out = app.wait_with_output().expect("run fixture-app");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "an app failed: {stderr}");
        assert!(!stderr.contains("locked"), "{stderr}");
    }
    wait_drained(&dir.db());
    let runs = recorded(&file);
    assert_eq!(runs.len(), 3 * per_app, "every task ran");
    assert!(runs.values().all(|&n| n == 1), "no task ran twice");
    let store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    let counts = store.counts().expect("counts");
    assert!(
        counts.iter().all(|c| c.state == TaskState::Completed),
        "{counts:?}"
    );
    let attempts = store
        .list(&castor_store::ListFilter {
            limit: 100_000,
            ..Default::default()
        })
        .expect("list");
    assert!(attempts.iter().all(|t| t.attempt == 1), "no lease expired");
    for worker in workers {
        let out = worker.stop();
        assert!(out.status.success(), "{}", out.stderr);
        assert!(!out.stdout.contains("database error"), "{}", out.stdout);
        assert!(!out.stderr.contains("locked"), "{}", out.stderr);
    }
}

fn assert_cancelled<R: serde::de::DeserializeOwned + std::fmt::Debug>(
    handle: &castor_abi::TaskHandle<R>,
) {
    match handle.join(PATIENCE) {
        Err(JoinError::Cancelled { id, .. }) => assert_eq!(id, handle.id()),
        other => panic!("expected a cancelled task, got {other:?}"),
    }
    assert_eq!(handle.status().expect("status"), TaskState::Cancelled);
}

#[test]
fn cancelling_tasks_that_have_not_started() {
    let dir = TestDir::new();
    let client = dir.client();
    let scheduled = fx::add::delay_with(
        &client,
        &DelayOptions::new().after(Duration::from_secs(3600)),
        1,
        1,
    )
    .expect("delay");
    assert_eq!(scheduled.status().expect("status"), TaskState::Scheduled);
    let available = fx::add::delay(&client, 2, 2).expect("delay");
    let slow_retry = DelayOptions::new().backoff(Backoff {
        base: Duration::from_secs(3600),
        cap: Duration::from_secs(3600),
    });
    let retryable = fx::flaky::delay_with(&client, &slow_retry, 5).expect("delay");
    assert_eq!(
        scheduled.cancel().expect("cancel"),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        available.cancel().expect("cancel"),
        CancelOutcome::Cancelled
    );
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    wait_for_state(&retryable, TaskState::Retryable);
    assert_eq!(
        retryable.cancel().expect("cancel"),
        CancelOutcome::Cancelled
    );
    // The worker is alive and never ran the cancelled ones.
    assert_eq!(
        fx::add::delay(&client, 3, 3)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        6
    );
    for handle in [&scheduled, &available] {
        assert_cancelled(handle);
        assert_eq!(handle.info().expect("info").attempt, 0, "it never ran");
    }
    assert_cancelled(&retryable);
    assert_eq!(retryable.info().expect("info").attempt, 1);
}

#[test]
fn cancelling_a_running_thread_task_sets_its_flag() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::wait_for_cancel::delay(&client).expect("delay");
    wait_for_state(&handle, TaskState::Running);
    assert_eq!(handle.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_cancelled(&handle);
}

#[test]
fn cancelling_a_running_process_task_kills_it() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--processes", "1", "--kill-grace", "100ms"],
    );
    let handle = fx::process_sleep::delay(&client, 60_000).expect("delay");
    wait_until_begun(&handle);
    let started = Instant::now();
    assert_eq!(handle.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_cancelled(&handle);
    assert!(started.elapsed() < Duration::from_secs(30));
    // A new child runs the next task.
    let sum = fx::process_add::delay(&client, 1, 2)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    assert_eq!(sum, 3);
}

/// The error of a task's only attempt, which was cancelled before it started.
fn assert_cancelled_before_it_started<R: serde::de::DeserializeOwned + std::fmt::Debug>(
    handle: &castor_abi::TaskHandle<R>,
) {
    assert_cancelled(handle);
    let errors = handle.info().expect("info").errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].error.starts_with("cancelled before it started"),
        "{errors:?}"
    );
}

/// One thread, held by a task; a second task claimed and waiting for the thread is
/// cancelled, then the first: when the thread frees, the second is recorded cancelled
/// without running (it would append to its file).
#[test]
fn a_claimed_thread_task_cancelled_before_it_starts_never_runs() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--threads", "1"]);
    let busy = fx::wait_for_cancel::delay(&client).expect("delay");
    wait_for_state(&busy, TaskState::Running);
    let ran = dir.path().join("ran.txt");
    let waiting =
        fx::record::delay(&client, ran.display().to_string(), "waiting".into(), 0).expect("delay");
    // Claimed: it waits for the thread.
    wait_for_state(&waiting, TaskState::Running);
    assert_eq!(waiting.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_eq!(busy.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_cancelled(&busy);
    assert_cancelled_before_it_started(&waiting);
    assert!(!ran.exists(), "the cancelled task ran");
    // The thread is free for the next task.
    let sum = fx::add::delay(&client, 1, 2)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    assert_eq!(sum, 3);
}

/// The same with one child: the waiting task is never sent to it.
#[test]
fn a_claimed_process_task_cancelled_before_it_starts_never_runs() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--processes", "1", "--kill-grace", "100ms"],
    );
    let busy = fx::process_sleep::delay(&client, 60_000).expect("delay");
    wait_for_state(&busy, TaskState::Running);
    let waiting = fx::process_add::delay(&client, 1, 2).expect("delay");
    wait_for_state(&waiting, TaskState::Running);
    assert_eq!(waiting.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_eq!(busy.cancel().expect("cancel"), CancelOutcome::Requested);
    assert_cancelled(&busy);
    assert_cancelled_before_it_started(&waiting);
}

/// A worker whose grace period ends while a cancelled claim still waits for its thread
/// records the claim cancelled: given back, it would run on the next worker.
#[test]
fn a_cancelled_claim_still_waiting_when_the_worker_stops_is_not_given_back() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--threads", "1", "--grace", "2s"],
    );
    // Holds the thread past the grace period: it does not look at its cancel flag.
    let busy = fx::sleep_ms::delay(&client, 60_000).expect("delay");
    wait_for_state(&busy, TaskState::Running);
    let ran = dir.path().join("ran.txt");
    let waiting =
        fx::record::delay(&client, ran.display().to_string(), "waiting".into(), 0).expect("delay");
    wait_for_state(&waiting, TaskState::Running);
    assert_eq!(waiting.cancel().expect("cancel"), CancelOutcome::Requested);
    // The worker sees the request within the grace period (at once, by its watch).
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(waiting.status().expect("status"), TaskState::Cancelled);
    assert_cancelled_before_it_started(&waiting);
    assert_eq!(
        busy.status().expect("status"),
        TaskState::Retryable,
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!ran.exists(), "the cancelled task ran");
}

#[test]
fn cancelling_a_finished_task_changes_nothing() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::add::delay(&client, 1, 1).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), 2);
    assert_eq!(
        handle.cancel().expect("cancel"),
        CancelOutcome::AlreadyFinished(TaskState::Completed)
    );
    assert_eq!(handle.join(PATIENCE).expect("still completed"), 2);
}

#[test]
fn finished_tasks_are_pruned_after_the_retention_period() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::add::delay(&client, 1, 1).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), 2);
    assert!(worker.stop().status.success());
    let waiting = fx::add::delay_with(
        &client,
        &DelayOptions::new().after(Duration::from_secs(3600)),
        5,
        5,
    )
    .expect("delay");
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--retention", "10ms"]);
    wait_until("the finished task is pruned", || {
        matches!(handle.status(), Err(StatusError::NotFound { .. }))
    });
    match handle.join(PATIENCE) {
        Err(err @ JoinError::Pruned { .. }) => {
            assert!(err.to_string().contains("pruned"), "{err}");
        }
        other => panic!("expected a pruned task, got {other:?}"),
    }
    // Unfinished tasks are never pruned.
    assert_eq!(waiting.status().expect("status"), TaskState::Scheduled);
    let out = worker.stop();
    assert!(
        out.stdout.contains("pruned 1 finished task(s)"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_dead_workers_task_is_rescued_by_the_next_worker() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::sleep_ms::delay_with(
        &client,
        &DelayOptions::new().backoff(Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
        }),
        1_000,
    )
    .expect("delay");
    wait_for_state(&handle, TaskState::Running);
    worker.signal(libc::SIGKILL);
    let _ = worker.wait();
    let rescuer = Worker::start(&dir, &tasks_target("manager"), &[]);
    assert_eq!(handle.join(PATIENCE).expect("runs again"), 1_000);
    let info = handle.info().expect("info");
    assert_eq!(info.attempt, 2);
    assert_eq!(info.errors[0].kind, castor_store::ErrorKind::Abandoned);
    assert!(
        info.errors[0].error.contains("is gone"),
        "{:?}",
        info.errors
    );
    let out = rescuer.stop();
    assert!(
        out.stdout.contains("rescuing the tasks of worker"),
        "{}",
        out.stdout
    );
}

/// An app whose library declares a task this worker's library does not.
mod newer_app {
    #[castor_abi::task(thread)]
    pub fn mystery() -> u32 {
        7
    }

    castor_abi::manager!(pub manager, db = "unused.db", tasks = [mystery]);
}

#[test]
fn tasks_no_worker_knows_are_left_alone_and_shown() {
    let dir = TestDir::new();
    let client = dir.client();
    let newer = newer_app::manager()
        .with_database(dir.db())
        .open()
        .expect("open");
    let mystery = newer_app::mystery::delay(&newer).expect("delay");
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    assert_eq!(
        fx::add::delay(&client, 1, 2)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        3
    );
    assert_eq!(mystery.status().expect("status"), TaskState::Available);
    let db = dir.db().display().to_string();
    let out = run_castor(&dir, &["stats", "--db", &db]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("waiting tasks no live worker runs"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("manager / mystery: 1 waiting"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_truncated_database_is_reported_not_used() {
    let dir = TestDir::new();
    {
        let client = dir.client();
        fx::add::delay_many(&client, (0..2_000).map(|i| (i, i))).expect("dispatch");
    }
    // The last connection closed: the WAL is checkpointed into the main file.
    let len = std::fs::metadata(dir.db()).expect("stat").len();
    assert!(len > 64 * 1024, "the database has some pages ({len} bytes)");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.db())
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    let db = dir.db().display().to_string();
    let out = run_castor(&dir, &[&tasks_target("manager"), "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is damaged"), "{}", out.stderr);
    let err = castor_fixture_tasks::manager()
        .with_database(dir.db())
        .open()
        .and_then(|client| {
            fx::add::delay(&client, 1, 1).map(|_| client).map_err(|e| {
                castor_abi::OpenError::Store(match e {
                    castor_abi::DispatchError::Store(s) => s,
                    other => panic!("{other}"),
                })
            })
        })
        .expect_err("the app sees the damage too");
    assert!(err.to_string().contains("is damaged"), "{err}");
}

#[test]
fn a_read_only_database_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new();
    drop(dir.client());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(dir.db(), std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let mut command = Command::new(crate::support::castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(dir.db())
        .current_dir(dir.path());
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // Root writes anywhere: run as `nobody`, for whom the file is read-only.
        command.uid(65534).gid(65534);
    }
    let out = Worker::spawn(command).wait();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("read-only"), "{}", out.stderr);
}

#[test]
fn a_full_disk_fails_the_write_and_keeps_what_was_written() {
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new();
    drop(dir.client());
    let file = dir.path().join("runs.txt");
    let mut command = Command::new(fixture_app());
    command.arg(dir.db()).arg(&file).arg("full").arg("100000");
    // SAFETY: setrlimit and signal are async-signal-safe; the limit makes the database's
    // files unable to grow past 256 KiB, as on a full disk.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: 256 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = command.output().expect("run fixture-app");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the app should fail");
    assert!(stderr.contains("disk full"), "{stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    // Every dispatch acknowledged before the failure is in the database.
    let failed_at: usize = stderr
        .split("dispatch ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("the app names the dispatch that failed");
    let store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    assert_eq!(
        store.unfinished("manager").expect("count") as usize,
        failed_at
    );
    let keys: HashSet<String> = store
        .list(&castor_store::ListFilter {
            limit: 1_000_000,
            ..Default::default()
        })
        .expect("list")
        .into_iter()
        .map(|t| t.task)
        .collect();
    assert_eq!(keys, HashSet::from(["record".to_owned()]));
}
