//! A worker with nothing to do sleeps: the CPU an idle worker uses, for each shape of
//! library (thread tasks only, process tasks only, both), after a burst of tasks, with
//! every task scheduled far ahead, and with its pool full of sleeping tasks and more
//! waiting. The bound is loose (a tenth of a core): a busy
//! machine cannot trip it, a worker that loops without sleeping does. `castor-bench`
//! measures the real figures.

use std::time::Duration;

use castor_abi::DelayOptions;
use castor_fixture_tasks as fx;

use crate::support::{PATIENCE, TestDir, Worker, cpu_shares, tasks_target, wait_for_state};

/// How long the workers' CPU is measured for.
const MEASURE: Duration = Duration::from_secs(3);

/// The most of a core an idle worker may use here.
const IDLE_BOUND: f64 = 0.10;

#[test]
fn idle_workers_sleep_whatever_their_library_shape() {
    // Each case: what the worker runs, and a preparation after it started.
    let dirs: Vec<TestDir> = (0..6).map(|_| TestDir::new()).collect();
    let cases: [(&str, &str); 6] = [
        ("thread tasks only", "threads_only"),
        ("process tasks only", "processes_only"),
        ("thread and process tasks", "manager"),
        ("thread tasks only, after a burst", "threads_only"),
        ("every task scheduled an hour ahead", "manager"),
        (
            "a full pool of sleeping tasks, more waiting",
            "threads_only",
        ),
    ];
    let workers: Vec<Worker> = cases
        .iter()
        .zip(&dirs)
        .map(|((_, manager), dir)| {
            Worker::start(dir, &tasks_target(manager), &["--quiet", "--threads", "2"])
        })
        .collect();

    let burst = fx::threads_only()
        .with_database(dirs[3].db())
        .open()
        .expect("open");
    let handles = fx::add::delay_many(&burst, (0..500).map(|i| (i, 1))).expect("dispatch");
    for handle in &handles {
        handle.join(PATIENCE).expect("the burst completes");
    }
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let ahead = dirs[4].client();
    for _ in 0..3 {
        let handle = fx::add::delay_with(&ahead, &later, 1, 2).expect("dispatch");
        wait_for_state(&handle, castor_abi::TaskState::Scheduled);
    }

    let full = fx::threads_only()
        .with_database(dirs[5].db())
        .open()
        .expect("open");
    let sleepers = fx::sleep_ms::delay_many(&full, (0..40).map(|_| (30_000,))).expect("dispatch");
    wait_for_state(&sleepers[0], castor_abi::TaskState::Running);

    let pids: Vec<i32> = workers.iter().map(Worker::pid).collect();
    let shares = cpu_shares(&pids, MEASURE);
    let busy: Vec<String> = cases
        .iter()
        .zip(&shares)
        .filter(|(_, share)| **share >= IDLE_BOUND)
        .map(|((case, _), share)| format!("{case}: {:.0}% of a core", share * 100.0))
        .collect();
    assert!(busy.is_empty(), "idle workers kept busy: {busy:?}");
}

/// A worker told to poll (`CASTOR_NOTIFY=poll`: the portable wake-up source, the only one
/// off Linux) still sleeps while idle, and wakes for tasks dispatched while it sleeps:
/// each is started long before the 1 s fallback tick that a source seeing nothing would
/// leave as the only wake-up.
#[test]
fn a_worker_on_the_polling_source_sleeps_and_wakes_for_new_tasks() {
    const TASKS: usize = 10;
    let dir = TestDir::new();
    let mut command = std::process::Command::new(crate::support::castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(dir.db())
        .args(["--quiet", "--threads", "2"])
        .env("CASTOR_NOTIFY", "poll")
        .current_dir(dir.path());
    let worker = Worker::started(command);
    let share = cpu_shares(&[worker.pid()], MEASURE)[0];
    assert!(
        share < IDLE_BOUND,
        "an idle worker on the polling source used {:.0}% of a core",
        share * 100.0
    );

    let client = dir.client();
    let store = castor_store::Store::open(dir.db(), castor_store::OpenOptions::app())
        .expect("open the database");
    let mut late = Vec::new();
    for n in 0..TASKS {
        // Not a synchronisation: time for the worker to go back to sleep after the last
        // task, at a different point of the fallback tick each time.
        std::thread::sleep(Duration::from_millis(40 + 37 * n as u64));
        let handle = fx::add::delay(&client, 1, 2).expect("dispatch");
        assert_eq!(handle.join(PATIENCE).expect("join"), 3);
        let task = store
            .snapshot(handle.id())
            .expect("read the task")
            .expect("the task exists");
        let waited = task.attempted_at.expect("it ran") - task.created_at;
        if waited > 400_000 {
            late.push(Duration::from_micros(waited.unsigned_abs()));
        }
    }
    // One late start on a busy machine is noise; a source that never reports is late at
    // nearly every task.
    assert!(late.len() <= 1, "tasks started late: {late:?}");
}
