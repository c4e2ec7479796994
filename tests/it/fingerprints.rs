//! Type fingerprints with two real versions of a task library (`tests/fixtures/shop-v1`
//! and `shop-v2`) and the real worker: a task dispatched with another signature waits
//! for a worker of its version and runs there with the right values; a result of another
//! type is a clear join error; renamed fields, wider integers and added variants are
//! caught alike; `version = N` keeps an encoding-compatible change running.

use std::time::Duration;

use castor_abi::{Client, JoinError, Schedule};
use castor_fixture_shop_v1 as v1;
use castor_fixture_shop_v2 as v2;
use castor_store::TaskState;

use crate::support::{self, PATIENCE, TestDir, Worker, fixture_path, wait_until};

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

/// `castor ARGS --db <dir's database>`, which must succeed; its stdout.
fn castor_on_db(dir: &TestDir, args: &[&str]) -> String {
    let db = dir.db().display().to_string();
    support::castor_ok(dir, &[args, &["--db", &db]].concat())
}

/// [`castor_on_db`] with `--json`, parsed.
fn castor_json_on_db(dir: &TestDir, args: &[&str]) -> serde_json::Value {
    let db = dir.db().display().to_string();
    support::castor_json(dir, &[args, &["--db", &db]].concat())
}

#[test]
fn list_show_and_stats_say_which_tasks_wait_for_a_worker_of_their_signature() {
    let dir = TestDir::new();
    let (old, new) = (app_v1(&dir), app_v2(&dir));
    let old_fp = (v1::charge::SPEC.fingerprints)().args.clone();
    let new_fp = (v2::charge::SPEC.fingerprints)().args.clone();
    let waiting = v2::charge::delay(
        &new,
        v2::Order {
            price_cents: 1999,
            qty: 3,
        },
    )
    .expect("delay v2");
    let id = waiting.id().to_string();
    let marked = format!("available (waiting for a worker of its signature {new_fp})");

    // No worker yet: the task waits for any worker, not for a signature.
    let table = castor_on_db(&dir, &["list"]);
    assert!(
        table.contains(&id) && !table.contains("waiting for"),
        "{table}"
    );

    let worker = Worker::start(&dir, &target("shop_v1"), &[]);
    worker.wait_for_stdout(&leaving(1, "charge", &new_fp, &old_fp));
    // A v1 task runs meanwhile (a v1 worker is live and claiming).
    let ran = v1::charge::delay(
        &old,
        v1::Order {
            qty: 2,
            price_cents: 500,
        },
    )
    .expect("delay v1");
    ran.join(PATIENCE).expect("join v1");

    let table = castor_on_db(&dir, &["list"]);
    let line = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
    assert!(line.contains(&marked), "{table}");
    let done = table
        .lines()
        .find(|l| l.contains(&ran.id().to_string()))
        .expect("the v1 task is listed");
    assert!(
        done.contains("completed") && !done.contains("waiting for"),
        "{table}"
    );

    let rows = castor_json_on_db(&dir, &["list"]);
    let rows = rows.as_array().expect("an array");
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {rows:?}"))
    };
    assert_eq!(row(&id)["waiting_for_signature"], true);
    assert_eq!(row(&id)["args_fingerprint"], new_fp.as_str());
    assert_eq!(row(&ran.id().to_string())["waiting_for_signature"], false);

    let shown = castor_on_db(&dir, &["show", &id]);
    assert!(shown.contains(&format!("state      {marked}")), "{shown}");
    assert!(
        shown.contains(&format!(
            "live workers of `charge` run args fingerprint {old_fp}"
        )),
        "{shown}"
    );
    let shown = castor_json_on_db(&dir, &["show", &id]);
    assert_eq!(shown["waiting_for_signature"], true);

    let stats = castor_json_on_db(&dir, &["stats"]);
    assert_eq!(
        stats["waiting_for_signature"],
        serde_json::json!([{
            "manager": "shop",
            "task": "charge",
            "args_fingerprint": new_fp,
            "count": 1,
        }]),
        "{stats}"
    );
    let stats = castor_on_db(&dir, &["stats"]);
    assert!(
        stats.contains(&format!(
            "shop / charge: 1 waiting, args fingerprint {new_fp} (live workers run {old_fp})"
        )),
        "{stats}"
    );
    worker.stop();

    // The v1 worker stopped: no live worker of `charge`, nothing waits for a signature.
    let table = castor_on_db(&dir, &["list"]);
    assert!(!table.contains("waiting for"), "{table}");
    let stats = castor_json_on_db(&dir, &["stats"]);
    assert_eq!(stats["waiting_for_signature"], serde_json::json!([]));

    let worker = Worker::start(&dir, &target("shop_v2"), &[]);
    assert_eq!(
        waiting.join(PATIENCE).expect("join v2"),
        "qty=3 price_cents=1999"
    );
    worker.stop();
}

#[test]
fn a_schedule_created_by_a_v2_app_is_run_only_by_a_v2_worker() {
    let dir = TestDir::new();
    let (old, new) = (app_v1(&dir), app_v2(&dir));
    let new_fp = (v2::charge::SPEC.fingerprints)().args.clone();
    let schedule = v2::charge::schedule(
        &new,
        &Schedule::every(Duration::from_secs(3600)).times(1),
        v2::Order {
            price_cents: 1999,
            qty: 3,
        },
    )
    .expect("schedule");
    assert_eq!(
        schedule.info().expect("info").args_fingerprint.as_deref(),
        Some(new_fp.as_str())
    );

    // The v1 worker creates the due run (any worker of the name may), but leaves it.
    let worker = Worker::start(&dir, &target("shop_v1"), &[]);
    wait_until("the schedule's run is created", || {
        schedule.runs().is_ok_and(|runs| runs.len() == 1)
    });
    let run = schedule.runs().expect("runs").pop().expect("one run");
    // A v1 task dispatched after the run is claimed and run: the worker's claims saw the
    // run and passed it by.
    let ran = v1::charge::delay(
        &old,
        v1::Order {
            qty: 2,
            price_cents: 500,
        },
    )
    .expect("delay v1");
    ran.join(PATIENCE).expect("join v1");
    assert_eq!(run.status().expect("status"), TaskState::Available);
    let shown = castor_json_on_db(&dir, &["show", &run.id().to_string()]);
    assert_eq!(shown["args_fingerprint"], new_fp.as_str(), "{shown}");
    worker.stop();

    let worker = Worker::start(&dir, &target("shop_v2"), &[]);
    assert_eq!(
        run.join(PATIENCE).expect("join v2"),
        "qty=3 price_cents=1999",
        "never the v1 reading (qty=1999 price_cents=3)"
    );
    worker.stop();
}
