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

/// Every error in `err`'s chain says something its parent did not: printed with anyhow's
/// `{:#}` (each cause after the last), no reason appears twice.
fn assert_said_once(err: &dyn std::error::Error) {
    let mut parent = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let text = next.to_string();
        assert!(
            !parent.contains(&text),
            "{parent:?} already says its cause {text:?}"
        );
        parent = text;
        cause = next.source();
    }
}

#[test]
fn a_path_that_cannot_be_a_database_says_why_once() {
    use std::os::unix::net::UnixListener;
    let dir = TempDir::new("not-a-file");
    let file = dir.0.join("plain");
    std::fs::write(&file, "x").expect("write");
    let fifo = dir.0.join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads a live NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let socket = dir.0.join("socket");
    let _listener = UnixListener::bind(&socket).expect("bind");
    let d = dir.0.display();
    let cases = [
        (
            dir.0.clone(),
            format!(
                "cannot open database {d}: it is a directory, not a database file; give the path \
                 of a file, e.g. {d}/tasks.db"
            ),
        ),
        (
            dir.0.join("missing").join("tasks.db"),
            format!(
                "cannot open database {d}/missing/tasks.db: directory {d}/missing does not exist; \
                 create it first"
            ),
        ),
        (
            file.join("tasks.db"),
            format!("cannot open database {d}/plain/tasks.db: {d}/plain is not a directory"),
        ),
        (
            fifo.clone(),
            format!(
                "cannot open database {d}/fifo: it is a FIFO (named pipe), not a database file"
            ),
        ),
        (
            socket.clone(),
            format!("cannot open database {d}/socket: it is a socket, not a database file"),
        ),
        (
            PathBuf::from("/dev/null"),
            "cannot open database /dev/null: it is a device, not a database file".to_owned(),
        ),
    ];
    for (path, expected) in cases {
        let err = Store::open(&path, StoreOptions::default()).expect_err("must fail");
        assert_eq!(err.to_string(), expected);
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    }
}

#[test]
fn no_store_error_repeats_its_cause() {
    let dir = TempDir::new("chain");
    let store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let query = store
        .conn()
        .query_row("SELECT * FROM no_such_table", [], |_| Ok(()))
        .map(|()| unreachable!())
        .unwrap_or_else(|e| classify(&dir.db(), "read a task", e));
    assert_eq!(
        query.to_string(),
        format!(
            "database {}: read a task failed: no such table: no_such_table",
            dir.db().display()
        )
    );
    let open = StoreError::Open {
        path: dir.db(),
        error: std::io::Error::from_raw_os_error(libc::EACCES),
    };
    assert_eq!(
        open.to_string(),
        format!(
            "cannot open database {}: permission denied (this user needs read and write access \
             to the file and its directory)",
            dir.db().display()
        )
    );
    let cant_open =
        rusqlite::Connection::open_with_flags(&dir.0, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect_err("a directory");
    assert_eq!(
        sqlite_reason(&cant_open, &dir.0),
        "unable to open database file",
        "the path rusqlite appends is dropped"
    );
    for err in [query, open] {
        assert_said_once(&err);
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    }
}

/// Overwrites the middle half of `path` with bytes that are not a b-tree page.
fn damage(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).expect("stat").len();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.seek(SeekFrom::Start(len / 4)).expect("seek");
    let noise: Vec<u8> = (0..len / 2)
        .map(|i| (i * 7919 % 251) as u8 | 0x80)
        .collect();
    file.write_all(&noise).expect("write");
}

/// A database of `n` queued tasks, its WAL folded into the file.
fn filled(dir: &TempDir, n: usize) -> PathBuf {
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    let args = vec![0u8; 32];
    let tasks: Vec<NewTask<'_>> = (0..n).map(|_| new_task("add", &args)).collect();
    store.enqueue_many(&tasks).expect("enqueue");
    drop(store);
    dir.db()
}

#[test]
fn a_damaged_file_is_refused_at_open_when_it_is_small_enough_to_check() {
    let dir = TempDir::new("damaged");
    let path = filled(&dir, 3000);
    damage(&path);
    let before = std::fs::read(&path).expect("read");
    let err = Store::open(&path, StoreOptions::default()).expect_err("damaged");
    let StoreError::Corrupt {
        operation, detail, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*operation, "run PRAGMA quick_check");
    assert!(detail.starts_with("Tree "), "{detail}");
    assert!(detail.contains("more problem(s)"), "{detail}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing written"
    );
    // Past the size bound the app does not pay for the check; the worker's full one finds it.
    let options = StoreOptions {
        check: OpenCheck::UpTo(before.len() as u64 - 1),
        ..StoreOptions::default()
    };
    drop(Store::open(&path, options).expect("not checked"));
    let unchecked = StoreOptions {
        check: OpenCheck::Skip,
        ..StoreOptions::default()
    };
    let store = Store::open(&path, unchecked).expect("not checked");
    assert!(matches!(
        store.quick_check_within(Duration::from_secs(60)),
        Err(StoreError::Corrupt { .. })
    ));
    drop(store);
    // integrity_check lists the damage through a read-only connection.
    let problems = Store::open_read_only(&path)
        .expect("read-only")
        .integrity_check()
        .expect("runs");
    assert!(problems.len() > 1, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("(castor_tasks)")),
        "b-trees are named: {problems:?}"
    );
}

#[test]
fn a_sound_file_passes_both_checks() {
    let dir = TempDir::new("sound");
    let path = filled(&dir, 3000);
    let store = Store::open(&path, StoreOptions::default()).expect("sound");
    assert_eq!(
        store
            .quick_check_within(Duration::from_secs(60))
            .expect("sound"),
        CheckReach::Whole
    );
    assert_eq!(store.integrity_check().expect("runs"), Vec::<String>::new());
    assert_eq!(
        store.missing_schema_objects().expect("reads"),
        Vec::<String>::new()
    );
    store
        .conn()
        .execute_batch("DROP INDEX castor_tasks_due")
        .expect("drop");
    assert_eq!(
        store.missing_schema_objects().expect("reads"),
        vec!["castor_tasks_due".to_owned()]
    );
    assert!(store.size().expect("size") > 64 * 1024);
}

#[test]
fn a_check_that_runs_out_of_time_says_so_and_leaves_the_connection_usable() {
    let dir = TempDir::new("out-of-time");
    let mut store = Store::open(dir.db(), StoreOptions::default()).expect("open");
    // Checking 100,000 rows takes a hundred times the budget or more.
    let args = vec![7u8; 32];
    let tasks: Vec<NewTask<'_>> = (0..100_000).map(|_| new_task("add", &args)).collect();
    store.enqueue_many(&tasks).expect("enqueue");
    let started = std::time::Instant::now();
    assert_eq!(
        store
            .quick_check_within(Duration::from_millis(1))
            .expect("not a verdict"),
        CheckReach::OutOfTime
    );
    assert!(started.elapsed() < Duration::from_secs(5), "stopped early");
    assert_eq!(store.schema_version().expect("reads"), SCHEMA_VERSION);
    assert_eq!(store.unfinished("manager").expect("reads"), 100_000);
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
