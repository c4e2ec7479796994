//! Results: median and range per scenario, the printed table, and the JSON file.

use std::path::Path;

use serde::Serialize;

use crate::targets::TargetResult;

/// One scenario's values.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// A stable identifier (`drain`, `backlog_ratio`, ..): the same across runs and
    /// sizes, so two JSON files can be compared key by key.
    pub id: String,
    /// What was measured, for people (sizes included).
    pub scenario: String,
    /// The unit of `values`, `median`, `min` and `max`.
    pub unit: String,
    /// One value per run, sorted.
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The raw engine's figure this compares to (SQLite's, or PostgreSQL's for the
    /// PostgreSQL rows), and the ratio median / that figure.
    pub ceiling: Option<Ceiling>,
}

/// The raw engine's figure a scenario is read against: plain SQL on the same engine,
/// measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Which ceiling, naming its engine (`raw SQLite cycle`, `raw PostgreSQL commit
    /// latency`): the ratio column's heading names no engine, so each row's text does.
    pub name: String,
    /// Its median in this run.
    pub value: f64,
    /// The scenario's median divided by `value`.
    pub ratio: f64,
}

/// Column widths while results stream in; the final table fits its content instead.
const STREAM_WIDTHS: [usize; 4] = [52, 16, 25, 0];

/// The last column compares a row with plain SQL on its own engine: SQLite's for the
/// SQLite rows, the server's for the PostgreSQL rows (each ratio's text names which).
const HEADERS: [&str; 4] = ["scenario", "median", "min - max", "vs raw engine"];

impl Measurement {
    /// Sorts `values` and derives the median, the range and the ceiling ratio.
    pub fn new(
        id: &str,
        scenario: &str,
        unit: &str,
        mut values: Vec<f64>,
        ceiling: Option<(&str, f64)>,
    ) -> Self {
        values.sort_by(f64::total_cmp);
        let median = median(&values);
        Measurement {
            id: id.to_owned(),
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

    /// The four cells of this row: scenario, median with unit, range, ceiling ratio.
    fn cells(&self) -> [String; 4] {
        let ratio = self
            .ceiling
            .as_ref()
            .map_or_else(String::new, |c| format!("{}x {}", ratio(c.ratio), c.name));
        [
            self.scenario.clone(),
            format!("{} {}", human(self.median), self.unit),
            format!("{} - {}", human(self.min), human(self.max)),
            ratio,
        ]
    }

    /// The row as printed while the benchmark runs.
    pub fn line(&self) -> String {
        row(&self.cells(), &STREAM_WIDTHS)
    }
}

/// A Markdown table row; the first column left-aligned, the others right-aligned, the
/// last one unpadded when its width is 0.
fn row(cells: &[String; 4], widths: &[usize; 4]) -> String {
    format!(
        "| {:<w0$} | {:>w1$} | {:>w2$} | {:<w3$} |",
        cells[0],
        cells[1],
        cells[2],
        cells[3],
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3],
    )
}

/// The Markdown separator under the header row, for these widths.
fn separator(widths: &[usize; 4]) -> String {
    let dashes = |w: usize| "-".repeat(w.max(3) + 2);
    format!(
        "|{}|{}:|{}:|{}|",
        dashes(widths[0]),
        &dashes(widths[1])[1..],
        &dashes(widths[2])[1..],
        dashes(widths[3])
    )
}

/// The median of sorted values (NaN for none).
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

/// A ratio with enough digits to read a small one (`0.013`) and a large one (`5.8`).
fn ratio(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A number for people: thousands separators from 100 up, else 2 or 3 decimals.
pub fn human(v: f64) -> String {
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

/// Everything one benchmark run produced: what the JSON file holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Cores and CPU model.
    pub machine: String,
    /// The day it ran (UTC).
    pub date: String,
    /// Runs per scenario and whether sizes were scaled down.
    pub runs: usize,
    pub quick: bool,
    /// Every scenario, in the order it ran.
    pub results: Vec<Measurement>,
    /// The targets against the measured medians.
    pub targets: Vec<TargetResult>,
}

impl Report {
    pub fn new(machine: String, runs: usize, quick: bool) -> Report {
        Report {
            machine,
            date: date(),
            runs,
            quick,
            results: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Records a measurement and prints its row.
    pub fn push(&mut self, m: Measurement) {
        println!("{}", m.line());
        self.results.push(m);
    }

    /// The measurement with this id, if it ran.
    pub fn get(&self, id: &str) -> Option<&Measurement> {
        self.results.iter().find(|m| m.id == id)
    }

    fn title(&self) -> String {
        let runs = match (self.quick, self.runs) {
            (true, _) => "quick, 1 run".to_owned(),
            (false, 1) => "1 run each".to_owned(),
            (false, n) => format!("{n} runs each"),
        };
        format!("castor-bench {} on {} ({runs})", self.date, self.machine)
    }

    /// The title and header rows printed before results stream in.
    pub fn header(&self) -> String {
        let headers = HEADERS.map(str::to_owned);
        format!(
            "{}\n{}\n{}",
            self.title(),
            row(&headers, &STREAM_WIDTHS),
            separator(&STREAM_WIDTHS)
        )
    }

    /// The whole table, each column as wide as its widest cell.
    pub fn table(&self) -> String {
        let headers = HEADERS.map(str::to_owned);
        let rows: Vec<[String; 4]> = self.results.iter().map(Measurement::cells).collect();
        let mut widths = [0; 4];
        for cells in std::iter::once(&headers).chain(&rows) {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut lines = vec![self.title(), row(&headers, &widths), separator(&widths)];
        lines.extend(rows.iter().map(|cells| row(cells, &widths)));
        lines.join("\n")
    }

    /// Writes the report as pretty JSON, creating the directory if needed.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Today's date (UTC), `2026-11-27`.
fn date() -> String {
    let stamp = castor_store::format::format_timestamp(castor_store::now_us());
    stamp.get(..10).unwrap_or_default().to_owned()
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

    #[test]
    fn final_table_columns_fit_the_longest_cell() {
        let mut report = Report::new("test".into(), 3, false);
        let long = "x".repeat(70);
        report.results.push(Measurement::new(
            "a",
            &long,
            "/s",
            vec![3.0, 1.0, 2.0],
            None,
        ));
        report.results.push(Measurement::new(
            "b",
            "short",
            "ms",
            vec![0.5],
            Some(("raw SQLite cycle", 0.25)),
        ));
        report.results.push(Measurement::new(
            "c",
            "postgres: drain",
            "/s",
            vec![3.0],
            Some(("raw PostgreSQL cycle", 1.5)),
        ));
        let table = report.table();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        // Every row of a well-formed table is as long as the header.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        // The heading names no engine; each ratio names its own.
        assert!(lines[0].contains("vs raw engine"), "{table}");
        assert!(!lines[0].contains("SQLite"), "{table}");
        assert!(lines[3].contains("2.00x raw SQLite cycle"), "{table}");
        assert!(lines[4].contains("2.00x raw PostgreSQL cycle"), "{table}");
        assert_eq!(report.get("a").map(|m| m.median), Some(2.0));
    }
}
