//! The inspection subcommands against a real database: list, show, retry, cancel, purge,
//! stats, as tables and as JSON.

use std::time::Duration;

use castor_abi::DelayOptions;
use castor_fixture_tasks as fx;
use castor_store::TaskState;

use crate::support::{
    PATIENCE, TestDir, Worker, castor_json, castor_ok, fixture_path, run_castor, tasks_target,
};

#[test]
fn list_and_show_a_failed_task_with_decoded_arguments() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let order = fx::Order {
        customer: "Ada".into(),
        items: vec![250, 750],
    };
    let invoice = fx::invoice::delay(&client, order).expect("delay");
    invoice.join(PATIENCE).expect("join");
    let failed = fx::fail::delay(&client, "mail server said no".into()).expect("delay");
    failed.join(PATIENCE).expect_err("fails");
    drop(worker);

    let table = castor_ok(&dir, &["list", "--db", &db]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&failed.id().to_string()), "{table}");
    assert!(table.contains("discarded"), "{table}");
    assert!(table.contains("mail server said no"), "{table}");

    let only_failed = castor_json(&dir, &["list", "--db", &db, "--state", "discarded"]);
    let rows = only_failed.as_array().expect("an array");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["task"], "fail");
    assert_eq!(rows[0]["last_error"], "mail server said no");

    let lib = tasks_target("manager");
    let shown = castor_ok(
        &dir,
        &[
            "show",
            &invoice.id().to_string(),
            "--db",
            &db,
            "--lib",
            &lib,
        ],
    );
    assert!(
        shown.contains(r#"arguments  [{"customer":"Ada","items":[250,750]}]"#),
        "{shown}"
    );
    assert!(
        shown.contains(r#"result     {"customer":"Ada","total":1000}"#),
        "{shown}"
    );
    let raw = castor_ok(&dir, &["show", &invoice.id().to_string(), "--db", &db]);
    assert!(raw.contains("pass --lib LIB[:MANAGER] to decode"), "{raw}");

    let shown = castor_json(&dir, &["show", &failed.id().to_string(), "--db", &db]);
    assert_eq!(shown["state"], "discarded");
    assert_eq!(shown["errors"][0]["error"], "mail server said no");
    assert_eq!(shown["errors"][0]["kind"], "error");
}

#[test]
fn show_includes_the_task_log() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let handle = fx::chatty::delay(&client, 3).expect("delay");
    handle.join(PATIENCE).expect("join");
    let shown = castor_ok(&dir, &["show", &handle.id().to_string(), "--db", &db]);
    assert!(shown.contains("log (3 lines)"), "{shown}");
    assert!(shown.contains("line 3 of 3"), "{shown}");
    assert!(shown.contains("progress   3/3 chatting"), "{shown}");
}

#[test]
fn retry_gives_a_discarded_task_another_attempt() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    // Fails its first 3 attempts, with only 3 allowed.
    let handle = fx::flaky::delay(&client, 3).expect("delay");
    handle.join(PATIENCE).expect_err("discarded");
    let out = castor_ok(&dir, &["retry", &handle.id().to_string(), "--db", &db]);
    assert!(out.contains("available again"), "{out}");
    assert_eq!(
        handle.join(PATIENCE).expect("the fourth attempt succeeds"),
        4
    );
    // Completed now: a second retry is refused, and says so with its exit status.
    let out = run_castor(&dir, &["retry", &handle.id().to_string(), "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "castor: error: task {} is completed: only discarded or cancelled tasks can be \
             retried",
            handle.id()
        )
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn cancel_from_the_command_line() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let handle = fx::add::delay_with(&client, &later, 1, 2).expect("delay");
    let out = castor_ok(&dir, &["cancel", &handle.id().to_string(), "--db", &db]);
    assert_eq!(out.trim(), format!("cancelled {}", handle.id()));
    assert_eq!(handle.status().expect("status"), TaskState::Cancelled);
    // Cancelling it again changes nothing, and its goal holds: not a refusal.
    let out = castor_ok(&dir, &["cancel", &handle.id().to_string(), "--db", &db]);
    assert_eq!(out.trim(), format!("{} was already cancelled", handle.id()));
    let unknown = castor_abi::Uuid::now_v7().to_string();
    let out = run_castor(&dir, &["cancel", &unknown, "--db", &db]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains(&format!("no task {unknown}")),
        "{}",
        out.stderr
    );
}

#[test]
fn every_refusal_exits_non_zero() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let done = fx::add::delay(&client, 1, 2).expect("delay");
    assert_eq!(done.join(PATIENCE).expect("completes"), 3);
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let waiting = fx::add::delay_with(&client, &later, 1, 2).expect("delay");
    let (done, waiting) = (done.id().to_string(), waiting.id().to_string());

    let out = run_castor(&dir, &["cancel", &done, "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "castor: error: task {done} already finished (completed): there is nothing to \
             cancel"
        )
    );
    let out = run_castor(&dir, &["retry", &waiting, "--db", &db, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("not_retryable"), "{}", out.stdout);

    // Several ids: each is carried out or refused, and any refusal fails the command.
    let out = run_castor(&dir, &["cancel", &waiting, &done, "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), format!("cancelled {waiting}"));
    assert!(
        out.stderr
            .contains(&format!("castor: task {done} already finished (completed)"))
            && out
                .stderr
                .contains("castor: error: 1 of 2 tasks were not cancelled (see above)"),
        "{}",
        out.stderr
    );
}

#[test]
fn purge_deletes_finished_tasks_only() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let _worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let done: Vec<_> = (0..3)
        .map(|i| fx::add::delay(&client, i, i).expect("delay"))
        .collect();
    for h in &done {
        h.join(PATIENCE).expect("join");
    }
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let waiting = fx::add::delay_with(&client, &later, 9, 9).expect("delay");
    let out = castor_json(&dir, &["purge", "--state", "finished", "--db", &db]);
    assert_eq!(out["purged"], 3);
    assert!(done.iter().all(|h| h.status().is_err()));
    assert_eq!(waiting.status().expect("status"), TaskState::Scheduled);
    let out = run_castor(&dir, &["purge", "--state", "running", "--db", &db]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("cannot be purged"), "{}", out.stderr);
}

#[test]
fn stats_count_states_and_list_live_workers() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    let client = dir.client();
    let worker = Worker::start(&dir, &tasks_target("manager"), &["--threads", "3"]);
    for i in 0..4 {
        fx::add::delay(&client, i, 1)
            .expect("delay")
            .join(PATIENCE)
            .expect("join");
    }
    let stats = castor_json(&dir, &["stats", "--db", &db]);
    assert_eq!(stats["counts"]["manager"]["add"]["completed"], 4);
    assert_eq!(stats["completed_last_minute"], 4);
    let workers = stats["workers_alive"].as_array().expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["pid"], worker.pid());
    assert_eq!(workers[0]["threads"], 3);
    let table = castor_ok(&dir, &["stats", "--db", &db]);
    assert!(table.contains("workers alive: 1"), "{table}");
    assert!(
        table.contains("throughput: 4 completed in the last minute"),
        "{table}"
    );
}

#[test]
fn subcommands_need_an_existing_database() {
    let dir = TestDir::new();
    let out = run_castor(&dir, &["list", "--db", "nope.db"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("no database at nope.db"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("nope.db").exists(),
        "list must not create a database"
    );
    // --lib finds the manager's database (the fixture's is fixture.db, relative).
    let lib = format!("{}:manager", fixture_path("tasks").display());
    let out = run_castor(&dir, &["stats", "--lib", &lib]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("no database at fixture.db"),
        "{}",
        out.stderr
    );
}
