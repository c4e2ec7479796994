//! What type fingerprints cost the store on SQLite, per dispatch and per claim.
//!
//! Dispatch: 20,000 tasks inserted in one transaction (as `delay_many` does), with and
//! without an argument fingerprint on each row (the fingerprint itself is computed once
//! per process; what a dispatch pays is the wider row and index key).
//!
//! Claim: claim-and-complete cycles over that backlog (tasks of one of six names, as a
//! worker declaring the bench library's six thread tasks sees), in batches of 1 and of
//! 32; once with only fingerprinted tasks waiting, once with an available task dispatched
//! without a fingerprint (a row from before fingerprints), which makes the claim read the
//! "unknown fingerprint" arm of each name too (see migration 6).
//!
//! Each pair runs in alternating rounds, so a busy machine slows both alike.
//!
//! `cargo run --release -p castor-store --example fingerprint_cost`

use std::time::Instant;

use castor_store::{AttemptEnd, Database, Finish, NewTask, OpenOptions, Store, TaskFilter};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "noop"];
const FINGERPRINT: &str = "0123456789abcdef";
const BACKLOG: usize = 20_000;
const ROUNDS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("castor-claim-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let filter = TaskFilter {
        manager: "bench".into(),
        tasks: NAMES.iter().map(|n| (*n).to_owned()).collect(),
        args_fingerprints: NAMES.iter().map(|_| Some(FINGERPRINT.to_owned())).collect(),
    };
    println!("SQLite, {BACKLOG} tasks of 6 names, {ROUNDS} rounds (median, min - max)");
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..ROUNDS {
        for (fingerprint, out) in [(Some(FINGERPRINT), &mut with), (None, &mut without)] {
            let path = dir.join(format!("dispatch-{round}-{}.db", fingerprint.is_some()));
            let mut store = Store::open(Database::Sqlite(path), OpenOptions::app())?;
            let start = Instant::now();
            fill(&mut store, fingerprint, false)?;
            out.push(start.elapsed().as_secs_f64() * 1e6 / BACKLOG as f64);
        }
    }
    report("dispatch, with a fingerprint", "per task", with);
    report("dispatch, without", "per task", without);
    for batch in [1, 32] {
        let mut signed = Vec::new();
        let mut unsigned = Vec::new();
        for round in 0..ROUNDS {
            for (with_unsigned, out) in [(false, &mut signed), (true, &mut unsigned)] {
                let path = dir.join(format!("{batch}-{round}-{with_unsigned}.db"));
                out.push(drain(&path, &filter, batch, with_unsigned)?);
            }
        }
        report(
            &format!("claim {batch:>2} + complete, fingerprinted tasks only"),
            "per claim",
            signed,
        );
        report(
            &format!("claim {batch:>2} + complete, an unsigned task too"),
            "per claim",
            unsigned,
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Drains a fresh backlog in claims of `batch`; the mean time of one claim-and-complete
/// transaction, in microseconds.
fn drain(
    path: &std::path::Path,
    filter: &TaskFilter,
    batch: usize,
    with_unsigned: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut store = Store::open(Database::Sqlite(path.to_owned()), OpenOptions::app())?;
    fill(&mut store, Some(FINGERPRINT), with_unsigned)?;
    let mut claims = 0u32;
    let start = Instant::now();
    loop {
        let done = store.write(|tx| {
            let claimed = tx.claim(filter, "w1", batch, 1, 1_000_000_000)?;
            let ends: Vec<AttemptEnd<'_>> = claimed
                .iter()
                .map(|c| AttemptEnd {
                    seq: c.seq,
                    attempt: c.attempt,
                    finish: Finish::Completed {
                        result: b"",
                        result_fingerprint: None,
                    },
                })
                .collect();
            tx.finish_many("w1", &ends, 2)?;
            Ok(claimed.is_empty())
        })?;
        if done {
            break;
        }
        claims += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(claims.max(1)))
}

/// Queues the backlog in one transaction, each task with `fingerprint`; `with_unsigned`
/// adds one without (of a name the claims do not declare: it stays, and keeps the
/// unknown-fingerprint arms on).
fn fill(
    store: &mut Store,
    fingerprint: Option<&str>,
    with_unsigned: bool,
) -> Result<(), castor_store::StoreError> {
    store.write(|tx| {
        for i in 0..BACKLOG {
            tx.enqueue(&task(NAMES[i % NAMES.len()], fingerprint), 0)?;
        }
        if with_unsigned {
            tx.enqueue(&task("other", None), 0)?;
        }
        Ok(())
    })
}

/// Prints the median and range of `us` (microseconds).
fn report(label: &str, per: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    println!(
        "  {label:<48} {:>7.2} us {per} ({:.2} - {:.2})",
        us[us.len() / 2],
        us[0],
        us[us.len() - 1]
    );
}

fn task<'a>(name: &'a str, fingerprint: Option<&'a str>) -> NewTask<'a> {
    NewTask {
        manager: "bench",
        task: name,
        args: b"",
        run_at_us: None,
        priority: 0,
        unique_key: None,
        max_attempts: 1,
        backoff_base_ms: 1000,
        backoff_cap_ms: 60_000,
        timeout_ms: None,
        schedule_id: None,
        args_fingerprint: fingerprint,
        concurrency_key: None,
    }
}
