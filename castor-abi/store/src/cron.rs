//! Cron expressions for periodic tasks: the classic five fields, in UTC, parsed and
//! evaluated by the `croner` crate (see docs/ARCHITECTURE.md, "Decisions").
//!
//! `minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`, a
//! step `*/n`, `a-b/n` or `a/n` (from `a` to the end), or a comma list of those; months
//! and weekdays also by their three-letter English names; weekday 0 and 7 are Sunday. As
//! in cron, when both the day of the month and the day of the week are restricted, a day
//! matching either runs. The shorthands `@yearly` (`@annually`), `@monthly`, `@weekly`,
//! `@daily` (`@midnight`) and `@hourly` are accepted, and so are croner's extensions: `L`
//! (the last day of the month, or `5L` its last Friday), `5#2` (its second Friday), `15W`
//! (the weekday nearest the 15th), `?` (as `*`), and a `+` before the day of the week to
//! require both days to match.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    /// Boxed: croner's parsed fields take a few hundred bytes, and a `Cadence` holds this.
    cron: Box<croner::Cron>,
}

/// An expression that is not valid cron.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason}")]
pub struct CronError {
    /// The expression given.
    pub expression: String,
    /// What is wrong.
    pub reason: String,
}

/// The five fields, with the values each takes, for error messages.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 or sun-sat"),
];

/// Five fields, no seconds or years; `a/n` accepted as classic crons do.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
}

/// What croner says is wrong, as the end of one of our sentences.
fn detail(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let text = match error {
        E::ComponentError(text) | E::InvalidPattern(text) => text.clone(),
        E::IllegalCharacters(_) => "not a number, a name or a cron symbol".to_owned(),
        other => other.to_string(),
    };
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Cron, CronError> {
        let error = |reason: String| CronError {
            expression: expression.to_owned(),
            reason,
        };
        let trimmed = expression.trim();
        let expanded = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields = expanded.split_whitespace().count();
        if fields != 5 {
            return Err(error(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let parser = parser();
        match parser.parse(expanded) {
            Ok(cron) => Ok(Cron {
                source: trimmed.to_owned(),
                cron: Box::new(cron),
            }),
            Err(whole) => {
                // Name the first field that is wrong on its own, if one is.
                let fields: Vec<&str> = expanded.split_whitespace().collect();
                for (i, (name, allowed)) in FIELDS.iter().enumerate() {
                    let Some(text) = fields.get(i) else { break };
                    let mut alone = ["*"; 5];
                    alone[i] = text;
                    if let Err(e) = parser.parse(&alone.join(" ")) {
                        return Err(error(format!(
                            "{name} {text:?} is not valid ({allowed}): {}",
                            detail(&e)
                        )));
                    }
                }
                Err(error(detail(&whole)))
            }
        }
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Cron {
    /// The first time strictly after `after_us` (microseconds since the epoch, UTC) that
    /// the expression matches; `None` if it never will (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_us: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_micros(after_us)?;
        self.cron
            .find_next_occurrence(&after, false)
            .ok()
            .map(|next| next.timestamp_micros())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const MINUTE_US: i64 = 60_000_000;

    /// Microseconds at a UTC date and time.
    fn at(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> i64 {
        Utc.with_ymd_and_hms(year, month, day, hour, minute, 0)
            .single()
            .expect("a valid date")
            .timestamp_micros()
    }

    fn next(expr: &str, from: i64) -> Option<i64> {
        expr.parse::<Cron>().expect("valid").next_after(from)
    }

    #[test]
    fn next_times() {
        let t = at(2026, 11, 27, 15, 4); // a Friday
        assert_eq!(next("* * * * *", t), Some(t + MINUTE_US));
        assert_eq!(
            next("* * * * *", t + 1),
            Some(t + MINUTE_US),
            "from within a minute"
        );
        assert_eq!(next("*/15 * * * *", t), Some(at(2026, 11, 27, 15, 15)));
        assert_eq!(next("5/15 * * * *", t), Some(at(2026, 11, 27, 15, 5)));
        assert_eq!(next("0 9 * * *", t), Some(at(2026, 11, 28, 9, 0)));
        assert_eq!(
            next("0 9 * * 1-5", t),
            Some(at(2026, 11, 30, 9, 0)),
            "Monday"
        );
        assert_eq!(next("0 9 * * mon-fri", t), Some(at(2026, 11, 30, 9, 0)));
        assert_eq!(next("30 2 1 * *", t), Some(at(2026, 12, 1, 2, 30)));
        assert_eq!(next("0 0 1 jan *", t), Some(at(2027, 1, 1, 0, 0)));
        assert_eq!(next("@hourly", t), Some(at(2026, 11, 27, 16, 0)));
        assert_eq!(next("@midnight", t), Some(at(2026, 11, 28, 0, 0)));
        assert_eq!(
            next("0 0 29 2 *", t),
            Some(at(2028, 2, 29, 0, 0)),
            "leap day"
        );
        assert_eq!(next("0 0 * * 0", t), Some(at(2026, 11, 29, 0, 0)), "Sunday");
        assert_eq!(
            next("0 0 * * 7", t),
            Some(at(2026, 11, 29, 0, 0)),
            "7 is Sunday too"
        );
        // Day of month OR day of week when both are restricted: the 1st or a Monday.
        assert_eq!(next("0 0 1 * 1", t), Some(at(2026, 11, 30, 0, 0)));
        assert_eq!(next("0 0 31 2 *", t), None, "February 31st never comes");
        // Strictly after: at a matching minute, the next one.
        assert_eq!(next("4 15 * * *", t), Some(at(2026, 11, 28, 15, 4)));
        // croner's extensions: the last day of the month, the second Friday.
        assert_eq!(next("0 0 L * *", t), Some(at(2026, 11, 30, 0, 0)));
        assert_eq!(next("0 0 * * 5#2", t), Some(at(2026, 12, 11, 0, 0)));
    }

    #[test]
    fn bad_expressions_say_why() {
        for (expr, reason) in [
            ("* * * *", "expected 5 fields"),
            ("* * * * * *", "expected 5 fields"),
            ("@often", "expected 5 fields"),
            ("60 * * * *", "minute \"60\" is not valid (0-59)"),
            ("* 24 * * *", "hour \"24\" is not valid (0-23)"),
            ("* * 0 * *", "day of month \"0\" is not valid (1-31)"),
            ("* * * 13 *", "month \"13\" is not valid (1-12 or jan-dec)"),
            (
                "* * * * 8",
                "day of week \"8\" is not valid (0-7 or sun-sat)",
            ),
            ("*/0 * * * *", "step cannot be zero"),
            ("5-1 * * * *", "minute \"5-1\" is not valid"),
            ("x * * * *", "not a number, a name or a cron symbol"),
        ] {
            let err = expr.parse::<Cron>().expect_err(expr);
            assert!(err.to_string().contains(reason), "{expr}: {err}");
        }
    }

    /// What people see: the expression as written.
    #[test]
    fn expressions_display_as_written() {
        let cron: Cron = " 0 9 * * mon-fri ".parse().expect("valid");
        assert_eq!(cron.to_string(), "0 9 * * mon-fri");
    }
}
