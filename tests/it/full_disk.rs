//! A full disk, for real: each test mounts a small tmpfs, puts the database on it and fills
//! it with a filler file. While writes fail the worker must sleep (loose CPU bound, as in
//! `idle`), and once space is freed it must recover on its own: every acknowledged task
//! completes and new dispatches succeed, whether the disk filled under a running worker or
//! under an app with no worker running.
//!
//! Mounting needs root (CI runs as root). Where it is impossible the tests say so on
//! stderr and pass, except under `CI=true`, where they fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use castor_abi::{Client, DispatchError, TaskHandle};
use castor_fixture_tasks as fx;
use castor_store::{StoreError, TaskState};

use crate::support::{PATIENCE, TestDir, Worker, cpu_shares, tasks_target, wait_until};

/// How long the worker's CPU is measured while its writes fail.
const MEASURE: Duration = Duration::from_secs(3);

/// The most of a core a worker whose writes fail may use here.
const FAILING_BOUND: f64 = 0.10;

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `DIR/mnt`. `None` where mounting is impossible (not
    /// root, no permission in this container): then says so on stderr, past the test
    /// runner's capture, so that a skipped test is visible. Under `CI=true` that fails
    /// the test instead.
    fn mount(dir: &TestDir, mib: u32) -> Option<Tmpfs> {
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => return Some(Tmpfs { path }),
            Ok(out) => String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_end_matches('.')
                .to_owned(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "cannot mount a tmpfs for the full-disk tests ({why}); CI must run them as root"
        );
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the full-disk test cannot mount a tmpfs here ({why}); run it as root"
        );
        None
    }

    fn db(&self) -> PathBuf {
        self.path.join("tasks.db")
    }

    /// Fills the file system with `name` until a write fails for lack of space.
    fn fill(&self, name: &str) -> PathBuf {
        fill(&self.path.join(name))
    }

    /// Creates `name` holding `mib` MiB (less if the file system has less room).
    fn reserve(&self, name: &str, mib: usize) -> PathBuf {
        let path = self.path.join(name);
        let mut file = std::fs::File::create(&path).expect("create a filler file");
        let block = vec![0x5au8; 64 * 1024];
        for _ in 0..mib * 16 {
            if file.write_all(&block).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of a failed test may still have a file open on it.
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Appends to `path` until the file system is full; returns the path.
fn fill(path: &Path) -> PathBuf {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("create the filler file");
    for size in [64 * 1024, 4096, 512] {
        let block = vec![0xa5u8; size];
        while file.write_all(&block).is_ok() {}
    }
    path.to_path_buf()
}

/// True if the error is a write refused for lack of space.
fn disk_full(e: &DispatchError) -> bool {
    matches!(e, DispatchError::Store(StoreError::DiskFull { .. }))
}

/// Dispatches `add` tasks one at a time while the disk is full: each either fails for lack
/// of space (nothing acknowledged) or is acknowledged and kept.
fn dispatch_while_full(client: &Client, acknowledged: &mut Vec<TaskHandle<i64>>) {
    for i in 0..20 {
        match fx::add::delay(client, i, 1) {
            Ok(handle) => acknowledged.push(handle),
            Err(e) => assert!(disk_full(&e), "a dispatch failed otherwise: {e}"),
        }
    }
}

/// Every acknowledged task reaches `completed`.
fn all_complete<R: serde::de::DeserializeOwned>(handles: &[TaskHandle<R>]) {
    for handle in handles {
        if let Err(e) = handle.join(PATIENCE) {
            panic!("task {} did not complete: {e}", handle.id());
        }
        assert_eq!(handle.status().expect("status"), TaskState::Completed);
    }
}

#[test]
fn a_worker_sleeps_while_the_disk_is_full_and_recovers_when_space_is_freed() {
    let dir = TestDir::new();
    let Some(fs) = Tmpfs::mount(&dir, 16) else {
        return;
    };
    let client = fx::threads_only()
        .with_database(fs.db())
        .open()
        .expect("open");
    let worker = Worker::start_on(
        &dir,
        &fs.db(),
        &tasks_target("threads_only"),
        &["--threads", "2"],
    );
    // Tasks that are running or waiting when the disk fills: their outcomes must wait.
    let sleepers = fx::sleep_ms::delay_many(&client, (0..30).map(|_| (200,))).expect("dispatch");
    wait_for(&sleepers[0], TaskState::Running);
    let filler = fs.fill("filler");
    let mut added = Vec::new();
    dispatch_while_full(&client, &mut added);
    worker.wait_for_stdout("claims no new task until a write succeeds");

    let share = cpu_shares(&[worker.pid()], MEASURE)[0];
    assert!(
        share < FAILING_BOUND,
        "the worker used {:.0}% of a core while its writes failed:\n{}",
        share * 100.0,
        worker.stdout()
    );

    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    worker.wait_for_stdout("database writes work again");
    let recovered_in = freed.elapsed();
    all_complete(&sleepers);
    all_complete(&added);
    let after = fx::add::delay(&client, 40, 2).expect("a dispatch after the recovery");
    assert_eq!(after.join(PATIENCE).expect("it runs"), 42);

    let out = worker.stop();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for needle in [
        "claims no new task until a write succeeds",
        "database writes work again",
    ] {
        assert_eq!(
            out.stdout.matches(needle).count(),
            1,
            "said once per failure ({needle:?}):\n{}",
            out.stdout
        );
    }
    assert!(
        recovered_in < PATIENCE,
        "recovered {recovered_in:?} after space was freed"
    );
}

#[test]
fn a_disk_filled_by_an_app_alone_is_recovered_by_a_worker_once_space_is_freed() {
    let dir = TestDir::new();
    let Some(fs) = Tmpfs::mount(&dir, 48) else {
        return;
    };
    // The app fills the disk with no worker running, one large task per commit, until a
    // dispatch fails for lack of space. Its WAL is bounded: were it not, it would hold
    // most of the disk and could never be checkpointed into the database once 8 MiB are
    // freed (the case: a 39 MiB WAL on a 64 MiB disk).
    let spare = fs.reserve("spare", 8);
    let order = fx::Order {
        customer: "ada".into(),
        items: (0..32_000).collect(),
    };
    let mut acknowledged: Vec<TaskHandle<fx::Invoice>> = Vec::new();
    {
        let client = dir_client(&fs);
        loop {
            assert!(acknowledged.len() < 100_000, "the disk never filled");
            match fx::invoice::delay(&client, order.clone()) {
                Ok(handle) => acknowledged.push(handle),
                Err(e) if disk_full(&e) => break,
                Err(e) => panic!("a dispatch failed otherwise: {e}"),
            }
        }
    }
    assert!(acknowledged.len() > 100, "{} tasks", acknowledged.len());
    // Whatever closing the app's connection gave back, the disk is full again.
    let _filler = fs.fill("filler");

    // A worker started on the full disk waits without spinning.
    let worker = Worker::start_on(
        &dir,
        &fs.db(),
        &tasks_target("manager"),
        &["--threads", "2", "--processes", "1", "--quiet"],
    );
    worker.wait_for_stdout("claims no new task until a write succeeds");
    let share = cpu_shares(&[worker.pid()], MEASURE)[0];
    assert!(
        share < FAILING_BOUND,
        "the worker used {:.0}% of a core while its writes failed:\n{}",
        share * 100.0,
        worker.stdout()
    );

    std::fs::remove_file(&spare).expect("free 8 MiB");
    let freed = Instant::now();
    worker.wait_for_stdout("database writes work again");
    let recovered_in = freed.elapsed();
    let expected = fx::invoice(order.clone());
    for handle in &acknowledged {
        match handle.join(PATIENCE) {
            Ok(invoice) => assert_eq!(invoice, expected),
            Err(e) => panic!("task {} did not complete: {e}", handle.id()),
        }
    }
    let client = dir_client(&fs);
    let after = fx::add::delay(&client, 40, 2).expect("a dispatch after the recovery");
    assert_eq!(after.join(PATIENCE).expect("it runs"), 42);
    let out = worker.stop();
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        recovered_in < PATIENCE,
        "recovered {recovered_in:?} after space was freed"
    );
}

#[test]
fn outcomes_too_large_for_the_space_freed_are_written_in_pieces() {
    let dir = TestDir::new();
    let Some(fs) = Tmpfs::mount(&dir, 48) else {
        return;
    };
    let spare = fs.reserve("spare", 12);
    let worker = Worker::start_on(
        &dir,
        &fs.db(),
        &tasks_target("threads_only"),
        &["--threads", "16", "--quiet"],
    );
    let client = fx::threads_only()
        .with_database(fs.db())
        .open()
        .expect("open");
    // 16 MiB of results, all arriving while the disk is full.
    let handles =
        fx::large_result::delay_many(&client, (0..16).map(|_| (1024, 1500))).expect("dispatch");
    wait_until("every task runs", || {
        handles
            .iter()
            .all(|h| h.status().is_ok_and(|s| s == TaskState::Running))
    });
    let filler = fs.fill("filler");
    worker.wait_for_stdout("claims no new task until a write succeeds");
    // 12 MiB freed: not enough for the 16 MiB in one transaction, enough for most of them
    // in pieces (all at once, nothing would be written until more is freed).
    std::fs::remove_file(&spare).expect("free 12 MiB");
    wait_until("some results are written", || {
        handles
            .iter()
            .any(|h| h.status().is_ok_and(|s| s == TaskState::Completed))
    });
    std::fs::remove_file(&filler).expect("free the rest");
    for handle in &handles {
        let result = handle.join(PATIENCE).expect("every task completes");
        assert_eq!(result.len(), 1024 * 1024);
    }
    worker.wait_for_stdout("database writes work again");
}

/// The fixture's main manager on the tmpfs's database.
fn dir_client(fs: &Tmpfs) -> Client {
    fx::manager()
        .with_database(fs.db())
        .open()
        .expect("open the database")
}

fn wait_for<R: serde::de::DeserializeOwned>(handle: &TaskHandle<R>, state: TaskState) {
    wait_until(&format!("task {} is {state}", handle.id()), || {
        handle.status().is_ok_and(|s| s == state)
    });
}
