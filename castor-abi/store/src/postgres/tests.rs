//! The PostgreSQL driver's tests, on the real server `CASTOR_TEST_POSTGRES` names (a URL;
//! `bash tests/run.sh` starts a throwaway cluster and sets it). Each test gets a database
//! of its own, created on that server. Without the variable the tests fail, saying so:
//! they never pass without having run.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator;
use uuid::Uuid;

use super::MIGRATIONS;
use crate::conformance::{claim, filter, new_task};
use crate::{
    AttemptError, Cadence, Database, ErrorKind, Finish, LogLevel, Missed, NewLog, NewSchedule,
    OpenOptions, Store, StoreError, TaskState, Transition, migrate, now_us,
};

/// The environment variable naming the test server.
pub const SERVER_ENV: &str = "CASTOR_TEST_POSTGRES";

/// The test server's URL.
fn server() -> String {
    match std::env::var(SERVER_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{SERVER_ENV} is not set: the PostgreSQL tests need a server; run them with \
             `bash tests/run.sh`, which starts a throwaway one, or set {SERVER_ENV} to a \
             server's URL (postgres://user@host/db) whose user may create databases"
        ),
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Creates an empty database on the test server; returns its URL.
pub fn fresh_url() -> String {
    let server = server();
    let name = format!("castor_test_{}", Uuid::now_v7().simple());
    let mut admin = postgres::Client::connect(&server, NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {SERVER_ENV}'s server: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    with_dbname(&server, &name)
}

/// A fresh, migrated database on the test server for one conformance case, dropped with
/// it.
struct Conformance {
    url: String,
}

impl crate::conformance::TestDatabase for Conformance {
    fn connect(&self) -> Store {
        Store::open(self.url.as_str(), OpenOptions::app()).expect("open")
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        let name = self.url.rsplit('/').next().unwrap_or_default();
        let name = name.split('?').next().unwrap_or_default().to_owned();
        if let Ok(mut admin) = postgres::Client::connect(&server(), NoTls) {
            // Best effort: a database left behind dies with the throwaway cluster.
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A fresh, migrated database.
fn fresh() -> Store {
    Store::open(fresh_url(), OpenOptions::app()).expect("open")
}

fn fresh_conformance() -> Conformance {
    let database = Conformance { url: fresh_url() };
    drop(crate::conformance::TestDatabase::connect(&database));
    database
}

mod conformance {
    crate::conformance_tests!(super::fresh_conformance);
}

#[test]
fn migrations_are_numbered_and_recorded() {
    migrate::check_numbering(MIGRATIONS).expect("numbering");
    let url = fresh_url();
    // Told not to migrate, an empty database is refused untouched.
    let refused = Store::open(
        url.as_str(),
        OpenOptions {
            migrate: false,
            ..OpenOptions::app()
        },
    )
    .expect_err("needs migration");
    assert!(
        matches!(refused, StoreError::NeedsMigration { found: 0, .. }),
        "{refused}"
    );
    let store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    let status = store.migration_status().expect("status");
    assert_eq!(status.version, 6);
    assert!(status.pending.is_empty());
    assert_eq!(
        status
            .applied
            .iter()
            .map(|m| (m.version, m.name.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "initial"),
            (2, "worker_host_id"),
            (3, "fingerprints"),
            (4, "signatures"),
            (5, "limits"),
            (6, "chains"),
        ]
    );
    assert!(status.applied.iter().all(|m| m.applied_at.is_some()));
    assert!(store.missing_schema_objects().expect("schema").is_empty());
    // Opening again applies nothing; a second process racing the first finds it done.
    let mut again = Store::open(url.as_str(), OpenOptions::app()).expect("reopen");
    assert!(again.migrate().expect("migrate").is_empty());
    assert!(store.size().expect("size") > 0);
}

#[test]
fn concurrent_migrations_apply_once() {
    let url = fresh_url();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                Store::open(url.as_str(), OpenOptions::app()).map(drop)
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread").expect("open");
    }
    let store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    assert_eq!(
        store.migration_status().expect("status").applied.len(),
        super::MIGRATIONS.len()
    );
}

#[test]
fn concurrent_claimers_never_share_a_task() {
    const TASKS: usize = 400;
    const CLAIMERS: usize = 4;
    let url = fresh_url();
    let mut store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    let tasks: Vec<_> = (0..TASKS).map(|_| new_task("a", b"x")).collect();
    store.enqueue_many(&tasks).expect("enqueue");
    let barrier = Arc::new(Barrier::new(CLAIMERS));
    let threads: Vec<_> = (0..CLAIMERS)
        .map(|n| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
                let worker = format!("w{n}");
                let q = filter(&["a"]);
                barrier.wait();
                let mut mine = Vec::new();
                loop {
                    let got = store
                        .write(|tx| tx.claim(&q, &worker, 7, now_us(), now_us() + 30_000_000))
                        .expect("claim");
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.seq));
                }
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("claimer"))
        .collect();
    assert_eq!(all.len(), TASKS, "every task claimed");
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), TASKS, "no task claimed twice");
}

#[test]
fn a_commit_on_another_connection_wakes_the_notifier() {
    let url = fresh_url();
    let database = Database::parse(&url);
    let mut store = Store::open(&database, OpenOptions::app()).expect("open");
    let notifier = crate::notifier(&database).expect("notifier");
    // Each wait is cut short by the change, not by the fallback tick (1 s).
    for _ in 0..3 {
        let since = notifier.generation();
        let started = Instant::now();
        store.enqueue(&new_task("a", b"x")).expect("enqueue");
        let seen = notifier.wait_past(since, started + Duration::from_secs(5));
        assert_ne!(seen, since, "woken");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "woken by the notification, not the fallback tick ({:?})",
            started.elapsed()
        );
    }
}

#[test]
fn claims_and_lease_renewals_wake_nobody() {
    let url = fresh_url();
    let database = Database::parse(&url);
    let mut store = Store::open(&database, OpenOptions::app()).expect("open");
    store.enqueue(&new_task("a", b"x")).expect("enqueue");
    let mut listener = postgres::Client::connect(&url, NoTls).expect("connect");
    listener
        .batch_execute(&format!("LISTEN {}", super::watch::CHANNEL))
        .expect("listen");
    let c = claim(&mut store, &filter(&["a"]), 1).remove(0);
    store
        .write(|tx| tx.renew_leases("w1", &[(c.seq, c.attempt)], now_us() + 60_000_000))
        .expect("renew");
    store
        .write(|tx| tx.set_progress(c.seq, c.attempt, 1, 2, "half"))
        .expect("progress");
    let quiet = listener
        .notifications()
        .timeout_iter(Duration::from_millis(200))
        .next();
    assert!(
        matches!(quiet, Ok(None)),
        "claims, renewals and progress notify nobody"
    );
    store
        .write(|tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Completed {
                    result: b"",
                    result_fingerprint: None,
                },
                now_us(),
            )
        })
        .expect("finish");
    let woken = listener
        .notifications()
        .timeout_iter(Duration::from_secs(5))
        .next();
    assert!(
        matches!(woken, Ok(Some(_))),
        "a finished task notifies its waiters"
    );
}

#[test]
fn the_notifier_reconnects_after_the_server_drops_it() {
    let url = fresh_url();
    let database = Database::parse(&url);
    let mut store = Store::open(&database, OpenOptions::app()).expect("open");
    let notifier = crate::notifier(&database).expect("notifier");
    // Ends the notifier's connection (as a server restart would) from the server's side.
    let mut admin = postgres::Client::connect(&url, NoTls).expect("connect");
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND query LIKE 'LISTEN%'",
            &[],
        )
        .expect("terminate")
        .get(0);
    assert_eq!(ended, 1, "the notifier's connection was found");
    // Back within the retry pause, it wakes on commits again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = || {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE 'LISTEN%'",
                &[],
            )
            .expect("read")
            .get(0);
        n == 1
    };
    let mut admin_listening = listening;
    while !admin_listening() {
        assert!(Instant::now() < deadline, "the notifier connected again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let since = notifier.generation();
    let started = Instant::now();
    store.enqueue(&new_task("a", b"x")).expect("enqueue");
    assert_ne!(
        notifier.wait_past(since, started + Duration::from_secs(5)),
        since
    );
}

#[test]
fn the_driver_connects_again_after_the_server_drops_it() {
    let url = fresh_url();
    let mut store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").id;
    let mut admin = postgres::Client::connect(&url, NoTls).expect("connect");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .expect("terminate");
    // The statement that meets the dropped connection fails, saying so; the next works.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.state_of(id) {
            Ok(state) => {
                assert_eq!(state, Some(TaskState::Available));
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never connected again: {e}");
            }
        }
    }
}

#[test]
fn a_server_that_is_not_there_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("castor-no-server-{}", Uuid::now_v7().simple()));
    let url = format!("postgres:///tasks?host={}&connect_timeout=2", dir.display());
    let error = Store::open(url.as_str(), OpenOptions::app()).expect_err("no server");
    assert!(matches!(error, StoreError::Connect { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("cannot open database postgres:///tasks"),
        "{text}"
    );
    assert!(
        text.contains("No such file or directory"),
        "the operating system's reason is given: {text}"
    );
    let missing = with_dbname(&server(), "castor_no_such_database");
    let error = Store::open(missing.as_str(), OpenOptions::app()).expect_err("no database");
    assert!(error.to_string().contains("create it first"), "{error}");
    let bad = Store::open("postgres://h:notaport/db", OpenOptions::app()).expect_err("bad url");
    assert!(bad.to_string().contains("cannot be read"), "{bad}");
}

#[test]
fn urls_get_their_database_replaced() {
    assert_eq!(
        with_dbname("postgres:///postgres?host=/tmp/x&user=postgres", "t1"),
        "postgres:///t1?host=/tmp/x&user=postgres"
    );
    assert_eq!(
        with_dbname("postgresql://u:p@h:5432/db", "t2"),
        "postgresql://u:p@h:5432/t2"
    );
    assert_eq!(with_dbname("postgres://h", "t3"), "postgres://h/t3");
}

#[test]
fn a_buried_workers_task_is_rescued_and_its_next_attempt_starts_without_progress() {
    let mut store = fresh();
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").id;
    let first = claim(&mut store, &filter(&["a"]), 1).remove(0);
    store
        .write(|tx| tx.set_progress(first.seq, first.attempt, 5, 10, "halfway"))
        .expect("progress");
    let now = now_us();
    let held = store.write(|tx| tx.bury_worker("w1", now)).expect("bury");
    assert_eq!(held, 1);
    let expired = store
        .write(|tx| tx.expired_leases(now, 10))
        .expect("expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, id);
    let abandoned = Finish::Failed {
        transition: Transition {
            state: TaskState::Retryable,
            scheduled_at: Some(now),
        },
        error: AttemptError {
            attempt: first.attempt,
            at: now,
            kind: ErrorKind::Abandoned,
            error: "its worker died".into(),
            worker: Some("w1".into()),
        },
    };
    assert!(
        store
            .write(|tx| tx.finish_if_running(first.seq, first.attempt, &abandoned, now))
            .expect("rescue")
    );
    store
        .write(|tx| tx.stage_due("manager", now))
        .expect("stage");
    let second = claim(&mut store, &filter(&["a"]), 1).remove(0);
    assert_eq!(second.attempt, 2);
    let snap = store.snapshot(id).expect("read").expect("exists");
    assert_eq!(snap.progress, None, "attempt 2 has reported nothing yet");
    assert_eq!(snap.errors.len(), 1);
}

#[test]
fn a_finished_attempts_log_keeps_exactly_the_newest_lines() {
    let mut store = fresh();
    store.enqueue(&new_task("a", b"x")).expect("enqueue");
    let c = claim(&mut store, &filter(&["a"]), 1).remove(0);
    let lines = crate::LOG_LINES_KEPT + 10;
    store
        .write(|tx| {
            for n in 0..lines {
                tx.append_log(&NewLog {
                    seq: c.seq,
                    attempt: c.attempt,
                    at: n,
                    level: LogLevel::Info,
                    line: &n.to_string(),
                })?;
            }
            Ok(())
        })
        .expect("log");
    store
        .write(|tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Completed {
                    result: b"",
                    result_fingerprint: None,
                },
                now_us(),
            )
        })
        .expect("finish");
    let id = store
        .list(&crate::ListFilter {
            limit: 1,
            ..Default::default()
        })
        .expect("list")[0]
        .id;
    let kept = store.logs(id).expect("logs");
    assert_eq!(kept.len() as i64, crate::LOG_LINES_KEPT);
    assert_eq!(kept[0].line, "10", "the oldest lines went first");
}

#[test]
fn a_periodic_schedule_restarts_when_its_priority_or_backoff_changes() {
    let mut store = fresh();
    let every = Cadence::Every(Duration::from_secs(60));
    let now = now_us();
    let declared = NewSchedule {
        manager: "manager",
        task: "a",
        name: Some("nightly"),
        args: b"",
        cadence: &every,
        times: None,
        until: None,
        first_run_at: now + 60_000_000,
        missed: Missed::Skip,
        priority: 0,
        max_attempts: 1,
        backoff_base_ms: 1000,
        backoff_cap_ms: 1000,
        timeout_ms: None,
        args_fingerprint: None,
    };
    let id = store
        .write(|tx| tx.upsert_periodic(&declared, now))
        .expect("declare");
    let moved = NewSchedule {
        first_run_at: now + 120_000_000,
        ..declared.clone()
    };
    assert_eq!(
        store
            .write(|tx| tx.upsert_periodic(&moved, now))
            .expect("again"),
        id
    );
    let kept = store.schedule(id).expect("read").expect("exists");
    assert_eq!(kept.next_run_at, Some(now + 60_000_000), "unchanged: kept");
    for changed in [
        NewSchedule {
            priority: 3,
            ..moved.clone()
        },
        NewSchedule {
            backoff_cap_ms: 5000,
            priority: 3,
            ..moved.clone()
        },
    ] {
        store
            .write(|tx| tx.upsert_periodic(&changed, now))
            .expect("redeclare");
        let restarted = store.schedule(id).expect("read").expect("exists");
        assert_eq!(
            restarted.next_run_at,
            Some(now + 120_000_000),
            "changed: restarted"
        );
        store
            .write(|tx| tx.advance_schedule(id, now + 120_000_000, 0, Some(now + 60_000_000)))
            .expect("move back");
    }
}

/// A worker's notifier told to skip its own session reports no change for that
/// connection's commits (the worker knows what it wrote), and still reports another
/// connection's at once.
#[test]
fn a_notifier_skips_the_ignored_sessions_commits() {
    let url = fresh_url();
    let database = Database::parse(&url);
    let mut own = Store::open(&database, OpenOptions::worker()).expect("open");
    let mut other = Store::open(&database, OpenOptions::app()).expect("open");
    let notifier = crate::notifier(&database).expect("notifier");
    let session = own.session();
    assert!(session.is_some(), "a worker's connection knows its session");
    assert_eq!(other.session(), None, "an app's needs none");
    notifier.ignore_session(session);
    let changes = notifier.changes();
    own.enqueue(&new_task("a", b"x")).expect("enqueue");
    // Past the fallback tick: time for the notification to arrive, were it reported.
    let since = notifier.generation();
    notifier.wait_past(since, Instant::now() + Duration::from_millis(1500));
    let since = notifier.generation();
    notifier.wait_past(since, Instant::now() + Duration::from_millis(1500));
    assert_eq!(notifier.changes(), changes, "its own commit is skipped");
    let started = Instant::now();
    other.enqueue(&new_task("a", b"y")).expect("enqueue");
    while notifier.changes() == changes {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "another connection's commit is reported"
        );
        let since = notifier.generation();
        notifier.wait_past(since, Instant::now() + Duration::from_millis(100));
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "at once, not at the fallback tick ({:?})",
        started.elapsed()
    );
}

/// A worker's registration and heartbeat read the server's clock as they write:
/// `clock_offset` answers with that reading, once, sending nothing (the session's last
/// statement is still the write's `COMMIT`), and without one reads the clock with a
/// statement of its own. Host and server share a clock here, so every reading puts the
/// server's clock inside the round trip: an offset of at most half of it.
#[test]
fn a_workers_writes_read_the_servers_clock_along() {
    let url = fresh_url();
    let mut store = Store::open(url.as_str(), OpenOptions::worker()).expect("open");
    let pid = i32::try_from(store.session().expect("a worker's session")).expect("a pid");
    let mut admin = postgres::Client::connect(&url, NoTls).expect("connect");
    let mut last_statement = move || -> String {
        admin
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .expect("read pg_stat_activity")
            .get(0)
    };
    let in_the_round_trip = |reading: crate::ClockOffset| {
        assert!(
            reading.at_least_us() <= 1 && reading.round_trip_us >= 0,
            "{reading:?}"
        );
        assert_eq!(reading.server, "the PostgreSQL server");
    };

    store
        .write(|tx| tx.register_worker(&crate::conformance::worker_row("w", now_us())))
        .expect("register");
    assert_eq!(last_statement(), "COMMIT");
    in_the_round_trip(store.clock_offset().expect("read").expect("a reading"));
    assert_eq!(last_statement(), "COMMIT", "the registration's reading");

    store
        .write(|tx| tx.heartbeat("w", now_us(), 1, 0))
        .expect("heartbeat");
    // A heartbeat alone commits without waiting for the flush.
    let heartbeat_commit = "SET LOCAL synchronous_commit = off; COMMIT";
    assert_eq!(last_statement(), heartbeat_commit);
    in_the_round_trip(store.clock_offset().expect("read").expect("a reading"));
    assert_eq!(
        last_statement(),
        heartbeat_commit,
        "the heartbeat's reading"
    );

    // Taken once: the next reading is a statement of its own.
    in_the_round_trip(store.clock_offset().expect("read").expect("a reading"));
    let statement = last_statement();
    assert!(statement.contains("clock_timestamp()"), "{statement}");

    // An app's connection reads it too (the dashboard's, `castor`'s commands).
    let app = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    in_the_round_trip(app.clock_offset().expect("read").expect("a reading"));
}

/// A reading is the host's clock at the middle of the round trip against the server's:
/// how far apart they are at least and at most follows from the round trip.
#[test]
fn a_clock_reading_is_bounded_by_its_round_trip() {
    let reading = crate::ClockOffset::from_round_trip(10_000_000, 6_800_000, 10_002_000, "s");
    assert_eq!(reading.ahead_us, 3_201_000);
    assert_eq!(reading.round_trip_us, 2_000);
    assert_eq!(reading.at_least_us(), 3_200_000);
    assert_eq!(reading.at_most_us(), 3_202_000);
    let behind = crate::ClockOffset::from_round_trip(10_000_000, 12_000_000, 10_000_000, "s");
    assert_eq!(behind.ahead_us, -2_000_000);
    assert_eq!(behind.at_least_us(), 2_000_000);
    // A round trip longer than the offset cannot tell the clocks apart.
    let slow = crate::ClockOffset::from_round_trip(0, 1_000, 4_000, "s");
    assert_eq!((slow.at_least_us(), slow.at_most_us()), (0, 3_000));
}

/// A transaction of claims, lease renewals and heartbeats alone commits without waiting
/// for the flush (losing it in a crash loses nothing); one with anything else in it (a
/// dispatch, an outcome) waits.
#[test]
fn only_claims_renewals_and_heartbeats_commit_without_the_flush() {
    let url = fresh_url();
    drop(Store::open(url.as_str(), OpenOptions::app()).expect("migrate"));
    let mut driver = super::PostgresDriver::open(&url, &OpenOptions::app()).expect("open");
    let now = now_us();
    let mut tx = super::tx::PostgresTx::begin(&mut driver).expect("begin");
    crate::Tx::enqueue(&mut tx, &new_task("a", b"x"), now).expect("enqueue");
    assert!(tx.must_flush(), "a dispatch waits for the flush");
    crate::Tx::commit(Box::new(tx)).expect("commit");

    let mut tx = super::tx::PostgresTx::begin(&mut driver).expect("begin");
    let claimed =
        crate::Tx::claim(&mut tx, &filter(&["a"]), "w1", 10, now, now + 30_000_000).expect("claim");
    assert_eq!(claimed.len(), 1);
    crate::Tx::renew_leases(&mut tx, "w1", &[(claimed[0].seq, 1)], now + 60_000_000)
        .expect("renew");
    crate::Tx::heartbeat(&mut tx, "w1", now, 0, 0).expect("heartbeat");
    assert!(
        !tx.must_flush(),
        "claims, renewals and heartbeats need no flush"
    );
    crate::Tx::commit(Box::new(tx)).expect("commit");

    let mut tx = super::tx::PostgresTx::begin(&mut driver).expect("begin");
    crate::Tx::claim(&mut tx, &filter(&["a"]), "w1", 10, now, now + 30_000_000).expect("claim");
    let end = crate::AttemptEnd {
        seq: claimed[0].seq,
        attempt: claimed[0].attempt,
        finish: Finish::Completed {
            result: b"ok",
            result_fingerprint: None,
        },
    };
    let recorded = crate::Tx::finish_many(&mut tx, "w1", &[end], now).expect("finish");
    assert_eq!(recorded, [true]);
    assert!(tx.must_flush(), "an outcome waits for the flush");
    crate::Tx::commit(Box::new(tx)).expect("commit");
}

/// Every table a migration creates is one the size and the health check read.
#[test]
fn the_size_and_the_check_know_every_table() {
    let created: Vec<&str> = MIGRATIONS
        .iter()
        .flat_map(|m| m.sql.lines())
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("CREATE TABLE ")?;
            let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
            rest.split([' ', '(']).next()
        })
        .collect();
    assert!(created.contains(&"castor_tasks"), "{created:?}");
    for table in created {
        assert!(super::TABLES.contains(&table), "{table} is not in TABLES");
    }
}
