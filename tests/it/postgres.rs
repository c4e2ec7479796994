//! The real `castor` worker and real apps on PostgreSQL: the server `CASTOR_TEST_POSTGRES`
//! names (`bash tests/run.sh` starts a throwaway one), a database of its own per test
//! ([`PgDatabase`]). Without the variable these tests fail, saying so: they never pass
//! without having run.

use std::process::{Command, Stdio};

use castor_fixture_tasks as fx;
use castor_store::{ListFilter, OpenOptions, Store, TaskState};

use crate::support::{
    PATIENCE, PgDatabase, TestDir, Worker, admin, block_on, castor_bin, castor_ok, fixture_app,
    recorded, tasks_target, wait_for_state, wait_until, wait_until_begun,
};

/// Starts `castor TARGET --db URL ARGS..` in `dir`, for the fixture's `manager`.
fn worker(dir: &TestDir, url: &str, args: &[&str]) -> Worker {
    worker_of(dir, url, "manager", args)
}

/// Starts `castor LIB:MANAGER --db URL ARGS..` in `dir`.
fn worker_of(dir: &TestDir, url: &str, manager: &str, args: &[&str]) -> Worker {
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target(manager))
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

/// `delay_in` inserts the task inside the app's own transaction: nothing of it is seen
/// (no row, no wake-up) before the app commits; at the commit the workers are told
/// (`NOTIFY`), and a real worker runs it, along with the app's own row.
#[test]
fn a_task_dispatched_in_a_committed_transaction_runs() {
    use castor_abi::postgres::fallible_iterator::FallibleIterator;
    use castor_abi::postgres::{Client as PgClient, NoTls};

    let db = PgDatabase::new();
    let dir = TestDir::new();
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let mut app = PgClient::connect(&db.url, NoTls).expect("connect the app");
    app.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
        .expect("create the app's table");
    let mut listener = PgClient::connect(&db.url, NoTls).expect("connect a listener");
    listener
        .batch_execute("LISTEN castor_changes")
        .expect("listen");

    let mut tx = app.transaction().expect("begin");
    tx.execute("INSERT INTO orders (id) VALUES (1)", &[])
        .expect("the app's own write");
    let handle = fx::add::delay_in(&mut tx, &client, 2, 3).expect("delay_in");
    let seen_before = Store::open(db.url.as_str(), OpenOptions::app())
        .expect("open")
        .snapshot(handle.id())
        .expect("read");
    assert!(
        seen_before.is_none(),
        "the task is invisible before the commit"
    );
    assert_eq!(
        listener.notifications().iter().count().expect("poll"),
        0,
        "no wake-up before the commit"
    );
    tx.commit().expect("commit");
    let woken = listener
        .notifications()
        .timeout_iter(PATIENCE)
        .next()
        .expect("receive");
    assert!(woken.is_some(), "the commit wakes the workers");

    let worker = worker(&dir, &db.url, &["--quiet"]);
    assert_eq!(handle.join(PATIENCE).expect("join"), 5);
    let orders: i64 = app
        .query_one("SELECT count(*) FROM orders", &[])
        .expect("count")
        .get(0);
    assert_eq!(orders, 1);
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// A rolled-back transaction takes its task with it: no row, and nothing runs, while a
/// task dispatched after it (the marker) runs on the same worker.
#[test]
fn a_task_dispatched_in_a_rolled_back_transaction_never_exists() {
    use castor_abi::postgres::{Client as PgClient, NoTls};

    let db = PgDatabase::new();
    let dir = TestDir::new();
    let worker = worker(&dir, &db.url, &["--quiet"]);
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let file = dir.path().join("runs.txt");
    let path = file.to_string_lossy().into_owned();
    let mut app = PgClient::connect(&db.url, NoTls).expect("connect the app");

    let mut tx = app.transaction().expect("begin");
    let rolled_back = fx::record::delay_in(&mut tx, &client, path.clone(), "rolled back".into(), 0)
        .expect("delay_in");
    tx.rollback().expect("roll back");
    // Dropped without a commit is a rollback too.
    let mut tx = app.transaction().expect("begin");
    let dropped = fx::record::delay_in(&mut tx, &client, path.clone(), "dropped".into(), 0)
        .expect("delay_in");
    drop(tx);

    let marker = fx::record::delay(&client, path, "marker".into(), 0).expect("delay");
    marker.join(PATIENCE).expect("the marker runs");
    let runs = recorded(&file);
    assert_eq!(runs.get("marker"), Some(&1), "{runs:?}");
    assert_eq!(runs.len(), 1, "only the marker ran: {runs:?}");
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    for handle in [rolled_back, dropped] {
        assert!(
            store.snapshot(handle.id()).expect("read").is_none(),
            "no row for a rolled-back task"
        );
    }
    let total: u64 = store
        .counts()
        .expect("counts")
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(total, 1, "only the marker's row");
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// `delay_in` refuses, with a sentence that says why, a manager on SQLite and invalid
/// options, writing nothing; the app's transaction is still usable after either.
#[test]
fn delay_in_refuses_a_sqlite_manager_and_invalid_options() {
    use castor_abi::postgres::{Client as PgClient, NoTls};

    let db = PgDatabase::new();
    let dir = TestDir::new();
    let on_sqlite = dir.client();
    let on_postgres = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let mut app = PgClient::connect(&db.url, NoTls).expect("connect the app");
    let mut tx = app.transaction().expect("begin");

    let error = fx::add::delay_in(&mut tx, &on_sqlite, 1, 2)
        .expect_err("a SQLite manager is refused")
        .to_string();
    assert!(
        error.contains("not one") && error.contains("postgres://") && error.contains("`add`"),
        "{error}"
    );
    let options = castor_abi::DelayOptions::new().max_attempts(0);
    let error = fx::add::delay_in_with(&mut tx, &on_postgres, &options, 1, 2)
        .expect_err("invalid options are refused")
        .to_string();
    assert!(error.contains("max_attempts"), "{error}");

    // The transaction was not aborted: a valid dispatch in it still works.
    let handle = fx::add::delay_in(&mut tx, &on_postgres, 1, 2).expect("delay_in");
    tx.commit().expect("commit");
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    let total: u64 = store
        .counts()
        .expect("counts")
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(total, 1, "only the valid dispatch wrote");
    assert!(store.snapshot(handle.id()).expect("read").is_some());
}

/// A worker killed (SIGKILL) while running tasks, on what its row says is another host (so
/// no pid check can tell it is gone): another worker rescues its tasks once its heartbeat
/// is older than the lease, and runs them again, each once more.
#[test]
fn a_dead_workers_tasks_are_rescued_by_another_after_its_lease() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let lease = ["--quiet", "--threads", "4", "--lease", "2s"];
    let doomed = worker(&dir, &db.url, &lease);
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let handles: Vec<_> = (0..3)
        .map(|_| fx::sleep_ms::delay(&client, 1_500).expect("delay"))
        .collect();
    for handle in &handles {
        wait_until_begun(handle);
    }
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    let dead = store.workers(true).expect("workers").remove(0).id;
    doomed.signal(libc::SIGKILL);
    let killed = doomed.wait();
    assert!(!killed.status.success(), "killed");
    // As if it ran on another machine: only its silence can tell the others it is dead.
    admin(&db.url)
        .execute(
            "UPDATE castor_workers SET hostname = 'another-host', host_id = 'another-host-id' WHERE id = $1",
            &[&dead],
        )
        .expect("move the dead worker to another host");

    let rescuer = worker(&dir, &db.url, &lease);
    for handle in &handles {
        assert_eq!(handle.join(PATIENCE).expect("join"), 1_500);
        let task = store.snapshot(handle.id()).expect("read").expect("exists");
        assert_eq!(task.attempt, 2, "run again once: {task:?}");
        assert_ne!(task.attempted_by.as_deref(), Some(dead.as_str()));
        let first = task
            .errors
            .first()
            .expect("the abandoned attempt is recorded");
        assert_eq!(first.worker.as_deref(), Some(dead.as_str()));
        assert!(
            first.error.contains("sent no heartbeat"),
            "rescued for its silence, not by a pid check: {}",
            first.error
        );
    }
    let stopped = rescuer.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// Two workers serve one periodic task: each tick makes one run, and each run runs once.
#[test]
fn each_periodic_tick_runs_once_with_two_workers() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let workers: Vec<Worker> = (0..2)
        .map(|_| worker_of(&dir, &db.url, "clock", &["--quiet"]))
        .collect();
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    wait_until("six ticks", || {
        store
            .schedules(Some("clock"))
            .is_ok_and(|s| s.first().is_some_and(|s| s.runs >= 6))
    });
    for worker in workers {
        let stopped = worker.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
    }
    let schedules = store.schedules(Some("clock")).expect("list");
    assert_eq!(schedules.len(), 1, "declared once by two workers");
    let schedule = &schedules[0];
    let runs = store.schedule_runs(schedule.id).expect("runs");
    assert_eq!(runs.len() as u32, schedule.runs, "one run per tick");
    let mut created: Vec<i64> = runs
        .iter()
        .map(|id| {
            store
                .snapshot(*id)
                .expect("read")
                .expect("exists")
                .created_at
        })
        .collect();
    created.sort_unstable();
    for pair in created.windows(2) {
        assert!(
            pair[1] - pair[0] > 150_000,
            "two runs {}us apart: a tick ran twice",
            pair[1] - pair[0]
        );
    }
    let ticks = recorded(&dir.path().join("ticks.txt"));
    assert!(
        ticks.values().all(|&n| n == 1),
        "a run ran twice: {ticks:?}"
    );
    assert!(
        ticks.len() + 2 >= runs.len(),
        "runs completed: {} of {}",
        ticks.len(),
        runs.len()
    );
}

/// An app's cancel reaches the task where it runs, on one of two workers: the running
/// attempt sees it and the task ends `cancelled`.
#[test]
fn a_cancel_reaches_a_task_running_on_another_worker() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let workers = [
        worker(&dir, &db.url, &["--quiet"]),
        worker(&dir, &db.url, &["--quiet"]),
    ];
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    // Runs until it sees its cancellation: without the cancel it never ends.
    let handle = fx::wait_for_cancel::delay(&client).expect("delay");
    wait_for_state(&handle, TaskState::Running);
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    let runner = store
        .snapshot(handle.id())
        .expect("read")
        .and_then(|t| t.attempted_by)
        .expect("a worker runs it");
    assert_eq!(
        handle.cancel().expect("cancel"),
        castor_store::CancelOutcome::Requested
    );
    wait_for_state(&handle, TaskState::Cancelled);
    let task = store.snapshot(handle.id()).expect("read").expect("exists");
    assert_eq!(task.attempted_by.as_deref(), Some(runner.as_str()));
    assert_eq!(task.attempt, 1, "not run again");
    for worker in workers {
        let stopped = worker.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
    }
}

/// Two apps (two connections) racing to dispatch with one unique key get one task: the
/// same id everywhere, one row; another task name keeps its own key; once a worker has
/// run the task, the key is free again.
#[test]
fn unique_keys_hold_across_two_apps() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let options = castor_abi::DelayOptions::new().unique("nightly");
    let ids: Vec<castor_abi::Uuid> = std::thread::scope(|scope| {
        let apps: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let client = fx::manager()
                        .with_database(db.url.as_str())
                        .open()
                        .expect("open an app's client");
                    (0..50)
                        .map(|_| {
                            fx::add::delay_with(&client, &options, 1, 2)
                                .expect("delay")
                                .id()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        apps.into_iter()
            .flat_map(|app| app.join().expect("an app panicked"))
            .collect()
    });
    assert_eq!(ids.len(), 100);
    assert!(ids.iter().all(|id| *id == ids[0]), "one task for one key");
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let other = fx::noop::delay_with(&client, &options).expect("delay");
    assert_ne!(other.id(), ids[0], "keys are per task name");
    let store = Store::open(db.url.as_str(), OpenOptions::app()).expect("open");
    let total: u64 = store
        .counts()
        .expect("counts")
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(total, 2, "one row per task name");

    let worker = worker(&dir, &db.url, &["--quiet"]);
    let first = client.handle::<i64>(ids[0], "add");
    assert_eq!(first.join(PATIENCE).expect("join"), 3);
    let again = fx::add::delay_with(&client, &options, 1, 2).expect("delay");
    assert_ne!(again.id(), ids[0], "a finished task frees its key");
    assert_eq!(again.join(PATIENCE).expect("join"), 3);
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// libfaketime, which moves the clock of the process it is preloaded into (and of that
/// process's children), and nothing else's.
fn libfaketime() -> std::path::PathBuf {
    let candidates = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("faketime/libfaketime.so.1")))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )]);
    for path in candidates {
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "libfaketime is missing (no /usr/lib/*/faketime/libfaketime.so.1): the clock test needs \
         it to put a worker's clock off; install Debian's libfaketime package (as .ci/run does)"
    );
}

/// Waits until the worker `id` has written `beats` more heartbeats.
fn heartbeats(store: &Store, id: &str, beats: usize) {
    let heartbeat = || {
        store
            .workers(true)
            .expect("workers")
            .into_iter()
            .find(|w| w.id == id)
            .map(|w| w.heartbeat_at)
    };
    let mut last = heartbeat();
    for _ in 0..beats {
        wait_until("the next heartbeat", || {
            let now = heartbeat();
            let beat = now != last;
            last = now;
            beat
        });
    }
}

/// A worker on a host whose clock is 3.2 s ahead of the server's (libfaketime moves that
/// worker process's clock, and only its: the server, this test and the other worker keep
/// the real one; the comparison is the worker's own, against the real server) says so
/// once at its start, not again at its next heartbeats, and once when its clock is back in
/// line. A worker whose clock is in line says nothing about clocks.
#[test]
fn a_worker_whose_clock_is_off_says_so_once_and_again_when_back_in_line() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+3.2\n").expect("write the offset");
    // A lease of 9 s: a heartbeat every 3 s, and a heartbeat 3.2 s in the future or the
    // past still younger than a lease to the other worker (with a 3 s lease, the worker
    // ahead buries the other for its silence: the harm the warning is about).
    let args = ["--quiet", "--threads", "1", "--lease", "9s"];
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(&db.url)
        .args(args)
        .current_dir(dir.path())
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let skewed = Worker::started(command);
    let in_line = worker(&dir, &db.url, &args);
    let ahead = "this host's clock is 3.2s ahead of the PostgreSQL server's";
    skewed.wait_for_stdout(ahead);
    let store = Store::open(db.url.as_str(), OpenOptions::inspect()).expect("open");
    // A worker says it started before its registration commits: wait for both rows.
    wait_until("both workers registered", || {
        store.workers(true).is_ok_and(|w| w.len() == 2)
    });
    let workers = store.workers(true).expect("workers");
    for worker in &workers {
        heartbeats(&store, &worker.id, 2);
    }

    std::fs::write(&offset, "+0\n").expect("write the offset");
    let back = "this host's clock is back in line with the PostgreSQL server's";
    skewed.wait_for_stdout(back);
    for worker in &workers {
        heartbeats(&store, &worker.id, 1);
    }
    // Tasks run on both all along.
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    for i in 0..10 {
        assert_eq!(
            fx::add::delay(&client, i, 1)
                .expect("delay")
                .join(PATIENCE)
                .expect("join"),
            i + 1
        );
    }

    let skewed = skewed.stop();
    assert!(skewed.status.success(), "{}", skewed.stderr);
    let said = |needle: &str| skewed.stdout.matches(needle).count();
    assert_eq!(
        (said(ahead), said(back)),
        (1, 1),
        "each said once:\n{}",
        skewed.stdout
    );
    assert!(
        skewed.stdout.contains("run NTP"),
        "the warning says what to do:\n{}",
        skewed.stdout
    );
    let in_line = in_line.stop();
    assert!(in_line.status.success(), "{}", in_line.stderr);
    assert!(
        !in_line.stdout.contains("clock"),
        "a worker in line says nothing about clocks:\n{}",
        in_line.stdout
    );
    assert!(
        !format!("{}{}", skewed.stdout, in_line.stdout).contains("rescuing"),
        "no worker was taken for dead:\n{}\n{}",
        skewed.stdout,
        in_line.stdout
    );
}

/// The app's whole API and the CLI work on PostgreSQL as on SQLite: `delay_with` (a
/// unique key, a start time, a priority), `delay_many`, `join`, `resolve`, retries with
/// backoff, a discarded task retried and a waiting one cancelled from the CLI, a schedule
/// run by the worker, `show`, `schedules`, `stats` and `purge`.
#[test]
fn the_app_api_and_the_cli_work_whole_on_postgres() {
    use castor_abi::{DelayOptions, Schedule};
    use std::time::Duration;

    let db = PgDatabase::new();
    let dir = TestDir::new();
    let _worker = worker(&dir, &db.url, &["--quiet"]);
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");

    // A unique key held by a waiting task returns that task.
    let later = DelayOptions::new()
        .after(Duration::from_secs(3600))
        .unique("nightly")
        .priority(5);
    let waiting = fx::add::delay_with(&client, &later, 1, 2).expect("delay_with");
    let again = fx::add::delay_with(&client, &later, 5, 5).expect("delay_with again");
    assert_eq!(waiting.id(), again.id(), "the unique key's holder");
    assert_eq!(waiting.status().expect("status"), TaskState::Scheduled);

    // Many at once, joined; one resolved on the smallest executor there is.
    let handles = fx::add::delay_many(&client, (0..50).map(|i| (i, 1))).expect("delay_many");
    let sums: Vec<i64> = handles
        .iter()
        .map(|h| h.join(PATIENCE).expect("join"))
        .collect();
    assert_eq!(sums, (1..=50).collect::<Vec<i64>>());
    let answer = fx::add::delay(&client, 20, 22).expect("delay");
    assert_eq!(block_on(answer.resolve()).expect("resolve"), 42);

    // Retried with backoff: fails twice, then returns its attempt number.
    let flaky = fx::flaky::delay(&client, 2).expect("delay");
    assert_eq!(flaky.join(PATIENCE).expect("the third attempt succeeds"), 3);

    // Discarded after its attempts, shown, then retried from the CLI.
    let failing = fx::flaky::delay(&client, 3).expect("delay");
    let err = failing.join(PATIENCE).expect_err("discarded");
    assert!(err.to_string().contains("failed on purpose"), "{err}");
    let id = failing.id().to_string();
    let shown = castor_ok(&dir, &["show", &id, "--db", &db.url]);
    assert!(shown.contains("discarded"), "{shown}");
    assert!(shown.contains("attempt 3 failed on purpose"), "{shown}");
    let retried = castor_ok(&dir, &["retry", &id, "--db", &db.url]);
    assert!(retried.contains("available again"), "{retried}");
    assert_eq!(failing.join(PATIENCE).expect("the fourth attempt"), 4);

    // The waiting task cancelled from the CLI.
    castor_ok(
        &dir,
        &["cancel", &waiting.id().to_string(), "--db", &db.url],
    );
    assert_eq!(waiting.status().expect("status"), TaskState::Cancelled);

    // A schedule the app creates runs on the worker.
    let schedule = fx::add::schedule(&client, &Schedule::every(Duration::from_millis(300)), 2, 3)
        .expect("schedule");
    wait_until("the schedule ran twice", || {
        schedule.runs().is_ok_and(|runs| runs.len() >= 2)
    });
    let latest = schedule.latest().expect("latest").expect("a run");
    assert_eq!(latest.join(PATIENCE).expect("a run's result"), 5);
    let listed = castor_ok(&dir, &["schedules", "--db", &db.url]);
    assert!(listed.contains("add"), "{listed}");
    schedule.remove().expect("remove");

    let stats = castor_ok(&dir, &["stats", "--db", &db.url]);
    assert!(stats.contains("workers alive: 1"), "{stats}");
    let purged = castor_ok(&dir, &["purge", "--state", "cancelled", "--db", &db.url]);
    assert!(purged.contains("purged 1 task(s)"), "{purged}");
    assert!(waiting.status().is_err(), "purged");
}

/// The claim filter on PostgreSQL: a task dispatched by version 2 of a library is left
/// `available` by a version 1 worker (which says so) while it runs version 1's, then a
/// version 2 worker runs it with the right values.
#[test]
fn a_worker_on_postgres_claims_only_tasks_of_its_signature() {
    use castor_fixture_shop_v1 as v1;
    use castor_fixture_shop_v2 as v2;
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let shop_worker = |version: &str| {
        let mut command = Command::new(castor_bin());
        command
            .arg(format!(
                "{}:shop",
                crate::support::fixture_path(&format!("{version}_plugin")).display()
            ))
            .arg("--db")
            .arg(&db.url)
            .current_dir(dir.path());
        Worker::started(command)
    };
    let old = v1::shop()
        .with_database(db.url.as_str())
        .open()
        .expect("open v1");
    let new = v2::shop()
        .with_database(db.url.as_str())
        .open()
        .expect("open v2");
    let waiting = v2::charge::delay(
        &new,
        v2::Order {
            price_cents: 1999,
            qty: 3,
        },
    )
    .expect("delay v2");
    let worker = shop_worker("shop_v1");
    let new_fp = &(v2::charge::SPEC.fingerprints)().args;
    worker.wait_for_stdout(&format!(
        "leaving 1 task(s) of `charge` dispatched with a different signature (args \
         fingerprint {new_fp}"
    ));
    let ran = v1::charge::delay(
        &old,
        v1::Order {
            qty: 2,
            price_cents: 500,
        },
    )
    .expect("delay v1");
    assert_eq!(
        ran.join(PATIENCE).expect("join v1"),
        "qty=2 price_cents=500"
    );
    assert_eq!(waiting.status().expect("status"), TaskState::Available);
    worker.stop();
    let worker = shop_worker("shop_v2");
    assert_eq!(
        waiting.join(PATIENCE).expect("join v2"),
        "qty=3 price_cents=1999"
    );
    worker.stop();
}
