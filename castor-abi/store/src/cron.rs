//! Cron expressions for periodic tasks: the classic five fields, in UTC.
//!
//! `minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`, a
//! step `*/n` or `a-b/n`, or a comma list of those; months and weekdays also by their
//! three-letter English names; weekday 0 and 7 are Sunday. As in cron, when both the
//! day of the month and the day of the week are restricted, a day matching either runs.
//! The shorthands `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly` are accepted.

use std::fmt;
use std::str::FromStr;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
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

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_value(text: &str, names: &[&str], base: u32) -> Option<u32> {
    text.parse().ok().or_else(|| {
        let lower = text.to_ascii_lowercase();
        names
            .iter()
            .position(|n| *n == lower)
            .and_then(|i| u32::try_from(i).ok())
            .map(|i| i + base)
    })
}

/// Parses one field into a bit set over `min..=max`.
fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("invalid step {step:?} in {part:?}"))?;
                if step == 0 {
                    return Err(format!("a step of 0 in {part:?}"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a =
                parse_value(a, names, name_base).ok_or_else(|| format!("invalid value {a:?}"))?;
            let b =
                parse_value(b, names, name_base).ok_or_else(|| format!("invalid value {b:?}"))?;
            (a, b)
        } else {
            let v = parse_value(range, names, name_base)
                .ok_or_else(|| format!("invalid value {range:?}"))?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { max } else { v })
        };
        if low < min || high > max || low > high {
            return Err(format!("{range:?} is outside {min}-{max}"));
        }
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Cron, CronError> {
        let error = |reason: String| CronError {
            expression: expression.to_owned(),
            reason,
        };
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(error(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        };
        let field = |text: &str, min, max, names: &[&str], base, what: &str| {
            parse_field(text, min, max, names, base).map_err(|e| error(format!("{what}: {e}")))
        };
        let mut weekdays = field(weekday, 0, 7, &WEEKDAYS, 0, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Cron {
            source: expression.trim().to_owned(),
            minutes: field(minute, 0, 59, &[], 0, "minute")?,
            hours: field(hour, 0, 23, &[], 0, "hour")?,
            days: field(day, 1, 31, &[], 0, "day of month")?,
            months: field(month, 1, 12, &MONTHS, 1, "month")?,
            weekdays,
            days_restricted: *day != "*",
            weekdays_restricted: *weekday != "*",
        })
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 86_400_000_000;

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31). Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month 1-12, day 1-31) -> days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Cron {
    fn day_matches(&self, days: i64) -> bool {
        let (_, _, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (weekday 4).
        let weekday = (days + 4).rem_euclid(7) as u32;
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after_us` (microseconds since the epoch, UTC) that
    /// the expression matches; `None` if none within the next 5 years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_us: i64) -> Option<i64> {
        // Start at the next whole minute.
        let mut t = after_us.div_euclid(MINUTE_US) * MINUTE_US + MINUTE_US;
        let limit = t + 5 * 366 * DAY_US;
        while t < limit {
            let days = t.div_euclid(DAY_US);
            let (year, month, _) = civil_from_days(days);
            if self.months & (1 << month) == 0 {
                // Jump to the first day of the next month.
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                t = days_from_civil(y, m, 1) * DAY_US;
                continue;
            }
            if !self.day_matches(days) {
                t = (days + 1) * DAY_US;
                continue;
            }
            let minute_of_day = (t - days * DAY_US) / MINUTE_US;
            let hour = (minute_of_day / 60) as u32;
            let minute = (minute_of_day % 60) as u32;
            if self.hours & (1 << hour) == 0 {
                t = days * DAY_US + i64::from(hour + 1) * 60 * MINUTE_US;
                continue;
            }
            if self.minutes & (1 << minute) == 0 {
                t += MINUTE_US;
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds at a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        days_from_civil(year, month, day) * DAY_US + (hour * 60 + minute) * MINUTE_US
    }

    fn next(expr: &str, from: i64) -> Option<i64> {
        expr.parse::<Cron>().expect("valid").next_after(from)
    }

    #[test]
    fn dates_round_trip() {
        for days in [-1, 0, 59, 365, 10_957, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn next_times() {
        let t = at(2026, 11, 27, 15, 4); // a Friday
        assert_eq!(next("* * * * *", t), Some(t + MINUTE_US));
        assert_eq!(next("*/15 * * * *", t), Some(at(2026, 11, 27, 15, 15)));
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
    }

    #[test]
    fn bad_expressions_say_why() {
        for (expr, reason) in [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "outside"),
            ("x * * * *", "invalid value"),
        ] {
            let err = expr.parse::<Cron>().expect_err(expr);
            assert!(err.to_string().contains(reason), "{expr}: {err}");
        }
    }
}
