//! A task's life through the real worker: dispatch, run, join, resolve; structured
//! arguments; subtasks dispatched through the worker; graceful shutdown.

use std::time::Duration;

use castor_abi::{JoinError, StatusError, Uuid};
use castor_fixture_tasks as fx;
use castor_store::TaskState;

use crate::support::{PATIENCE, TestDir, Worker, block_on, tasks_target, wait_until_begun};

#[test]
fn a_thread_task_runs_and_joins() {
    let dir = TestDir::new();
    let client = dir.client();
    let handle = fx::add::delay(&client, 2, 3).expect("delay");
    assert_eq!(handle.status().expect("status"), TaskState::Available);
    assert_eq!(handle.id().get_version_num(), 7, "ids are UUIDv7");
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--threads", "3"]);
    let banner = worker.stdout();
    for needle in [
        "started",
        "libcastor_fixture_tasks.so",
        "manager: add (thread)",
        "3 thread(s)",
    ] {
        assert!(
            banner.contains(needle),
            "banner lacks {needle:?}:\n{banner}"
        );
    }
    assert!(banner.contains(&dir.db().display().to_string()), "{banner}");
    assert_eq!(handle.join(PATIENCE).expect("join"), 5);
    assert_eq!(handle.status().expect("status"), TaskState::Completed);
    // Joining again returns the same result.
    assert_eq!(handle.join(Duration::ZERO).expect("join again"), 5);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("completed  add {}", handle.id())),
        "{}",
        out.stdout
    );
}

#[test]
fn structured_arguments_and_results_round_trip() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let order = fx::Order {
        customer: "Ada".into(),
        items: vec![1999, 501],
    };
    let invoice = fx::invoice::delay(&client, order)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    assert_eq!(
        invoice,
        fx::Invoice {
            customer: "Ada".into(),
            total: 2500
        }
    );
}

#[test]
fn join_on_an_unknown_id_says_so() {
    let dir = TestDir::new();
    let client = dir.client();
    let handle = fx::add::handle(&client, Uuid::now_v7());
    let err = handle.join(Duration::from_millis(10)).expect_err("unknown");
    assert!(
        matches!(err, JoinError::Status(StatusError::NotFound { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("no task"), "{err}");
    assert!(matches!(handle.status(), Err(StatusError::NotFound { .. })));
}

#[test]
fn join_times_out_and_can_be_joined_again() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::sleep_ms::delay(&client, 700).expect("delay");
    let err = handle
        .join(Duration::from_millis(50))
        .expect_err("too soon");
    match &err {
        JoinError::Timeout { id, task, .. } => {
            assert_eq!(*id, handle.id());
            assert_eq!(task, "sleep_ms");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("can be joined again"), "{err}");
    assert_eq!(handle.join(PATIENCE).expect("join again"), 700);
}

#[test]
fn resolve_works_on_a_minimal_executor() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::sleep_ms::delay(&client, 100).expect("delay");
    assert_eq!(block_on(handle.resolve()).expect("resolve"), 100);
}

#[test]
fn resolve_works_on_tokio() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio");
    let handles: Vec<_> = (0..20)
        .map(|i| fx::add::delay(&client, i, 1).expect("delay"))
        .collect();
    let sums = runtime.block_on(async {
        let mut sums = Vec::new();
        for handle in &handles {
            let sum = tokio::time::timeout(PATIENCE, handle.resolve())
                .await
                .expect("resolved in time")
                .expect("resolve");
            sums.push(sum);
        }
        sums
    });
    assert_eq!(sums, (1..=20).collect::<Vec<i64>>());
}

#[test]
fn a_task_dispatches_subtasks_through_the_worker() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let ids = fx::fan_out::delay(&client, 5)
        .expect("delay")
        .join(PATIENCE)
        .expect("fan_out");
    assert_eq!(ids.len(), 5);
    for (i, id) in ids.into_iter().enumerate() {
        let i = i as i64;
        assert_eq!(
            fx::add::handle(&client, id)
                .join(PATIENCE)
                .expect("subtask"),
            i + i
        );
    }
}

#[test]
fn a_task_joins_its_subtask_inside_the_worker() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--threads", "2"]);
    let sum = fx::add_via_subtask::delay(&client, 40, 2)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    assert_eq!(sum, 42);
}

#[test]
fn ctrl_c_lets_running_tasks_finish() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::sleep_ms::delay(&client, 400).expect("delay");
    wait_until_begun(&handle);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("stopping: no new tasks"),
        "{}",
        out.stdout
    );
    assert_eq!(handle.status().expect("status"), TaskState::Completed);
    assert!(
        out.stdout.contains("stopped: 1 completed"),
        "{}",
        out.stdout
    );
}

#[test]
fn sigterm_after_the_grace_period_abandons_running_tasks_for_a_retry() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--grace", "100ms"]);
    let handle = fx::sleep_ms::delay_with(
        &client,
        &castor_abi::DelayOptions::new().max_attempts(2),
        1_500,
    )
    .expect("delay");
    let waiting = fx::add::delay_many(&client, (0..3).map(|i| (i, i))).expect("delay");
    wait_until_begun(&handle);
    worker.signal(libc::SIGTERM);
    let out = worker.wait();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("abandoned  sleep_ms {}", handle.id())),
        "{}",
        out.stdout
    );
    // The abandoned attempt is recorded and the task will run again.
    assert_eq!(handle.status().expect("status"), TaskState::Retryable);
    // Tasks the worker never started are left for the next worker.
    for h in &waiting {
        let state = h.status().expect("status");
        assert!(
            matches!(state, TaskState::Available | TaskState::Completed),
            "{state}"
        );
    }
    // A new worker picks the abandoned task up again.
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    assert_eq!(handle.join(PATIENCE).expect("second attempt"), 1_500);
}
