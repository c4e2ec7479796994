//! Every way `castor LIB:MANAGER` can be pointed at the wrong thing, and what the user sees.

use std::path::Path;

use crate::support::{TestDir, assert_startup_error, fixture_path, run_castor, tasks_target};

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

#[test]
fn a_library_built_against_an_incompatible_abi_gets_a_short_summary() {
    let dir = TestDir::new();
    let target = format!("{}:manager", fixture_path("wrong_abi").display());
    let stderr = assert_startup_error(
        &dir,
        &[&target],
        1,
        &[
            "has an incompatible ABI",
            "field `managers.tasks.timeout_ms`: different type: expected u64, found u32",
            "Rebuild the library",
        ],
    );
    assert!(
        stderr.len() < 1000,
        "the summary should be short, not abi_stable's full report ({} bytes):\n{stderr}",
        stderr.len()
    );
    // The full report is there for those who ask.
    let verbose = run_castor(&dir, &[&target, "-v"]);
    assert!(
        verbose.stderr.contains("abi_stable's report"),
        "{}",
        verbose.stderr
    );
    assert!(verbose.stderr.len() > stderr.len());
}

#[test]
fn an_unknown_manager_lists_the_available_ones() {
    let dir = TestDir::new();
    assert_startup_error(
        &dir,
        &[&tasks_target("nope")],
        1,
        &["has no manager named `nope`; it exports: manager, reports, clock"],
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
