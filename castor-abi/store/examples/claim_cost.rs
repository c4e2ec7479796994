//! What a claim costs on SQLite, by the shape of what is waiting: claim-and-complete
//! cycles over a backlog of tasks of one of six names (a worker declaring six thread
//! tasks, as the bench library does), each dispatched with its argument fingerprint, in
//! batches of 1 and of 32; once with only such tasks waiting, once with an available task
//! dispatched without a fingerprint (a row from before fingerprints), which makes the
//! claim read the "unknown fingerprint" arm of each name too. The two run in alternating
//! rounds, so a busy machine slows both alike.
//!
//! `cargo run --release -p castor-store --example claim_cost`

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
    println!("claim + complete on SQLite, {BACKLOG} queued tasks of 6 names, {ROUNDS} rounds (median, min - max)");
    for batch in [1, 32] {
        let mut signed = Vec::new();
        let mut unsigned = Vec::new();
        for round in 0..ROUNDS {
            for (with_unsigned, out) in [(false, &mut signed), (true, &mut unsigned)] {
                let path = dir.join(format!("{batch}-{round}-{with_unsigned}.db"));
                out.push(drain(&path, &filter, batch, with_unsigned)?);
            }
        }
        for (label, mut us) in [("only fingerprinted tasks", signed), ("an unsigned task waiting too", unsigned)] {
            us.sort_by(f64::total_cmp);
            println!(
                "  batch {batch:>2}, {label:<28}: {:>6.2} us per claim ({:.2} - {:.2})",
                us[us.len() / 2],
                us[0],
                us[us.len() - 1]
            );
        }
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
    store.write(|tx| {
        for i in 0..BACKLOG {
            tx.enqueue(&task(NAMES[i % NAMES.len()], Some(FINGERPRINT)), 0)?;
        }
        if with_unsigned {
            // A name this worker does not declare: it stays, and keeps the arms on.
            tx.enqueue(&task("other", None), 0)?;
        }
        Ok(())
    })?;
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
    }
}
