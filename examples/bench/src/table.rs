//! Results: median and range per scenario, the printed table, and the JSON file.

use std::path::Path;

use serde::Serialize;

/// One scenario's values.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: String,
    pub unit: String,
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The raw-SQLite figure this compares to, and the ratio median / that figure.
    pub ceiling: Option<Ceiling>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub name: String,
    pub value: f64,
    pub ratio: f64,
}

impl Measurement {
    pub fn new(
        scenario: &str,
        unit: &str,
        mut values: Vec<f64>,
        ceiling: Option<(&str, f64)>,
    ) -> Self {
        values.sort_by(f64::total_cmp);
        let median = median(&values);
        Measurement {
            scenario: scenario.to_owned(),
            unit: unit.to_owned(),
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            median,
            values,
            ceiling: ceiling.map(|(name, value)| Ceiling {
                name: name.to_owned(),
                value,
                ratio: median / value,
            }),
        }
    }

    pub fn line(&self) -> String {
        let ratio = self
            .ceiling
            .as_ref()
            .map_or_else(String::new, |c| format!("{:.2}x {}", c.ratio, c.name));
        format!(
            "| {:<46} | {:>14} | {:>25} | {} |",
            self.scenario,
            format!("{} {}", human(self.median), self.unit),
            format!("{} - {}", human(self.min), human(self.max)),
            ratio
        )
    }
}

pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The p-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn human(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        let whole = v.round() as u64;
        let s = whole.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub date: String,
    pub results: Vec<Measurement>,
}

impl Report {
    pub fn new(machine: String) -> Report {
        Report {
            machine,
            date: date(),
            results: Vec::new(),
        }
    }

    pub fn push(&mut self, m: Measurement) {
        self.results.push(m);
    }

    pub fn header(&self) -> String {
        format!(
            "castor-bench {} on {}\n| {:<46} | {:>14} | {:>25} | {} |\n|{}|{}|{}|{}|",
            self.date,
            self.machine,
            "scenario",
            "median",
            "min - max",
            "vs raw SQLite",
            "-".repeat(48),
            "-".repeat(16),
            "-".repeat(27),
            "-".repeat(20)
        )
    }

    pub fn table(&self) -> String {
        let mut lines = vec![self.header()];
        lines.extend(self.results.iter().map(Measurement::line));
        lines.join("\n")
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

fn date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(human(1234567.0), "1,234,567");
    }
}
