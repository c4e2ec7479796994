//! Process tasks: they run in warm children of the worker; a child that crashes, hangs or
//! runs out of memory fails that attempt with an error naming what happened, and the
//! worker goes on with a new child.

use castor_abi::JoinError;
use castor_fixture_tasks as fx;
use castor_store::{ErrorKind, LogLevel, TaskState};

use crate::support::{
    PATIENCE, TestDir, Worker, tasks_target, wait_for_state, wait_until, wait_until_begun,
};

/// The worker's process-mode children (`castor __child`), by pid.
fn children_of(worker: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the `(comm)`: state, ppid, ...
            let after = stat.rsplit(") ").next().unwrap_or_default();
            after.split_whitespace().nth(1) == Some(&worker.to_string())
        })
        .collect()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z')),
        Err(_) => false,
    }
}

fn crash_message(err: JoinError) -> String {
    match err {
        JoinError::Failed {
            message, errors, ..
        } => {
            assert_eq!(
                errors.last().map(|e| e.kind.as_str()),
                Some("crash"),
                "{errors:?}"
            );
            message
        }
        other => panic!("expected a failed task, got {other:?}"),
    }
}

/// A normal process task still works after whatever happened before.
fn assert_children_work(client: &castor_abi::Client) {
    let sum = fx::process_add::delay(client, 40, 2)
        .expect("delay")
        .join(PATIENCE)
        .expect("a fresh child runs the next task");
    assert_eq!(sum, 42);
}

#[test]
fn process_tasks_run_in_warm_reused_children() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    assert!(
        worker.stdout().contains("1 process(es)"),
        "{}",
        worker.stdout()
    );
    let children = children_of(worker.pid());
    assert_eq!(children.len(), 1, "one warm child before any task");
    let pids: Vec<u32> = (0..5)
        .map(|_| {
            fx::process_pid::delay(&client)
                .expect("delay")
                .join(PATIENCE)
                .expect("join")
        })
        .collect();
    assert!(
        pids.iter().all(|&pid| pid == pids[0]),
        "one child reused: {pids:?}"
    );
    assert_eq!(pids[0] as i32, children[0]);
    assert_ne!(pids[0] as i32, worker.pid(), "not the worker's own process");
    assert_children_work(&client);
}

#[test]
fn a_child_is_recycled_after_its_task_quota() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--processes", "1", "--child-max-tasks", "2"],
    );
    let pids: Vec<u32> = (0..4)
        .map(|_| {
            fx::process_pid::delay(&client)
                .expect("delay")
                .join(PATIENCE)
                .expect("join")
        })
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[1], pids[2], "a new child after two tasks: {pids:?}");
}

#[test]
fn a_segfault_fails_the_attempt_and_the_worker_goes_on() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let handle = fx::segfault::delay(&client).expect("delay");
    let message = crash_message(handle.join(PATIENCE).expect_err("crashes"));
    assert!(message.contains("killed by SIGSEGV"), "{message}");
    assert_eq!(handle.status().expect("status"), TaskState::Discarded);
    assert_children_work(&client);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn an_abort_and_an_exit_code_are_named() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "2"]);
    let aborted = fx::abort::delay(&client).expect("delay");
    let exited = fx::exit_with::delay(&client, 3).expect("delay");
    let message = crash_message(aborted.join(PATIENCE).expect_err("aborts"));
    assert!(message.contains("killed by SIGABRT"), "{message}");
    let message = crash_message(exited.join(PATIENCE).expect_err("exits"));
    assert!(message.contains("exited with code 3"), "{message}");
    assert_children_work(&client);
}

#[test]
fn a_process_task_past_its_timeout_is_killed() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--processes", "1", "--kill-grace", "200ms"],
    );
    let before = children_of(worker.pid());
    let handle = fx::spin_forever::delay(&client).expect("delay");
    match handle.join(PATIENCE).expect_err("times out") {
        JoinError::Failed {
            message, errors, ..
        } => {
            assert_eq!(message, "timed out after 300.0ms");
            assert_eq!(errors[0].kind, castor_store::ErrorKind::Timeout);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        before.iter().all(|&pid| !alive(pid)),
        "the spinning child was killed"
    );
    assert_children_work(&client);
}

#[test]
fn output_is_captured_as_the_task_log_without_corrupting_the_protocol() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let handle = fx::noisy::delay(&client, 50).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), 100);
    let logs = handle.logs().expect("logs");
    let stdout: Vec<&str> = logs
        .iter()
        .filter(|l| l.level == LogLevel::Info)
        .map(|l| l.line.as_str())
        .collect();
    let stderr: Vec<&str> = logs
        .iter()
        .filter(|l| l.level == LogLevel::Warn)
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(stdout.len(), 50, "{logs:?}");
    assert_eq!(stderr.len(), 50, "{logs:?}");
    assert_eq!(stdout[0], "stdout line 1");
    assert_eq!(stderr[49], "stderr line 50");
    assert_children_work(&client);
}

#[test]
fn running_out_of_memory_under_a_limit_is_reported() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &["--processes", "1", "--child-memory", "512M"],
    );
    let message = crash_message(
        fx::allocate_forever::delay(&client)
            .expect("delay")
            .join(PATIENCE)
            .expect_err("runs out"),
    );
    assert!(message.contains("out of memory"), "{message}");
    assert_children_work(&client);
}

#[test]
fn a_stack_overflow_is_reported() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let message = crash_message(
        fx::overflow_stack::delay(&client, 0)
            .expect("delay")
            .join(PATIENCE)
            .expect_err("overflows"),
    );
    assert!(message.contains("stack overflow"), "{message}");
    assert_children_work(&client);
}

#[test]
fn process_tasks_dispatch_and_log_through_the_worker() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let handle = fx::process_fan_out::delay(&client, 3).expect("delay");
    let ids = handle.join(PATIENCE).expect("join");
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(
            fx::add::handle(&client, id)
                .join(PATIENCE)
                .expect("subtask"),
            i as i64 + 100
        );
    }
    let logs = handle.logs().expect("logs");
    assert!(
        logs.iter()
            .any(|l| l.line.starts_with("dispatching 3 subtasks from pid")),
        "{logs:?}"
    );
}

#[test]
fn ctrl_c_lets_process_tasks_finish_and_leaves_no_child() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "2"]);
    let children = children_of(worker.pid());
    assert_eq!(children.len(), 2);
    let handle = fx::process_sleep::delay(&client, 300).expect("delay");
    wait_until_begun(&handle);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(handle.status().expect("status"), TaskState::Completed);
    for pid in children {
        assert!(!alive(pid), "child {pid} outlived its worker");
    }
}

#[test]
fn children_die_with_a_worker_killed_by_sigkill() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "2"]);
    let handle = fx::process_sleep::delay(&client, 60_000).expect("delay");
    wait_for_state(&handle, TaskState::Running);
    let children = children_of(worker.pid());
    assert_eq!(children.len(), 2, "two children, one of them busy");
    worker.signal(libc::SIGKILL);
    let _ = worker.wait();
    wait_until("every child is gone", || {
        children.iter().all(|&pid| !alive(pid))
    });
}

/// A failure's kind crosses the child protocol as itself: a panic is recorded as one (on
/// every attempt), a discard is not retried, a plain error is.
#[test]
fn a_process_task_failure_keeps_its_kind() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let cases = [
        ("panic", 2, ErrorKind::Panic, "panicked in a child"),
        ("discard", 1, ErrorKind::Error, "discarded in a child"),
        ("error", 2, ErrorKind::Error, "failed in a child"),
    ];
    for (how, attempts, kind, message) in cases {
        let handle = fx::process_fail::delay(&client, how.to_owned()).expect("delay");
        match handle.join(PATIENCE) {
            Err(JoinError::Failed {
                attempts: ran,
                errors,
                ..
            }) => {
                let kinds: Vec<ErrorKind> = errors.iter().map(|e| e.kind).collect();
                assert_eq!(
                    (ran, kinds),
                    (attempts, vec![kind; attempts as usize]),
                    "{how}"
                );
                assert!(errors[0].error.contains(message), "{how}: {errors:?}");
            }
            other => panic!("{how}: {other:?}"),
        }
    }
}

/// A task in a child reads another task through the worker: its state and its errors
/// arrive as the worker read them.
#[test]
fn a_process_task_reads_a_failed_subtask_through_the_worker() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let handle = fx::process_join_refusal::delay(&client, "not today".into()).expect("delay");
    assert_eq!(
        handle.join(PATIENCE).expect("join"),
        (
            TaskState::Discarded,
            ErrorKind::Error,
            "not today".to_owned()
        )
    );
}
