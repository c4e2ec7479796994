//! Chains and fan-ins through three real `castor` workers on one SQLite file (and two on
//! PostgreSQL): results passed in order, a failed or cancelled parent cancelling its
//! dependents with a reason naming it, parents finished before the dispatch, a result of
//! another type refused, and the errors a user sees for bad input.

use std::process::Command;
use std::time::Duration;

use castor_abi::{Client, DelayOptions, DispatchError, JoinError, StoreError, TaskState, Uuid};
use castor_fixture_tasks::chains::{self, explode, part, start, start_v2, step, summarize};
use castor_store::{OpenOptions, Store, TaskSnapshot};

use crate::support::{
    PATIENCE, PgDatabase, TestDir, Worker, castor_bin, castor_json, castor_ok, run_castor,
    tasks_target,
};

/// The chains manager on the test's database.
fn client(dir: &TestDir) -> Client {
    chains::chains()
        .with_database(dir.db())
        .open()
        .expect("open the test database")
}

/// Three workers of the chains manager on the test's database.
fn three_workers(dir: &TestDir) -> Vec<Worker> {
    (0..3)
        .map(|_| Worker::start(dir, &tasks_target("chains"), &["--threads", "2"]))
        .collect()
}

fn snapshot(store: &Store, id: Uuid) -> TaskSnapshot {
    store
        .snapshot(id)
        .expect("read a task")
        .expect("the task exists")
}

/// `b` started only after `a` finished.
fn ran_after(store: &Store, a: Uuid, b: Uuid) {
    let a = snapshot(store, a);
    let b = snapshot(store, b);
    let finished = a.finalized_at.expect("the parent finished");
    let started = b.attempted_at.expect("the dependent ran");
    assert!(
        started >= finished,
        "{} ({}) started at {started}, before its parent {} ({}) finished at {finished}",
        b.id,
        b.task,
        a.id,
        a.task
    );
}

#[test]
fn chains_run_in_order_with_results_passed_on_three_workers() {
    let dir = TestDir::new();
    let c = client(&dir);
    let db = dir.db().display().to_string();
    // Dispatched before any worker runs: the dependents wait, and say on what.
    let mut chains = Vec::new();
    for i in 0..10 {
        let a = start::delay(&c, format!("a{i}")).expect("dispatch");
        let b = step::delay_after(&c, &a, "b".into()).expect("dispatch after a");
        let last = step::delay_after(&c, &b, "c".into()).expect("dispatch after b");
        chains.push((a, b, last));
    }
    let (a, b, last) = &chains[0];
    assert_eq!(a.status().expect("status"), TaskState::Available);
    assert_eq!(b.status().expect("status"), TaskState::Waiting);
    assert_eq!(last.status().expect("status"), TaskState::Waiting);
    let shown = castor_ok(&dir, &["show", &last.id().to_string(), "--db", &db]);
    assert!(shown.contains("state      waiting"), "{shown}");
    assert!(
        shown.contains(&format!("waits on   {} step (waiting)", b.id())),
        "{shown}"
    );
    assert!(
        shown.contains("its arguments after the first, which its parents' results make"),
        "{shown}"
    );
    let json = castor_json(&dir, &["show", &b.id().to_string(), "--db", &db]);
    assert_eq!(json["state"], "waiting");
    assert_eq!(json["parents"][0]["id"], a.id().to_string());
    assert_eq!(json["parents"][0]["task"], "start");
    assert_eq!(json["parents"][0]["state"], "available");
    let listed = castor_json(&dir, &["list", "--db", &db, "--state", "waiting"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(20), "{listed}");
    let stats = castor_json(&dir, &["stats", "--db", &db]);
    assert_eq!(stats["counts"]["chains"]["step"]["waiting"], 20, "{stats}");

    let workers = three_workers(&dir);
    for (i, (_, _, last)) in chains.iter().enumerate() {
        assert_eq!(
            last.join(PATIENCE).expect("the chain completes"),
            format!("a{i}>b>c")
        );
    }
    let store = Store::open(dir.db().as_path(), OpenOptions::inspect()).expect("open");
    for (a, b, last) in &chains {
        ran_after(&store, a.id(), b.id());
        ran_after(&store, b.id(), last.id());
    }
    // Shown after the fact with its parent and its composed arguments, decoded.
    let shown = castor_ok(
        &dir,
        &[
            "show",
            &last.id().to_string(),
            "--db",
            &db,
            "--lib",
            &tasks_target("chains"),
        ],
    );
    assert!(
        shown.contains(&format!("after      {} step (completed)", b.id())),
        "{shown}"
    );
    assert!(shown.contains(r#"arguments  ["a0>b","c"]"#), "{shown}");
    drop(workers);
}

#[test]
fn a_fan_in_receives_every_result_in_order() {
    let dir = TestDir::new();
    let c = client(&dir);
    let workers = three_workers(&dir);
    // The first part is the slowest: the results come back in dispatch order anyway.
    let parts: Vec<_> = [(1, 400), (2, 0), (3, 150), (4, 50)]
        .into_iter()
        .map(|(n, ms)| part::delay(&c, n, ms).expect("dispatch a part"))
        .collect();
    let summary = summarize::delay_after_all(&c, &parts, ", ".into()).expect("dispatch");
    assert_eq!(
        summary.join(PATIENCE).expect("the fan-in completes"),
        "part-1, part-2, part-3, part-4"
    );
    let store = Store::open(dir.db().as_path(), OpenOptions::inspect()).expect("open");
    for p in &parts {
        ran_after(&store, p.id(), summary.id());
    }
    // A fan-in of parents that completed before it was dispatched runs at once.
    let again = summarize::delay_after_all(&c, &parts[..2], "+".into()).expect("dispatch");
    assert_eq!(again.join(PATIENCE).expect("completes"), "part-1+part-2");
    drop(workers);
}

#[test]
fn a_failed_parent_cancels_its_dependents_naming_it() {
    let dir = TestDir::new();
    let c = client(&dir);
    let db = dir.db().display().to_string();
    let workers = three_workers(&dir);
    let parent = explode::delay(&c, "boom".into()).expect("dispatch");
    let child = step::delay_after(&c, &parent, "never".into()).expect("dispatch after");
    let grandchild = step::delay_after(&c, &child, "never".into()).expect("dispatch after");
    let fan =
        summarize::delay_after_all(&c, std::slice::from_ref(&child), ",".into()).expect("fan-in");
    match parent.join(PATIENCE) {
        Err(JoinError::Failed { message, .. }) => assert_eq!(message, "boom"),
        other => panic!("the parent fails: {other:?}"),
    }
    let reason = |handle: &castor_abi::TaskHandle<String>| match handle.join(PATIENCE) {
        Err(e @ JoinError::Cancelled { .. }) => {
            let JoinError::Cancelled { reason, .. } = &e else {
                unreachable!()
            };
            (e.to_string(), reason.clone().expect("a reason"))
        }
        other => panic!("cancelled: {other:?}"),
    };
    let (said, why) = reason(&child);
    assert_eq!(
        why,
        format!("its parent task {} (`explode`) was discarded", parent.id())
    );
    assert!(said.ends_with(&why), "{said}");
    let (_, why) = reason(&grandchild);
    assert_eq!(
        why,
        format!("its parent task {} (`step`) was cancelled", child.id())
    );
    let (_, why) = reason(&fan);
    assert!(why.contains(&child.id().to_string()), "{why}");
    // What `castor show` says of it.
    let shown = castor_ok(&dir, &["show", &child.id().to_string(), "--db", &db]);
    assert!(
        shown.contains(&format!("after      {} explode (discarded)", parent.id())),
        "{shown}"
    );
    assert!(shown.contains("chain"), "{shown}");
    assert!(shown.contains("was discarded"), "{shown}");
    // Retrying it while its parent is still discarded is refused, naming what to do.
    let refused = run_castor(&dir, &["retry", &child.id().to_string(), "--db", &db]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains(&format!(
            "is cancelled again at once: its parent task {} (`explode`) was discarded; retry \
             the parent first",
            parent.id()
        )),
        "{}",
        refused.stderr
    );
    drop(workers);
}

#[test]
fn a_cancelled_parent_cancels_its_dependents_naming_it() {
    let dir = TestDir::new();
    let c = client(&dir);
    let db = dir.db().display().to_string();
    let workers = three_workers(&dir);
    let later = DelayOptions::new().after(Duration::from_secs(3600));
    let parent = start::delay_with(&c, &later, "later".into()).expect("dispatch");
    let child = step::delay_after(&c, &parent, "x".into()).expect("dispatch after");
    let out = castor_ok(&dir, &["cancel", &parent.id().to_string(), "--db", &db]);
    assert!(out.contains("cancelled"), "{out}");
    match child.join(PATIENCE) {
        Err(JoinError::Cancelled { reason, .. }) => assert_eq!(
            reason.as_deref(),
            Some(format!("its parent task {} (`start`) was cancelled", parent.id()).as_str())
        ),
        other => panic!("cancelled: {other:?}"),
    }
    // Cancelling a waiting task itself: cancelled at once, with no run.
    let open = start::delay_with(&c, &later, "open".into()).expect("dispatch");
    let waiting = step::delay_after(&c, &open, "x".into()).expect("dispatch after");
    waiting.cancel().expect("cancel");
    match waiting.join(PATIENCE) {
        Err(JoinError::Cancelled { reason, .. }) => assert_eq!(
            reason.as_deref(),
            Some("cancelled while it waited on its parents")
        ),
        other => panic!("cancelled: {other:?}"),
    }
    drop(workers);
}

#[test]
fn a_dependent_of_a_finished_parent_is_settled_at_once() {
    let dir = TestDir::new();
    let c = client(&dir);
    let workers = three_workers(&dir);
    let done = start::delay(&c, "done".into()).expect("dispatch");
    assert_eq!(done.join(PATIENCE).expect("completes"), "done");
    let next = step::delay_after(&c, &done, "next".into()).expect("dispatch after");
    assert_ne!(next.status().expect("status"), TaskState::Waiting);
    assert_eq!(next.join(PATIENCE).expect("completes"), "done>next");
    let failed = explode::delay(&c, "boom".into()).expect("dispatch");
    assert!(failed.join(PATIENCE).is_err());
    let never = step::delay_after(&c, &failed, "never".into()).expect("dispatch after");
    assert_eq!(never.status().expect("status"), TaskState::Cancelled);
    drop(workers);
}

#[test]
fn a_parent_result_of_another_type_is_a_clear_error() {
    let dir = TestDir::new();
    let c = client(&dir);
    let workers = three_workers(&dir);
    // A worker built from the next version of the library ran it: its result carries
    // `start_v2`'s fingerprint, and this app expects `start`'s.
    let ran = start_v2::delay(&c, "v2".into()).expect("dispatch");
    assert_eq!(ran.join(PATIENCE).expect("completes"), "v2");
    let as_v1 = start::handle(&c, ran.id());
    let child = step::delay_after(&c, &as_v1, "x".into()).expect("dispatch after");
    let found = &(start_v2::SPEC.fingerprints)().result;
    let expected = &(start::SPEC.fingerprints)().result;
    assert_ne!(found, expected);
    match child.join(PATIENCE) {
        Err(JoinError::Failed {
            attempts, message, ..
        }) => {
            assert_eq!(attempts, 0, "it never ran");
            assert!(
                message.contains(&format!("result fingerprint {found}"))
                    && message.contains(&format!("expected ({expected})")),
                "{message}"
            );
            assert!(message.contains(&ran.id().to_string()), "{message}");
        }
        other => panic!("a clear error: {other:?}"),
    }
    drop(workers);
}

#[test]
fn bad_parents_are_refused_with_a_clear_error() {
    let dir = TestDir::new();
    let c = client(&dir);
    // A parent of another database.
    let elsewhere = TestDir::new();
    let other = client(&elsewhere);
    let stranger = start::delay(&other, "x".into()).expect("dispatch elsewhere");
    let refused = step::delay_after(&c, &stranger, "x".into()).expect_err("unknown parent");
    match &refused {
        DispatchError::Store(StoreError::UnknownParent { parent, task, .. }) => {
            assert_eq!((*parent, task.as_str()), (stranger.id(), "step"));
        }
        other => panic!("UnknownParent: {other}"),
    }
    let said = refused.to_string();
    assert!(
        said.contains(&format!(
            "cannot dispatch `step` after task {}",
            stranger.id()
        )) && said.contains("no such task")
            && said.contains("nothing was dispatched"),
        "{said}"
    );
    // No parents at all.
    let none = summarize::delay_after_all(&c, &[], ",".into()).expect_err("no parents");
    assert!(
        none.to_string()
            .contains("`delay_after_all` needs at least one parent task"),
        "{none}"
    );
    let db = dir.db().display().to_string();
    let listed = castor_json(&dir, &["list", "--db", &db]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "nothing written");
}

#[test]
fn chains_and_fan_ins_run_on_postgres() {
    let dir = TestDir::new();
    let pg = PgDatabase::new();
    let c = chains::chains()
        .with_database(pg.url.as_str())
        .open()
        .expect("open");
    let a = start::delay(&c, "a".into()).expect("dispatch");
    let b = step::delay_after(&c, &a, "b".into()).expect("dispatch after");
    let last = step::delay_after(&c, &b, "c".into()).expect("dispatch after");
    let parts: Vec<_> = (1..=3)
        .map(|n| part::delay(&c, n, 40 * (4 - n)).expect("dispatch"))
        .collect();
    let summary = summarize::delay_after_all(&c, &parts, ",".into()).expect("fan-in");
    let failed = explode::delay(&c, "boom".into()).expect("dispatch");
    let cancelled = step::delay_after(&c, &failed, "x".into()).expect("dispatch after");
    assert_eq!(last.status().expect("status"), TaskState::Waiting);
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            let mut command = Command::new(castor_bin());
            command
                .arg(tasks_target("chains"))
                .arg("--db")
                .arg(&pg.url)
                .current_dir(dir.path());
            Worker::started(command)
        })
        .collect();
    assert_eq!(last.join(PATIENCE).expect("completes"), "a>b>c");
    assert_eq!(
        summary.join(PATIENCE).expect("completes"),
        "part-1,part-2,part-3"
    );
    match cancelled.join(PATIENCE) {
        Err(JoinError::Cancelled { reason, .. }) => assert_eq!(
            reason.as_deref(),
            Some(format!("its parent task {} (`explode`) was discarded", failed.id()).as_str())
        ),
        other => panic!("cancelled: {other:?}"),
    }
    let store = Store::open(pg.url.as_str(), OpenOptions::inspect()).expect("open");
    ran_after(&store, a.id(), b.id());
    ran_after(&store, b.id(), last.id());
    for p in &parts {
        ran_after(&store, p.id(), summary.id());
    }
    let shown = castor_ok(&dir, &["show", &last.id().to_string(), "--db", &pg.url]);
    assert!(
        shown.contains(&format!("after      {} step (completed)", b.id())),
        "{shown}"
    );
    drop(workers);
}

/// A worker that completes a parent claims its dependent at once: its own commit wakes
/// none of its claims (the change counter says the write was its own), so it counts the
/// dependents its transaction released ([`castor_store::Tx::released`]). Without that,
/// an idle lone worker never claimed the second link (the join timed out). Twenty links
/// take about 0.1 s; the bound, 6 s, is there only to say so if they ever wait for ticks.
#[test]
fn one_worker_runs_a_chain_without_waiting_for_a_tick() {
    const LINKS: usize = 20;
    let dir = TestDir::new();
    let c = client(&dir);
    let worker = Worker::start(&dir, &tasks_target("chains"), &[]);
    let first = start::delay(&c, "0".into()).expect("dispatch");
    assert_eq!(first.join(PATIENCE).expect("completes"), "0");
    let began = std::time::Instant::now();
    let mut last = step::delay_after(&c, &first, "1".into()).expect("dispatch after");
    let mut links = vec![last.id()];
    for i in 2..=LINKS {
        last = step::delay_after(&c, &last, i.to_string()).expect("dispatch after");
        links.push(last.id());
    }
    let result = last.join(PATIENCE).expect("the chain completes");
    let took = began.elapsed();
    assert_eq!(result.matches('>').count(), LINKS);
    let store = Store::open(dir.db().as_path(), OpenOptions::inspect()).expect("open");
    let gaps: Vec<i64> = links
        .windows(2)
        .map(|pair| {
            let parent = snapshot(&store, pair[0]).finalized_at.expect("finished");
            snapshot(&store, pair[1]).attempted_at.expect("ran") - parent
        })
        .collect();
    assert!(
        took < Duration::from_secs(6),
        "{LINKS} links took {took:?}; gaps between a parent's end and its dependent's start \
         (us): {gaps:?}"
    );
    drop(worker);
}
