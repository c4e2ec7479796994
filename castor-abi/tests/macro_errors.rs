//! What a task author sees for the mistakes the `#[task]` macro can name: one error each,
//! at the code to change, saying how. The expected compiler output is in
//! `tests/macro_errors/*.stderr`; regenerate it with `TRYBUILD=overwrite cargo test -p
//! castor-abi --test macro_errors` and read the diff.

use std::process::Command;

/// Set in the child that runs trybuild.
const CHILD: &str = "CASTOR_MACRO_ERRORS_CHILD";

#[test]
fn task_declarations_that_cannot_work() {
    if std::env::var_os(CHILD).is_some() {
        trybuild::TestCases::new().compile_fail("tests/macro_errors/*.rs");
        return;
    }
    // trybuild prints its progress and cargo's straight to the terminal, past the test
    // harness's capture: run it in a child of this same test binary and show what it
    // printed only if it fails.
    let exe = std::env::current_exe().expect("the test binary has a path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "task_declarations_that_cannot_work",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
