//! Logging. A task's `tracing` events and spans and `log` records cross the cdylib
//! boundary into its stored log (thread and process mode, many tasks at once), records a
//! library makes outside any task reach the worker's log, and a task called directly
//! logs to its caller's subscriber. The worker's own lines go through `tracing`: text or
//! JSON, filtered by RUST_LOG.

use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use castor_fixture_tasks as fx;
use castor_store::{LogLevel, TaskLog};
use serde_json::Value;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::support::{PATIENCE, TestDir, Worker, castor_bin, run_castor, tasks_target, wait_until};

fn lines(logs: &[TaskLog]) -> Vec<(LogLevel, &str)> {
    logs.iter().map(|l| (l.level, l.line.as_str())).collect()
}

/// What `traced("ada", 1)` logs at the default filter.
const TRACED: [(LogLevel, &str); 2] = [
    (
        LogLevel::Info,
        "send_email{batch=7}: castor_fixture_tasks: sent email recipient=\"ada\" attempt=1",
    ),
    (
        LogLevel::Warn,
        "send_email{batch=7}: castor_fixture_tasks: slow mail server for ada",
    ),
];

#[test]
fn tracing_and_log_records_of_a_thread_task_land_in_its_log() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::traced::delay(&client, "ada".into(), 1).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), "ada");
    let logs = handle.logs().expect("logs");
    assert_eq!(lines(&logs), TRACED, "{logs:?}");
    assert!(logs.iter().all(|l| l.attempt == 1), "{logs:?}");
    let db = dir.db().display().to_string();
    let shown = run_castor(&dir, &["show", &handle.id().to_string(), "--db", &db]);
    assert!(
        shown.stdout.contains(
            "info   send_email{batch=7}: castor_fixture_tasks: sent email recipient=\"ada\" \
             attempt=1"
        ),
        "{}",
        shown.stdout
    );
}

#[test]
fn tracing_and_log_records_of_a_process_task_land_in_its_log() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let handle = fx::traced_process::delay(&client, "ada".into(), 1).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), "ada");
    let logs = handle.logs().expect("logs");
    assert_eq!(lines(&logs), TRACED, "{logs:?}");
}

#[test]
fn rust_log_lets_task_debug_records_through() {
    let dir = TestDir::new();
    let client = dir.client();
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(dir.db())
        .args(["--processes", "1"])
        .env("RUST_LOG", "info,castor_fixture_tasks=debug")
        .current_dir(dir.path());
    let _worker = Worker::spawn(command);
    let thread = fx::traced::delay(&client, "ada".into(), 1).expect("delay");
    let process = fx::traced_process::delay(&client, "ada".into(), 1).expect("delay");
    for handle in [thread, process] {
        handle.join(PATIENCE).expect("join");
        let logs = handle.logs().expect("logs");
        assert_eq!(
            lines(&logs).last(),
            Some(&(
                LogLevel::Debug,
                "send_email{batch=7}: castor_fixture_tasks: a detail not forwarded at info \
                 recipient=\"ada\""
            )),
            "{logs:?}"
        );
    }
}

/// What `traced_tag(tag, ..)` logs, in order.
fn tagged(tag: u64) -> Vec<(LogLevel, String)> {
    vec![
        (
            LogLevel::Info,
            format!("castor_fixture_tasks: before tag={tag}"),
        ),
        (
            LogLevel::Info,
            format!("helper{{tag={tag}}}: castor_fixture_tasks: from a helper thread tag={tag}"),
        ),
        (LogLevel::Info, format!("castor_fixture_tasks: after {tag}")),
    ]
}

fn assert_each_task_has_its_own_lines(handles: Vec<castor_abi::TaskHandle<u64>>) {
    for (tag, handle) in (0u64..).zip(handles) {
        assert_eq!(handle.join(PATIENCE).expect("join"), tag);
        let logs = handle.logs().expect("logs");
        let got: Vec<(LogLevel, String)> = logs.iter().map(|l| (l.level, l.line.clone())).collect();
        assert_eq!(got, tagged(tag), "task {tag}");
        assert!(logs.iter().all(|l| l.attempt == 1), "{logs:?}");
    }
}

#[test]
fn many_thread_tasks_at_once_each_log_only_their_own_lines() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--threads", "8"]);
    let handles = fx::traced_tag::delay_many(&client, (0..64).map(|tag| (tag, 20))).expect("delay");
    assert_each_task_has_its_own_lines(handles);
}

#[test]
fn many_process_tasks_at_once_each_log_only_their_own_lines() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "2"]);
    let handles =
        fx::traced_tag_process::delay_many(&client, (0..16).map(|tag| (tag, 10))).expect("delay");
    assert_each_task_has_its_own_lines(handles);
}

#[test]
fn a_library_thread_logs_to_the_worker_log_as_the_library() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--processes", "1"]);
    let thread = fx::background::delay(&client, "t1".into()).expect("delay");
    let process = fx::background_process::delay(&client, "p1".into()).expect("delay");
    thread.join(PATIENCE).expect("join");
    process.join(PATIENCE).expect("join");
    for needle in [
        " library WARN castor_fixture_tasks: background tick tag=\"t1\"",
        " library ERROR castor_fixture_tasks: background failure t1",
        " library WARN castor_fixture_tasks: background tick tag=\"p1\"",
        " library ERROR castor_fixture_tasks: background failure p1",
    ] {
        wait_until(&format!("the worker logs {needle:?}"), || {
            worker.stdout().contains(needle)
        });
    }
    // Made outside the tasks, so in neither task's log.
    assert_eq!(thread.logs().expect("logs").len(), 0);
    assert_eq!(process.logs().expect("logs").len(), 0);
}

#[test]
fn ctx_info_still_logs_next_to_tracing() {
    let dir = TestDir::new();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::chatty::delay(&client, 2).expect("delay");
    handle.join(PATIENCE).expect("join");
    let logs = handle.logs().expect("logs");
    assert_eq!(
        lines(&logs),
        [
            (LogLevel::Info, "line 1 of 2"),
            (LogLevel::Info, "line 2 of 2")
        ]
    );
}

/// Collects the events a subscriber sees: `target: message field=value..`.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!(" {value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut text = Text(format!("{}:", event.metadata().target()));
        event.record(&mut text);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text.0);
    }
}

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{}: {}", record.target(), record.args()));
    }

    fn flush(&self) {}
}

#[test]
fn a_task_called_directly_logs_to_the_callers_subscriber_and_logger() {
    let events = Collect::default();
    let records = Collect::default();
    // This test binary's only logger.
    log::set_boxed_logger(Box::new(records.clone())).expect("no other logger");
    log::set_max_level(log::LevelFilter::Trace);
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let returned = tracing::subscriber::with_default(subscriber, || fx::traced("ada".into(), 1));
    assert_eq!(returned, "ada");
    let events = events
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        events,
        [
            "castor_fixture_tasks: sent email recipient=\"ada\" attempt=1",
            "castor_fixture_tasks: a detail not forwarded at info recipient=\"ada\"",
        ]
    );
    let records = records
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(records, ["castor_fixture_tasks: slow mail server for ada"]);
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect()
}

#[test]
fn json_log_lines_carry_the_task_fields() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--log-format", "json"]);
    let added = fx::add::delay(&client, 1, 2).expect("delay");
    added.join(PATIENCE).expect("join");
    let failed = fx::fail::delay(&client, "boom".into()).expect("delay");
    failed.join(PATIENCE).expect_err("fails");
    // A thread task's print becomes a JSON line too.
    fx::shout::delay(&client, "hello from a thread task".into())
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    let lines = json_lines(&out.stdout);
    let find = |id: castor_abi::Uuid| {
        lines
            .iter()
            .find(|l| l["task_id"] == id.to_string())
            .unwrap_or_else(|| panic!("no line for {id}:\n{}", out.stdout))
    };
    let completed = find(added.id());
    assert_eq!(completed["level"], "INFO");
    assert_eq!(completed["target"], "castor::task");
    assert_eq!(completed["task"], "add");
    assert_eq!(completed["attempt"], 1);
    assert_eq!(completed["state"], "completed");
    assert_eq!(completed["outcome"], "succeeded");
    assert!(completed["duration_ms"].as_f64().is_some(), "{completed}");
    assert!(completed.get("error").is_none(), "{completed}");
    let discarded = find(failed.id());
    assert_eq!(discarded["level"], "ERROR");
    assert_eq!(discarded["task"], "fail");
    assert_eq!(discarded["attempt"], 1);
    assert_eq!(discarded["state"], "discarded");
    assert_eq!(discarded["outcome"], "error");
    assert_eq!(discarded["error"], "boom");
    assert!(discarded["duration_ms"].as_f64().is_some(), "{discarded}");
    let banner = &lines[0];
    assert_eq!(
        banner["worker_id"].as_str().map(str::len),
        Some(32),
        "{banner}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["target"] == "castor::output" && l["message"] == "hello from a thread task"),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "stopped: 2 completed, 1 failed, 0 abandoned"),
        "{}",
        out.stdout
    );
}

#[test]
fn rust_log_warn_hides_completed_tasks_but_not_failures() {
    let dir = TestDir::new();
    let client = dir.client();
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(dir.db())
        .env("RUST_LOG", "warn")
        .current_dir(dir.path());
    let worker = Worker::spawn(command);
    let added = fx::add::delay(&client, 1, 2).expect("delay");
    added.join(PATIENCE).expect("join");
    let failed = fx::fail::delay(&client, "boom".into()).expect("delay");
    failed.join(PATIENCE).expect_err("fails");
    let needle = format!("discarded  fail {}: attempt 1/1", failed.id());
    wait_until("the failure is logged", || {
        worker.stdout().contains(&needle)
    });
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("completed  add"), "{}", out.stdout);
    assert!(!out.stdout.contains("Ctrl+C to stop"), "{}", out.stdout);
}

#[test]
fn quiet_and_an_invalid_rust_log() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["-q"]);
    fx::add::delay(&client, 1, 2)
        .expect("delay")
        .join(PATIENCE)
        .expect("join");
    let out = worker.stop();
    assert!(!out.stdout.contains("completed  add"), "{}", out.stdout);
    assert!(
        out.stdout.contains("stopped: 1 completed"),
        "{}",
        out.stdout
    );

    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(dir.db())
        .env("RUST_LOG", "castor=loud")
        .current_dir(dir.path());
    let out = Worker::spawn(command).wait();
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("castor: error: RUST_LOG=\"castor=loud\" is not a valid log filter"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_startup_error_is_a_json_line_too() {
    let dir = TestDir::new();
    let out = run_castor(&dir, &["./missing.so:manager", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr, "castor: error: no library at ./missing.so\n");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["error"], "no library at ./missing.so");
}
