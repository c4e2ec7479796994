//! The PostgreSQL scenarios: the same library and `castor` worker on a PostgreSQL server,
//! read against that server's own ceiling measured in the same run with the plain
//! `postgres` client (an unbatched insert + `FOR UPDATE SKIP LOCKED` claim + complete
//! cycle, single-row commits, 100-row batches): drain with 1, 2 and 4 workers, end to
//! end, round trip, and an idle worker's CPU and transactions per second. The ceilings,
//! drain with one worker, end to end and round trip run again with
//! `synchronous_commit = off` on the database ("postgres async"), the setting closest to
//! SQLite's default durability.
//!
//! The server is `CASTOR_BENCH_POSTGRES` if set (a URL whose user may create databases),
//! else a throwaway cluster this module starts under /tmp (as the `postgres` user when
//! run as root, which PostgreSQL refuses) on a Unix socket, with PostgreSQL's default
//! durability (`fsync` and `synchronous_commit` on: honest figures), stopped at the end.
//! Each run gets a database of its own, dropped after it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use castor_abi::Client;
use castor_bench::{bench, noop};
use postgres::{Client as PgClient, NoTls};

use crate::scenarios::{DRAIN_TIMEOUT, err, wait_drained};
use crate::table::{Report, percentile};
use crate::worker::{Worker, tree_cpu_time};
use crate::{Options, Row, count, measure, measure_group};

/// The environment variable naming a server to use instead of a throwaway cluster.
const SERVER_ENV: &str = "CASTOR_BENCH_POSTGRES";

/// Every row this module may produce (for `--only`, before a server is started).
const ROWS: &[(&str, &str)] = &[
    ("pg_raw_cycle", "postgres raw: enqueue+claim+complete"),
    ("pg_drain_1", "postgres: drain, 1 worker"),
    ("pg_drain_2", "postgres: drain, 2 workers"),
    ("pg_drain_4", "postgres: drain, 4 workers"),
    ("pg_e2e", "postgres: end to end"),
    ("pg_roundtrip_p50", "postgres: round trip"),
    ("pg_async_drain_1", "postgres async: drain"),
    ("pg_idle_cpu", "postgres: idle worker"),
];

/// How commits wait: for the WAL's fsync (the server's default), or not
/// (`synchronous_commit = off`: a server crash may lose the last commits, never
/// consistency; the closest to SQLite's default `synchronous=NORMAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Durable,
    Async,
}

impl Commit {
    /// The prefix of this mode's row ids and names.
    fn prefix(self) -> (&'static str, &'static str) {
        match self {
            Commit::Durable => ("pg_", "postgres"),
            Commit::Async => ("pg_async_", "postgres async"),
        }
    }
}

/// The server's own figures, measured in this run (medians).
#[derive(Debug, Clone, Copy, Default)]
struct Ceilings {
    /// Tasks per second through an unbatched insert, claim and complete (three
    /// transactions per task).
    cycle: f64,
    /// Median latency of one single-row commit, in milliseconds.
    commit_ms: f64,
}

/// Whether `--only` selects any PostgreSQL scenario.
pub fn wanted(options: &Options) -> bool {
    ROWS.iter().any(|(id, name)| options.wants(id, name))
}

/// Every PostgreSQL scenario, on one server.
pub fn run(options: &Options, report: &mut Report) -> Result<(), String> {
    if !wanted(options) {
        return Ok(());
    }
    let server = Server::start()?;
    let mut admin = server.admin()?;
    let settings = admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit')",
            &[],
        )
        .map_err(err)?;
    println!(
        "postgres: PostgreSQL {} ({}), fsync {}, synchronous_commit {}",
        settings.get::<_, String>(0),
        server.origin,
        settings.get::<_, String>(1),
        settings.get::<_, String>(2)
    );
    for commit in [Commit::Durable, Commit::Async] {
        let ceilings = measure_ceilings(options, report, &server, commit)?;
        drains(options, report, &server, &ceilings, commit)?;
        end_to_end(options, report, &server, &ceilings, commit)?;
        round_trip(options, report, &server, &ceilings, commit)?;
    }
    idle(options, report, &server)
}

/// The server: a throwaway cluster (stopped and removed on drop), or the one
/// [`SERVER_ENV`] names.
struct Server {
    /// A URL of the server's `postgres` database (or the given one).
    url: String,
    /// Where the figures come from, for the printed line.
    origin: String,
    /// The throwaway cluster's directory and `pg_ctl` command, if this module started it.
    cluster: Option<(PathBuf, Vec<String>)>,
}

impl Server {
    fn start() -> Result<Server, String> {
        if let Ok(url) = std::env::var(SERVER_ENV)
            && !url.is_empty()
        {
            return Ok(Server {
                url,
                origin: format!("the server {SERVER_ENV} names"),
                cluster: None,
            });
        }
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max_by_key(|bin| {
                bin.parent()
                    .and_then(Path::file_name)
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .ok_or_else(|| {
                format!(
                    "PostgreSQL's initdb is missing (/usr/lib/postgresql/*/bin); install \
                     Debian's postgresql package, or set {SERVER_ENV} to a server's URL"
                )
            })?;
        // Under /tmp: a Unix socket's path must stay under 107 bytes.
        let dir = PathBuf::from(format!("/tmp/castor-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let as_user: Vec<String> = if root {
            set_up(Command::new("chown").arg("postgres:").arg(&dir))?;
            vec![
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]
        } else {
            Vec::new()
        };
        let data = dir.join("data");
        let command = |program: &Path| -> Command {
            let mut parts = as_user.iter();
            let mut command = match parts.next() {
                Some(first) => {
                    let mut c = Command::new(first);
                    c.args(parts).arg(program);
                    c
                }
                None => Command::new(program),
            };
            command.current_dir("/");
            command
        };
        set_up(command(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]))?;
        let mut pg_ctl: Vec<String> = as_user.clone();
        pg_ctl.push(bin.join("pg_ctl").to_string_lossy().into_owned());
        pg_ctl.push("-D".into());
        pg_ctl.push(data.to_string_lossy().into_owned());
        let server = Server {
            url: format!("postgres:///postgres?host={}&user=postgres", dir.display()),
            origin: format!(
                "a throwaway local cluster, Unix socket, {}",
                bin.parent()
                    .map_or_else(String::new, |v| v.display().to_string())
            ),
            cluster: Some((dir.clone(), pg_ctl)),
        };
        // fsync and synchronous_commit stay on (the defaults).
        set_up(
            command(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .arg("-w")
                .arg("-o")
                .arg(format!(
                    "-k {} -c listen_addresses= -c max_connections=100",
                    dir.display()
                ))
                .arg("start"),
        )?;
        Ok(server)
    }

    fn admin(&self) -> Result<PgClient, String> {
        PgClient::connect(&self.url, NoTls)
            .map_err(|e| format!("cannot connect to the server: {}", pg(&e)))
    }

    /// A fresh database for one run, dropped on drop; with `synchronous_commit = off`
    /// for every connection to it in [`Commit::Async`].
    fn database(&self, name: &str, run: usize, commit: Commit) -> Result<Db, String> {
        let name = format!("castor_bench_{name}_{run}");
        let mut admin = self.admin()?;
        // One statement each: CREATE DATABASE refuses to run in a multi-statement batch.
        let mut statements = vec![
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ];
        if commit == Commit::Async {
            statements.push(format!(
                "ALTER DATABASE {name} SET synchronous_commit = off"
            ));
        }
        for statement in statements {
            admin
                .batch_execute(&statement)
                .map_err(|e| format!("cannot create the database {name}: {}", pg(&e)))?;
        }
        Ok(Db {
            url: with_dbname(&self.url, &name),
            name,
            admin: self.url.clone(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some((dir, pg_ctl)) = self.cluster.take() {
            let _ = Command::new(&pg_ctl[0])
                .args(&pg_ctl[1..])
                .args(["-m", "fast", "stop"])
                .current_dir("/")
                .output();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A client error with the server's message (the error's own text is often just
/// "db error").
fn pg(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Runs a set-up command, failing with its output.
fn set_up(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `url` with its database name replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// One run's database.
struct Db {
    url: String,
    name: String,
    /// The server's URL, to drop it.
    admin: String,
}

impl Db {
    fn client(&self) -> Result<Client, String> {
        bench()
            .with_database(self.url.as_str())
            .open()
            .map_err(|e| format!("cannot open {}: {e}", self.name))
    }

    /// Committed and rolled-back transactions on this database so far, from
    /// `pg_stat_database` (read from the server's `postgres` database, so the reading
    /// itself is not counted; backends report with a delay of up to a few seconds).
    fn transactions(&self) -> Result<i64, String> {
        let mut admin = PgClient::connect(&self.admin, NoTls).map_err(|e| pg(&e))?;
        admin
            .query_one(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                &[&self.name],
            )
            .map(|row| row.get(0))
            .map_err(|e| pg(&e))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgClient::connect(&self.admin, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A fresh raw queue table: what plain SQL does with no queue logic at all.
fn raw_table(db: &Db) -> Result<PgClient, String> {
    let mut client = PgClient::connect(&db.url, NoTls).map_err(|e| pg(&e))?;
    client
        .batch_execute(
            "CREATE TABLE jobs (id bigserial PRIMARY KEY, state int NOT NULL, payload bytea, \
             result bytea); CREATE INDEX jobs_ready ON jobs (id) WHERE state = 0;",
        )
        .map_err(|e| pg(&e))?;
    Ok(client)
}

/// Single-row INSERT transactions: the rate, and the median latency in milliseconds.
fn raw_commits(db: &Db, n: usize) -> Result<(f64, f64), String> {
    let mut client = raw_table(db)?;
    let insert = client
        .prepare("INSERT INTO jobs (state, payload) VALUES (0, '\\x00')")
        .map_err(|e| pg(&e))?;
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.execute(&insert, &[]).map_err(|e| pg(&e))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((rate, crate::table::median(&latencies)))
}

/// Rows per second, inserted 100 to a transaction with a prepared statement.
fn raw_batched(db: &Db, n: usize) -> Result<f64, String> {
    let mut client = raw_table(db)?;
    let insert = client
        .prepare("INSERT INTO jobs (state, payload) VALUES (0, '\\x00')")
        .map_err(|e| pg(&e))?;
    let start = Instant::now();
    for _ in 0..n / 100 {
        let mut tx = client.transaction().map_err(|e| pg(&e))?;
        for _ in 0..100 {
            tx.execute(&insert, &[]).map_err(|e| pg(&e))?;
        }
        tx.commit().map_err(|e| pg(&e))?;
    }
    Ok((n / 100 * 100) as f64 / start.elapsed().as_secs_f64())
}

/// Tasks per second through the simplest queue: insert a row, claim the oldest ready one
/// with `FOR UPDATE SKIP LOCKED`, complete it; each step its own transaction.
fn raw_cycle(db: &Db, n: usize) -> Result<f64, String> {
    let mut client = raw_table(db)?;
    let insert = client
        .prepare("INSERT INTO jobs (state, payload) VALUES (0, '\\x00')")
        .map_err(|e| pg(&e))?;
    let claim = client
        .prepare(
            "UPDATE jobs SET state = 1 WHERE id = (SELECT id FROM jobs WHERE state = 0 \
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
        )
        .map_err(|e| pg(&e))?;
    let complete = client
        .prepare("UPDATE jobs SET state = 2, result = '\\x00' WHERE id = $1 AND state = 1")
        .map_err(|e| pg(&e))?;
    let start = Instant::now();
    for _ in 0..n {
        client.execute(&insert, &[]).map_err(|e| pg(&e))?;
        let id: i64 = client.query_one(&claim, &[]).map_err(|e| pg(&e))?.get(0);
        client.execute(&complete, &[&id]).map_err(|e| pg(&e))?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn measure_ceilings(
    options: &Options,
    report: &mut Report,
    server: &Server,
    commit: Commit,
) -> Result<Ceilings, String> {
    // Every other figure is read against these: they run whatever `--only` says.
    let options = &Options {
        only: Vec::new(),
        ..options.clone()
    };
    let (id, name) = commit.prefix();
    let ids = [
        format!("{id}raw_commits"),
        format!("{id}raw_commit_latency"),
        format!("{id}raw_batched"),
        format!("{id}raw_cycle"),
    ];
    let mut ceilings = Ceilings::default();
    measure_group(
        report,
        options,
        &[
            Row::new(&ids[0], format!("{name} raw: single-row commits"), "/s"),
            Row::new(
                &ids[1],
                format!("{name} raw: single-row commit latency"),
                "ms",
            ),
        ],
        |run| {
            let db = server.database("raw_commits", run, commit)?;
            let (rate, ms) = raw_commits(&db, options.size(5_000))?;
            Ok(vec![rate, ms])
        },
    )?;
    ceilings.commit_ms = median_of(report, &ids[1]);
    if commit == Commit::Durable {
        measure(
            report,
            options,
            Row::new(
                &ids[2],
                format!("{name} raw: rows in 100-row batches"),
                "/s",
            ),
            |run| {
                raw_batched(
                    &server.database("raw_batched", run, commit)?,
                    options.size(100_000),
                )
            },
        )?;
    }
    let cycles = match commit {
        Commit::Durable => 3_000,
        Commit::Async => 10_000,
    };
    measure(
        report,
        options,
        Row::new(
            &ids[3],
            format!("{name} raw: enqueue+claim(SKIP LOCKED)+complete"),
            "/s",
        ),
        |run| {
            raw_cycle(
                &server.database("raw_cycle", run, commit)?,
                options.size(cycles),
            )
        },
    )?;
    ceilings.cycle = median_of(report, &ids[3]);
    Ok(ceilings)
}

/// The median of the measurement `id` (NaN if it did not run).
fn median_of(report: &Report, id: &str) -> f64 {
    report.get(id).map_or(f64::NAN, |m| m.median)
}

/// `workers` workers (default options) drain tasks queued in one transaction: timed from
/// that commit until none is unfinished.
fn drains(
    options: &Options,
    report: &mut Report,
    server: &Server,
    ceilings: &Ceilings,
    commit: Commit,
) -> Result<(), String> {
    let n = options.size(20_000);
    let (prefix, name) = commit.prefix();
    let counts: &[usize] = match commit {
        Commit::Durable => &[1, 2, 4],
        Commit::Async => &[1],
    };
    for &workers in counts {
        let id = format!("{prefix}drain_{workers}");
        let plural = if workers == 1 { "" } else { "s" };
        let row = Row::new(
            &id,
            format!(
                "{name}: drain, {workers} worker{plural}, {} queued",
                count(n)
            ),
            "/s",
        )
        .vs("raw PostgreSQL cycle", ceilings.cycle);
        measure(report, options, row, |run| {
            let db = server.database(&id, run, commit)?;
            let client = db.client()?;
            let _workers = (0..workers)
                .map(|_| Worker::start(options, &db.url, &[]))
                .collect::<Result<Vec<_>, _>>()?;
            noop::delay_many(&client, (0..n).map(|_| ())).map_err(err)?;
            let start = Instant::now();
            wait_drained(db.url.as_str(), DRAIN_TIMEOUT)?;
            Ok(n as f64 / start.elapsed().as_secs_f64())
        })?;
    }
    Ok(())
}

/// One app calls `delay()` `n` times, one task per transaction, while a worker drains;
/// timed from the first call until every task has finished.
fn end_to_end(
    options: &Options,
    report: &mut Report,
    server: &Server,
    ceilings: &Ceilings,
    commit: Commit,
) -> Result<(), String> {
    // Each delay() waits for its commit (its fsync, by default): fewer calls than on
    // SQLite keep it short.
    let n = options.size(match commit {
        Commit::Durable => 2_000,
        Commit::Async => 10_000,
    });
    let (prefix, name) = commit.prefix();
    let id = format!("{prefix}e2e");
    let row = Row::new(
        &id,
        format!("{name}: end to end, {} delay() calls", count(n)),
        "/s",
    )
    .vs("raw PostgreSQL cycle", ceilings.cycle);
    measure(report, options, row, |run| {
        let db = server.database(&id, run, commit)?;
        let client = db.client()?;
        let _worker = Worker::start(options, &db.url, &[])?;
        let start = Instant::now();
        for _ in 0..n {
            noop::delay(&client).map_err(err)?;
        }
        wait_drained(db.url.as_str(), DRAIN_TIMEOUT)?;
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
}

/// `delay` then `join` of one no-op task at a time on an otherwise idle worker: p50 and
/// p99 of the sequential round trips, after a warm-up of 20.
fn round_trip(
    options: &Options,
    report: &mut Report,
    server: &Server,
    ceilings: &Ceilings,
    commit: Commit,
) -> Result<(), String> {
    let n = if options.quick { 50 } else { 300 };
    let (prefix, name) = commit.prefix();
    let (p50, p99) = (
        format!("{prefix}roundtrip_p50"),
        format!("{prefix}roundtrip_p99"),
    );
    let rows = [
        Row::new(
            &p50,
            format!("{name}: round trip delay+join, p50 of {n}"),
            "ms",
        )
        .vs("raw PostgreSQL commit latency", ceilings.commit_ms),
        Row::new(
            &p99,
            format!("{name}: round trip delay+join, p99 of {n}"),
            "ms",
        )
        .vs("raw PostgreSQL commit latency", ceilings.commit_ms),
    ];
    measure_group(report, options, &rows, |run| {
        let db = server.database(&p50, run, commit)?;
        let client = db.client()?;
        let _worker = Worker::start(options, &db.url, &[])?;
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let start = Instant::now();
            noop::delay(&client)
                .map_err(err)?
                .join(Duration::from_secs(10))
                .map_err(err)?;
            if i >= 20 {
                latencies.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        latencies.sort_by(f64::total_cmp);
        Ok(vec![
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
        ])
    })
}

/// An idle worker (the benchmark's library, thread and process tasks): its CPU, children
/// included, and the transactions it makes per second, over 10 s (2 s in quick mode)
/// after 2 s to settle.
fn idle(options: &Options, report: &mut Report, server: &Server) -> Result<(), String> {
    let window = Duration::from_secs(if options.quick { 2 } else { 10 });
    let rows = [
        Row::new(
            "pg_idle_cpu",
            "postgres: idle worker (bench library): CPU",
            "% of a core",
        ),
        Row::new("pg_idle_xacts", "postgres: idle worker: transactions", "/s"),
    ];
    measure_group(report, options, &rows, |run| {
        let db = server.database("idle", run, Commit::Durable)?;
        let worker = Worker::start(options, &db.url, &[])?;
        std::thread::sleep(Duration::from_secs(2));
        let cpu_before = tree_cpu_time(worker.pid());
        let xacts_before = db.transactions()?;
        let start = Instant::now();
        // Measuring an interval, not waiting for anything to happen.
        std::thread::sleep(window);
        let cpu = tree_cpu_time(worker.pid()) - cpu_before;
        let xacts = db.transactions()? - xacts_before;
        let elapsed = start.elapsed().as_secs_f64();
        Ok(vec![
            cpu.as_secs_f64() / elapsed * 100.0,
            xacts as f64 / elapsed,
        ])
    })
}
