//! Flow control with real workers: a concurrency limit held by three workers on one file
//! while they are killed and restarted, a rate limit's every one-second window and its
//! throughput, a limit per partition key, `castor limits` overrides and what `list`,
//! `show` and `stats` say of held tasks, a worker that sleeps while a rate holds its
//! backlog, and the concurrency limit across workers on PostgreSQL.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use castor_abi::{Client, Uuid};
use castor_fixture_tasks as fx;
use castor_store::{Database, ErrorKind, OpenOptions, Store, TaskSnapshot, TaskState};

use crate::support::{
    PgDatabase, TestDir, Worker, castor_bin, castor_json, castor_ok, cpu_time, run_castor,
    tasks_target, wait_until,
};

/// The fixture's `limited` manager on the test's database.
fn limited(db: &str) -> Client {
    fx::limits::limited()
        .with_database(db)
        .open()
        .expect("open the test database")
}

fn open(db: &Database) -> Store {
    castor_store::open(db, &OpenOptions::app()).expect("open the database")
}

/// A pseudo-random sequence (no RNG dependency; different every run).
fn randoms() -> impl FnMut(u64) -> u64 {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    move |bound| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound
    }
}

/// A thread that reads, as often as it can, how many attempts of one task the database
/// holds `running`, and keeps the largest count seen.
struct Observer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, u64)>,
}

impl Observer {
    fn start(db: &Database, task: &'static str) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let store = open(db);
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let running: u64 = store
                    .counts()
                    .expect("count the tasks")
                    .iter()
                    .filter(|c| c.task == task && c.state == TaskState::Running)
                    .map(|c| c.count)
                    .sum();
                max = max.max(running);
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (max, samples)
        });
        Observer { stop, thread }
    }

    /// The most attempts seen running at once, and how many samples were taken.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the observer")
    }
}

fn wait_drained(store: &Store) {
    wait_until("every task finished", || {
        store.unfinished("limited").expect("count") == 0
    });
}

fn snapshots(store: &Store, ids: &[Uuid]) -> Vec<TaskSnapshot> {
    ids.iter()
        .map(|&id| store.snapshot(id).expect("read").expect("the task exists"))
        .collect()
}

/// Every task completed; an attempt beyond the first is accounted for by an abandoned
/// one (its worker killed), as the lease rules say.
fn assert_completed_per_lease_rules(tasks: &[TaskSnapshot]) -> usize {
    let mut reruns = 0;
    for t in tasks {
        assert_eq!(t.state, TaskState::Completed, "{t:?}");
        assert_eq!(t.errors.len() as u32, t.attempt - 1, "{t:?}");
        assert!(
            t.errors.iter().all(|e| e.kind == ErrorKind::Abandoned),
            "{:?}",
            t.errors
        );
        if t.attempt > 1 {
            reruns += 1;
        }
    }
    reruns
}

/// The largest number of `[start, end)` intervals that overlap. Only for one worker's
/// tasks: its turn writes an outcome and the next claim with one time, while two workers'
/// clocks are read before each waits for the write lock.
fn max_overlap(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(a, b)| [(a, 1), (b, -1)])
        .collect();
    // An end before a start at the same time: back to back is no overlap.
    edges.sort_unstable();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

fn interval(t: &TaskSnapshot) -> (i64, i64) {
    (
        t.attempted_at.expect("started"),
        t.finalized_at.expect("finished"),
    )
}

#[test]
fn a_concurrency_limit_holds_across_three_workers_killed_and_restarted() {
    let dir = TestDir::new();
    let db = dir.db();
    let client = limited(&db.display().to_string());
    let database = Database::Sqlite(db.clone());
    let store = open(&database);
    let mut random = randoms();
    let n = 300;
    let handles = fx::limits::two_at_a_time::delay_many(&client, (0..n).map(|_| (random(16),)))
        .expect("dispatch");
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    let observer = Observer::start(&database, "two_at_a_time");
    let target = tasks_target("limited");
    let args = ["--quiet", "--threads", "4", "--lease", "3s"];
    let mut workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&dir, &target, &args))
        .collect();
    for round in 1..=3u64 {
        wait_until("a quarter more of the tasks finished", || {
            store.unfinished("limited").expect("count") <= n as u64 * (4 - round) / 4
        });
        let victim = workers.remove(usize::try_from(random(3)).unwrap_or(0));
        victim.signal(libc::SIGKILL);
        let _ = victim.wait();
        workers.push(Worker::start(&dir, &target, &args));
    }
    wait_drained(&store);
    let (max, samples) = observer.stop();
    assert!(samples > 100, "the observer sampled {samples} times");
    assert!(
        max <= 2,
        "{max} attempts of a concurrency = 2 task ran at once"
    );
    assert_eq!(max, 2, "two at a time, at some point");
    let tasks = snapshots(&store, &ids);
    assert_completed_per_lease_rules(&tasks);
    for worker in workers {
        let out = worker.stop();
        assert!(out.status.success(), "{}", out.stderr);
    }
}

#[test]
fn a_rate_limit_holds_in_every_one_second_window_and_keeps_its_pace() {
    let dir = TestDir::new();
    let db = dir.db();
    let client = limited(&db.display().to_string());
    let store = open(&Database::Sqlite(db.clone()));
    let target = tasks_target("limited");
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&dir, &target, &["--quiet", "--threads", "4"]))
        .collect();
    let n = 120;
    let handles =
        fx::limits::twenty_a_second::delay_many(&client, (0..n).map(|i| (i,))).expect("dispatch");
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    wait_drained(&store);
    let tasks = snapshots(&store, &ids);
    let mut starts: Vec<i64> = tasks
        .iter()
        .map(|t| {
            assert_eq!(t.state, TaskState::Completed, "{t:?}");
            assert_eq!(t.attempt, 1, "{t:?}");
            t.attempted_at.expect("started")
        })
        .collect();
    starts.sort_unstable();
    const SECOND: i64 = 1_000_000;
    for (i, &from) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|&&t| t < from + SECOND)
            .count();
        assert!(
            within <= 20,
            "{within} starts in the second from the {i}th start"
        );
    }
    // The first 20 start at once; each later start waits for one to leave the window.
    let span = (starts[starts.len() - 1] - starts[0]) as f64 / SECOND as f64;
    let pace = (n as f64 - 20.0) / span;
    assert!(
        (18.0..=22.0).contains(&pace),
        "{pace:.2} starts a second after the first window, for a limit of 20/s"
    );
    for worker in workers {
        let out = worker.stop();
        assert!(out.status.success(), "{}", out.stderr);
    }
}

#[test]
fn a_concurrency_key_limits_each_customer_apart() {
    let dir = TestDir::new();
    let db = dir.db();
    let client = limited(&db.display().to_string());
    let store = open(&Database::Sqlite(db.clone()));
    let worker = Worker::start(
        &dir,
        &tasks_target("limited"),
        &["--quiet", "--threads", "8"],
    );
    let args: Vec<(u32, u64)> = (0..18).map(|i| (i % 3, 40)).collect();
    let handles = fx::limits::one_per_customer::delay_many(&client, args).expect("dispatch");
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    wait_drained(&store);
    let tasks = snapshots(&store, &ids);
    for customer in 0..3u32 {
        let mine: Vec<(i64, i64)> = tasks
            .iter()
            .filter(|t| t.concurrency_key.as_deref() == Some(customer.to_string().as_str()))
            .map(interval)
            .collect();
        assert_eq!(mine.len(), 6, "customer {customer}'s tasks carry its key");
        assert_eq!(max_overlap(&mine), 1, "customer {customer}: one at a time");
    }
    let all: Vec<(i64, i64)> = tasks.iter().map(interval).collect();
    assert!(
        max_overlap(&all) > 1,
        "different customers ran side by side"
    );
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn castor_limits_overrides_every_worker_and_says_what_it_holds() {
    let dir = TestDir::new();
    let db = dir.db();
    let db_text = db.display().to_string();
    let client = limited(&db_text);
    let store = open(&Database::Sqlite(db.clone()));
    let target = tasks_target("limited");
    let lib = ["--lib", target.as_str(), "--db", db_text.as_str()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|s| (*s).to_owned())
            .chain(lib.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    let ok = |args: &[&str]| {
        let args = with(args);
        castor_ok(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(ok(&["limits"]).trim(), "no limits in force");
    let set = ok(&["limits", "set", "unlimited", "--concurrency", "1"]);
    assert!(
        set.contains("limited:unlimited: concurrency 1 (override)"),
        "{set}"
    );
    // Declared limits arrive with the workers; the override was read at their start.
    let observer = Observer::start(&Database::Sqlite(db.clone()), "unlimited");
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::start(&dir, &target, &["--quiet", "--threads", "4"]))
        .collect();
    let handles =
        fx::limits::unlimited::delay_many(&client, (0..6).map(|_| (250,))).expect("dispatch");
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    wait_until("castor list says why tasks wait", || {
        let args = with(&["list"]);
        let listed = castor_json(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        listed.as_array().expect("a list").iter().any(|t| {
            t["held"].as_str() == Some("held: concurrency 1/1 running") && t["state"] == "available"
        })
    });
    let table = ok(&["limits"]);
    assert!(table.contains("1 (override)"), "{table}");
    assert!(table.contains("2 (declared)"), "{table}");
    assert!(table.contains("20/s (declared)"), "{table}");
    assert!(table.contains("1 per customer (declared)"), "{table}");
    let stats = ok(&["stats"]);
    assert!(stats.contains("limits in force"), "{stats}");
    assert!(
        stats.contains("limited / unlimited: concurrency 1 (override)"),
        "{stats}"
    );
    let last = ids[5].to_string();
    let shown = ok(&["show", &last]);
    assert!(
        shown.contains("limits     concurrency 1 (override)"),
        "{shown}"
    );
    wait_drained(&store);
    let (max, _) = observer.stop();
    assert_eq!(max, 1, "two workers, one at a time");
    // A second `set` keeps what it does not name; `clear` ends the override.
    let set = ok(&["limits", "set", "two_at_a_time", "--rate", "5/s"]);
    assert!(
        set.contains("concurrency 2 (declared), rate 5/s (override)"),
        "{set}"
    );
    ok(&["limits", "clear", "unlimited"]);
    let listed = {
        let args = with(&["limits"]);
        castor_json(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let names: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["row"]["task"].as_str())
        .collect();
    assert_eq!(
        names,
        ["one_per_customer", "twenty_a_second", "two_at_a_time"],
        "cleared, `unlimited` has no limit in force"
    );
    for worker in workers {
        let out = worker.stop();
        assert!(out.status.success(), "{}", out.stderr);
    }
}

#[test]
fn bad_limits_are_refused_with_what_to_write() {
    let dir = TestDir::new();
    let db = dir.db();
    let db_text = db.display().to_string();
    drop(limited(&db_text));
    let target = tasks_target("limited");
    let fails = |args: &[&str], code: i32, needle: &str| {
        let out = run_castor(&dir, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    };
    let db = db_text.as_str();
    fails(
        &[
            "limits",
            "set",
            "unlimited",
            "--rate",
            "ten",
            "--manager",
            "limited",
            "--db",
            db,
        ],
        2,
        "invalid rate \"ten\": write a count and a unit, e.g. \"10/s\"",
    );
    fails(
        &[
            "limits",
            "set",
            "unlimited",
            "--rate",
            "0/s",
            "--manager",
            "limited",
            "--db",
            db,
        ],
        2,
        "the count must be at least 1",
    );
    fails(
        &[
            "limits",
            "set",
            "unlimited",
            "--concurrency",
            "0",
            "--manager",
            "limited",
            "--db",
            db,
        ],
        2,
        "0 is not in 1..",
    );
    fails(
        &[
            "limits",
            "set",
            "unlimited",
            "--manager",
            "limited",
            "--db",
            db,
        ],
        1,
        "say what to set: --concurrency N, --rate N/UNIT",
    );
    fails(
        &[
            "limits",
            "set",
            "unlimited",
            "--concurrency",
            "1",
            "--db",
            db,
        ],
        1,
        "say whose task: --lib LIB:MANAGER or --manager NAME",
    );
    fails(
        &[
            "limits",
            "set",
            "nope",
            "--concurrency",
            "1",
            "--lib",
            &target,
            "--db",
            db,
        ],
        1,
        "manager limited declares no task \"nope\"; its tasks: ",
    );
}

#[test]
fn a_worker_holding_a_rate_limited_backlog_sleeps_until_the_next_slot() {
    let dir = TestDir::new();
    let db = dir.db();
    let db_text = db.display().to_string();
    let client = limited(&db_text);
    let store = open(&Database::Sqlite(db.clone()));
    castor_ok(
        &dir,
        &[
            "limits",
            "set",
            "twenty_a_second",
            "--rate",
            "2/h",
            "--manager",
            "limited",
            "--db",
            &db_text,
        ],
    );
    fx::limits::twenty_a_second::delay_many(&client, (0..50).map(|i| (i,))).expect("dispatch");
    let worker = Worker::start(&dir, &tasks_target("limited"), &["--quiet"]);
    wait_until("two started", || {
        store
            .counts()
            .expect("count")
            .iter()
            .any(|c| c.state == TaskState::Completed && c.count == 2)
    });
    // Measuring an interval, not waiting for anything to happen.
    let before = cpu_time(worker.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(worker.pid()) - before;
    assert!(
        used < Duration::from_millis(100),
        "the worker used {used:?} of CPU in 2 s holding back 48 tasks"
    );
    let limits = castor_ok(&dir, &["limits", "--db", &db_text]);
    assert!(
        limits.contains("held: rate 2/h, next slot in 359"),
        "{limits}"
    );
    assert_eq!(store.unfinished("limited").expect("count"), 48);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn a_concurrency_limit_holds_across_workers_on_postgres() {
    let pg = PgDatabase::new();
    let dir = TestDir::new();
    let client = limited(&pg.url);
    let database = Database::parse(&pg.url);
    let store = open(&database);
    let mut random = randoms();
    let n = 200;
    let handles = fx::limits::two_at_a_time::delay_many(&client, (0..n).map(|_| (random(12),)))
        .expect("dispatch");
    let ids: Vec<Uuid> = handles.iter().map(|h| h.id()).collect();
    let observer = Observer::start(&database, "two_at_a_time");
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            let mut command = Command::new(castor_bin());
            command
                .arg(tasks_target("limited"))
                .arg("--db")
                .arg(&pg.url)
                .args(["--quiet", "--threads", "4"])
                .current_dir(dir.path());
            Worker::started(command)
        })
        .collect();
    wait_drained(&store);
    let (max, samples) = observer.stop();
    assert!(samples > 50, "the observer sampled {samples} times");
    assert!(
        max <= 2,
        "{max} attempts of a concurrency = 2 task ran at once"
    );
    let tasks = snapshots(&store, &ids);
    assert_eq!(assert_completed_per_lease_rules(&tasks), 0);
    for worker in workers {
        let out = worker.stop();
        assert!(out.status.success(), "{}", out.stderr);
    }
}
