//! Times, durations and sizes as castor shows them to people (log lines, the CLI, the
//! dashboard, error messages): one spelling everywhere.

/// Formats microseconds since the Unix epoch as `2026-11-27T15:04:05.123Z` (UTC).
pub fn format_timestamp(us: i64) -> String {
    use chrono::{Datelike, Timelike};
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis()
        ),
        // Beyond chrono's ±262,000 years: no reader needs a calendar date there.
        None => format!("{us}us after the Unix epoch"),
    }
}

/// Formats a duration for people: `850us`, `12.3ms`, `2.0s`, `3m 20s`, `2h 5m`.
pub fn format_duration(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros}us")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1e3)
    } else if micros < 60_000_000 {
        format!("{:.1}s", micros as f64 / 1e6)
    } else if micros < 3_600_000_000 {
        let secs = d.as_secs();
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        let secs = d.as_secs();
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// Formats a byte count for people: `312 bytes`, `1,048,575 bytes`, `64 MiB`,
/// `100.0 MiB (104,857,605 bytes)` (exact where rounding would hide a limit's edge).
pub fn format_size(bytes: usize) -> String {
    const MIB: usize = 1 << 20;
    let digits = bytes.to_string();
    let mut exact = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            exact.push(',');
        }
        exact.push(c);
    }
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB ({exact} bytes)", bytes as f64 / MIB as f64)
    } else {
        format!("{exact} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::{format_duration, format_size};
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso() {
        assert_eq!(super::format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_timestamp(1_795_791_845_123_456),
            "2026-11-27T15:04:05.123Z"
        );
        assert_eq!(
            super::format_timestamp(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_micros(850)), "850us");
        assert_eq!(format_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2.0s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h 5m");
    }

    #[test]
    fn sizes_read_plainly() {
        assert_eq!(format_size(312), "312 bytes");
        assert_eq!(format_size(1_048_575), "1,048,575 bytes");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(100 << 20 | 5), "100.0 MiB (104,857,605 bytes)");
    }
}
