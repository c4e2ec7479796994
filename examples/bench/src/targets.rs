//! The performance targets, checked against this run's medians. They live here
//! and in the JSON file, never in tests: a busy machine makes a figure worse, not red.

use serde::Serialize;

use crate::table::{Report, human};

/// How a measured median is judged.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Met when the median is at least this.
    AtLeast(f64),
    /// Met when the median is below this.
    Below(f64),
    /// Met when the median is at least this many times its ceiling (the raw figure it
    /// is read against).
    CeilingAtLeast(f64),
    /// Met when the scenario was measured at all (a figure the issue wants reported).
    Reported,
}

/// One target from the issue.
struct Target {
    /// The words.
    text: &'static str,
    /// The measurement it reads (a [`Measurement::id`](crate::table::Measurement::id)).
    scenario: &'static str,
    /// That measurement's unit.
    unit: &'static str,
    goal: Goal,
}

const TARGETS: &[Target] = &[
    Target {
        text: "drain of queued no-op thread tasks: at least 50,000 tasks/s",
        scenario: "drain",
        unit: "/s",
        goal: Goal::AtLeast(50_000.0),
    },
    Target {
        text: "end to end, one app calling delay() one task at a time: at least 15,000 tasks/s",
        scenario: "e2e",
        unit: "/s",
        goal: Goal::AtLeast(15_000.0),
    },
    Target {
        text: "batch dispatch (delay_many, tens of thousands in one transaction): at least 200,000 tasks/s",
        scenario: "batch",
        unit: "/s",
        goal: Goal::AtLeast(200_000.0),
    },
    Target {
        text: "round trip of one no-op task on an idle worker: p50 under 0.5 ms",
        scenario: "roundtrip_p50",
        unit: "ms",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "round trip of one no-op task on an idle worker: p99 under 2 ms",
        scenario: "roundtrip_p99",
        unit: "ms",
        goal: Goal::Below(2.0),
    },
    Target {
        text: "an idle worker uses under 0.5% of a core: thread tasks only (the quickstart)",
        scenario: "idle_worker_threads",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle worker uses under 0.5% of a core: process tasks only",
        scenario: "idle_worker_processes",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle worker uses under 0.5% of a core: thread and process tasks",
        scenario: "idle_worker",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle worker uses under 0.5% of a core: every task scheduled far ahead",
        scenario: "idle_scheduled_ahead",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle worker uses under 0.5% of a core: after draining a burst",
        scenario: "idle_after_burst",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle dashboard (castor -i) uses under 0.5% of a core",
        scenario: "idle_dashboard",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "a worker whose writes fail (a full disk, under it) uses under 0.5% of a core",
        scenario: "full_disk_running_cpu",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "a worker whose writes fail (started on a full disk) uses under 0.5% of a core",
        scenario: "full_disk_start_cpu",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "an idle join uses under 0.5% of a core",
        scenario: "idle_join",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "throughput with a 1,000,000-task backlog at least 80% of that with a 1,000-task backlog",
        scenario: "backlog_ratio",
        unit: "x",
        goal: Goal::AtLeast(0.8),
    },
    Target {
        text: "the same while another app dispatches a task every 2 ms (each of its commits \
               wakes the worker to look for work)",
        scenario: "backlog_busy_ratio",
        unit: "x",
        goal: Goal::AtLeast(0.8),
    },
    Target {
        text: "worker memory flat (it never loads the backlog): peak heap (RssAnon) with the \
               large backlog within 8 MiB of that with 1,000 tasks (the backlog's rows alone \
               are over 100 MiB)",
        scenario: "backlog_heap_growth",
        unit: "MiB",
        goal: Goal::Below(8.0),
    },
    Target {
        text: "durable option (synchronous=FULL) reported: drain",
        scenario: "durable_drain",
        unit: "/s",
        goal: Goal::Reported,
    },
    Target {
        text: "durable option (synchronous=FULL) reported: end to end",
        scenario: "durable_e2e",
        unit: "/s",
        goal: Goal::Reported,
    },
    Target {
        text: "PostgreSQL: drain of queued no-op tasks with one worker: at least 20,000 tasks/s",
        scenario: "pg_drain_1",
        unit: "/s",
        goal: Goal::AtLeast(20_000.0),
    },
    Target {
        text: "PostgreSQL: the same drain at least 3x the raw unbatched insert+claim+complete \
               cycle on the same server",
        scenario: "pg_drain_1",
        unit: "/s",
        goal: Goal::CeilingAtLeast(3.0),
    },
    Target {
        text: "PostgreSQL: round trip of one no-op task on an idle worker: p50 under 2 ms",
        scenario: "pg_roundtrip_p50",
        unit: "ms",
        goal: Goal::Below(2.0),
    },
    Target {
        text: "PostgreSQL: an idle worker uses under 0.5% of a core",
        scenario: "pg_idle_cpu",
        unit: "% of a core",
        goal: Goal::Below(0.5),
    },
    Target {
        text: "PostgreSQL: an idle worker's transactions per second reported (the goal: none \
               beyond its heartbeat)",
        scenario: "pg_idle_xacts",
        unit: "/s",
        goal: Goal::Reported,
    },
];

/// A target as judged in this run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// The target, in the words.
    pub target: String,
    /// The id of the measurement it reads.
    pub scenario: String,
    /// The goal, e.g. `>= 50,000 /s`.
    pub goal: String,
    /// The median measured in this run; `null` if the scenario did not run.
    pub measured: Option<f64>,
    pub unit: String,
    /// The measurement's ratio to its raw engine's ceiling (SQLite's or PostgreSQL's), if
    /// it has one.
    pub ceiling_ratio: Option<f64>,
    /// `null` if not measured.
    pub met: Option<bool>,
    /// For a missed target: how far off, e.g. `12% short`.
    pub miss: Option<String>,
}

/// Judges every target against the report's medians.
pub fn evaluate(report: &Report) -> Vec<TargetResult> {
    TARGETS
        .iter()
        .map(|t| {
            let m = report.get(t.scenario);
            let unit = t.unit;
            let measured = m.map(|m| m.median);
            let (goal, met, miss) = match (t.goal, measured) {
                (Goal::AtLeast(min), value) => {
                    let met = value.map(|v| v >= min);
                    let miss = value
                        .filter(|&v| v < min)
                        .map(|v| format!("{} short", percent(1.0 - v / min)));
                    (format!(">= {} {unit}", human(min)), met, miss)
                }
                (Goal::Below(max), value) => {
                    let met = value.map(|v| v < max);
                    let miss = value
                        .filter(|&v| v >= max)
                        .map(|v| format!("{} over", percent(v / max - 1.0)));
                    (format!("< {} {unit}", human(max)), met, miss)
                }
                (Goal::CeilingAtLeast(min), _) => {
                    let ratio = m.and_then(|m| m.ceiling.as_ref()).map(|c| c.ratio);
                    let met = ratio.map(|r| r >= min);
                    let miss = ratio
                        .filter(|&r| r < min)
                        .map(|r| format!("{}x of its ceiling", human(r)));
                    (format!(">= {}x its ceiling", human(min)), met, miss)
                }
                (Goal::Reported, value) => ("reported".to_owned(), value.map(|_| true), None),
            };
            TargetResult {
                target: t.text.to_owned(),
                scenario: t.scenario.to_owned(),
                goal,
                measured,
                unit: unit.to_owned(),
                ceiling_ratio: m.and_then(|m| m.ceiling.as_ref()).map(|c| c.ratio),
                met,
                miss,
            }
        })
        .collect()
}

/// A fraction as a percentage, with a decimal below 10%.
fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// The targets as printed after the table: one line each.
pub fn summary(targets: &[TargetResult]) -> String {
    let mut lines = vec!["targets:".to_owned()];
    for t in targets {
        let verdict = match (t.met, &t.miss) {
            (None, _) => "not measured".to_owned(),
            (Some(true), _) => "met".to_owned(),
            (Some(false), Some(miss)) => format!("NOT MET ({miss})"),
            (Some(false), None) => "NOT MET".to_owned(),
        };
        let value = t
            .measured
            .map_or_else(|| "-".to_owned(), |v| format!("{} {}", human(v), t.unit));
        lines.push(format!(
            "  {verdict:<22} {value:>18}  goal {:<24} {}",
            t.goal, t.target
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Measurement;

    #[test]
    fn targets_are_judged_against_medians() {
        let mut report = Report::new("test".into(), 3, false);
        report.results.push(Measurement::new(
            "drain",
            "drain",
            "/s",
            vec![30_000.0, 40_000.0, 60_000.0],
            Some(("raw SQLite cycle", 20_000.0)),
        ));
        report.results.push(Measurement::new(
            "roundtrip_p50",
            "rt",
            "ms",
            vec![0.3],
            None,
        ));
        let targets = evaluate(&report);
        let drain = &targets[0];
        assert_eq!(drain.met, Some(false));
        assert_eq!(drain.miss.as_deref(), Some("20% short"));
        assert_eq!(drain.ceiling_ratio, Some(2.0));
        let p50 = targets.iter().find(|t| t.scenario == "roundtrip_p50");
        assert_eq!(p50.and_then(|t| t.met), Some(true));
        let durable = targets.iter().find(|t| t.scenario == "durable_drain");
        assert_eq!(durable.map(|t| t.met), Some(None));
        let e2e = targets.iter().find(|t| t.scenario == "e2e");
        assert_eq!(e2e.map(|t| t.met), Some(None));
        assert!(summary(&targets).contains("NOT MET (20% short)"));
    }

    #[test]
    fn a_ratio_target_reads_the_ceiling_ratio() {
        let mut report = Report::new("test".into(), 1, false);
        report.results.push(Measurement::new(
            "pg_drain_1",
            "drain",
            "/s",
            vec![5_000.0],
            Some(("raw PostgreSQL cycle", 2_000.0)),
        ));
        let targets = evaluate(&report);
        let judged: Vec<_> = targets
            .iter()
            .filter(|t| t.scenario == "pg_drain_1")
            .map(|t| (t.goal.as_str(), t.met, t.miss.as_deref()))
            .collect();
        assert_eq!(
            judged,
            [
                (">= 20,000 /s", Some(false), Some("75% short")),
                (
                    ">= 3.00x its ceiling",
                    Some(false),
                    Some("2.50x of its ceiling")
                ),
            ]
        );
    }
}
