//! Schema migrations on a database castor 0.1 made (`tests/fixtures/legacy-v1.db`, see
//! the README there): `castor migrate status` reads it without writing, `--no-migrate`
//! refuses it, a worker or `castor migrate up` migrates it and every task in it runs or
//! reads back intact; a database newer than this castor is refused by everyone, untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use castor_abi::{DelayOptions, JoinError, Uuid};
use castor_fixture_tasks as fx;
use castor_store::sqlite::MIGRATIONS;
use castor_store::{ErrorKind, OpenOptions, Store, TaskState};

use crate::support::{PATIENCE, Stopped, TestDir, Worker, run_castor, tasks_target, wait_until};

/// The fixture's tasks, by what they are (`legacy-v1.ids` of the fixture's making).
const COMPLETED_ADD: &str = "01a2372f-ccd6-7532-bdc8-02e279be26f4"; // add(2, 3) = 5
const DISCARDED_FAIL: &str = "01a2372f-ccd6-7532-bdc8-02e37df34ce9"; // fail("boom")
const RUNNING_SLEEP: &str = "01a2372f-d8a8-7246-85db-262dae55aedb"; // sleep_ms(600000)
const AVAILABLE_ADD: &str = "01a2372f-e0ce-76ec-91a2-4df9d6394bf0"; // add(1, 2)
const AVAILABLE_INVOICE: &str = "01a2372f-e0cf-731e-94ec-430372fd2c8b"; // 250 + 1000
const UNIQUE_NOOP: &str = "01a2372f-e0cf-731e-94ec-4304cb5a4be5"; // key "legacy-unique"
const SCHEDULED_ADD: &str = "01a2372f-e0cf-731e-94ec-43051d7b6ffd"; // add(10, 20)
/// The worker that was killed while it ran `sleep_ms`.
const KILLED_WORKER: &str = "01a2372fd8d271459d40daa1ecd9b401";

fn id(text: &str) -> Uuid {
    text.parse().expect("a fixture id")
}

/// The newest schema version this castor knows.
fn latest() -> u32 {
    MIGRATIONS.last().expect("migrations").version
}

/// A copy of the fixture as this test's database (`tasks.db`); returns its bytes.
fn legacy(dir: &TestDir) -> Vec<u8> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/legacy-v1.db");
    let bytes = std::fs::read(&fixture).expect("read tests/fixtures/legacy-v1.db");
    std::fs::write(dir.db(), &bytes).expect("copy the fixture");
    bytes
}

/// The database's bytes and its WAL's length (0 when there is none): for a database in
/// WAL mode, what "nothing was changed" means (SQLite may create, empty or remove its
/// `-wal` and `-shm` files on any open).
fn contents(dir: &TestDir) -> (Vec<u8>, u64) {
    let wal = dir.path().join("tasks.db-wal");
    (
        std::fs::read(dir.db()).expect("read the database"),
        std::fs::metadata(wal).map_or(0, |m| m.len()),
    )
}

/// Every file in the test's directory with its bytes: what "nothing was changed" means
/// for a database in journal mode DELETE, as the fixture is.
fn files(dir: &TestDir) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir.path())
        .expect("list the test directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect()
}

/// Runs `castor ARGS..` in `dir` with `env` set.
fn castor_with_env(dir: &TestDir, env: &[(&str, &str)], args: &[&str]) -> Stopped {
    let mut command = Command::new(crate::support::castor_bin());
    command.args(args).current_dir(dir.path());
    for (key, value) in env {
        command.env(key, value);
    }
    Worker::spawn(command).wait()
}

/// Asserts that `out` failed with exit code `code` and exactly the error `message`.
fn assert_refused(out: &Stopped, code: i32, message: &str, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stderr, format!("castor: error: {message}\n"), "{what}");
    assert!(!out.stdout.contains("Ctrl+C to stop"), "{what} started");
}

/// The words of each line of `text`, for tables whose padding is not the point.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

fn needs_migration(db: &Path, found: u32) -> String {
    format!(
        "database {} has schema version {found} and this castor needs {}; run `castor migrate \
         up --db {}` (nothing was changed)",
        db.display(),
        latest(),
        db.display()
    )
}

#[test]
fn migrate_status_lists_a_legacy_database_at_version_1_and_writes_nothing() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    legacy(&dir);
    let before = files(&dir);
    let pending: Vec<String> = MIGRATIONS[1..]
        .iter()
        .map(|m| format!("{} {}", m.version, m.name))
        .collect();

    let out = run_castor(&dir, &["migrate", "status", "--db", &db]);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr,
        format!(
            "castor: error: database {db} has schema version 1 and this castor needs {} \
             (pending: {}); apply them with `castor migrate up --db {db}`\n",
            latest(),
            pending.join(", ")
        )
    );
    let listed = rows(&out.stdout);
    let schema = format!("version 1 (this castor: {})", latest());
    assert!(
        out.stdout.contains(&format!("schema    {schema}\n")),
        "{}",
        out.stdout
    );
    assert!(
        listed.contains(&vec!["1", "initial", "before", "records"]),
        "{}",
        out.stdout
    );
    for m in &MIGRATIONS[1..] {
        let version = m.version.to_string();
        assert!(
            listed.contains(&vec![&version[..], m.name, "pending"]),
            "{}",
            out.stdout
        );
    }

    // `castor migrate` alone is `status`; as JSON for scripts.
    let out = run_castor(&dir, &["migrate", "--db", &db, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["version"], 1);
    assert_eq!(json["latest"], latest());
    assert_eq!(json["state"], "pending");
    assert_eq!(
        json["applied"],
        serde_json::json!([{ "version": 1, "name": "initial", "applied_at": null }])
    );
    assert_eq!(
        json["pending"].as_array().map(Vec::len),
        Some(MIGRATIONS.len() - 1)
    );

    // `castor check` calls it sound: the record table of a pending migration is not
    // missing.
    let out = run_castor(&dir, &["check", "--db", &db]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("schema     {schema}\n")),
        "{}",
        out.stdout
    );

    assert!(
        files(&dir) == before,
        "migrate status or check wrote to the directory"
    );
}

#[test]
fn a_worker_told_not_to_migrate_refuses_a_legacy_database_untouched() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    legacy(&dir);
    let before = files(&dir);
    let message = needs_migration(&dir.db(), 1);
    let target = tasks_target("manager");

    let out = run_castor(&dir, &[&target, "--db", &db, "--no-migrate"]);
    assert_refused(&out, 1, &message, "--no-migrate");
    let out = castor_with_env(&dir, &[("CASTOR_NO_MIGRATE", "1")], &[&target, "--db", &db]);
    assert_refused(&out, 1, &message, "CASTOR_NO_MIGRATE=1");
    // The CLI commands that open read-write follow the same flag and variable.
    let out = run_castor(&dir, &["list", "--db", &db, "--no-migrate"]);
    assert_refused(&out, 1, &message, "list --no-migrate");
    let out = castor_with_env(
        &dir,
        &[("CASTOR_NO_MIGRATE", "1")],
        &["retry", DISCARDED_FAIL, "--db", &db],
    );
    assert_refused(&out, 1, &message, "retry with CASTOR_NO_MIGRATE=1");
    // So does an app that asks for it.
    let err = fx::manager()
        .with_database(dir.db())
        .without_migrations()
        .open()
        .expect_err("needs a migration");
    assert_eq!(err.to_string(), message);
    assert!(files(&dir) == before, "a refusal wrote to the directory");

    // Told not to migrate, castor does not create a database either.
    let new = dir.path().join("new.db");
    let out = run_castor(
        &dir,
        &[&target, "--db", &new.display().to_string(), "--no-migrate"],
    );
    assert_refused(&out, 1, &needs_migration(&new, 0), "a new database");
    assert!(!new.exists(), "created {}", new.display());

    // CASTOR_NO_MIGRATE=0 is no opt-out: the worker migrates and starts.
    let mut command = Command::new(crate::support::castor_bin());
    command
        .args([&target, "--db", &db])
        .env("CASTOR_NO_MIGRATE", "0")
        .current_dir(dir.path());
    let out = Worker::started(command).stop();
    assert!(out.status.success(), "{}", out.stderr);
}

/// Runs a worker (with `worker_args`) on the migrated fixture and checks that every task
/// in it runs or reads back intact.
fn every_task_runs_or_reads_back(dir: &TestDir, worker_args: &[&str]) {
    let db = dir.db().display().to_string();
    let client = fx::manager()
        .with_database(dir.db())
        .without_migrations()
        .open()
        .expect("the database is migrated");
    let mut args = vec!["--grace", "100ms"];
    args.extend_from_slice(worker_args);
    let worker = Worker::start(dir, &tasks_target("manager"), &args);

    // Finished under castor 0.1: read back with their result and error.
    assert_eq!(
        fx::add::handle(&client, id(COMPLETED_ADD))
            .join(PATIENCE)
            .expect("join"),
        5
    );
    match fx::fail::handle(&client, id(DISCARDED_FAIL)).join(PATIENCE) {
        Err(JoinError::Failed {
            attempts, errors, ..
        }) => {
            assert_eq!(attempts, 1);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].error, "boom");
            assert_eq!(errors[0].kind, ErrorKind::Error);
        }
        other => panic!("the discarded task reads back as {other:?}"),
    }
    // Waiting: they run now, with the right results.
    assert_eq!(
        fx::add::handle(&client, id(AVAILABLE_ADD))
            .join(PATIENCE)
            .expect("join"),
        3
    );
    assert_eq!(
        fx::invoice::handle(&client, id(AVAILABLE_INVOICE))
            .join(PATIENCE)
            .expect("join"),
        fx::Invoice {
            customer: "ada".into(),
            total: 1250,
        }
    );
    fx::noop::handle(&client, id(UNIQUE_NOOP))
        .join(PATIENCE)
        .expect("join");
    assert_eq!(
        fx::add::handle(&client, id(SCHEDULED_ADD))
            .join(PATIENCE)
            .expect("join"),
        30
    );
    // Running when its worker was killed: rescued as abandoned and retried.
    let sleeping = fx::sleep_ms::handle(&client, id(RUNNING_SLEEP));
    wait_until("the killed worker's task runs again", || {
        sleeping
            .info()
            .is_ok_and(|i| i.state == TaskState::Running && i.attempt == 2)
    });
    let info = sleeping.info().expect("info");
    assert_eq!(info.errors.len(), 1, "{:?}", info.errors);
    assert_eq!(info.errors[0].attempt, 1);
    assert_eq!(info.errors[0].kind, ErrorKind::Abandoned);
    assert!(
        info.errors[0]
            .error
            .starts_with(&format!("abandoned: its worker {KILLED_WORKER}")),
        "{}",
        info.errors[0].error
    );
    // Schedule 1 ticks: its missed ticks run once, the next is within the hour (on its
    // grid), and the limit of 3 is kept.
    let known: Vec<Uuid> = [COMPLETED_ADD, AVAILABLE_ADD, SCHEDULED_ADD]
        .map(id)
        .to_vec();
    let mut runs = Vec::new();
    wait_until("schedule 1 makes a run", || {
        let out = run_castor(dir, &["list", "--db", &db, "--task", "add", "--json"]);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
        runs = listed
            .iter()
            .filter_map(|t| t["id"].as_str()?.parse::<Uuid>().ok())
            .filter(|id| !known.contains(id))
            .collect();
        !runs.is_empty()
    });
    for run in &runs {
        assert_eq!(
            fx::add::handle(&client, *run).join(PATIENCE).expect("join"),
            42
        );
    }
    let out = run_castor(dir, &["schedules", "--db", &db, "--json"]);
    let schedules: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let schedule = &schedules[0];
    assert_eq!(schedule["id"], 1, "{schedules}");
    assert_eq!(schedule["times"], 3, "{schedules}");
    // One run, unless the test crossed a tick of the hourly grid.
    let made = schedule["runs"].as_u64().expect("runs");
    assert!((1..=2).contains(&made), "{schedules}");
    let next = schedule["next_run_at"].as_i64().expect("a next run");
    let ahead = next - castor_store::now_us();
    assert!(
        ahead <= 3_600_000_000 && ahead > -(PATIENCE.as_micros() as i64),
        "the next run is {ahead} us ahead"
    );

    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    // Every migration is recorded now, with its time for those applied by this castor.
    let out = run_castor(dir, &["migrate", "status", "--db", &db]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let listed = rows(&out.stdout);
    assert!(listed.contains(&vec!["1", "initial", "before", "records"]));
    for m in &MIGRATIONS[1..] {
        let row = listed
            .iter()
            .find(|r| r.first() == Some(&&*m.version.to_string()))
            .unwrap_or_else(|| panic!("no row for migration {}:\n{}", m.version, out.stdout));
        assert_eq!(row[1], m.name);
        assert!(row[2].starts_with("20") && row[2].ends_with('Z'), "{row:?}");
    }
}

#[test]
fn a_worker_migrates_a_legacy_database_and_every_task_runs_or_reads_back() {
    let dir = TestDir::new();
    legacy(&dir);
    // The worker migrates as it opens the file; the app opens it after, told not to.
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    every_task_runs_or_reads_back(&dir, &[]);
}

#[test]
fn castor_migrate_up_migrates_a_legacy_database_and_every_task_runs_or_reads_back() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    legacy(&dir);
    let out = run_castor(&dir, &["migrate", "up", "--db", &db]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let listed = rows(&out.stdout);
    for m in &MIGRATIONS[1..] {
        let version = m.version.to_string();
        assert!(
            listed
                .iter()
                .any(|r| r.len() == 4 && r[..3] == ["applied", &version[..], m.name]),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.ends_with(&format!(
            "database {db} is now at schema version {}\n",
            latest()
        )),
        "{}",
        out.stdout
    );
    // Again: nothing to do.
    let out = run_castor(&dir, &["migrate", "up", "--db", &db]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "database {db} is up to date (schema version {})\n",
            latest()
        )
    );

    // Before any worker: every task is where castor 0.1 left it, and the unique key
    // still holds (a second dispatch returns the first task).
    let client = fx::manager()
        .with_database(dir.db())
        .without_migrations()
        .open()
        .expect("migrated");
    let store = Store::open(
        dir.db(),
        OpenOptions {
            migrate: false,
            ..OpenOptions::app()
        },
    )
    .expect("migrated");
    for (task, state) in [
        (COMPLETED_ADD, TaskState::Completed),
        (DISCARDED_FAIL, TaskState::Discarded),
        (RUNNING_SLEEP, TaskState::Running),
        (AVAILABLE_ADD, TaskState::Available),
        (AVAILABLE_INVOICE, TaskState::Available),
        (UNIQUE_NOOP, TaskState::Available),
        (SCHEDULED_ADD, TaskState::Scheduled),
    ] {
        assert_eq!(
            store.state_of(id(task)).expect("read"),
            Some(state),
            "{task}"
        );
    }
    let again = fx::noop::delay_with(&client, &DelayOptions::new().unique("legacy-unique"))
        .expect("dispatch");
    assert_eq!(again.id(), id(UNIQUE_NOOP));

    // An operator who migrates explicitly runs workers with --no-migrate.
    every_task_runs_or_reads_back(&dir, &["--no-migrate"]);
}

#[test]
fn a_database_newer_than_castor_is_refused_by_worker_app_and_cli_untouched() {
    let dir = TestDir::new();
    let db = dir.db().display().to_string();
    legacy(&dir);
    let out = run_castor(&dir, &["migrate", "up", "--db", &db]);
    assert!(out.status.success(), "{}", out.stderr);
    // What a newer castor leaves: one more migration, recorded.
    let newer = latest() + 1;
    let conn = rusqlite::Connection::open(dir.db()).expect("raw open");
    conn.execute(
        "INSERT INTO castor_migrations (version, name, applied_at) VALUES (?1, 'from_the_future', ?2)",
        rusqlite::params![newer, castor_store::now_us()],
    )
    .expect("record");
    conn.execute_batch(&format!("PRAGMA user_version = {newer}"))
        .expect("bump");
    drop(conn);
    let before = contents(&dir);
    let message = format!(
        "database {db} has schema version {newer}, newer than this castor understands ({}); \
         upgrade castor (nothing was changed)",
        latest()
    );
    let target = tasks_target("manager");

    let out = run_castor(&dir, &[&target, "--db", &db]);
    assert_refused(&out, 1, &message, "the worker");
    let err = fx::manager()
        .with_database(dir.db())
        .open()
        .expect_err("too new");
    assert_eq!(err.to_string(), message);
    let out = run_castor(&dir, &["list", "--db", &db]);
    assert_refused(&out, 1, &message, "list");
    let out = run_castor(&dir, &["migrate", "up", "--db", &db]);
    assert_refused(&out, 1, &message, "migrate up");
    let out = run_castor(&dir, &["migrate", "status", "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stderr, format!("castor: error: {message}\n"));
    let newer_row = rows(&out.stdout)
        .into_iter()
        .find(|r| r.first() == Some(&&*newer.to_string()))
        .map(|r| r.join(" "));
    assert!(
        newer_row.is_some_and(|r| r.contains("from_the_future")),
        "{}",
        out.stdout
    );
    assert!(contents(&dir) == before, "a refusal wrote to the database");

    // The fixture as castor 0.1 left it (one file, journal mode DELETE), bumped: the
    // refusal comes before castor sets anything on the file.
    let dir = TestDir::new();
    legacy(&dir);
    let conn = rusqlite::Connection::open(dir.db()).expect("raw open");
    conn.execute_batch(&format!("PRAGMA user_version = {newer}"))
        .expect("bump");
    drop(conn);
    let before = files(&dir);
    let out = run_castor(&dir, &[&target, "--db", &dir.db().display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("newer than this castor"),
        "{}",
        out.stderr
    );
    assert!(files(&dir) == before, "the refusal wrote to the file");
}
