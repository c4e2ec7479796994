//! The Tasks by name panel: per task name, attempts, failures and the failure rate, and
//! p50, p95 and mean durations over a bounded window of recent attempts.

use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use castor_store::format::format_duration;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Cell;

/// At 80 columns (a pane of about 38) the columns left are the name, the count, the
/// failure rate and p95; the mean goes first.
pub(crate) const STATS_COLS: [Col; 7] = [
    grow("task", 10, 1, 9),
    right("count", 6, 8),
    right("failed", 6, 4),
    right("fail%", 6, 7),
    right("p50", 7, 5),
    right("p95", 7, 6),
    right("mean", 7, 3),
];

pub(crate) fn stats(state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
    let rows = state.stats.rows();
    let view = TableView {
        which: Pane::Stats,
        cols: &STATS_COLS,
        len: rows.len(),
        selected: state.selection.stats,
        note: None,
        empty: "no task finished yet",
        cells: |i: usize, widths: &[u16]| {
            rows.get(i)
                .map(|r| stats_cells(r, widths))
                .unwrap_or_default()
        },
    };
    table(area, buf, focused, view, 0);
}

pub(crate) fn stats_cells(r: &TaskStats, widths: &[u16]) -> Vec<Cell<'static>> {
    let failed_style = if r.failures > 0 {
        Style::new().fg(Color::Red)
    } else {
        DIM
    };
    let rate_style = if r.failures > 0 {
        Style::new().fg(Color::Red)
    } else {
        DIM
    };
    vec![
        Cell::from(fit(&r.task, widths[0])),
        Cell::from(Line::from(thousands(r.count)).right_aligned()),
        Cell::from(Line::from(Span::styled(thousands(r.failures), failed_style)).right_aligned()),
        Cell::from(
            Line::from(Span::styled(failure_rate(r.failures, r.count), rate_style)).right_aligned(),
        ),
        Cell::from(Line::from(format_duration(r.p50)).right_aligned()),
        Cell::from(Line::from(format_duration(r.p95)).right_aligned()),
        Cell::from(Line::from(format_duration(r.mean)).right_aligned()),
    ]
}

/// The share of attempts that failed: `0%`, `0.4%`, `12%`, `100%`.
pub(crate) fn failure_rate(failures: u64, count: u64) -> String {
    if count == 0 || failures == 0 {
        return "0%".to_owned();
    }
    // Per mille, rounded: exact for every count a worker reaches.
    let permille = (u128::from(failures) * 1000 + u128::from(count) / 2) / u128::from(count);
    if permille < 100 {
        format!("{}.{}%", permille / 10, permille % 10)
    } else {
        format!("{}%", (permille + 5) / 10)
    }
}

/// See the module doc.
pub struct Stats;

impl Panel for Stats {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        stats(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.stats.rows().len()
    }
}

#[cfg(test)]
mod tests {
    use super::failure_rate;

    #[test]
    fn failure_rates_read_as_percentages() {
        assert_eq!(failure_rate(0, 0), "0%");
        assert_eq!(failure_rate(0, 10), "0%");
        assert_eq!(failure_rate(1, 10), "10%");
        assert_eq!(failure_rate(1, 250), "0.4%");
        assert_eq!(failure_rate(1, 3), "33%");
        assert_eq!(failure_rate(10, 10), "100%");
    }
}
