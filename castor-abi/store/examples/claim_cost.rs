//! What a claim costs on SQLite, by what is in force: claim-and-complete cycles over a
//! backlog of 20,000 tasks of six names (the bench library's six thread tasks), each
//! dispatched with its argument fingerprint, in batches of 1 and of 32:
//!
//! - the plain claim (no limits: what every worker without limits runs);
//! - the same while a task dispatched without a fingerprint (a row from before
//!   fingerprints) waits, which makes the claim read the "unknown fingerprint" arm of
//!   each name too (see SQLite migration 6);
//! - the limited claim with limits that never bind (so each claim takes as many as the
//!   plain one, and the difference is the limits' own work): a concurrency limit on every
//!   name, a rate on every name (each claim prunes and counts the ledger, which holds the
//!   last second's starts at one claim a millisecond, and records its starts), and a
//!   concurrency limit per key (100 keys).
//!
//! First, what a fingerprint costs a dispatch: the backlog inserted in one transaction
//! (as `delay_many` does) with and without one on each row (the fingerprint itself is
//! computed once per process; a dispatch pays for the wider row and index key).
//!
//! Each variant runs in alternating rounds, so a busy machine slows all alike.
//!
//! `cargo run --release -p castor-store --example claim_cost`

use std::time::{Duration, Instant};

use castor_store::{
    AttemptEnd, Database, DeclaredLimits, Finish, Limits, NewTask, OpenOptions, Rate, Store,
    TaskFilter,
};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "noop"];
const FINGERPRINT: &str = "0123456789abcdef";
const BACKLOG: usize = 20_000;
const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    Unsigned,
    Concurrency,
    Rate,
    Keyed,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Plain => "no limits (the plain claim)",
            Variant::Unsigned => "no limits, a task without a fingerprint waiting",
            Variant::Concurrency => "concurrency 100,000 on each name",
            Variant::Rate => "rate 100,000/s on each name (a claim each ms)",
            Variant::Keyed => "concurrency 100,000 per key, 100 keys",
        }
    }

    fn limits(self) -> Option<Limits> {
        match self {
            Variant::Plain | Variant::Unsigned => None,
            Variant::Concurrency | Variant::Keyed => Some(Limits {
                concurrency: Some(100_000),
                rate: None,
            }),
            Variant::Rate => Some(Limits {
                concurrency: None,
                rate: Some(Rate {
                    count: 100_000,
                    per: Duration::from_secs(1),
                }),
            }),
        }
    }
}

const VARIANTS: [Variant; 5] = [
    Variant::Plain,
    Variant::Unsigned,
    Variant::Concurrency,
    Variant::Rate,
    Variant::Keyed,
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("castor-claim-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let filter = TaskFilter {
        manager: "bench".into(),
        tasks: NAMES.iter().map(|n| (*n).to_owned()).collect(),
        args_fingerprints: NAMES.iter().map(|_| Some(FINGERPRINT.to_owned())).collect(),
    };
    println!("SQLite, {BACKLOG} tasks of 6 names, {ROUNDS} rounds (median, min - max)");
    let mut dispatch: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (i, fingerprint) in [Some(FINGERPRINT), None].into_iter().enumerate() {
            let path = dir.join(format!("dispatch-{round}-{i}.db"));
            let mut store = Store::open(Database::Sqlite(path), OpenOptions::app())?;
            let start = Instant::now();
            store.write(|tx| {
                for n in 0..BACKLOG {
                    let task = NewTask {
                        args_fingerprint: fingerprint,
                        ..task(NAMES[n % NAMES.len()])
                    };
                    tx.enqueue(&task, 0)?;
                }
                Ok(())
            })?;
            dispatch[i].push(start.elapsed().as_secs_f64() * 1e6 / BACKLOG as f64);
        }
    }
    let [with, without] = dispatch;
    report("dispatch, with a fingerprint", "per task", with);
    report("dispatch, without", "per task", without);
    for batch in [1, 32] {
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
        for round in 0..ROUNDS {
            for (i, variant) in VARIANTS.iter().enumerate() {
                let path = dir.join(format!("{batch}-{round}-{i}.db"));
                results[i].push(drain(&path, &filter, batch, *variant)?);
            }
        }
        for (variant, us) in VARIANTS.iter().zip(results) {
            report(
                &format!("claim {batch:>2} + complete, {}", variant.label()),
                "per claim",
                us,
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
    variant: Variant,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut store = Store::open(Database::Sqlite(path.to_owned()), OpenOptions::app())?;
    store.write(|tx| {
        if let Some(limits) = variant.limits() {
            let declared: Vec<DeclaredLimits<'_>> = NAMES
                .iter()
                .map(|task| DeclaredLimits {
                    task,
                    limits,
                    key: (variant == Variant::Keyed).then_some("customer"),
                })
                .collect();
            tx.declare_limits("bench", &declared, 0)?;
        }
        let keys: Vec<String> = (0..100).map(|k| k.to_string()).collect();
        for i in 0..BACKLOG {
            let mut task = task(NAMES[i % NAMES.len()]);
            if variant == Variant::Keyed {
                task.concurrency_key = Some(&keys[i % keys.len()]);
            }
            tx.enqueue(&task, 0)?;
        }
        if variant == Variant::Unsigned {
            // Of a name the claims do not declare: it stays, and keeps the arms on.
            let unsigned = NewTask {
                args_fingerprint: None,
                ..task("other")
            };
            tx.enqueue(&unsigned, 0)?;
        }
        Ok(())
    })?;
    let mut claims = 0u32;
    let mut now = 1;
    let start = Instant::now();
    loop {
        // A claim each millisecond: a rate's window holds the last second's starts.
        now += 1_000;
        let done = store.write(|tx| {
            let claimed = if variant.limits().is_none() {
                tx.claim(filter, "w1", batch, now, 1_000_000_000_000)?
            } else {
                tx.claim_limited(filter, "w1", batch, now, 1_000_000_000_000)?
                    .claimed
            };
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
            tx.finish_many("w1", &ends, now)?;
            Ok(claimed.is_empty())
        })?;
        if done {
            break;
        }
        claims += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(claims.max(1)))
}

/// Prints the median and range of `us` (microseconds).
fn report(label: &str, per: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    println!(
        "  {label:<70} {:>7.2} us {per} ({:.2} - {:.2})",
        us[us.len() / 2],
        us[0],
        us[us.len() - 1]
    );
}

fn task(name: &str) -> NewTask<'_> {
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
        args_fingerprint: Some(FINGERPRINT),
        concurrency_key: None,
    }
}
