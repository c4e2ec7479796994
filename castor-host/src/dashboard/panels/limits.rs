//! The Limits panel: the manager's tasks with a concurrency or rate limit in force
//! (declared, or overridden by `castor limits set`), what runs against each, and why
//! their available tasks wait (not selectable; left out of the layout while empty).

use crate::dashboard::panels::Panel;
use crate::dashboard::state::*;
use crate::dashboard::widgets::*;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, HighlightSpacing, Row, StatefulWidget, Table, TableState, Widget};

pub(crate) const LIMITS_COLS: [Col; 5] = [
    col("task", 12, 9),
    grow("limits", 16, 3, 10),
    right("running", 7, 7),
    right("avail", 6, 6),
    grow("held", 12, 2, 8),
];

fn limits(state: &DashboardState, area: Rect, buf: &mut Buffer) {
    if state.limits.is_empty() {
        placeholder("no limits in force", area, buf);
        return;
    }
    let widths = fit_columns(&LIMITS_COLS, area.width);
    let shown: Vec<usize> = (0..LIMITS_COLS.len()).filter(|&i| widths[i] > 0).collect();
    let rows: Vec<Row> = state
        .limits
        .iter()
        .map(|l| {
            let held = l
                .held
                .as_deref()
                .map(|h| h.strip_prefix("held: ").unwrap_or(h))
                .unwrap_or("");
            let mut cells = [
                Cell::from(fit(&l.task, widths[0])),
                Cell::from(fit(&l.limits, widths[1])),
                Cell::from(Line::from(l.running.to_string()).right_aligned()),
                Cell::from(Line::from(l.available.to_string()).right_aligned()),
                Cell::from(Span::styled(
                    fit(held, widths[4]),
                    Style::new().fg(Color::Yellow),
                )),
            ];
            Row::new(
                shown
                    .iter()
                    .filter_map(|&i| cells.get_mut(i).map(std::mem::take)),
            )
        })
        .collect();
    let constraints = shown.iter().map(|&i| Constraint::Length(widths[i]));
    let table = Table::new(rows, constraints)
        .header(header_row(&LIMITS_COLS, &shown))
        .column_spacing(1)
        .highlight_symbol(" ")
        .highlight_spacing(HighlightSpacing::Always);
    StatefulWidget::render(table, area, buf, &mut TableState::default());
}

/// See the module doc.
pub struct Limits;

impl Panel for Limits {
    fn render(&self, state: &DashboardState, area: Rect, buf: &mut Buffer, focused: bool) {
        let held = state.limits.iter().filter(|l| l.held.is_some()).count();
        let detail = if held > 0 {
            format!("{} · {held} held", state.limits.len())
        } else {
            state.limits.len().to_string()
        };
        let title = pane_title(Pane::Limits, detail, focused);
        let block = rule(title, focused);
        let inner = block.inner(area);
        block.render(area, buf);
        limits(state, inner, buf);
    }

    fn collapses(&self) -> bool {
        true
    }

    fn rows(&self, state: &DashboardState) -> usize {
        state.limits.len()
    }
}
