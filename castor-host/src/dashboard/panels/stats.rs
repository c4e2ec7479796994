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

pub(crate) const STATS_COLS: [Col; 5] = [
    grow("task", 10, 1, 9),
    right("count", 6, 8),
    right("failed", 6, 7),
    right("mean", 7, 5),
    right("p95", 7, 6),
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
    vec![
        Cell::from(fit(&r.task, widths[0])),
        Cell::from(Line::from(thousands(r.count)).right_aligned()),
        Cell::from(Line::from(Span::styled(thousands(r.failures), failed_style)).right_aligned()),
        Cell::from(Line::from(format_duration(r.mean)).right_aligned()),
        Cell::from(Line::from(format_duration(r.p95)).right_aligned()),
    ]
}

/// See the module doc.
pub struct Stats;

impl Panel for Stats {
    fn pane(&self) -> Pane {
        Pane::Stats
    }

    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        stats(state, area, buf, focused);
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.stats.rows().len()
    }
}
