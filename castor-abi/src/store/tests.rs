use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::state::{Backoff, TaskState, Transition};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "castor-store-{name}-{}-{}",
            std::process::id(),
            Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("tasks.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn new_task<'a>(task: &'a str, args: &'a [u8]) -> NewTask<'a> {
    NewTask {
        manager: "manager",
        task,
        args,
        run_at_us: None,
        priority: 0,
        unique_key: None,
        max_attempts: 3,
        backoff_base_ms: 1000,
        backoff_cap_ms: 60_000,
        timeout_ms: None,
        schedule_id: None,
    }
}

fn query(tasks: &[&str]) -> ClaimQuery {
    ClaimQuery::new(TaskFilter {
        manager: "manager".into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
    })
}

fn claim(store: &mut Store, q: &ClaimQuery, limit: usize) -> Vec<Claimed> {
    store
        .write("claim", |tx| {
            tx.claim(q, "w1", limit, now_us(), now_us() + 30_000_000)
        })
        .expect("claim")
}

#[test]
fn open_creates_a_private_wal_database() {
    let dir = TempDir::new("open");
    let store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let mode = std::fs::metadata(dir.db())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let journal: String = store
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(journal, "wal");
    let sync: i64 = store
        .conn()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("synchronous");
    assert_eq!(sync, 1);
    drop(store);
    let durable = Store::open(
        dir.db(),
        StoreOptions {
            durable: true,
            ..StoreOptions::default()
        },
    )
    .expect("reopen");
    let sync: i64 = durable
        .conn()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("synchronous");
    assert_eq!(sync, 2);
}

#[test]
fn a_missing_directory_is_named() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nope").join("tasks.db");
    let err = Store::open(&path, StoreOptions::default()).expect_err("must fail");
    assert!(
        matches!(err, StoreError::MissingDirectory { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = TempDir::new("corrupt");
    let garbage = b"this is not a sqlite database, just some text that is long enough".repeat(100);
    std::fs::write(dir.db(), &garbage).expect("write");
    let err = Store::open(dir.db(), StoreOptions::default()).expect_err("must fail");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read(dir.db()).expect("read"), garbage);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(Store::open(dir.db(), StoreOptions::default()).expect("open"));
    let conn = Connection::open(dir.db()).expect("raw open");
    conn.execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(conn);
    let err = Store::open(dir.db(), StoreOptions::default()).expect_err("must fail");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn claim_takes_priority_then_age_and_only_known_tasks() {
    let dir = TempDir::new("claim");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let low = store.enqueue(&new_task("a", b"1")).expect("enqueue").0;
    let unknown = store
        .enqueue(&new_task("mystery", b"2"))
        .expect("enqueue")
        .0;
    let mut urgent = new_task("b", b"3");
    urgent.priority = 5;
    let high = store.enqueue(&urgent).expect("enqueue").0;
    let q = query(&["a", "b"]);
    let claimed = claim(&mut store, &q, 10);
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![high, low]);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    assert!(
        claim(&mut store, &q, 10).is_empty(),
        "nothing left to claim"
    );
    let left = store.snapshot(unknown).expect("read").expect("exists");
    assert_eq!(left.state, TaskState::Available);
}

#[test]
fn claim_uses_the_available_index() {
    let dir = TempDir::new("plan");
    let store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let q = query(&["a", "b"]);
    let mut stmt = store
        .conn()
        .prepare(&format!("EXPLAIN QUERY PLAN {}", q.batch_sql()))
        .expect("plan");
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params![0, "w", 0, "manager", 10, "a", "b"], |r| {
            r.get::<_, String>(3)
        })
        .expect("explain")
        .collect::<Result<_, _>>()
        .expect("rows");
    let plan = plan.join("\n");
    // One index seek per task name; only the few rows they return are sorted.
    assert_eq!(
        plan.matches("castor_tasks_available (manager=? AND task=?)")
            .count(),
        2,
        "{plan}"
    );
    assert!(
        !plan.contains("SCAN castor_tasks"),
        "the claim must not scan: {plan}"
    );
}

#[test]
fn finishing_is_guarded_by_attempt() {
    let dir = TempDir::new("guard");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").0;
    let q = query(&["a"]);
    let first = claim(&mut store, &q, 1).remove(0);
    // The first attempt is given back (as a rescuer would), and claimed again.
    assert!(
        store
            .write("release", |tx| tx
                .release_if_running(first.seq, first.attempt))
            .expect("release")
    );
    let second = claim(&mut store, &q, 1).remove(0);
    assert_eq!(
        second.attempt, 1,
        "a released claim does not count as an attempt"
    );
    // A stale attempt number cannot finish the row.
    let stale = store
        .write("finish", |tx| {
            tx.finish_if_running(
                second.seq,
                7,
                &Finish::Completed { result: b"no" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(!stale);
    let done = store
        .write("finish", |tx| {
            tx.finish_if_running(
                second.seq,
                second.attempt,
                &Finish::Completed { result: b"ok" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(done);
    let snap = store.snapshot(id).expect("read").expect("exists");
    assert_eq!(snap.state, TaskState::Completed);
    assert_eq!(snap.result.as_deref(), Some(&b"ok"[..]));
    assert!(snap.finalized_at.is_some());
    // Finishing twice does nothing.
    let again = store
        .write("finish", |tx| {
            tx.finish_if_running(
                second.seq,
                second.attempt,
                &Finish::Completed { result: b"2" },
                now_us(),
            )
        })
        .expect("finish");
    assert!(!again);
}

#[test]
fn failures_append_errors_and_retry_when_due() {
    let dir = TempDir::new("retry");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let id = store.enqueue(&new_task("a", b"x")).expect("enqueue").0;
    let q = query(&["a"]);
    let now = now_us();
    let c = claim(&mut store, &q, 1).remove(0);
    let error = AttemptError {
        attempt: 1,
        at: now,
        kind: "error".into(),
        error: "first".into(),
        worker: Some("w1".into()),
    };
    let retry_at = now + 60_000_000;
    store
        .write("fail", |tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Failed {
                    transition: Transition {
                        state: TaskState::Retryable,
                        scheduled_at: Some(retry_at),
                    },
                    error: error.clone(),
                },
                now,
            )
        })
        .expect("fail");
    let snap = store.snapshot(id).expect("read").expect("exists");
    assert_eq!(snap.state, TaskState::Retryable);
    assert_eq!(snap.errors, vec![error]);
    assert_eq!(snap.finalized_at, None);
    assert_eq!(store.next_due("manager").expect("due"), Some(retry_at));
    // Not yet due: nothing to stage or claim.
    assert_eq!(
        store
            .write("stage", |tx| tx.stage_due("manager", now))
            .expect("stage"),
        0
    );
    assert!(claim(&mut store, &q, 1).is_empty());
    // Due: staged and claimed as attempt 2.
    assert_eq!(
        store
            .write("stage", |tx| tx.stage_due("manager", retry_at))
            .expect("stage"),
        1
    );
    let c2 = claim(&mut store, &q, 1).remove(0);
    assert_eq!(c2.attempt, 2);
    assert_eq!(
        c2.backoff,
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60)
        }
    );
}

#[test]
fn unique_keys_return_the_unfinished_task() {
    let dir = TempDir::new("unique");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let mut t = new_task("a", b"x");
    t.unique_key = Some("report-42");
    let (first, existed) = store.enqueue(&t).expect("enqueue");
    assert!(!existed);
    let (second, existed) = store.enqueue(&t).expect("enqueue");
    assert!(existed);
    assert_eq!(first, second);
    // Once finished, the key is free again.
    let c = claim(&mut store, &query(&["a"]), 1).remove(0);
    store
        .write("finish", |tx| {
            tx.finish_if_running(
                c.seq,
                c.attempt,
                &Finish::Completed { result: b"" },
                now_us(),
            )
        })
        .expect("finish");
    let (third, existed) = store.enqueue(&t).expect("enqueue");
    assert!(!existed);
    assert_ne!(third, first);
}

fn schedule_at<'a>(
    cadence: &'a crate::schedule::Cadence,
    first_run_at: i64,
    missed: crate::schedule::Missed,
) -> NewSchedule<'a> {
    NewSchedule {
        manager: "manager",
        task: "a",
        name: None,
        args: b"",
        cadence,
        times: None,
        until: None,
        first_run_at,
        missed,
        priority: 0,
        max_attempts: 1,
        backoff_base_ms: 1000,
        backoff_cap_ms: 1000,
        timeout_ms: None,
    }
}

#[test]
fn missed_ticks_are_skipped_or_run_once() {
    use crate::schedule::{Cadence, Missed};
    let dir = TempDir::new("missed");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let every = Cadence::Every(Duration::from_secs(10));
    let now = now_us();
    // Ticks at -25 s, -15 s and -5 s: all missed.
    let ten_ago = now - 25_000_000;
    let (skip, once, on_time) = store
        .write("create", |tx| {
            Ok((
                tx.create_schedule(&schedule_at(&every, ten_ago, Missed::Skip), now)?,
                tx.create_schedule(&schedule_at(&every, ten_ago, Missed::RunOnce), now)?,
                tx.create_schedule(&schedule_at(&every, now - 100_000, Missed::Skip), now)?,
            ))
        })
        .expect("create");
    let created = store
        .write("tick", |tx| {
            tx.run_due_schedules("manager", r#"["a"]"#, "[]", now, 10)
        })
        .expect("tick");
    assert_eq!(
        created.len(),
        2,
        "one catch-up run, one on-time run, no skipped run"
    );
    assert!(store.schedule_runs(skip).expect("runs").is_empty());
    assert_eq!(store.schedule_runs(once).expect("runs").len(), 1);
    assert_eq!(store.schedule_runs(on_time).expect("runs").len(), 1);
    for id in [skip, once, on_time] {
        let info = store.schedule(id).expect("read").expect("exists");
        let next = info.next_run_at.expect("not finished");
        assert!(
            next > now && next <= now + 10_000_000,
            "the next tick is ahead"
        );
    }
    // Nothing is due any more: a second pass (another worker) creates nothing.
    let again = store
        .write("tick", |tx| {
            tx.run_due_schedules("manager", r#"["a"]"#, "[]", now, 10)
        })
        .expect("tick");
    assert!(again.is_empty());
    // A worker that does not know the task leaves the schedule alone.
    let later = now + 5_000_000;
    let other = store
        .write("tick", |tx| {
            tx.run_due_schedules("manager", r#"["b"]"#, "[]", later, 10)
        })
        .expect("tick");
    assert!(other.is_empty());
}
