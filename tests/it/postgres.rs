//! The real `castor` worker and real apps on PostgreSQL: the server `CASTOR_TEST_POSTGRES`
//! names (`bash tests/run.sh` starts a throwaway one), a database of its own per test.
//! Without the variable these tests fail, saying so: they never pass without having run.

use std::process::{Command, Stdio};

use castor_fixture_tasks as fx;
use castor_store::{ListFilter, OpenOptions, Store, TaskState};

use crate::support::{
    PATIENCE, TestDir, Worker, castor_bin, fixture_app, recorded, tasks_target, wait_until,
};

/// The environment variable naming the test server.
const SERVER_ENV: &str = "CASTOR_TEST_POSTGRES";

/// An empty database on the test server, dropped with everything in it at the end.
struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn new() -> PgDatabase {
        let server = match std::env::var(SERVER_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => panic!(
                "{SERVER_ENV} is not set: the PostgreSQL tests need a server; run them with \
                 `bash tests/run.sh`, which starts a throwaway one, or set {SERVER_ENV} to a \
                 server's URL whose user may create databases"
            ),
        };
        let name = format!("castor_it_{}", castor_abi::Uuid::now_v7().simple());
        admin(&server)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        let url = with_dbname(&server, &name);
        PgDatabase { server, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Nothing to report: a database left behind goes with the throwaway server.
        let _ = admin(&self.server).batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn admin(server: &str) -> postgres::Client {
    postgres::Client::connect(server, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {SERVER_ENV}'s server: {e}"))
}

/// `url` with its database name replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// Starts `castor TARGET --db URL ARGS..` in `dir`.
fn worker(dir: &TestDir, url: &str, args: &[&str]) -> Worker {
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(url)
        .args(args)
        .current_dir(dir.path());
    Worker::started(command)
}

/// Two workers (as on two hosts) drain what two app processes dispatch one by one, each
/// task exactly once; an app in this process joins a result through the same database.
#[test]
fn workers_on_postgres_run_what_apps_dispatch_each_once() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let workers = [
        worker(&dir, &db.url, &["--quiet", "--threads", "2"]),
        worker(&dir, &db.url, &["--quiet", "--threads", "2"]),
    ];
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let handle = fx::add::delay(&client, 2, 3).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), 5);

    let file = dir.path().join("runs.txt");
    let per_app = 300;
    let app = fixture_app();
    let apps: Vec<_> = (0..2)
        .map(|a| {
            Command::new(&app)
                .arg(&db.url)
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
        assert!(
            out.status.success(),
            "an app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until("every dispatched task ran", || {
        recorded(&file).len() == 2 * per_app
    });
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    wait_until("every task is recorded completed", || {
        store.unfinished("manager").expect("count") == 0
    });
    let runs = recorded(&file);
    assert!(runs.values().all(|&n| n == 1), "no task ran twice");
    let counts = store.counts().expect("counts");
    assert!(
        counts.iter().all(|c| c.state == TaskState::Completed),
        "{counts:?}"
    );
    let total: u64 = counts.iter().map(|c| c.count).sum();
    assert_eq!(total, 2 * per_app as u64 + 1);
    // Both workers took part, claiming side by side.
    assert_eq!(store.workers(true).expect("workers").len(), 2);
    let ran_on: std::collections::HashSet<String> = store
        .list(&ListFilter {
            limit: 2 * per_app + 1,
            ..ListFilter::default()
        })
        .expect("list")
        .into_iter()
        .filter_map(|t| t.attempted_by)
        .collect();
    assert_eq!(ran_on.len(), 2, "both workers ran tasks: {ran_on:?}");
    for worker in workers {
        let stopped = worker.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
    }
    assert!(
        store.workers(true).expect("workers").is_empty(),
        "both stopped cleanly"
    );
}

/// `castor migrate status` and `castor list` speak to PostgreSQL the same way.
#[test]
fn the_cli_reads_a_postgres_database() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let handle = fx::add::delay(&client, 1, 1).expect("delay");
    let out = Command::new(castor_bin())
        .args(["list", "--db", &db.url])
        .current_dir(dir.path())
        .output()
        .expect("run castor list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "castor list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&handle.id().to_string()[..8]), "{stdout}");
    let out = Command::new(castor_bin())
        .args(["migrate", "status", "--db", &db.url])
        .current_dir(dir.path())
        .output()
        .expect("run castor migrate status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "castor migrate status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("initial"), "{stdout}");
    // `castor check` says what it ran on this engine, and counts the task.
    let out = Command::new(castor_bin())
        .args(["check", "--db", &db.url])
        .current_dir(dir.path())
        .output()
        .expect("run castor check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "castor check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("integrity  ok (a read of every castor table"),
        "{stdout}"
    );
    assert!(!stdout.contains("PRAGMA"), "{stdout}");
}
