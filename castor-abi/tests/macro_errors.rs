//! What a task author sees for the mistakes the `#[task]` macro can name: one error each,
//! at the code to change, saying how. The expected compiler output is in
//! `tests/macro_errors/*.stderr`; regenerate it with `TRYBUILD=overwrite cargo test -p
//! castor-abi --test macro_errors` and read the diff.

#[test]
fn task_declarations_that_cannot_work() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/macro_errors/*.rs");
}
