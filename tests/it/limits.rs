//! Arguments and results past the 64 MiB limit: refused with the size and the limit before
//! anything is stored, in the app, inside a task, in thread and in process mode; and values
//! stored past it by something that did not check are named as such when read.

use std::path::Path;
use std::time::Duration;

use castor_abi::codec::MAX_PAYLOAD;
use castor_abi::{DelayOptions, DispatchError, JoinError, Schedule};
use castor_fixture_tasks as fx;
use castor_store::TaskState;
use castor_store::{ListFilter, NewTask, OpenOptions, Store};
use fx::Bytes;

use crate::support::{PATIENCE, TestDir, Worker, tasks_target, wait_for_state};

/// 100 MiB, as in the issue; a `Bytes` of it encodes to this plus a 5-byte length.
const OVER: usize = 100 << 20;

/// The database's size with its WAL.
fn stored_bytes(db: &Path) -> u64 {
    let wal = format!("{}-wal", db.display());
    std::fs::metadata(db).map_or(0, |m| m.len()) + std::fs::metadata(wal).map_or(0, |m| m.len())
}

fn tasks_named(db: &Path, task: &str) -> usize {
    Store::open(db, OpenOptions::app())
        .expect("open")
        .list(&ListFilter {
            task: Some(task.to_owned()),
            limit: 1_000_000,
            ..ListFilter::default()
        })
        .expect("list")
        .len()
}

fn args_refusal(task: &str) -> String {
    format!(
        "task `{task}`: its arguments encode to 100.0 MiB (104,857,605 bytes), over the 64 MiB \
         limit; nothing was dispatched (pass large data another way, e.g. the path of a file)"
    )
}

#[test]
fn arguments_over_the_limit_are_refused_and_nothing_is_written() {
    let dir = TestDir::new();
    let client = dir.client();
    let before = stored_bytes(&dir.db());
    let big = || Bytes(vec![7; OVER]);
    let refused = |err: DispatchError| {
        assert!(
            matches!(
                &err,
                DispatchError::ArgsTooLarge { task, size: 104_857_605, limit: MAX_PAYLOAD }
                    if task == "echo_bytes"
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), args_refusal("echo_bytes"));
    };
    refused(fx::echo_bytes::delay(&client, big()).expect_err("delay"));
    refused(
        fx::echo_bytes::delay_with(&client, &DelayOptions::new().priority(3), big())
            .expect_err("delay_with"),
    );
    refused(
        fx::echo_bytes::delay_many(&client, [(Bytes(vec![1]),), (big(),)]).expect_err("delay_many"),
    );
    refused(
        fx::echo_bytes::schedule(&client, &Schedule::every(Duration::from_secs(60)), big())
            .expect_err("schedule"),
    );
    assert_eq!(
        tasks_named(&dir.db(), "echo_bytes"),
        0,
        "not even the small one"
    );
    let store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    assert!(store.schedules(None).expect("schedules").is_empty());
    assert_eq!(stored_bytes(&dir.db()), before, "the database did not grow");
}

#[test]
fn a_dispatch_from_inside_a_task_over_the_limit_is_refused() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let said = fx::dispatch_bytes::delay(&client, OVER as u64)
        .expect("delay")
        .join(PATIENCE)
        .expect("the task ran");
    assert_eq!(said, format!("refused: {}", args_refusal("echo_bytes")));
    let said = fx::process_dispatch_bytes::delay(&client, OVER as u64)
        .expect("delay")
        .join(PATIENCE)
        .expect("the task ran");
    assert_eq!(said, format!("refused: {}", args_refusal("echo_bytes")));
    assert_eq!(tasks_named(&dir.db(), "echo_bytes"), 0);
}

#[test]
fn a_result_over_the_limit_fails_the_attempt_and_nothing_is_stored() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let before = stored_bytes(&dir.db());
    for task in ["big_result", "process_big_result"] {
        let handle = if task == "big_result" {
            fx::big_result::delay(&client, OVER as u64)
        } else {
            fx::process_big_result::delay(&client, OVER as u64)
        }
        .expect("delay");
        let err = handle.join(PATIENCE).expect_err("too large");
        let JoinError::Failed {
            attempts,
            message,
            errors,
            ..
        } = err
        else {
            panic!("{task}: {err:?}");
        };
        // Retried under the task's policy (2 attempts), like any error.
        assert_eq!(attempts, 2, "{task}");
        assert_eq!(errors.len(), 2, "{task}: {errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| e.kind == castor_store::ErrorKind::Error),
            "{errors:?}"
        );
        assert_eq!(
            message,
            format!(
                "task `{task}`: its result encodes to 100.0 MiB (104,857,605 bytes), over the \
                 64 MiB limit; nothing was stored (return less: keep large data elsewhere and \
                 return where it is)"
            )
        );
        assert_eq!(handle.status().expect("status"), TaskState::Discarded);
    }
    let grown = stored_bytes(&dir.db()) - before;
    assert!(grown < 1 << 20, "the database grew by {grown} bytes");
}

#[test]
fn a_payload_at_the_limit_goes_through_both_modes_intact() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    // A `Bytes` encodes to its length (5 bytes here) and its bytes: exactly the limit.
    let bytes = Bytes(vec![9; MAX_PAYLOAD - 5]);
    let back = fx::echo_bytes::delay(&client, bytes.clone())
        .expect("delay")
        .join(PATIENCE)
        .expect("thread mode");
    assert!(back == bytes, "thread mode changed the bytes");
    let back = fx::process_echo_bytes::delay(&client, bytes.clone())
        .expect("delay")
        .join(PATIENCE)
        .expect("process mode");
    assert!(back == bytes, "process mode changed the bytes");
}

#[test]
fn values_stored_past_the_limit_are_named_as_such_not_as_a_version_mismatch() {
    let dir = TestDir::new();
    let client = dir.client();
    // What a castor that did not check the limit could have stored: the store itself
    // takes any size.
    let over = vec![0u8; 65 << 20];
    let mut store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    let mut ids = Vec::new();
    for task in ["echo_bytes", "process_echo_bytes"] {
        let new = NewTask {
            manager: "manager",
            task,
            args: &over,
            run_at_us: None,
            priority: 0,
            unique_key: None,
            max_attempts: 1,
            backoff_base_ms: 10,
            backoff_cap_ms: 10,
            timeout_ms: None,
            schedule_id: None,
            args_fingerprint: None,
            concurrency_key: None,
        };
        ids.push(store.enqueue(&new).expect("enqueue").id);
    }
    drop(store);
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let stored = "65 MiB, over the 64 MiB limit";
    for (id, task) in ids.into_iter().zip(["echo_bytes", "process_echo_bytes"]) {
        let handle = fx::echo_bytes::handle(&client, id);
        wait_for_state(&handle, TaskState::Discarded);
        let info = handle.info().expect("info");
        let error = &info.errors.last().expect("an error").error;
        assert!(
            error.starts_with(&format!(
                "task `{task}`: its stored arguments cannot be read: "
            )),
            "{error}"
        );
        assert!(error.ends_with(stored), "{error}");
        assert!(!error.contains("another version"), "{error}");
    }
    // A result stored past the limit.
    let handle = fx::echo_bytes::delay_with(
        &client,
        &DelayOptions::new().after(Duration::from_secs(3600)),
        Bytes(vec![1]),
    )
    .expect("delay");
    let conn = rusqlite::Connection::open(dir.db()).expect("open");
    conn.execute(
        "UPDATE castor_tasks SET state = 'completed', result = zeroblob(?1), \
         finalized_at = 0 WHERE id = ?2",
        rusqlite::params![65 << 20, handle.id().as_bytes().as_slice()],
    )
    .expect("store a result past the limit");
    drop(conn);
    let err = handle.join(PATIENCE).expect_err("does not decode");
    assert!(matches!(err, JoinError::DecodeResult { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "task {} (echo_bytes) completed, but its result does not decode: cannot decode \
             castor_fixture_tasks::Bytes: the stored value is {stored}",
            handle.id()
        )
    );
}
