//! Every way `castor LIB:MANAGER` can be pointed at the wrong thing, and what the user sees.

use std::path::Path;

use castor_store::{NewTask, OpenOptions, Store, TaskState};

use crate::support::{
    TestDir, Worker, assert_startup_error, fixture_path, run_castor, tasks_target, wait_until,
};

#[test]
fn a_missing_library_is_named() {
    let dir = TestDir::new();
    assert_startup_error(
        &dir,
        &["./no/such/libmissing.so:manager"],
        1,
        &["no library at ./no/such/libmissing.so"],
    );
}

#[test]
fn a_mistyped_subcommand_gets_a_hint_and_a_missing_library_stays_one() {
    let dir = TestDir::new();
    let id = castor_abi::Uuid::now_v7().to_string();
    for (args, meant) in [
        (vec!["lsit"], "list"),
        (vec!["shwo", id.as_str()], "show"),
        (vec!["retyr", id.as_str(), "--db", "x.db"], "retry"),
    ] {
        let typo = args[0];
        let stderr = assert_startup_error(
            &dir,
            &args,
            2,
            &[&format!(
                "unrecognized subcommand `{typo}` (and no library file by that name): did you \
                 mean `{meant}`?"
            )],
        );
        assert!(!stderr.contains("no library at"), "{stderr}");
    }
    // Not close to any subcommand: the library is not found, and nothing else is said.
    let out = run_castor(&dir, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.trim(), "castor: error: no library at frobnicate");
    assert_eq!(
        out.stdout, "",
        "no notice about the default manager before the error"
    );
    // A file by that name is a library path, typo or not.
    std::fs::write(dir.path().join("lsit"), "not a library").expect("write");
    assert_startup_error(&dir, &["lsit"], 1, &["is not a loadable shared library"]);
}

#[test]
fn a_file_that_is_not_a_shared_library() {
    let dir = TestDir::new();
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "just some text\n").expect("write");
    let target = format!("{}:manager", text.display());
    assert_startup_error(&dir, &[&target], 1, &["is not a loadable shared library"]);
}

#[test]
fn a_shared_library_that_is_not_a_castor_plugin() {
    let dir = TestDir::new();
    let target = format!("{}:manager", fixture_path("not_a_plugin").display());
    assert_startup_error(
        &dir,
        &[&target],
        1,
        &[
            "is a shared library but not a Castor plugin",
            "export_managers!",
        ],
    );
}

/// `major.minor.patch` as numbers.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().expect("numeric"));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Whether cargo's semver rules let a dependency on `a` resolve to `b`, or back (same
/// major, or for 0.y.z the same y, or for 0.0.z the same z).
fn semver_compatible(a: &str, b: &str) -> bool {
    match (version(a), version(b)) {
        ((0, 0, x), (0, 0, y)) => x == y,
        ((0, x, _), (0, y, _)) => x == y,
        ((x, _, _), (y, _, _)) => x == y,
    }
}

/// This worker's plugin ABI version, and the next incompatible one after it (what the
/// `newer-abi` fixture's build script compiles its copy as).
fn abi_versions() -> (String, String) {
    let ours = castor_abi::abi::ABI_VERSION.to_owned();
    let next = match version(&ours) {
        (0, minor, _) => format!("0.{}.0", minor + 1),
        (major, _, _) => format!("{}.0.0", major + 1),
    };
    (ours, next)
}

/// Loads the fixture `name` as a worker and as `castor list --lib`, checks that both
/// refuse it with the same single line, exit 1; returns the line and the `-v` output.
fn refuse(name: &str) -> (String, String) {
    let dir = TestDir::new();
    let target = format!("{}:manager", fixture_path(name).display());
    let stderr = assert_startup_error(&dir, &[&target], 1, &[]);
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, not a report:\n{stderr}"
    );
    let line = stderr.trim_end().to_owned();
    // An inspection command that loads the library says the same.
    std::fs::write(dir.db(), "").expect("create the database file");
    let list = assert_startup_error(&dir, &["list", "--lib", &target], 1, &[]);
    assert_eq!(list.trim_end(), line);
    let verbose = run_castor(&dir, &[&target, "-v"]);
    assert!(verbose.stderr.starts_with(&line), "{}", verbose.stderr);
    assert!(
        verbose.stderr.contains("\ndifferences:\n")
            && verbose.stderr.contains("abi_stable's report"),
        "-v adds the differences and abi_stable's report:\n{}",
        verbose.stderr
    );
    (line, verbose.stderr)
}

#[test]
fn a_library_built_for_another_plugin_abi_names_both_versions() {
    let (ours, next) = abi_versions();
    let release = castor_abi::VERSION;
    let (line, verbose) = refuse("newer_abi");
    let path = fixture_path("newer_abi").canonicalize().expect("canonical");
    assert_eq!(
        line,
        format!(
            "castor: error: {} was built for plugin ABI {next}, which this castor (castor-abi \
             {release}, plugin ABI {ours}) cannot load: rebuild the library against castor-abi \
             {release}, or run it with a castor built for plugin ABI {next} (castor -v shows \
             the differences)",
            path.display()
        )
    );
    assert!(
        verbose.contains(&format!(
            "the root module: different package version: expected {ours}, found {next}"
        )),
        "{verbose}"
    );
}

#[test]
fn a_library_whose_abi_layout_differs_at_a_compatible_version() {
    let (ours, _) = abi_versions();
    let release = castor_abi::VERSION;
    let (major, minor, patch) = version(&ours);
    // The `wrong-abi` fixture's build script compiles its copy one patch version up.
    let theirs = format!("{major}.{minor}.{}", patch + 1);
    let (line, verbose) = refuse("wrong_abi");
    assert!(
        line.contains(&format!(
            "was built for plugin ABI {theirs}, which this castor (castor-abi {release}, \
             plugin ABI {ours}) cannot load: rebuild the library against castor-abi \
             {release}, or run it with a castor built for plugin ABI {theirs}"
        )),
        "{line}"
    );
    assert!(
        verbose.contains(
            "  field `managers.tasks.timeout_ms`: different type: expected u64, found u32\n"
        ),
        "{verbose}"
    );
}

#[test]
fn a_library_built_from_modified_sources_of_the_same_version_says_so_without_debug_output() {
    let (ours, _) = abi_versions();
    let release = castor_abi::VERSION;
    let (line, verbose) = refuse("repr_abi");
    assert!(
        line.contains(&format!(
            "was built for plugin ABI {ours} like this castor (castor-abi {release}), but from \
             different sources whose layouts differ: rebuild the library and castor from the \
             same castor-abi (castor -v shows the differences)"
        )),
        "{line}"
    );
    let differences = verbose
        .split("abi_stable's report")
        .next()
        .unwrap_or_default();
    let repr = "field `managers.tasks.mode`: different representation: expected #[repr(u8)], \
                found #[repr(u32)]";
    assert_eq!(differences.matches(repr).count(), 1, "{verbose}");
    assert!(
        !differences.contains("ExpectedFound") && !differences.contains("ReprAttr"),
        "{differences}"
    );
}

/// A library built against an older castor release whose plugin ABI is the worker's (the
/// `older-release` fixture: castor-abi 0.0.9's build of today's ABI crate) loads, and the
/// worker runs the tasks an app enqueued for it: a release that changed only what does
/// not cross the ABI (the store, the schema) does not make old libraries incompatible.
#[test]
fn a_library_built_against_an_older_release_with_the_same_plugin_abi_runs_its_tasks() {
    let dir = TestDir::new();
    let mut store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    let mut enqueue = |task: &str, args: &[u8]| {
        store
            .enqueue(&NewTask {
                manager: "manager",
                task,
                args,
                run_at_us: None,
                priority: 0,
                unique_key: None,
                max_attempts: 1,
                backoff_base_ms: 1000,
                backoff_cap_ms: 1000,
                timeout_ms: None,
                schedule_id: None,
                args_fingerprint: None,
                concurrency_key: None,
            })
            .expect("enqueue")
            .id
    };
    let add = enqueue(
        "add",
        &castor_abi::codec::encode(&(2i64, 40i64)).expect("encode"),
    );
    let built_with = enqueue(
        "built_with",
        &castor_abi::codec::encode(&()).expect("encode"),
    );
    let target = format!("{}:manager", fixture_path("older_release").display());
    let worker = Worker::start(&dir, &target, &[]);
    assert!(
        worker
            .stdout()
            .contains("add (thread), built_with (thread)"),
        "{}",
        worker.stdout()
    );
    let finished = |id| {
        store
            .snapshot(id)
            .expect("read the task")
            .filter(|task| task.state.is_terminal())
    };
    let result = |id| {
        wait_until("the task is finished", || finished(id).is_some());
        let task = finished(id).expect("finished");
        assert_eq!(task.state, TaskState::Completed, "{:?}", task.errors);
        task.result.expect("a result")
    };
    let sum: i64 = castor_abi::codec::decode(&result(add)).expect("decode");
    assert_eq!(sum, 42);
    // What makes this test mean something: the library's release is one the worker's
    // check would refuse if it compared releases (incompatible by cargo's rules), and
    // only its plugin ABI version agrees.
    let (release, abi): (String, String) =
        castor_abi::codec::decode(&result(built_with)).expect("decode");
    assert!(
        !semver_compatible(&release, castor_abi::VERSION),
        "the fixture must stand for a release incompatible with castor-abi {}, not {release}",
        castor_abi::VERSION
    );
    assert_eq!(abi, castor_abi::abi::ABI_VERSION);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn an_unknown_manager_lists_the_available_ones() {
    let dir = TestDir::new();
    assert_startup_error(
        &dir,
        &[&tasks_target("nope")],
        1,
        &[
            "has no manager named `nope`; it exports: manager, reports, clock, threads_only, processes_only",
        ],
    );
}

#[test]
fn a_malformed_target_is_a_usage_error() {
    let dir = TestDir::new();
    let target = format!("{}:", fixture_path("tasks").display());
    assert_startup_error(&dir, &[&target], 2, &["empty manager name after the colon"]);
    assert_startup_error(
        &dir,
        &[":manager"],
        2,
        &["no library path before the colon"],
    );
    assert_startup_error(
        &dir,
        &[&tasks_target("bad-name")],
        2,
        &["invalid manager name"],
    );
}

#[test]
fn a_target_without_a_manager_uses_manager_and_says_so() {
    let dir = TestDir::new();
    let target = fixture_path("tasks").display().to_string();
    let db = dir.db().display().to_string();
    let worker = crate::support::Worker::start(&dir, &target, &[]);
    let out = worker.stop();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("no manager named in the target; using `manager`"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&db), "{}", out.stdout);
}

/// Runs `castor LIB:manager --db DB` (as `nobody` when the tests run as root, so that
/// permissions apply) and returns what it printed on stderr; it must fail with exit code 1
/// before it starts.
fn refused(dir: &TestDir, db: &Path, as_nobody: bool) -> String {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(crate::support::castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(db)
        .current_dir(dir.path());
    // SAFETY: getuid has no preconditions.
    if as_nobody && unsafe { libc::getuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let out = crate::support::Worker::spawn(command).wait();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "", "nothing started");
    out.stderr
}

#[test]
fn a_database_path_that_cannot_be_a_file_is_refused_in_one_sentence() {
    use std::os::unix::net::UnixListener;
    let dir = TestDir::new();
    let d = dir.path().display().to_string();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "x").expect("write");
    let fifo = dir.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads a live NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let socket = dir.path().join("socket");
    let _listener = UnixListener::bind(&socket).expect("bind");
    let cases = [
        (
            dir.path().to_path_buf(),
            format!(
                "cannot open database {d}: it is a directory, not a database file; give the path \
                 of a file, e.g. {d}/tasks.db"
            ),
        ),
        (
            dir.path().join("missing").join("tasks.db"),
            format!(
                "cannot open database {d}/missing/tasks.db: directory {d}/missing does not exist; \
                 create it first"
            ),
        ),
        (
            plain.join("tasks.db"),
            format!("cannot open database {d}/plain/tasks.db: {d}/plain is not a directory"),
        ),
        (
            fifo,
            format!(
                "cannot open database {d}/fifo: it is a FIFO (named pipe), not a database file"
            ),
        ),
        (
            socket,
            format!("cannot open database {d}/socket: it is a socket, not a database file"),
        ),
    ];
    for (db, message) in &cases {
        assert_eq!(
            refused(&dir, db, false),
            format!("castor: error: {message}\n")
        );
    }
    // The subcommands open the database the same way and say the same.
    let out = run_castor(&dir, &["list", "--db", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr, format!("castor: error: {}\n", cases[0].1));
    // So does an app.
    let err = castor_fixture_tasks::manager()
        .with_database(dir.path())
        .open()
        .expect_err("a directory");
    assert_eq!(err.to_string(), cases[0].1);
}

#[test]
fn a_database_this_user_may_not_open_is_refused_in_one_sentence() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let secret = dir.path().join("secret.db");
    drop(
        castor_fixture_tasks::manager()
            .with_database(&secret)
            .open()
            .expect("create"),
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let denied = "permission denied (this user needs read and write access to the file and its \
                  directory)";
    // A new file in a directory this user cannot write to.
    let db = locked.join("tasks.db");
    assert_eq!(
        refused(&dir, &db, true),
        format!(
            "castor: error: cannot open database {}: {denied}\n",
            db.display()
        )
    );
    // An existing file this user cannot read.
    assert_eq!(
        refused(&dir, &secret, true),
        format!(
            "castor: error: cannot open database {}: {denied}\n",
            secret.display()
        )
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = TestDir::new();
    let contents = "name,email\nada,ada@example.com\n".repeat(200);
    std::fs::write(dir.db(), &contents).expect("write");
    assert_startup_error(
        &dir,
        &[
            &tasks_target("manager"),
            "--db",
            &dir.db().display().to_string(),
        ],
        1,
        &[&format!(
            "castor: error: database {} is damaged or not a SQLite database: file is not a \
             database (found while castor tried to open the database); check it with `castor \
             check --db {}`",
            dir.db().display(),
            dir.db().display()
        )],
    );
    assert_eq!(std::fs::read_to_string(dir.db()).expect("read"), contents);
}
