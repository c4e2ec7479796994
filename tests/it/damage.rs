//! A damaged database: the app and the worker refuse it before writing or running anything,
//! damage met mid-run stops the worker at once with one true message, and `castor check`
//! tells a sound file from a damaged one without writing to either.

use std::path::Path;

use castor_abi::OpenError;
use castor_fixture_tasks as fx;
use castor_store::{StoreError, TaskState};

use crate::support::{TestDir, Worker, run_castor, tasks_target};

/// Overwrites `len` bytes of `path` at `offset` with seeded pseudo-random bytes.
fn overwrite(path: &Path, offset: u64, len: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the database");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&noise).expect("write");
}

/// The database: 3,000 queued tasks, everything closed (the WAL folded into the
/// file), then the middle half of the file overwritten with random bytes.
fn damaged_backlog(dir: &TestDir) {
    {
        let client = dir.client();
        fx::add::delay_many(&client, (0..3_000).map(|i| (i, i))).expect("dispatch");
    }
    let len = std::fs::metadata(dir.db()).expect("stat").len();
    assert!(
        len > 256 * 1024,
        "3,000 tasks take some pages ({len} bytes)"
    );
    overwrite(&dir.db(), len / 4, len / 2);
}

/// The database and its WAL, which must not change.
fn contents(db: &Path) -> (Vec<u8>, u64) {
    let wal = Path::new(&format!("{}-wal", db.display())).to_path_buf();
    (
        std::fs::read(db).expect("read the database"),
        std::fs::metadata(wal).map_or(0, |m| m.len()),
    )
}

#[test]
fn a_damaged_database_is_refused_before_anything_is_written_or_run() {
    let dir = TestDir::new();
    damaged_backlog(&dir);
    let db = dir.db().display().to_string();
    let before = contents(&dir.db());
    // The app: `open` checks a file this small in full.
    let err = fx::manager()
        .with_database(dir.db())
        .open()
        .expect_err("the app refuses the file");
    assert!(
        matches!(err, OpenError::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "database {db} is damaged or not a SQLite database: "
        )),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "(found while castor tried to run PRAGMA quick_check); check it with `castor check \
             --db {db}` and recover it as README's \"Recovering a damaged database\" says"
        )),
        "{text}"
    );
    assert_eq!(contents(&dir.db()), before, "the app wrote nothing");
    // The worker: refused at start, in one line, before it runs or writes anything.
    let out = run_castor(&dir, &[&tasks_target("manager"), "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "", "the worker did not start");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "castor: error: database {db} is damaged or not a SQLite database: "
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("(found while castor tried to run PRAGMA quick_check)"),
        "{}",
        out.stderr
    );
    assert_eq!(contents(&dir.db()), before, "the worker wrote nothing");
}

#[test]
fn damage_met_while_running_stops_the_worker_at_once_with_one_true_message() {
    let dir = TestDir::new();
    drop(dir.client());
    let db = dir.db().display().to_string();
    let worker = Worker::start(&dir, &tasks_target("manager"), &[]);
    // Opened, and checked, while the file is sound.
    let client = dir.client();
    // The index of running tasks: nothing has run, so its root page is in the file (not
    // the WAL), and only a claim (or a lease renewal) reads it; an app's dispatch does not.
    let (root, page_size): (i64, i64) = {
        let conn = rusqlite::Connection::open_with_flags(
            dir.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open read-only");
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'castor_tasks_running'",
                [],
                |row| row.get(0),
            )
            .expect("root page");
        let size = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .expect("page size");
        (root, size)
    };
    let (root, page_size) = (root as u64, page_size as u64);
    overwrite(&dir.db(), (root - 1) * page_size, page_size);
    let handle = fx::add::delay(&client, 1, 2).expect("the dispatch misses the damage");
    let out = worker.wait();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr,
        format!(
            "castor: error: database {db} is damaged or not a SQLite database: database disk \
             image is malformed (found while castor tried to claim tasks); \
             check it with `castor check --db {db}` and recover it as README's \"Recovering a \
             damaged database\" says; the worker stopped at once, with no task of its own left \
             running\n"
        )
    );
    assert!(!out.stdout.contains("retrying"), "{}", out.stdout);
    // The claim was rolled back with the rest of its transaction.
    assert_eq!(handle.status().expect("status"), TaskState::Available);
}

#[test]
fn castor_check_describes_a_sound_database_without_writing_to_it() {
    let dir = TestDir::new();
    // The library's manager's database, found from the target (relative to the directory
    // castor runs in).
    let db = dir.path().join("fixture.db");
    {
        let client = fx::manager().with_database(&db).open().expect("open");
        fx::add::delay_many(&client, (0..3).map(|i| (i, i))).expect("dispatch");
        let later = castor_abi::DelayOptions::new().after(std::time::Duration::from_secs(3600));
        fx::add::delay_with(&client, &later, 1, 1).expect("dispatch");
    }
    let before = contents(&db);
    let out = run_castor(&dir, &["check", &tasks_target("manager")]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("database   fixture.db ("),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("integrity  ok (PRAGMA integrity_check, "),
        "{}",
        lines[1]
    );
    let newest = castor_store::sqlite::MIGRATIONS
        .last()
        .expect("migrations")
        .version;
    assert_eq!(
        lines[2],
        format!("schema     version {newest} (this castor: {newest})")
    );
    assert_eq!(
        lines[3],
        "tasks      0 waiting, 1 scheduled, 3 available, 0 running, 0 retryable, 0 completed, \
         0 discarded, 0 cancelled"
    );
    let out = run_castor(&dir, &["check", "--db", "fixture.db", "--json"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["integrity"], serde_json::json!([]));
    assert_eq!(json["problems"], serde_json::json!([]));
    assert_eq!(json["schema_version"], newest);
    assert_eq!(json["tasks"]["available"], 3);
    assert_eq!(json["tasks"]["scheduled"], 1);
    assert_eq!(contents(&db), before, "checking wrote nothing");
}

#[test]
fn castor_check_lists_the_damage_and_fails() {
    let dir = TestDir::new();
    damaged_backlog(&dir);
    let db = dir.db().display().to_string();
    let before = contents(&dir.db());
    let out = run_castor(&dir, &["check", "--db", &db]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("\nintegrity  ") && out.stdout.contains(" problem(s) (PRAGMA"),
        "{}",
        out.stdout
    );
    // Named with the table's root page (migration 8 rebuilt the table: not page 2).
    assert!(
        out.stdout
            .lines()
            .any(|line| line.starts_with("  Tree ") && line.contains(" (castor_tasks) page ")),
        "the b-trees are named: {}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("\ntasks      unreadable: database disk image is malformed\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.starts_with(&format!(
            "castor: error: database {db} is not sound: PRAGMA integrity_check found "
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(contents(&dir.db()), before, "checking wrote nothing");
    // A file that is not a database at all.
    let notes = dir.path().join("notes.db");
    std::fs::write(&notes, "name,email\n".repeat(500)).expect("write");
    let out = run_castor(&dir, &["check", "--db", "notes.db"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr,
        "castor: error: database notes.db is not sound: PRAGMA integrity_check cannot run: \
         file is not a database\n"
    );
}
