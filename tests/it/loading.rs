//! Every way `castor LIB:MANAGER` can be pointed at the wrong thing, and what the user sees.

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

#[test]
fn a_database_in_a_missing_directory() {
    let dir = TestDir::new();
    let db = dir.path().join("missing").join("tasks.db");
    assert_startup_error(
        &dir,
        &[&tasks_target("manager"), "--db", &db.display().to_string()],
        1,
        &["does not exist", "missing"],
    );
}

#[test]
fn a_database_in_an_unwritable_directory() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let db = locked.join("tasks.db");
    let mut command = std::process::Command::new(crate::support::castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(&db)
        .current_dir(dir.path());
    // Root may write anywhere: run the worker as `nobody` so the permission applies.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let out = crate::support::Worker::spawn(command).wait();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cannot open database"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
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
        &["is corrupt or not a SQLite database"],
    );
    assert_eq!(std::fs::read_to_string(dir.db()).expect("read"), contents);
}
