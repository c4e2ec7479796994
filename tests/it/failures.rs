//! Tasks that go wrong: each failure ends in the right state with an error a user can
//! read, and the worker keeps running.

use std::time::Duration;

use castor_abi::{DelayOptions, DispatchError, JoinError};
use castor_fixture_tasks as fx;
use castor_store::TaskState;

use crate::support::{PATIENCE, TestDir, Worker, tasks_target};

/// The worker still runs tasks after whatever went wrong before.
fn assert_worker_alive(client: &castor_abi::Client) {
    let sum = fx::add::delay(client, 20, 22)
        .expect("delay")
        .join(PATIENCE)
        .expect("the worker still runs tasks");
    assert_eq!(sum, 42);
}

fn failed(err: JoinError) -> (u32, String, Vec<castor_abi::AttemptError>) {
    match err {
        JoinError::Failed {
            attempts,
            message,
            errors,
            ..
        } => (attempts, message, errors),
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[test]
fn a_panicking_task_is_discarded_with_the_panic_message() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::panics::delay(&client, "the flux capacitor broke".into()).expect("delay");
    let (attempts, message, errors) = failed(handle.join(PATIENCE).expect_err("panics"));
    assert_eq!(attempts, 1);
    assert!(message.contains("panicked at"), "{message}");
    assert!(
        message.contains("tests/fixtures/tasks/src/lib.rs"),
        "{message}"
    );
    assert!(message.contains("the flux capacitor broke"), "{message}");
    assert_eq!(errors[0].kind, castor_store::ErrorKind::Panic);
    assert_eq!(handle.status().expect("status"), TaskState::Discarded);
    assert_worker_alive(&client);
    let out = worker.stop();
    assert!(out.status.success());
    assert!(
        out.stdout
            .contains(&format!("discarded  panics {}", handle.id())),
        "{}",
        out.stdout
    );
    // The panic went into the task's error, not onto the worker's terminal.
    assert!(!out.stderr.contains("flux capacitor"), "{}", out.stderr);
}

#[test]
fn an_error_is_reported_with_its_message() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let err = fx::fail::delay(&client, "mail server said no".into())
        .expect("delay")
        .join(PATIENCE)
        .expect_err("fails");
    assert!(
        err.to_string()
            .contains("failed after 1 attempt(s): mail server said no"),
        "{err}"
    );
    assert_worker_alive(&client);
}

/// What an app built against an older version of the fixture declared: `add` took one
/// string then.
mod old_app {
    #[castor_abi::task(thread)]
    pub fn add(words: String) -> i64 {
        words.len() as i64
    }

    castor_abi::manager!(pub manager, db = "unused.db", tasks = [add]);
}

#[test]
fn a_task_dispatched_with_other_parameters_waits_for_a_worker_of_its_version() {
    let dir = TestDir::new();
    let old = old_app::manager()
        .with_database(dir.db())
        .open()
        .expect("open");
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = old_app::add::delay(&old, "two and two".into()).expect("delay");
    worker.wait_for_stdout("leaving 1 task(s) of `add` dispatched with a different signature");
    assert_worker_alive(&client);
    assert_eq!(handle.status().expect("status"), TaskState::Available);
}

#[test]
fn arguments_that_do_not_decode_fail_the_task_with_a_clear_error() {
    let dir = TestDir::new();
    let client = dir.client();
    // A row with no fingerprint (as an app built before fingerprints wrote it) whose
    // arguments are another type's: the worker claims it, and decoding fails.
    let args = castor_abi::codec::encode(&("two and two".to_owned(),)).expect("encode");
    let mut store =
        castor_store::Store::open(dir.db(), castor_store::OpenOptions::app()).expect("open");
    let id = store
        .enqueue(&castor_store::NewTask {
            manager: "manager",
            task: "add",
            args: &args,
            run_at_us: None,
            priority: 0,
            unique_key: None,
            max_attempts: 3,
            backoff_base_ms: 10,
            backoff_cap_ms: 10,
            timeout_ms: None,
            schedule_id: None,
            args_fingerprint: None,
            concurrency_key: None,
        })
        .expect("enqueue")
        .id;
    drop(store);
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::add::handle(&client, id);
    let (attempts, message, _) = failed(handle.join(PATIENCE).expect_err("bad args"));
    assert_eq!(attempts, 1, "decode errors are not retried");
    assert!(message.contains("task `add`"), "{message}");
    assert!(message.contains("do not match its parameters"), "{message}");
    assert!(message.contains("(i64, i64)"), "{message}");
    assert_worker_alive(&client);
}

#[test]
fn retries_back_off_and_then_succeed() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::flaky::delay(&client, 2).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("third time lucky"), 3);
    let info = handle.info().expect("info");
    assert_eq!(info.attempt, 3);
    let attempts: Vec<u32> = info.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![1, 2]);
    assert_eq!(info.errors[1].error, "attempt 2 failed on purpose");
}

#[test]
fn the_last_failure_discards_with_every_attempt_recorded() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::flaky::delay(&client, 10).expect("delay");
    let (attempts, message, errors) = failed(handle.join(PATIENCE).expect_err("never succeeds"));
    assert_eq!(attempts, 3);
    assert_eq!(message, "attempt 3 failed on purpose");
    assert_eq!(
        errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Per-dispatch override of the attempt limit.
    let handle =
        fx::flaky::delay_with(&client, &DelayOptions::new().max_attempts(1), 10).expect("delay");
    let (attempts, _, _) = failed(handle.join(PATIENCE).expect_err("fails"));
    assert_eq!(attempts, 1);
}

#[test]
fn a_task_can_refuse_to_be_retried() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let (attempts, message, _) = failed(
        fx::refuse::delay(&client, "card declined".into())
            .expect("delay")
            .join(PATIENCE)
            .expect_err("refuses"),
    );
    assert_eq!(attempts, 1, "5 attempts allowed, but it asked not to retry");
    assert_eq!(message, "card declined");
}

#[test]
fn a_thread_task_past_its_timeout_is_told_to_stop_and_recorded_as_timed_out() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::until_cancelled::delay(&client).expect("delay");
    let (_, message, errors) = failed(handle.join(PATIENCE).expect_err("times out"));
    assert_eq!(message, "timed out after 300.0ms");
    assert_eq!(errors[0].kind, castor_store::ErrorKind::Timeout);
    assert_worker_alive(&client);
    // A per-dispatch timeout overrides the declared one.
    let handle = fx::sleep_ms::delay_with(
        &client,
        &DelayOptions::new().timeout(Duration::from_millis(50)),
        2_000,
    )
    .expect("delay");
    let (_, message, _) = failed(handle.join(PATIENCE).expect_err("times out"));
    assert_eq!(message, "timed out after 50.0ms");
}

#[test]
fn a_timed_out_attempt_that_answers_late_does_not_settle_its_retry() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    // Attempt 1 times out at 300ms and is retried at once; its thread still runs and
    // answers at 450ms, while attempt 2 runs. That answer belongs to attempt 1.
    let options = DelayOptions::new()
        .timeout(Duration::from_millis(300))
        .max_attempts(2)
        .backoff(castor_abi::Backoff {
            base: Duration::ZERO,
            cap: Duration::ZERO,
        });
    let handle = fx::sleep_ms::delay_with(&client, &options, 450).expect("delay");
    let (attempts, message, errors) = failed(handle.join(PATIENCE).expect_err("times out"));
    assert_eq!(attempts, 2);
    assert_eq!(message, "timed out after 300.0ms");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.kind == castor_store::ErrorKind::Timeout),
        "{errors:?}"
    );
    assert_worker_alive(&client);
}

#[test]
fn dispatching_a_task_the_manager_does_not_declare_is_refused() {
    let dir = TestDir::new();
    let reports = castor_fixture_tasks::reports()
        .with_database(dir.db())
        .open()
        .expect("open");
    let err = fx::noop::delay(&reports).expect_err("not in reports");
    assert!(matches!(err, DispatchError::UnknownTask { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "task `noop` is not declared by manager `reports` (it declares: add)"
    );
}

#[test]
fn contradictory_options_are_refused_before_anything_is_written() {
    let dir = TestDir::new();
    let client = dir.client();
    let options = DelayOptions::new()
        .at(std::time::SystemTime::now())
        .after(Duration::from_secs(1));
    let err = fx::add::delay_with(&client, &options, 1, 2).expect_err("contradictory");
    assert!(
        matches!(err, DispatchError::InvalidOptions { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("`at` and `after`"), "{err}");
    let err = fx::add::delay_with(&client, &DelayOptions::new().max_attempts(0), 1, 2)
        .expect_err("zero attempts");
    assert!(err.to_string().contains("at least 1"), "{err}");
}
