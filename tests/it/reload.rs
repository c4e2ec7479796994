//! `castor --reload`: new builds of the library swapped in under a running worker while
//! tasks flow, as cargo replaces a build (a rename) and as a copy writes one in place; and
//! builds that cannot run (not a plugin, another plugin ABI), which leave the old build
//! serving with the reason printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use castor_abi::TaskHandle;
use castor_fixture_tasks as fx;

use crate::support::{PATIENCE, TestDir, Worker, fixture_path, wait_until_begun};

/// The watched library, a copy of the `tasks` fixture (v1).
fn watched(dir: &TestDir) -> PathBuf {
    let path = dir.path().join("libapp.so");
    std::fs::copy(fixture_path("tasks"), &path).expect("copy the first build");
    path
}

/// Replaces the watched file as cargo does: the new build is written elsewhere and
/// takes the watched name at once (a new inode).
pub(crate) fn swap_in(library: &Path, fixture: &str) {
    let new = library.with_file_name(".libapp.so.new");
    std::fs::copy(fixture_path(fixture), &new).expect("copy the new build");
    std::fs::rename(&new, library).expect("rename it over the watched file");
}

/// Writes a new build over the watched file in place, in two halves with a pause
/// between: a reader that did not wait for the file to settle would load half of it.
fn write_in_place(library: &Path, fixture: &str) {
    let bytes = std::fs::read(fixture_path(fixture)).expect("read the new build");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(library)
        .expect("open the watched file");
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half])
        .expect("write the first half");
    file.sync_all().expect("sync");
    // Shorter than the settle time: the file's identity keeps moving.
    std::thread::sleep(Duration::from_millis(150));
    file.write_all(&bytes[half..]).expect("write the rest");
}

#[test]
fn a_new_build_runs_the_tasks_claimed_after_the_swap_and_broken_builds_leave_the_old_one_serving() {
    let dir = TestDir::new();
    let library = watched(&dir);
    let target = format!("{}:manager", library.display());
    let worker = Worker::start(
        &dir,
        &target,
        &["--reload", "--threads", "2", "--processes", "1"],
    );
    worker.wait_for_stdout("for new builds (--reload)");
    let client = dir.client();
    assert_eq!(
        fx::add::delay(&client, 1, 1)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        2
    );

    // Builds that cannot run: the reason a start would give, and the old build serves on.
    swap_in(&library, "not_a_plugin");
    let out = worker.wait_for_stdout("is a shared library but not a Castor plugin");
    assert!(
        out.contains(&format!(
            "reload: the new build of {} cannot be used, the running build keeps serving: {} \
             is a shared library but not a Castor plugin",
            library.display(),
            library.display()
        )),
        "{out}"
    );
    assert_eq!(
        fx::add::delay(&client, 2, 2)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        4
    );
    swap_in(&library, "wrong_abi");
    worker.wait_for_stdout("was built for plugin ABI");
    assert_eq!(
        fx::add::delay(&client, 3, 3)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        6
    );
    assert_eq!(
        fx::process_add::delay(&client, 3, 4)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        7
    );

    // A task running when the new build comes finishes on the old one, within the grace.
    let long = fx::sleep_ms::delay(&client, 1000).expect("delay");
    wait_until_begun(&long);

    // Tasks flow while the new build is written; those dispatched once the worker said it
    // stopped claiming for the reload must run the new code.
    let reloading = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let client = dir.client();
        let (reloading, stop) = (Arc::clone(&reloading), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut sent: Vec<(i64, bool, TaskHandle<i64>)> = Vec::new();
            let mut after = 0;
            for i in 0.. {
                let late = reloading.load(Ordering::SeqCst);
                after += usize::from(late);
                sent.push((i, late, fx::add::delay(&client, i, 0).expect("delay")));
                if stop.load(Ordering::SeqCst) && after >= 20 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    write_in_place(&library, "tasks_v2");
    let out = worker.wait_for_stdout("reloading: new build of libapp.so checked (4 tasks");
    reloading.store(true, Ordering::SeqCst);
    assert!(out.contains("drops fail, panics, flaky and "), "{out}");
    worker.wait_for_stdout("castor: reloaded ");
    stop.store(true, Ordering::SeqCst);
    let sent = flow.join().expect("the dispatching thread");

    assert_eq!(
        long.join(PATIENCE)
            .expect("the long task finished on the old build"),
        1000
    );
    assert_eq!(long.info().expect("info").attempt, 1);
    let (mut old, mut new) = (0, 0);
    for (i, late, handle) in &sent {
        let result = handle.join(PATIENCE).expect("join a task of the flow");
        match result - i {
            0 if !late => old += 1,
            1000 => new += 1,
            _ => panic!(
                "add({i}, 0) dispatched {} the reload line gave {result}",
                if *late { "after" } else { "before" }
            ),
        }
        // Run once: a claim given back at the stop is claimed again as the same attempt.
        assert_eq!(handle.info().expect("info").attempt, 1, "add({i}, 0)");
    }
    assert!(
        old > 0 && new >= 20,
        "{old} tasks on the old build, {new} on the new one"
    );
    // A process task runs in a child of the new build.
    assert_eq!(
        fx::process_add::delay(&client, 3, 4)
            .expect("delay")
            .join(PATIENCE)
            .expect("join"),
        1007
    );
    // Every task dispatched has one row, completed: none lost, none duplicated.
    let db = rusqlite::Connection::open(dir.db()).expect("open the database");
    let (rows, completed): (i64, i64) = db
        .query_row(
            "SELECT count(*), sum(state = 'completed') FROM castor_tasks WHERE task = 'add'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count the rows");
    let dispatched = i64::try_from(sent.len()).expect("count") + 3;
    assert_eq!((rows, completed), (dispatched, dispatched));

    let pid = worker.pid();
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // The half-written file was never checked: the only refusals are the two broken builds.
    assert_eq!(
        stopped.stdout.matches("cannot be used").count(),
        2,
        "{}",
        stopped.stdout
    );
    assert_eq!(
        stopped.stdout.matches(" started\n").count(),
        2,
        "{}",
        stopped.stdout
    );
    // The private copies go with the worker.
    let copies = std::env::temp_dir().join(format!("castor-reload-{pid}"));
    assert!(!copies.exists(), "{} left behind", copies.display());
}

/// The reload's pause: from the old process's last claim to the new one's first, with a
/// task dispatched every 5 ms and nothing long running. Printed (run with
/// `--nocapture`), not asserted beyond sanity: a figure, not a timing test.
#[test]
fn a_reload_pauses_claims_from_the_old_process_s_last_claim_to_the_new_one_s_first() {
    let dir = TestDir::new();
    let library = watched(&dir);
    let target = format!("{}:manager", library.display());
    let worker = Worker::start(
        &dir,
        &target,
        &["--reload", "--threads", "2", "--processes", "1"],
    );
    worker.wait_for_stdout("for new builds (--reload)");
    let reloaded = Arc::new(AtomicBool::new(false));
    let flow = {
        let client = dir.client();
        let reloaded = Arc::clone(&reloaded);
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut after = 0;
            for i in 0.. {
                after += usize::from(reloaded.load(Ordering::SeqCst));
                sent.push(fx::add::delay(&client, i, 0).expect("delay"));
                if after >= 50 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    swap_in(&library, "tasks_v2");
    worker.wait_for_stdout("castor: reloaded ");
    reloaded.store(true, Ordering::SeqCst);
    for handle in flow.join().expect("the dispatching thread") {
        handle.join(PATIENCE).expect("join");
    }
    let db = rusqlite::Connection::open(dir.db()).expect("open the database");
    let mut spans: Vec<(i64, i64)> = db
        .prepare(
            "SELECT min(attempted_at), max(attempted_at) FROM castor_tasks \
             WHERE task = 'add' GROUP BY attempted_by ORDER BY 1",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("read");
    assert_eq!(spans.len(), 2, "two worker runs claimed tasks: {spans:?}");
    let new = spans.pop().expect("the new run");
    let old = spans.pop().expect("the old run");
    let pause =
        Duration::from_micros(u64::try_from(new.0 - old.1).expect("the new run claims later"));
    eprintln!("reload pause (last claim of the old build to first claim of the new): {pause:?}");
    assert!(pause < PATIENCE);
    worker.stop();
}
