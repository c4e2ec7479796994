//! Prometheus metrics: the real endpoint of a running worker (`--metrics`), scraped after
//! known work on SQLite and on PostgreSQL, checked value by value; other paths answer 404;
//! a bad or taken address is an error at start.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use castor_fixture_tasks as fx;
use castor_store::{NewTask, OpenOptions, TaskState, now_us};

use crate::support::{
    PATIENCE, PgDatabase, TestDir, Worker, assert_startup_error, castor_bin, tasks_target,
    wait_for_state, wait_until,
};

/// A response: the status line, the headers and the body.
struct Response {
    status: String,
    headers: String,
    body: String,
}

/// `METHOD PATH` on `addr`, as a scraper sends it.
fn request(addr: &str, method: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\n\r\n"
    )
    .expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Response {
        status: status.to_owned(),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

/// Every sample of an exposition: `name{labels}` to value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Scrapes `addr` once; the body must be OpenMetrics.
fn scrape(addr: &str) -> HashMap<String, f64> {
    let response = request(addr, "GET", "/metrics");
    assert_eq!(response.status, "HTTP/1.1 200 OK", "{}", response.body);
    assert!(
        response
            .headers
            .contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{}",
        response.headers
    );
    assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    samples(&response.body)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    match samples.get(series) {
        Some(v) => *v,
        None => {
            let mut names: Vec<&String> = samples.keys().collect();
            names.sort();
            panic!("no sample {series}; the samples are:\n{names:#?}")
        }
    }
}

/// The address the worker said it serves metrics on.
fn metrics_addr(worker: &Worker) -> String {
    let stdout = worker.wait_for_stdout("/metrics");
    let line = stdout
        .lines()
        .find(|l| l.contains("metrics on http://"))
        .expect("the metrics line");
    let from = line.find("http://").expect("a URL") + "http://".len();
    let rest = &line[from..];
    rest[..rest.find("/metrics").expect("the path")].to_owned()
}

/// Runs 5 `add` and two tasks that fail on their only attempt (an error and a panic),
/// waits until the worker counted them, and returns the scrape.
fn known_work(client: &castor_abi::Client, addr: &str) -> HashMap<String, f64> {
    for i in 0..5 {
        let handle = fx::add::delay(client, i, 1).expect("delay");
        assert_eq!(handle.join(PATIENCE).expect("join"), i + 1);
    }
    let failed = fx::fail::delay(client, "no".into()).expect("delay");
    let panicked = fx::panics::delay(client, "boom".into()).expect("delay");
    wait_for_state(&failed, TaskState::Discarded);
    wait_for_state(&panicked, TaskState::Discarded);
    // The database says so first; the worker counts an outcome just after its commit.
    let mut last = HashMap::new();
    wait_until("the worker counted the 7 attempts", || {
        last = scrape(addr);
        last.get("castor_tasks_completed_total{task=\"add\"}") == Some(&5.0)
            && last.get("castor_tasks_discarded_total{task=\"panics\"}") == Some(&1.0)
            && last.get("castor_tasks_discarded_total{task=\"fail\"}") == Some(&1.0)
    });
    last
}

/// The values every driver's scrape shows after [`known_work`].
fn check_known_work(s: &HashMap<String, f64>, worker_id: &str) {
    // Counters, from the worker's events.
    assert_eq!(value(s, "castor_tasks_claimed_total{task=\"add\"}"), 5.0);
    assert_eq!(value(s, "castor_tasks_claimed_total{task=\"fail\"}"), 1.0);
    assert_eq!(value(s, "castor_tasks_completed_total{task=\"fail\"}"), 0.0);
    assert_eq!(
        value(
            s,
            "castor_attempts_failed_total{task=\"fail\",outcome=\"error\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            s,
            "castor_attempts_failed_total{task=\"panics\",outcome=\"panic\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            s,
            "castor_attempts_failed_total{task=\"add\",outcome=\"error\"}"
        ),
        0.0
    );
    assert_eq!(value(s, "castor_tasks_cancelled_total{task=\"add\"}"), 0.0);
    assert_eq!(value(s, "castor_outcomes_dropped_total{task=\"add\"}"), 0.0);
    let turns = value(s, "castor_turns_committed_total");
    assert!((1.0..=20_000.0).contains(&turns), "{turns}");
    // Histograms: one observation per attempt that ran.
    assert_eq!(
        value(s, "castor_attempt_duration_seconds_count{task=\"add\"}"),
        5.0
    );
    assert_eq!(
        value(
            s,
            "castor_attempt_duration_seconds_bucket{le=\"+Inf\",task=\"add\"}"
        ),
        5.0
    );
    assert_eq!(
        value(s, "castor_attempt_duration_seconds_count{task=\"panics\"}"),
        1.0
    );
    assert_eq!(
        value(s, "castor_attempt_wait_seconds_count{task=\"add\"}"),
        5.0
    );
    assert_eq!(
        value(s, "castor_attempt_wait_seconds_count{task=\"sleep_ms\"}"),
        0.0
    );
    let took = value(s, "castor_attempt_duration_seconds_sum{task=\"add\"}");
    assert!((0.0..30.0).contains(&took), "{took}");
    // Gauges, read from the database at the scrape.
    assert_eq!(
        value(s, "castor_tasks{task=\"add\",state=\"completed\"}"),
        5.0
    );
    assert_eq!(
        value(s, "castor_tasks{task=\"fail\",state=\"discarded\"}"),
        1.0
    );
    assert_eq!(
        value(s, "castor_tasks{task=\"panics\",state=\"discarded\"}"),
        1.0
    );
    assert_eq!(
        value(s, "castor_tasks{task=\"add\",state=\"running\"}"),
        0.0
    );
    assert_eq!(
        value(s, &format!("castor_worker_up{{worker_id=\"{worker_id}\"}}")),
        1.0
    );
    #[expect(clippy::cast_precision_loss, reason = "a Unix time in seconds")]
    let now = now_us() as f64 / 1e6;
    let beat = value(
        s,
        &format!("castor_worker_heartbeat_timestamp_seconds{{worker_id=\"{worker_id}\"}}"),
    );
    assert!(now - beat < 120.0 && beat <= now + 1.0, "{beat} vs {now}");
    assert_eq!(value(s, "castor_pool_running{pool=\"thread\"}"), 0.0);
    assert_eq!(value(s, "castor_pool_waiting{pool=\"thread\"}"), 0.0);
    assert_eq!(value(s, "castor_metrics_read_errors_total"), 0.0);
}

/// The worker id the start-up line names.
fn worker_id(worker: &Worker) -> String {
    let stdout = worker.stdout();
    let after = stdout
        .split("worker ")
        .nth(1)
        .expect("the start-up line names the worker");
    after.split_whitespace().next().expect("an id").to_owned()
}

#[test]
fn a_scrape_after_known_work_shows_its_counts() {
    let dir = TestDir::new();
    let client = dir.client();
    let worker = Worker::start(
        &dir,
        &tasks_target("manager"),
        &[
            "--threads",
            "2",
            "--processes",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let addr = metrics_addr(&worker);
    let id = worker_id(&worker);
    // A task of the manager this library does not run: it stays available, a minute old.
    let mut store = castor_store::open(
        &castor_store::Database::from(dir.db().as_path()),
        &OpenOptions::app(),
    )
    .expect("open");
    let minute_ago = now_us() - 60_000_000;
    store
        .write(|tx| {
            tx.enqueue(
                &NewTask {
                    manager: "manager",
                    task: "not_in_this_library",
                    args: b"",
                    run_at_us: None,
                    priority: 0,
                    unique_key: None,
                    max_attempts: 1,
                    backoff_base_ms: 1000,
                    backoff_cap_ms: 1000,
                    timeout_ms: None,
                    schedule_id: None,
                    args_fingerprint: None,
                    concurrency_key: None,
                },
                minute_ago,
            )
        })
        .expect("enqueue");
    let s = known_work(&client, &addr);
    check_known_work(&s, &id);
    assert_eq!(
        value(
            &s,
            "castor_tasks{task=\"not_in_this_library\",state=\"available\"}"
        ),
        1.0
    );
    let age = value(&s, "castor_oldest_available_age_seconds");
    assert!(
        (60.0..60.0 + PATIENCE.as_secs_f64()).contains(&age),
        "{age}"
    );
    assert_eq!(value(&s, "castor_pool_slots{pool=\"thread\"}"), 2.0);
    assert_eq!(value(&s, "castor_pool_slots{pool=\"process\"}"), 1.0);

    // A process task counts in the process pool's figures.
    let handle = fx::process_add::delay(&client, 2, 2).expect("delay");
    assert_eq!(handle.join(PATIENCE).expect("join"), 4);
    wait_until("the worker counted the process task", || {
        scrape(&addr).get("castor_attempt_duration_seconds_count{task=\"process_add\"}")
            == Some(&1.0)
    });

    // Only /metrics is served.
    let other = request(&addr, "GET", "/");
    assert_eq!(other.status, "HTTP/1.1 404 Not Found", "{}", other.body);
    let other = request(&addr, "GET", "/metricsx");
    assert_eq!(other.status, "HTTP/1.1 404 Not Found", "{}", other.body);
    let post = request(&addr, "POST", "/metrics");
    assert_eq!(post.status, "HTTP/1.1 405 Method Not Allowed");
    let stopped = worker.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn a_scrape_on_postgres_shows_the_same_counts() {
    let db = PgDatabase::new();
    let dir = TestDir::new();
    let mut command = Command::new(castor_bin());
    command
        .arg(tasks_target("manager"))
        .arg("--db")
        .arg(&db.url)
        .args(["--threads", "2", "--metrics", "127.0.0.1:0"])
        .current_dir(dir.path());
    let worker = Worker::started(command);
    let addr = metrics_addr(&worker);
    let id = worker_id(&worker);
    let client = fx::manager()
        .with_database(db.url.as_str())
        .open()
        .expect("open the app's client");
    let s = known_work(&client, &addr);
    check_known_work(&s, &id);
    assert_eq!(value(&s, "castor_oldest_available_age_seconds"), 0.0);
}

#[test]
fn a_bad_or_taken_metrics_address_is_an_error_at_start() {
    let dir = TestDir::new();
    let target = tasks_target("manager");
    let db = dir.db().display().to_string();
    assert_startup_error(
        &dir,
        &[&target, "--db", &db, "--metrics", "nonsense"],
        2,
        &["--metrics", "expected HOST:PORT, e.g. 127.0.0.1:9464"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    assert_startup_error(
        &dir,
        &[&target, "--db", &db, "--metrics", &addr],
        1,
        &[&format!("--metrics {addr}: cannot listen there")],
    );
}
