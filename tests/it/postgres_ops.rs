//! The real `castor` worker on a PostgreSQL server of the test's own (a throwaway cluster
//! it creates, starts, restarts and stops): an idle worker runs only its heartbeat, and a
//! worker draining tasks survives a server restart and a stop in the middle, running
//! every task exactly once, while an app's `delay` during the outage fails at once with a
//! clear error.
//!
//! The cluster (`pg_cluster`) needs Debian's `postgresql` package; as root it runs as the
//! `postgres` user.

use std::time::{Duration, Instant};

use castor_fixture_tasks as fx;
use castor_store::{OpenOptions, Store, TaskState, WorkerRow};

use crate::pg_cluster::{Cluster, worker};
use crate::support::{PATIENCE, TestDir, recorded, wait_until};

/// What an idle worker costs the server: transactions committed per second, measured
/// over `over` on the cluster's own statistics (nothing else uses the cluster). A tiny
/// function for `castor-bench` to reuse.
fn idle_commits_per_second(cluster: &Cluster, over: Duration) -> f64 {
    // What was committed just before is published late: let it land before the window.
    std::thread::sleep(Duration::from_millis(1500));
    let before = cluster.commits();
    let started = Instant::now();
    std::thread::sleep(over);
    // Sessions publish their counts when they go idle, at most once a second (forced
    // after ten): wait for the server to have published the window's last ones.
    std::thread::sleep(Duration::from_millis(1500));
    let after = cluster.commits();
    (after - before) as f64 / started.elapsed().as_secs_f64()
}

/// An idle worker on PostgreSQL wakes at the notifier's fallback tick (every second) but
/// runs no claim there unless a notification came: only its heartbeat and the rescuer's
/// pass (every third of a lease) reach the server. Before, each tick ran a claim and two
/// reads (about three transactions a second).
#[test]
fn an_idle_worker_on_postgres_runs_only_its_heartbeat() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let dir = TestDir::new();
    let worker = worker(&dir, &url, &["--quiet", "--threads", "2", "--lease", "3s"]);
    // A burst first: the worker's own finishes notify it, and it must settle after.
    let client = fx::manager()
        .with_database(url.as_str())
        .open()
        .expect("open the app's client");
    let handles = fx::add::delay_many(&client, (0..50).map(|i| (i, 1))).expect("dispatch");
    for handle in &handles {
        handle.join(PATIENCE).expect("the burst completes");
    }
    drop(client);
    // A lease of 3 s: a heartbeat (with the rescuer's pass) every second, the most an
    // idle worker may write.
    let rate = idle_commits_per_second(&cluster, Duration::from_secs(6));
    assert!(
        rate < 1.6,
        "an idle worker committed {rate:.1} transactions a second (a heartbeat a second is \
         1.0)"
    );
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// A worker draining tasks loses the server twice, to a `pg_ctl restart` and to a stop of
/// a few seconds: it keeps its running tasks, says once that writes fail and once that they
/// work again, and every task ends completed, run exactly once. An app's `delay` while the
/// server is stopped fails within seconds, saying the server cannot be reached.
#[test]
fn a_worker_survives_a_server_restart_and_stop_in_the_middle_of_a_drain() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let dir = TestDir::new();
    // A short lease: a claim whose commit went through while the worker saw the
    // connection fail is not one it runs, so it must expire and be rescued in time.
    let worker = worker(&dir, &url, &["--threads", "2", "--lease", "3s"]);
    let client = fx::manager()
        .with_database(url.as_str())
        .open()
        .expect("open the app's client");
    let file = dir.path().join("runs.txt");
    let path = file.display().to_string();
    let tasks = 300;
    for i in 0..tasks {
        fx::record::delay(&client, path.clone(), format!("t{i}"), 20).expect("delay");
    }
    let ran = |at_least: usize| {
        let deadline = Instant::now() + PATIENCE;
        while recorded(&file).len() < at_least {
            if Instant::now() >= deadline {
                let counts = Store::open(url.as_str(), OpenOptions::inspect())
                    .and_then(|s| s.counts())
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "only {} of {at_least} tasks ran ({counts}):\n{}",
                    recorded(&file).len(),
                    worker.stdout()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    ran(40);
    cluster.pg_ctl(&["-m", "fast", "restart"]);
    ran(120);
    cluster.pg_ctl(&["-m", "fast", "stop"]);
    let asked = Instant::now();
    let error = fx::record::delay(&client, path.clone(), "outage".into(), 0)
        .expect_err("a delay while the server is stopped fails");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "the delay took {took:?}");
    let message = error.to_string();
    assert!(
        message.contains("the server cannot be reached") && message.contains("running"),
        "{message}"
    );
    // The worker's tasks run on meanwhile, their outcomes kept.
    std::thread::sleep(Duration::from_secs(3));
    cluster.pg_ctl(&["start"]);

    ran(tasks);
    let store = Store::open(url.as_str(), OpenOptions::app()).expect("open");
    wait_until("every task is recorded completed", || {
        store.unfinished("manager").expect("count") == 0
    });
    let runs = recorded(&file);
    assert_eq!(runs.len(), tasks, "{runs:?}");
    assert!(
        runs.values().all(|&n| n == 1),
        "a task ran twice: {:?}",
        runs.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let counts = store.counts().expect("counts");
    assert!(
        counts
            .iter()
            .all(|c| c.state == TaskState::Completed && c.count == tasks as u64),
        "{counts:?}"
    );
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let output = format!("{}{}", stopped.stdout, stopped.stderr);
    let failing = output
        .matches("claims no new task until a write succeeds")
        .count();
    let recovered = output.matches("database writes work again").count();
    // The stop is always seen; the restart only if a write met it (a read or a
    // transaction's start that meets it runs again on a new connection, unseen).
    assert!(
        (1..=2).contains(&failing) && failing == recovered,
        "the outages were said {failing} time(s), the recoveries {recovered}:\n{output}"
    );
    assert!(
        !output.contains("outcome dropped"),
        "no outcome was lost:\n{output}"
    );
}

/// Two worker rows that look dead by pid to a hostname check (this machine's hostname,
/// a pid no process has) but carry another host id, as a worker in another container or
/// on a cloned machine would: the one whose heartbeat is fresh is left alone, the one
/// whose heartbeat is older than a lease is buried. On both drivers.
#[test]
fn the_rescuer_checks_a_pid_only_under_the_same_host_id() {
    let dir = TestDir::new();
    let sqlite = dir.path().join("tasks.db");
    let cluster = Cluster::start();
    for database in [sqlite.display().to_string(), cluster.url()] {
        twins_are_judged_by_heartbeat(&dir, &database);
    }
}

fn twins_are_judged_by_heartbeat(dir: &TestDir, database: &str) {
    // Opening as an app creates the schema.
    let client = fx::manager()
        .with_database(database)
        .open()
        .expect("open the app's client");
    drop(client);
    let mut store = Store::open(database, OpenOptions::app()).expect("open");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the hostname")
        .trim()
        .to_owned();
    let now = castor_store::now_us();
    let twin = |id: &str, heartbeat_at: i64| WorkerRow {
        id: id.to_owned(),
        manager: "manager".to_owned(),
        library: "elsewhere.so".to_owned(),
        hostname: hostname.clone(),
        host_id: Some("another-boot/pid:[4026531836]".to_owned()),
        pid: u32::MAX - 1,
        threads: 1,
        processes: 0,
        tasks: vec!["record".to_owned()],
        args_fingerprints: Default::default(),
        started_at: heartbeat_at,
        heartbeat_at,
        stopped_at: None,
        completed: 0,
        failed: 0,
    };
    let hour = 3_600_000_000;
    store
        .write(|tx| {
            tx.register_worker(&twin("twin-beating", now + hour))?;
            tx.register_worker(&twin("twin-silent", now - hour))
        })
        .expect("register the twins");
    // The rescuer runs when the worker starts.
    let worker = worker(dir, database, &["--quiet"]);
    worker.wait_for_stdout("rescuing the tasks of worker twin-silent: it twin-silent");
    let live: Vec<String> = store
        .workers(true)
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert!(
        live.iter().any(|id| id == "twin-beating"),
        "{database}: the twin with a fresh heartbeat was buried: {live:?}\n{}",
        worker.stdout()
    );
    assert!(
        !live.iter().any(|id| id == "twin-silent"),
        "{database}: {live:?}"
    );
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        !stopped.stdout.contains("twin-beating"),
        "{}",
        stopped.stdout
    );
}

/// A task joining a subtask inside the worker wakes when the worker records the
/// subtask's outcome, not at the fallback tick (the worker's notifier skips its own
/// connection's notifications, so the worker wakes its own waiters). Ten rounds take
/// about 5 s at the tick (half a second each on average), well under a second each
/// otherwise.
#[test]
fn a_task_joining_its_subtask_inside_a_worker_on_postgres_wakes_at_once() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let dir = TestDir::new();
    let worker = worker(&dir, &url, &["--quiet", "--threads", "2"]);
    let client = fx::manager()
        .with_database(url.as_str())
        .open()
        .expect("open the app's client");
    let started = Instant::now();
    for i in 0..10 {
        let sum = fx::add_via_subtask::delay(&client, i, 2)
            .expect("delay")
            .join(PATIENCE)
            .expect("join");
        assert_eq!(sum, i + 2);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "ten joins inside the worker took {took:?}"
    );
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

/// README's one command for trying castor on PostgreSQL starts a server whose printed URL
/// castor migrates and serves, and its `stop` removes it.
#[test]
fn the_readmes_local_server_script_starts_a_usable_server_and_stops_it() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/postgres/local-server.sh");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .expect("run local-server.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "local-server.sh {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let started = run(&[]);
    let url = started
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("--db '")?
                .strip_suffix('\'')
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no --db URL printed:\n{started}"));
    let migrated = std::process::Command::new(crate::support::castor_bin())
        .args(["migrate", "up", "--db", &url])
        .output()
        .expect("run castor migrate");
    let stop = run(&["stop"]);
    assert!(
        migrated.status.success(),
        "castor migrate up on the script's server: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let host = url
        .split("host=")
        .nth(1)
        .and_then(|h| h.split('&').next())
        .expect("a socket directory in the URL");
    assert!(stop.contains("stopped"), "{stop}");
    assert!(!std::path::Path::new(host).exists(), "{host} removed");
}
