use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::model::{NewTask, TaskFilter};
use crate::{OpenCheck, OpenOptions, Store};

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
        args_fingerprint: None,
        concurrency_key: None,
    }
}

/// The driver itself (its connection is what these tests look at), migrated.
fn open(path: &Path, options: OpenOptions) -> SqliteDriver {
    let mut driver = SqliteDriver::open(path, &options).expect("open");
    crate::migrate::migrate(&mut driver, crate::now_us()).expect("migrate");
    driver
}

#[test]
fn open_creates_a_private_wal_database() {
    let dir = TempDir::new("open");
    let store = open(&dir.db(), OpenOptions::app());
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
    let durable = open(
        &dir.db(),
        OpenOptions {
            durable: true,
            ..OpenOptions::app()
        },
    );
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
    let err = Store::open(&path, OpenOptions::app()).expect_err("must fail");
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
        let err = Store::open(&path, OpenOptions::app()).expect_err("must fail");
        assert_eq!(err.to_string(), expected);
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
    }
}

#[test]
fn no_store_error_repeats_its_cause() {
    let dir = TempDir::new("chain");
    let store = open(&dir.db(), OpenOptions::app());
    let query = store
        .conn()
        .query_row("SELECT * FROM no_such_table", [], |_| Ok(()))
        .map(|()| unreachable!())
        .unwrap_or_else(|e| classify(&Database::Sqlite(dir.db()), "read a task", e));
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
    let mut store = Store::open(dir.db(), OpenOptions::app()).expect("open");
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
    let err = Store::open(&path, OpenOptions::app()).expect_err("damaged");
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
    let options = OpenOptions {
        check: OpenCheck::UpTo(before.len() as u64 - 1),
        ..OpenOptions::app()
    };
    drop(SqliteDriver::open(&path, &options).expect("not checked"));
    let unchecked = OpenOptions {
        check: OpenCheck::Skip,
        ..OpenOptions::app()
    };
    let store = SqliteDriver::open(&path, &unchecked).expect("not checked");
    assert!(matches!(
        store.quick_check_within(Duration::from_secs(60)),
        Err(StoreError::Corrupt { .. })
    ));
    drop(store);
    // integrity_check lists the damage through a read-only connection.
    let problems = SqliteDriver::open(&path, &OpenOptions::inspect())
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
    let store = open(&path, OpenOptions::app());
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
    let mut store = Store::open(dir.db(), OpenOptions::app()).expect("open");
    // Checking 100,000 rows takes a hundred times the budget or more.
    let args = vec![7u8; 32];
    let tasks: Vec<NewTask<'_>> = (0..100_000).map(|_| new_task("add", &args)).collect();
    store.enqueue_many(&tasks).expect("enqueue");
    let started = std::time::Instant::now();
    assert_eq!(
        store
            .quick_check(Some(Duration::from_millis(1)))
            .expect("not a verdict"),
        CheckReach::OutOfTime
    );
    assert!(started.elapsed() < Duration::from_secs(5), "stopped early");
    let latest = MIGRATIONS.last().map(|m| m.version).expect("migrations");
    assert_eq!(store.schema_version().expect("reads"), latest);
    assert_eq!(store.unfinished("manager").expect("reads"), 100_000);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = TempDir::new("corrupt");
    let garbage = b"this is not a sqlite database, just some text that is long enough".repeat(100);
    std::fs::write(dir.db(), &garbage).expect("write");
    let err = Store::open(dir.db(), OpenOptions::app()).expect_err("must fail");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read(dir.db()).expect("read"), garbage);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(Store::open(dir.db(), OpenOptions::app()).expect("open"));
    let conn = Connection::open(dir.db()).expect("raw open");
    conn.execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(conn);
    let err = Store::open(dir.db(), OpenOptions::app()).expect_err("must fail");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn claim_uses_the_available_index() {
    let dir = TempDir::new("plan");
    let store = open(&dir.db(), OpenOptions::app());
    let sql = rows::ClaimSql::new(2);
    let mut stmt = store
        .conn()
        .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.batch))
        .expect("plan");
    let plan: Vec<String> = stmt
        .query_map(
            rusqlite::params![0, "w", 0, "manager", 10, "a", "", "a", "fp"],
            |r| r.get::<_, String>(3),
        )
        .expect("explain")
        .collect::<Result<_, _>>()
        .expect("rows");
    let plan = plan.join("\n");
    // One index seek per (task name, argument fingerprint) key; only the few rows they
    // return are sorted.
    assert_eq!(
        plan.matches("castor_tasks_available (manager=? AND task=? AND args_fingerprint=?)")
            .count(),
        2,
        "{plan}"
    );
    assert!(
        !plan.contains("SCAN castor_tasks"),
        "the claim must not scan: {plan}"
    );
}

/// Without the query planner stability guarantee, SQLite prepares a statement again at
/// every run when its plan looked at a bound parameter's value (`x = ? ORDER BY ..`, a
/// `LIMIT ?`, `x = ?` against a partial index's `WHERE x = ''`): the claim spent 90% of
/// its time so. The claim's statements, with and without the unknown-fingerprint arms, by
/// row and in a batch, are prepared once.
#[test]
fn claims_are_prepared_once() {
    let dir = TempDir::new("reprepare");
    let mut driver = open(&dir.db(), OpenOptions::app());
    let filter = TaskFilter {
        manager: "manager".into(),
        tasks: vec!["a".into()],
        args_fingerprints: vec![Some("fp".into())],
    };
    let round = |driver: &mut SqliteDriver, unsigned: bool, limit: usize| {
        let mut tx = SqliteTx::begin(driver).expect("begin");
        for _ in 0..limit {
            let task = NewTask {
                args_fingerprint: Some("fp"),
                ..new_task("a", b"x")
            };
            tx.enqueue(&task, 1).expect("enqueue");
        }
        if unsigned {
            tx.enqueue(&new_task("a", b"x"), 1).expect("enqueue");
        }
        let claimed = tx.claim(&filter, "w", limit + 1, 2, 3).expect("claim");
        assert_eq!(claimed.len(), limit + usize::from(unsigned));
        Tx::commit(Box::new(tx)).expect("commit");
    };
    for _ in 0..3 {
        for unsigned in [false, true] {
            for limit in [1, 40] {
                round(&mut driver, unsigned, limit);
            }
        }
    }
    for sql in [
        rows::ClaimSql::new(1).select,
        rows::ClaimSql::new(1).batch,
        rows::ClaimSql::new(2).select,
        rows::ClaimSql::new(2).batch,
        rows::CLAIM_ONE_SQL.to_owned(),
        rows::UNSIGNED_SQL.to_owned(),
    ] {
        let stmt = driver.conn().prepare_cached(&sql).expect("cached");
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "prepared again: {sql}"
        );
    }
}

/// Commits one task on its own connection (as another worker or app would).
fn commit_elsewhere(path: &Path) {
    let mut store = Store::open(path, OpenOptions::app()).expect("open");
    store
        .write(|tx| tx.enqueue(&new_task("a", b"x"), crate::now_us()))
        .expect("enqueue");
}

/// The portable change source (`CASTOR_NOTIFY=poll`, and every platform without
/// inotify) reports other connections' commits, times out when there are none, and stops.
#[test]
fn the_poll_source_reports_commits_and_nothing_else() {
    use crate::notify::{ChangeSource, Wake};
    let dir = TempDir::new("poll");
    drop(open(&dir.db(), OpenOptions::app()));
    let (mut source, stop) = watch::PollSource::new(&dir.db());
    let quiet = Duration::from_millis(30);
    assert_eq!(source.wait(quiet), Wake::Timeout, "nothing committed yet");
    commit_elsewhere(&dir.db());
    assert_eq!(source.wait(Duration::from_secs(10)), Wake::Changed);
    assert_eq!(
        source.wait(quiet),
        Wake::Timeout,
        "each commit is reported once"
    );
    // A commit while it waits ends the wait, long before the deadline.
    let started = std::time::Instant::now();
    let changed = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            commit_elsewhere(&dir.db());
        });
        source.wait(Duration::from_secs(60))
    });
    assert_eq!(changed, Wake::Changed);
    assert!(started.elapsed() < Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(source.wait(Duration::from_secs(60)), Wake::Stop);
}

/// A notifier forced onto the polling source wakes a waiter on another connection's
/// commit: five commits, each seen well within the 1 s fallback tick that would
/// otherwise be the only wake-up.
#[test]
fn a_notifier_on_the_poll_source_wakes_waiters_on_commits() {
    let dir = TempDir::new("poll-notifier");
    drop(open(&dir.db(), OpenOptions::app()));
    let database = crate::Database::from(dir.db());
    let notifier = watch::start(&database, &dir.db(), true).expect("notifier");
    assert!(
        notifier.describe().contains("PRAGMA data_version"),
        "{}",
        notifier.describe()
    );
    // Let the source read its first version.
    std::thread::sleep(Duration::from_millis(50));
    let mut slow = Vec::new();
    for _ in 0..5 {
        let since = notifier.generation();
        let committed = std::time::Instant::now();
        commit_elsewhere(&dir.db());
        notifier.wait_past(since, committed + Duration::from_secs(10));
        let seen = committed.elapsed();
        if seen > Duration::from_millis(400) {
            slow.push(seen);
        }
    }
    // One late wake-up on a busy machine is noise; a source that never reports is late
    // at nearly every commit.
    assert!(slow.len() <= 1, "commits seen late: {slow:?}");
}

/// The inotify source reports commits (writes to the `-wal` file), follows the file when
/// it is deleted and created again, and stops when told.
#[cfg(target_os = "linux")]
#[test]
fn the_inotify_source_reports_commits_follows_the_wal_and_stops() {
    use crate::notify::Wake;
    let dir = TempDir::new("inotify");
    let held = open(&dir.db(), OpenOptions::app());
    let wal = space::wal_path(&dir.db());
    assert!(wal.exists(), "an open connection keeps the -wal file");
    let (mut source, stop) = watch::inotify::Source::new(&wal).expect("inotify");
    let quiet = Duration::from_millis(30);
    assert_eq!(source.wait(quiet), Wake::Timeout, "nothing written yet");
    commit_elsewhere(&dir.db());
    assert_eq!(source.wait(Duration::from_secs(10)), Wake::Changed);
    while source.wait(quiet) == Wake::Changed {}
    // The last connection closes: the -wal file goes, and a new one is watched.
    drop(held);
    assert!(!wal.exists(), "the last connection removes the -wal file");
    assert_eq!(source.wait(Duration::from_secs(10)), Wake::Changed);
    while source.wait(quiet) == Wake::Changed {}
    let _held = open(&dir.db(), OpenOptions::app());
    assert_eq!(source.wait(quiet), Wake::Timeout, "watching the new file");
    commit_elsewhere(&dir.db());
    assert_eq!(source.wait(Duration::from_secs(10)), Wake::Changed);
    stop.signal();
    assert_eq!(source.wait(Duration::from_secs(60)), Wake::Stop);
}

/// A fresh, migrated database for one conformance case, in a directory of its own that
/// is removed with it.
struct Conformance {
    dir: TempDir,
}

impl crate::conformance::TestDatabase for Conformance {
    fn connect(&self) -> Store {
        Store::open(self.dir.db(), OpenOptions::app()).expect("open")
    }
}

fn fresh() -> Conformance {
    let database = Conformance {
        dir: TempDir::new("conformance"),
    };
    drop(crate::conformance::TestDatabase::connect(&database));
    database
}

mod conformance {
    crate::conformance_tests!(super::fresh);
}

/// A SQLite file has no clock of its own: every process on it uses its host's, so there
/// is nothing to compare a worker's clock with.
#[test]
fn a_sqlite_file_has_no_clock_to_compare_with() {
    let dir = TempDir::new("clock");
    let mut store = Store::from_driver(Box::new(open(&dir.db(), OpenOptions::worker())));
    store
        .write(|tx| tx.register_worker(&crate::conformance::worker_row("w", crate::now_us())))
        .expect("register");
    assert_eq!(store.clock_offset().expect("read"), None);
}
