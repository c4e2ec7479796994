//! Type fingerprints with two real versions of a task library (`tests/fixtures/shop-v1`
//! and `shop-v2`) and the real worker: a task dispatched with another signature waits
//! for a worker of its version and runs there with the right values; a result of another
//! type is a clear join error; renamed fields, wider integers and added variants are
//! caught alike; `version = N` keeps an encoding-compatible change running.

use castor_abi::{Client, JoinError};
use castor_fixture_shop_v1 as v1;
use castor_fixture_shop_v2 as v2;
use castor_store::TaskState;

use crate::support::{PATIENCE, TestDir, Worker, fixture_path};

fn target(version: &str) -> String {
    format!(
        "{}:shop",
        fixture_path(&format!("{version}_plugin")).display()
    )
}

fn app_v1(dir: &TestDir) -> Client {
    v1::shop().with_database(dir.db()).open().expect("open v1")
}

fn app_v2(dir: &TestDir) -> Client {
    v2::shop().with_database(dir.db()).open().expect("open v2")
}

/// The worker's line for tasks of `task` dispatched with `found` it leaves.
fn leaving(count: u64, task: &str, found: &str, own: &str) -> String {
    format!(
        "leaving {count} task(s) of `{task}` dispatched with a different signature (args \
         fingerprint {found} != this library's {own})"
    )
}

#[test]
fn a_reordered_struct_waits_for_a_worker_of_its_version_and_runs_with_the_right_values() {
    let dir = TestDir::new();
    let (old, new) = (app_v1(&dir), app_v2(&dir));
    let old_fp = (v1::charge::SPEC.fingerprints)().args.clone();
    let new_fp = (v2::charge::SPEC.fingerprints)().args.clone();
    assert_ne!(old_fp, new_fp, "reordering fields changes the fingerprint");

    let waiting = v2::charge::delay(
        &new,
        v2::Order {
            price_cents: 1999,
            qty: 3,
        },
    )
    .expect("delay v2");
    let worker = Worker::start(&dir, &target("shop_v1"), &[]);
    worker.wait_for_stdout(&leaving(1, "charge", &new_fp, &old_fp));
    // The v1 worker runs v1's tasks meanwhile: it did claim, and left the v2 one.
    let ran = v1::charge::delay(
        &old,
        v1::Order {
            qty: 2,
            price_cents: 500,
        },
    )
    .expect("delay v1");
    assert_eq!(
        ran.join(PATIENCE).expect("join v1"),
        "qty=2 price_cents=500"
    );
    assert_eq!(waiting.status().expect("status"), TaskState::Available);
    worker.stop();

    let worker = Worker::start(&dir, &target("shop_v2"), &[]);
    assert_eq!(
        waiting.join(PATIENCE).expect("join v2"),
        "qty=3 price_cents=1999",
        "never the v1 reading (qty=1999 price_cents=3)"
    );
    worker.stop();
}

#[test]
fn a_result_of_another_type_is_a_clear_join_error() {
    let dir = TestDir::new();
    let (old, new) = (app_v1(&dir), app_v2(&dir));
    let worker = Worker::start(&dir, &target("shop_v1"), &[]);
    let order = v1::Order {
        qty: 2,
        price_cents: 5,
    };
    let done = v1::total::delay(&old, order).expect("delay");
    assert_eq!(done.join(PATIENCE).expect("join v1"), 10);
    worker.stop();

    let seen_by_v2 = v2::total::handle(&new, done.id());
    let err = seen_by_v2.join(PATIENCE).expect_err("another result type");
    let found = (v1::total::SPEC.fingerprints)().result.clone();
    let expected = (v2::total::SPEC.fingerprints)().result.clone();
    match &err {
        JoinError::IncompatibleResult {
            id,
            task,
            found: f,
            expected: e,
        } => {
            assert_eq!((*id, task.as_str()), (done.id(), "total"));
            assert_eq!((f, e), (&found, &expected));
        }
        other => panic!("expected IncompatibleResult, got {other:?}"),
    }
    let message = err.to_string();
    for needle in ["total", found.as_str(), expected.as_str(), "same version"] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
}

#[test]
fn renamed_fields_wider_integers_and_added_variants_wait_and_a_declared_version_runs() {
    let dir = TestDir::new();
    let new = app_v2(&dir);
    let greet = v2::greet::delay(
        &new,
        v2::Customer {
            full_name: "ada".into(),
        },
    )
    .expect("greet");
    let count = v2::count::delay(&new, 41).expect("count");
    let paint = v2::paint::delay(&new, v2::Color::Blue).expect("paint");
    let label = v2::label::delay(
        &new,
        v2::Label {
            caption: "fragile".into(),
        },
    )
    .expect("label");

    let worker = Worker::start(&dir, &target("shop_v1"), &[]);
    // The encoding-compatible change with `version = 1` runs on the v1 worker.
    assert_eq!(label.join(PATIENCE).expect("label"), "label fragile");
    for (task, old, new) in [
        (
            "greet",
            (v1::greet::SPEC.fingerprints)(),
            (v2::greet::SPEC.fingerprints)(),
        ),
        (
            "count",
            (v1::count::SPEC.fingerprints)(),
            (v2::count::SPEC.fingerprints)(),
        ),
        (
            "paint",
            (v1::paint::SPEC.fingerprints)(),
            (v2::paint::SPEC.fingerprints)(),
        ),
    ] {
        assert_ne!(old.args, new.args, "{task}");
        worker.wait_for_stdout(&leaving(1, task, &new.args, &old.args));
    }
    for handle_state in [greet.status(), count.status(), paint.status()] {
        assert_eq!(handle_state.expect("status"), TaskState::Available);
    }
    worker.stop();

    let worker = Worker::start(&dir, &target("shop_v2"), &[]);
    assert_eq!(greet.join(PATIENCE).expect("greet"), "hello ada");
    assert_eq!(count.join(PATIENCE).expect("count"), 42);
    assert_eq!(paint.join(PATIENCE).expect("paint"), "Blue");
    worker.stop();
}
