//! Shared test helpers: a temporary directory and database per test, the real `castor`
//! binary as a [`Worker`] guard, fixture library paths, waiting with deadlines, and a
//! fresh database on the PostgreSQL test server ([`PgDatabase`]).

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use castor_abi::{Client, TaskHandle};
use castor_store::TaskState;

/// How long any wait in a test may take before the test fails. Generous: CI machines are
/// slow and busy; a passing test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The `castor` binary under test.
pub fn castor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_castor"))
}

/// The path of a fixture library (`tasks`, `wrong_abi`, `newer_abi`, `repr_abi`,
/// `older_release`, `not_a_plugin`), which cargo builds into the test executable's own
/// directory because the fixtures are dev-dependencies. The one place to change if cargo's layout moves.
pub fn fixture_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable is in a directory");
    let file = format!("libcastor_fixture_{name}.so");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let path = dir.join(&file);
        if path.exists() {
            return path;
        }
    }
    panic!("fixture {file} not found next to {}", exe.display());
}

/// `path/to/libcastor_fixture_tasks.so:manager`.
pub fn tasks_target(manager: &str) -> String {
    format!("{}:{manager}", fixture_path("tasks").display())
}

/// A fresh directory, removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let path = std::env::temp_dir().join(format!(
            "castor-it-{}-{}",
            std::process::id(),
            castor_abi::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).expect("create the test directory");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The test's database.
    pub fn db(&self) -> PathBuf {
        self.path.join("tasks.db")
    }

    /// The fixture's main manager, opened on this test's database.
    pub fn client(&self) -> Client {
        castor_fixture_tasks::manager()
            .with_database(self.db())
            .open()
            .expect("open the test database")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Captured output of a child, appended to by reader threads.
#[derive(Default)]
struct Output {
    text: Mutex<String>,
    grew: Condvar,
}

impl Output {
    fn collect(self: &Arc<Self>, stream: impl Read + Send + 'static) -> JoinHandle<()> {
        let output = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut text = output.text.lock().expect("output lock");
                text.push_str(&line);
                text.push('\n');
                output.grew.notify_all();
            }
        })
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.text.lock().expect("output lock");
        loop {
            if text.contains(needle) {
                return Ok(text.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(text.clone());
            }
            text = self
                .grew
                .wait_timeout(text, deadline - now)
                .expect("output lock")
                .0;
        }
    }
}

/// A running `castor` worker, killed on drop if the test did not stop it.
pub struct Worker {
    child: Child,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

/// How a stopped worker ended.
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Worker {
    /// Starts `castor TARGET --db DB ARGS..` in `dir` and waits until it says it started.
    pub fn start(dir: &TestDir, target: &str, args: &[&str]) -> Worker {
        Worker::start_on(dir, &dir.db(), target, args)
    }

    /// Starts `castor TARGET --db DB ARGS..` in `dir` and waits until it says it started.
    pub fn start_on(dir: &TestDir, db: &Path, target: &str, args: &[&str]) -> Worker {
        let mut command = Command::new(castor_bin());
        command
            .arg(target)
            .arg("--db")
            .arg(db)
            .args(args)
            .current_dir(dir.path());
        Worker::started(command)
    }

    /// Spawns `command`, a `castor` worker, and waits until it says it started.
    pub fn started(command: Command) -> Worker {
        let worker = Worker::spawn(command);
        if let Err(text) = worker.stdout.wait_for("Ctrl+C to stop", PATIENCE) {
            panic!(
                "the worker did not start:\n{text}\n{}",
                worker.stderr.text.lock().expect("lock")
            );
        }
        worker
    }

    pub fn spawn(mut command: Command) -> Worker {
        // The worker's log filter is the test's to choose, not the shell's.
        if command.get_envs().all(|(key, _)| key != "RUST_LOG") {
            command.env_remove("RUST_LOG");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn castor");
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        let readers = vec![
            stdout.collect(child.stdout.take().expect("piped stdout")),
            stderr.collect(child.stderr.take().expect("piped stderr")),
        ];
        Worker {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Sends a signal to the worker.
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.text.lock().expect("lock").clone()
    }

    /// Waits until the worker's stdout contains `needle`; returns it all.
    pub fn wait_for_stdout(&self, needle: &str) -> String {
        self.stdout
            .wait_for(needle, PATIENCE)
            .unwrap_or_else(|text| {
                panic!(
                    "the worker never printed {needle:?}:\n{text}\n{}",
                    self.stderr.text.lock().expect("lock")
                )
            })
    }

    /// Ctrl+C, then waits for the worker to exit.
    pub fn stop(self) -> Stopped {
        self.signal(libc::SIGINT);
        self.wait()
    }

    /// Waits for the worker to exit on its own.
    pub fn wait(mut self) -> Stopped {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for castor") {
                break status;
            }
            assert!(Instant::now() < deadline, "the worker did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        // The readers end at end-of-file, once the worker's pipes are closed.
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() {
                assert!(Instant::now() < deadline, "the worker's output never ended");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Stopped {
            status,
            stdout: self.stdout.text.lock().expect("lock").clone(),
            stderr: self.stderr.text.lock().expect("lock").clone(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `castor ARGS..` to completion (for commands that fail at startup).
pub fn run_castor(dir: &TestDir, args: &[&str]) -> Stopped {
    let mut command = Command::new(castor_bin());
    command.args(args).current_dir(dir.path());
    Worker::spawn(command).wait()
}

/// Runs `castor ARGS..` in `dir`, which must succeed; its stdout.
pub fn castor_ok(dir: &TestDir, args: &[&str]) -> String {
    let out = run_castor(dir, args);
    assert!(
        out.status.success(),
        "castor {args:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// [`castor_ok`] with `--json`, parsed.
pub fn castor_json(dir: &TestDir, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = castor_ok(dir, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// CPU time (user + system) the process `pid` has used so far, from `/proc/PID/stat`
/// (clock ticks, 10 ms each: coarse, which is why tests only assert loose bounds).
pub fn cpu_time(pid: i32) -> Duration {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The command name, in parentheses, may hold spaces: count fields after it. `state` is
    // field 3 of the line, so utime (14) and stime (15) are the 12th and 13th after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap_or_else(|e| panic!("{path}: {f:?}: {e}")))
        .collect();
    assert_eq!(fields.len(), 2, "{path} has no utime and stime: {stat}");
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).unwrap_or(100).max(1);
    Duration::from_nanos((fields[0] + fields[1]) * 1_000_000_000 / ticks_per_second)
}

/// The share of one core each of `pids` used over the next `over` (0.5 = half a core),
/// measured for all of them over the same interval.
pub fn cpu_shares(pids: &[i32], over: Duration) -> Vec<f64> {
    let before: Vec<Duration> = pids.iter().map(|&pid| cpu_time(pid)).collect();
    let start = Instant::now();
    // Measuring an interval, not waiting for anything to happen.
    std::thread::sleep(over);
    let elapsed = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&pid, before)| (cpu_time(pid) - before).as_secs_f64() / elapsed)
        .collect()
}

/// Polls `done` until it is true; fails the test after [`PATIENCE`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls the task's state until it is `state`.
/// Waits until the task's attempt has begun running its function (not merely been
/// claimed): for fixture tasks that report progress as they begin (`sleep_ms`,
/// `process_sleep`). A claim still waiting for its thread or child is given back at a
/// graceful stop, so a test about running tasks must wait for this, not for `running`.
pub fn wait_until_begun<R: serde::de::DeserializeOwned>(handle: &TaskHandle<R>) {
    wait_until("the attempt reports that it began", || {
        handle.info().expect("read the task").progress.is_some()
    });
}

pub fn wait_for_state<R: serde::de::DeserializeOwned>(handle: &TaskHandle<R>, state: TaskState) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = handle.status().expect("read the task's state");
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {} stayed {now}, expected {state}",
            handle.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that `castor ARGS..` fails at startup with exit code `code` and a message
/// containing every one of `needles`; returns stderr.
pub fn assert_startup_error(dir: &TestDir, args: &[&str], code: i32, needles: &[&str]) -> String {
    let out = run_castor(dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status of castor {args:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "castor {args:?}: stderr lacks {needle:?}:\n{}",
            out.stderr
        );
    }
    out.stderr
}

/// The fixture app (`tests/fixtures/app.rs`), which `cargo test` builds as an example of
/// castor-host next to the tests.
pub fn fixture_app() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let app = profile_dir.join("examples").join("fixture-app");
    assert!(
        app.exists(),
        "{} is missing: run the tests with `cargo test -p castor-host` (which builds \
         examples), or build it with `cargo build -p castor-host --example fixture-app`",
        app.display()
    );
    app
}

/// Reads the keys a `record` task wrote, with how often each was written.
pub fn recorded(path: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

// The PostgreSQL server the tests on PostgreSQL use (postgres.rs, and the dashboard's):
// the one CASTOR_TEST_POSTGRES names (`bash tests/run.sh` starts a throwaway one), a
// database of its own per test. Without the variable those tests fail, saying so: they
// never pass without having run.

/// The environment variable naming the test server.
pub const SERVER_ENV: &str = "CASTOR_TEST_POSTGRES";

/// An empty database on the test server, dropped with everything in it at the end.
pub struct PgDatabase {
    server: String,
    name: String,
    /// The database's URL, for `--db` and `with_database`.
    pub url: String,
}

impl PgDatabase {
    pub fn new() -> PgDatabase {
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

/// A connection to `server` (any database's URL) for what a test does behind Castor's back.
pub fn admin(server: &str) -> postgres::Client {
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

/// The smallest executor there is: poll, park until woken, repeat.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park_timeout(PATIENCE);
    }
}
